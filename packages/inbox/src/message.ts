import { OutboxError, OutboxErrorCode, OutboxHeader } from "@outbox/core";

/** A received broker message, as the inbox sees it. */
export interface InboxMessage {
  /** The message's id (the outbox entry id our publishers send as `outbox-id`, or the broker's own id). */
  readonly id: string;
  /** What the inbox dedupes on when present (`outbox-idempotency-key`); otherwise `id`. */
  readonly idempotencyKey?: string | null;
  /** Ordering key: messages of one key are handled one at a time, in `handle` call order. */
  readonly key?: string | null;
  readonly topic?: string | null;
  readonly payload?: Uint8Array | string | null;
  readonly headers?: Readonly<Record<string, string>>;
}

/** Longest dedupe key or ordering key the inbox accepts (as the outbox's idempotency keys). */
export const maxMessageIdLength = 1024;

/** A header value as brokers' clients hand them over: text, bytes, a list of either, or nothing. */
export type HeaderValue = string | Uint8Array | ReadonlyArray<string | Uint8Array> | null | undefined;

export interface ReceivedMessage {
  /** The message's headers (Kafka's `message.headers`, AMQP `properties.headers`, Pub/Sub `attributes`, ...). */
  readonly headers?: Readonly<Record<string, HeaderValue>> | null;
  /** The broker's message key (Kafka's `message.key`): the ordering key. */
  readonly key?: string | Uint8Array | null;
  readonly topic?: string | null;
  readonly payload?: Uint8Array | string | null;
  /** Used as `id` when the message carries no `outbox-id` header (e.g. `${partition}:${offset}`). */
  readonly fallbackId?: string;
}

const utf8 = new TextDecoder();

function headerText(value: HeaderValue): string | undefined {
  if (value === null || value === undefined) return undefined;
  if (typeof value === "string") return value;
  if (value instanceof Uint8Array) return utf8.decode(value);
  const first = (value as ReadonlyArray<string | Uint8Array>)[0];
  return first === undefined ? undefined : headerText(first);
}

/**
 * Reads the metadata headers our publishers write (`outbox-id`, `outbox-idempotency-key`, `outbox-topic`:
 * `OutboxHeader` in @outbox/core) into an `InboxMessage`, so an outbox -> broker -> inbox chain needs no glue.
 * Headers are kept as text; a message with neither an `outbox-id` header nor a `fallbackId` fails with
 * OUTBOX_INVALID_ENTRY.
 */
export function inboxMessageFrom(received: ReceivedMessage): InboxMessage {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(received.headers ?? {})) {
    const text = headerText(value);
    if (text !== undefined) headers[name] = text;
  }
  const id = headers[OutboxHeader.Id] ?? received.fallbackId;
  if (id === undefined || id.length === 0) {
    throw new OutboxError(
      OutboxErrorCode.InvalidEntry,
      `the message has no "${OutboxHeader.Id}" header and no fallbackId: nothing to dedupe on`,
      { details: { field: "id" } },
    );
  }
  const key = received.key === null || received.key === undefined ? null : headerText(received.key);
  return {
    id,
    idempotencyKey: headers[OutboxHeader.IdempotencyKey] ?? null,
    key: key ?? null,
    topic: headers[OutboxHeader.Topic] ?? received.topic ?? null,
    payload: received.payload ?? null,
    headers,
  };
}

function checkText(value: unknown, field: string): string {
  if (typeof value !== "string" || value.length === 0 || value.length > maxMessageIdLength) {
    throw new OutboxError(
      OutboxErrorCode.InvalidEntry,
      `message ${field} must be a non-empty string of at most ${maxMessageIdLength} characters, got ${
        typeof value === "string" ? `${value.length} characters` : typeof value
      }`,
      { details: { field } },
    );
  }
  if (!value.isWellFormed() || value.includes("\u0000")) {
    throw new OutboxError(OutboxErrorCode.InvalidEntry, `message ${field} contains U+0000 or a lone surrogate`, {
      details: { field },
    });
  }
  return value;
}

/** The dedupe key of a message: its idempotency key, or its id. Validated (OUTBOX_INVALID_ENTRY). */
export function dedupeKey(message: InboxMessage): string {
  if (typeof message !== "object" || message === null) {
    throw new OutboxError(OutboxErrorCode.InvalidEntry, "handle needs a message object", {
      details: { field: "message" },
    });
  }
  const { idempotencyKey } = message;
  if (idempotencyKey !== undefined && idempotencyKey !== null) return checkText(idempotencyKey, "idempotencyKey");
  return checkText(message.id, "id");
}

/** The ordering key of a message, or null. Validated (OUTBOX_INVALID_ENTRY). */
export function orderingKey(message: InboxMessage): string | null {
  const { key } = message;
  if (key === undefined || key === null) return null;
  if (typeof key !== "string" || key.length > maxMessageIdLength) {
    throw new OutboxError(OutboxErrorCode.InvalidEntry, "message key must be a string", { details: { field: "key" } });
  }
  return key;
}

const utf8Encoder = new TextEncoder();

/** A copy of the message with its payload as bytes (what dead letters keep). */
export function normalizedMessage(message: InboxMessage): InboxMessage {
  const payload = message.payload;
  return {
    id: message.id,
    idempotencyKey: message.idempotencyKey ?? null,
    key: message.key ?? null,
    topic: message.topic ?? null,
    payload:
      payload === null || payload === undefined
        ? null
        : typeof payload === "string"
          ? utf8Encoder.encode(payload)
          : new Uint8Array(payload),
    headers: { ...(message.headers ?? {}) },
  };
}
