import { OutboxError, OutboxErrorCode } from "@outbox/core";
import { type InboxMessage, normalizedMessage } from "./message.js";
import type { InboxPurgeRequest, ListInboxDeadOptions } from "./store.js";

// Helpers for inbox store implementations (ours and yours): how a dead letter's message is kept as text, and
// the validation every store applies to its arguments.

const NodeBuffer = (
  globalThis as {
    Buffer?: {
      from(bytes: Uint8Array): { toString(encoding: "base64"): string };
      from(text: string, encoding: "base64"): Uint8Array;
    };
  }
).Buffer;

function toBase64(bytes: Uint8Array): string {
  if (NodeBuffer) return NodeBuffer.from(bytes).toString("base64");
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

function fromBase64(text: string): Uint8Array {
  if (NodeBuffer) return new Uint8Array(NodeBuffer.from(text, "base64"));
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

interface StoredMessage {
  id: string;
  idempotencyKey: string | null;
  key: string | null;
  topic: string | null;
  payload: string | null;
  headers: Record<string, string>;
}

/**
 * A message as JSON text (payload bytes in base64), for a dead letter's stored copy: byte for byte what
 * `decodeStoredMessage` gives back. JSON escapes lone surrogates and U+0000, so the text is well-formed UTF-16.
 */
export function encodeStoredMessage(message: InboxMessage): string {
  const { payload, ...rest } = normalizedMessage(message);
  return JSON.stringify({ ...rest, payload: payload ? toBase64(payload as Uint8Array) : null });
}

/** The message `encodeStoredMessage` wrote (given as its text, or already parsed by the driver). */
export function decodeStoredMessage(text: unknown): InboxMessage {
  const stored = (typeof text === "string" ? JSON.parse(text) : text) as StoredMessage;
  return {
    id: stored.id,
    idempotencyKey: stored.idempotencyKey,
    key: stored.key,
    topic: stored.topic,
    payload: stored.payload === null ? null : fromBase64(stored.payload),
    headers: stored.headers,
  };
}

/** @internal A positive integer option, or OUTBOX_INVALID_OPTIONS naming it. */
export function positiveInteger(value: unknown, name: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive integer, got ${String(value)}`, {
      details: { option: name },
    });
  }
  return value;
}

/** `listDead`'s options with their defaults (limit 100), validated (OUTBOX_INVALID_OPTIONS). */
export function listDeadOptions(options: ListInboxDeadOptions = {}): { limit: number; after: string | null } {
  return { limit: positiveInteger(options.limit ?? 100, "limit"), after: options.after ?? null };
}

/** What a store's batch statements delete: each returns how many rows it deleted (at most `batchSize`). */
export interface PurgeBatches {
  /** Processed keys recorded before `olderThan`. */
  keys(olderThan: Date, batchSize: number): Promise<number>;
  /** Attempt counters last updated before `olderThan`. */
  attempts(olderThan: Date, batchSize: number): Promise<number>;
}

/**
 * `InboxStore.purge` from a store's two batch deletes: validates the request (OUTBOX_INVALID_OPTIONS), deletes
 * processed keys batch by batch until a batch comes back short, then stale attempt counters the same way.
 * Returns how many keys went.
 */
export async function purgeInBatches(request: InboxPurgeRequest, batches: PurgeBatches): Promise<number> {
  const olderThan = request?.olderThan;
  if (!(olderThan instanceof Date) || Number.isNaN(olderThan.getTime())) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, "purge needs olderThan as a valid Date");
  }
  const batchSize = positiveInteger(request.batchSize ?? 1000, "batchSize");
  let total = 0;
  for (;;) {
    const deleted = await batches.keys(olderThan, batchSize);
    total += deleted;
    if (deleted < batchSize) break;
  }
  while ((await batches.attempts(olderThan, batchSize)) >= batchSize);
  return total;
}
