import { type OutboxEntry, OutboxError, OutboxErrorCode } from "@outbox/core";

/**
 * Field names of a stream entry written by the publisher. The entry's own headers travel as
 * one JSON object (UTF-8) in `headers`, so header names can never collide with these fields.
 */
export const StreamField = {
  Id: "outbox-id",
  Topic: "outbox-topic",
  IdempotencyKey: "outbox-idempotency-key",
  /** Present only when the entry has a key. */
  Key: "key",
  /** JSON object of string values. */
  Headers: "headers",
  /** The payload bytes, unchanged. */
  Payload: "payload",
} as const;

/** A stream entry as a consumer decodes it. */
export interface StreamMessage {
  /** The outbox entry id (not the stream entry id). */
  readonly id: string;
  readonly topic: string;
  readonly key: string | null;
  readonly idempotencyKey: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly payload: Uint8Array;
}

/** The XADD field/value list for one entry. */
export function encodeStreamFields(entry: OutboxEntry): Array<string | Buffer> {
  const fields: Array<string | Buffer> = [
    StreamField.Id,
    entry.id,
    StreamField.Topic,
    entry.topic,
    StreamField.IdempotencyKey,
    entry.idempotencyKey,
  ];
  if (entry.key !== null) fields.push(StreamField.Key, entry.key);
  fields.push(
    StreamField.Headers,
    JSON.stringify(entry.headers),
    StreamField.Payload,
    // A view, not a copy: ioredis writes the bytes as they are.
    Buffer.from(entry.payload.buffer, entry.payload.byteOffset, entry.payload.byteLength),
  );
  return fields;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function text(value: string | Uint8Array): string {
  return typeof value === "string" ? value : utf8.decode(value);
}

/**
 * Decodes the flat field/value list of a stream entry as `xrangeBuffer`/`xreadBuffer` return it
 * (`[field, value, field, value, ...]`). Use the Buffer variants: the string ones decode the
 * payload as UTF-8 and alter binary payloads.
 */
export function decodeStreamFields(fields: ReadonlyArray<string | Uint8Array>): StreamMessage {
  const values = new Map<string, string | Uint8Array>();
  for (let i = 0; i + 1 < fields.length; i += 2)
    values.set(text(fields[i] as string | Uint8Array), fields[i + 1] as never);
  const required = (name: string): string | Uint8Array => {
    const value = values.get(name);
    if (value === undefined) {
      throw new OutboxError(OutboxErrorCode.InvalidEntry, `stream entry has no "${name}" field`, {
        details: { field: name },
      });
    }
    return value;
  };
  const key = values.get(StreamField.Key);
  const headers = JSON.parse(text(required(StreamField.Headers))) as Record<string, string>;
  const payload = required(StreamField.Payload);
  return {
    id: text(required(StreamField.Id)),
    topic: text(required(StreamField.Topic)),
    key: key === undefined ? null : text(key),
    idempotencyKey: text(required(StreamField.IdempotencyKey)),
    headers,
    payload: typeof payload === "string" ? new TextEncoder().encode(payload) : new Uint8Array(payload),
  };
}
