import { headersWithMetadata, type OutboxEntry, OutboxHeader } from "@outbox/core";
import type { AmqpPublishOptions } from "./types.js";

/** Header names the publisher adds on top of `headersWithMetadata` (AMQP has no message key). */
export const AmqpHeader = {
  ...OutboxHeader,
  /** The entry's key, present only when the entry has one. */
  Key: "outbox-key",
} as const;

/** AMQP short strings (routing key, message id, content type) hold at most 255 bytes. */
export const SHORT_STRING_BYTES = 255;
/**
 * The content header frame (all properties) must fit in one frame, and amqplib encodes the
 * header table in a 64 KiB scratch buffer (2.3.1 throws past it, 0.10.x writes a corrupt frame).
 */
export const MAX_PROPERTIES_BYTES = 65_536;
/** Room for the fixed properties around the header table (ids, types, timestamp, ...). */
const PROPERTIES_OVERHEAD = 1_024;

const byteLength = (value: string): number => Buffer.byteLength(value, "utf8");

/** Why an entry cannot be encoded as an AMQP message (a permanent failure, nothing is sent). */
export interface EncodingProblem {
  readonly type: "ROUTING_KEY_INVALID" | "MESSAGE_TOO_LARGE" | "HEADER_NAME_TOO_LONG" | "HEADERS_TOO_LARGE";
  readonly message: string;
  readonly bytes?: number;
}

export interface AmqpMessage {
  readonly routingKey: string;
  readonly content: Buffer;
  readonly options: AmqpPublishOptions;
}

/** Bytes of the AMQP field table amqplib writes for these string headers. */
export function headerTableBytes(headers: Readonly<Record<string, string>>): number {
  let size = 4;
  // name: 1-byte length + bytes; value: type byte + 4-byte length + bytes.
  for (const [name, value] of Object.entries(headers)) size += 1 + byteLength(name) + 1 + 4 + byteLength(value);
  return size;
}

function header(headers: Readonly<Record<string, string>>, name: string): string | undefined {
  for (const [candidate, value] of Object.entries(headers)) if (candidate.toLowerCase() === name) return value;
  return undefined;
}

/**
 * The AMQP message for an entry: the payload bytes unchanged, persistent, `mandatory` (an
 * unroutable message comes back as basic.return), `messageId` = idempotency key, the entry's
 * headers plus outbox metadata, content type/encoding from the entry's headers, and the entry's
 * creation time (seconds) as timestamp. A problem means the entry can never be sent as it is.
 */
export function encodeMessage(
  entry: OutboxEntry,
  routingKey: string,
  limits: { maxMessageBytes: number; maxPropertiesBytes: number },
): AmqpMessage | EncodingProblem {
  if (typeof routingKey !== "string" || byteLength(routingKey) > SHORT_STRING_BYTES) {
    return {
      type: "ROUTING_KEY_INVALID",
      message: `routing key for entry ${entry.id} must be a string of at most ${SHORT_STRING_BYTES} bytes, got ${
        typeof routingKey === "string" ? `${byteLength(routingKey)} bytes` : JSON.stringify(routingKey)
      }`,
    };
  }
  if (entry.payload.byteLength > limits.maxMessageBytes) {
    return {
      type: "MESSAGE_TOO_LARGE",
      message: `payload of entry ${entry.id} is ${entry.payload.byteLength} bytes, over maxMessageBytes ${limits.maxMessageBytes}`,
      bytes: entry.payload.byteLength,
    };
  }
  const headers = headersWithMetadata(entry);
  if (entry.key !== null) headers[AmqpHeader.Key] = entry.key;
  if (routingKey !== entry.topic) headers[AmqpHeader.Topic] = entry.topic;
  for (const name of Object.keys(headers)) {
    if (byteLength(name) > SHORT_STRING_BYTES) {
      return {
        type: "HEADER_NAME_TOO_LONG",
        message: `header name of ${byteLength(name)} bytes in entry ${entry.id}; AMQP allows ${SHORT_STRING_BYTES}`,
        bytes: byteLength(name),
      };
    }
  }
  const tableBytes = headerTableBytes(headers);
  if (tableBytes + PROPERTIES_OVERHEAD > limits.maxPropertiesBytes) {
    return {
      type: "HEADERS_TOO_LARGE",
      message: `headers of entry ${entry.id} encode to ${tableBytes} bytes; the message properties must fit in ${limits.maxPropertiesBytes} bytes`,
      bytes: tableBytes,
    };
  }
  const options: AmqpPublishOptions = {
    mandatory: true,
    persistent: true,
    timestamp: Math.floor(entry.createdAt.getTime() / 1_000),
    headers,
  };
  // An idempotency key over 255 bytes cannot be a message id; it still travels as a header.
  if (byteLength(entry.idempotencyKey) <= SHORT_STRING_BYTES) options.messageId = entry.idempotencyKey;
  const contentType = header(entry.headers, "content-type");
  if (contentType !== undefined && byteLength(contentType) <= SHORT_STRING_BYTES) options.contentType = contentType;
  const contentEncoding = header(entry.headers, "content-encoding");
  if (contentEncoding !== undefined && byteLength(contentEncoding) <= SHORT_STRING_BYTES) {
    options.contentEncoding = contentEncoding;
  }
  const payload = entry.payload;
  // A view on the entry's bytes, not a copy.
  const content = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  return { routingKey, content, options };
}

/** A message as a consumer decodes it (see `decodeMessage`). */
export interface DecodedMessage {
  /** The outbox entry id. */
  readonly id: string;
  /** The entry's topic: the `outbox-topic` header when the routing key differs, else the routing key. */
  readonly topic: string;
  readonly key: string | null;
  readonly idempotencyKey: string;
  /** Every header as a string, the outbox metadata headers included. */
  readonly headers: Readonly<Record<string, string>>;
  readonly payload: Uint8Array;
}

/** The parts of an amqplib `ConsumeMessage`/`GetMessage` that `decodeMessage` reads. */
export interface ConsumedMessageLike {
  readonly fields: { readonly routingKey: string };
  readonly properties: { readonly messageId?: unknown; readonly headers?: Readonly<Record<string, unknown>> };
  readonly content: Uint8Array;
}

function headerText(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (value instanceof Uint8Array) return Buffer.from(value).toString("utf8");
  return value === undefined || value === null ? undefined : String(value);
}

/** Decodes a delivered message back into the entry's fields, for consumers written in Node. */
export function decodeMessage(message: ConsumedMessageLike): DecodedMessage {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(message.properties.headers ?? {})) {
    const text = headerText(value);
    if (text !== undefined) headers[name] = text;
  }
  const messageId = headerText(message.properties.messageId);
  return {
    id: headers[AmqpHeader.Id] ?? "",
    topic: headers[AmqpHeader.Topic] ?? message.fields.routingKey,
    key: headers[AmqpHeader.Key] ?? null,
    idempotencyKey: headers[AmqpHeader.IdempotencyKey] ?? messageId ?? "",
    headers,
    payload: new Uint8Array(message.content.buffer, message.content.byteOffset, message.content.byteLength),
  };
}
