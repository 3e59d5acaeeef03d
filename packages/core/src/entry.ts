import { OutboxError, OutboxErrorCode } from "./errors.js";
import { injectTraceContext } from "./otel.js";

/** Bytes are stored as given; strings are stored as their UTF-8 bytes. */
export type OutboxPayload = Uint8Array | string;

/** What an application enqueues, inside its own database transaction. */
export interface OutboxMessage {
  /** Destination (Kafka topic, exchange/routing key, stream name, ...). Non-empty. */
  topic: string;
  payload: OutboxPayload;
  /** Partition/ordering key. Entries with the same key are published in enqueue order. */
  key?: string | null;
  headers?: Readonly<Record<string, string>>;
  /** What consumers dedupe on. Defaults to the entry id. */
  idempotencyKey?: string;
  /** Do not publish before this moment (delayed messages). Defaults to now. */
  availableAt?: Date;
}

/** An entry as stored and as handed to publishers. */
export interface OutboxEntry {
  /** Store-assigned, unique, opaque (a bigint as text, an ObjectId in hex, ...). */
  readonly id: string;
  readonly topic: string;
  readonly key: string | null;
  readonly payload: Uint8Array;
  readonly headers: Readonly<Record<string, string>>;
  readonly idempotencyKey: string;
  readonly createdAt: Date;
  readonly availableAt: Date;
  /** Delivery attempts so far, counting the current claim. */
  readonly attempts: number;
  readonly lastError: string | null;
}

/** A validated message, ready for a store to insert. */
export interface PreparedMessage {
  readonly topic: string;
  readonly key: string | null;
  readonly payload: Uint8Array;
  readonly headers: Readonly<Record<string, string>>;
  /** null means "use the entry id". */
  readonly idempotencyKey: string | null;
  readonly availableAt: Date;
}

export interface EntryLimits {
  /** Default 4 MiB. Brokers have their own limits; those surface as permanent publish failures. */
  maxPayloadBytes: number;
  /** Default 249 (Kafka's topic name limit). */
  maxTopicLength: number;
  /** Default 1024. */
  maxKeyLength: number;
  /** Total UTF-8 bytes of header names and values. Default 64 KiB. */
  maxHeaderBytes: number;
}

export const defaultEntryLimits: Readonly<EntryLimits> = Object.freeze({
  maxPayloadBytes: 4 * 1024 * 1024,
  maxTopicLength: 249,
  maxKeyLength: 1024,
  maxHeaderBytes: 64 * 1024,
});

const utf8 = new TextEncoder();

function invalid(index: number, field: string, message: string): OutboxError {
  return new OutboxError(OutboxErrorCode.InvalidEntry, `message ${index}: ${message}`, {
    details: { index, field },
  });
}

function checkText(value: unknown, index: number, field: string, maxLength: number): string {
  if (typeof value !== "string" || value.length === 0) {
    throw invalid(index, field, `${field} must be a non-empty string, got ${describeValue(value)}`);
  }
  if (value.length > maxLength) throw invalid(index, field, `${field} is longer than ${maxLength} characters`);
  // A lone surrogate cannot be stored as UTF-8 and would come back altered.
  if (!value.isWellFormed()) throw invalid(index, field, `${field} contains a lone UTF-16 surrogate`);
  return value;
}

function describeValue(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? (value.constructor?.name ?? "an object") : typeof value;
}

function preparePayload(payload: unknown, index: number, limits: EntryLimits): Uint8Array {
  let bytes: Uint8Array;
  if (payload instanceof Uint8Array) {
    // Copy: the caller may reuse its buffer after enqueue returns.
    bytes = new Uint8Array(payload);
  } else if (typeof payload === "string") {
    if (!payload.isWellFormed()) throw invalid(index, "payload", "payload string contains a lone UTF-16 surrogate");
    bytes = utf8.encode(payload);
  } else {
    throw invalid(
      index,
      "payload",
      `payload must be a Uint8Array or a string, got ${describeValue(payload)} (serialise objects first, e.g. with jsonPayload())`,
    );
  }
  if (bytes.byteLength > limits.maxPayloadBytes) {
    throw invalid(
      index,
      "payload",
      `payload is ${bytes.byteLength} bytes, over the ${limits.maxPayloadBytes}-byte limit`,
    );
  }
  return bytes;
}

function prepareHeaders(headers: unknown, index: number, limits: EntryLimits): Record<string, string> {
  if (headers === undefined || headers === null) return {};
  if (typeof headers !== "object" || Array.isArray(headers)) {
    throw invalid(index, "headers", `headers must be an object of strings, got ${describeValue(headers)}`);
  }
  const result: Record<string, string> = {};
  let size = 0;
  for (const [name, value] of Object.entries(headers)) {
    checkText(name, index, "headers", 1024);
    if (typeof value !== "string") throw invalid(index, "headers", `header "${name}" must be a string`);
    if (!value.isWellFormed()) throw invalid(index, "headers", `header "${name}" contains a lone UTF-16 surrogate`);
    size += utf8.encode(name).byteLength + utf8.encode(value).byteLength;
    result[name] = value;
  }
  if (size > limits.maxHeaderBytes) throw invalid(index, "headers", `headers exceed ${limits.maxHeaderBytes} bytes`);
  return result;
}

/**
 * Validates and normalises messages before a store inserts them. Every store calls this,
 * so bad input fails at enqueue, inside the caller's transaction, with OUTBOX_INVALID_ENTRY,
 * never later in the relay.
 */
export function prepareMessages(
  input: OutboxMessage | readonly OutboxMessage[],
  options: { now: number; limits?: Partial<EntryLimits> },
): PreparedMessage[] {
  const limits = { ...defaultEntryLimits, ...options.limits };
  const messages = Array.isArray(input) ? input : [input as OutboxMessage];
  return messages.map((message: OutboxMessage, index): PreparedMessage => {
    if (typeof message !== "object" || message === null) {
      throw invalid(index, "message", `expected an object, got ${describeValue(message)}`);
    }
    const topic = checkText(message.topic, index, "topic", limits.maxTopicLength);
    const key =
      message.key === undefined || message.key === null
        ? null
        : checkText(message.key, index, "key", limits.maxKeyLength);
    const idempotencyKey =
      message.idempotencyKey === undefined ? null : checkText(message.idempotencyKey, index, "idempotencyKey", 1024);
    let availableAt = new Date(options.now);
    if (message.availableAt !== undefined) {
      if (!(message.availableAt instanceof Date) || Number.isNaN(message.availableAt.getTime())) {
        throw invalid(index, "availableAt", "availableAt must be a valid Date");
      }
      availableAt = new Date(message.availableAt.getTime());
    }
    return {
      topic,
      key,
      payload: preparePayload(message.payload, index, limits),
      headers: injectTraceContext(prepareHeaders(message.headers, index, limits)),
      idempotencyKey,
      availableAt,
    };
  });
}

/** Serialises a JSON value to a payload, failing with OUTBOX_INVALID_ENTRY where JSON cannot represent it. */
export function jsonPayload(value: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (cause) {
    throw new OutboxError(OutboxErrorCode.InvalidEntry, "payload is not JSON-serialisable", {
      cause,
      details: { field: "payload" },
    });
  }
  if (text === undefined) {
    throw new OutboxError(OutboxErrorCode.InvalidEntry, `payload is not JSON-serialisable (${typeof value})`, {
      details: { field: "payload" },
    });
  }
  return text;
}

const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

/** The payload as text; throws when it is not valid UTF-8. */
export function payloadText(entry: Pick<OutboxEntry, "payload">): string {
  return utf8Decoder.decode(entry.payload);
}
