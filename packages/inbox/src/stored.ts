import { OutboxError, OutboxErrorCode } from "@outbox/core";
import { type InboxMessage, normalizedMessage } from "./message.js";
import type { InboxConsumerStats, InboxPurgeRequest, ListInboxDeadOptions } from "./store.js";

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

/** A consumer's keys of one status, as a store's grouped read gives them. */
export interface InboxKeyGroup {
  readonly consumer: string;
  readonly status: "processed" | "dead";
  readonly count: number;
  readonly oldest: Date | null;
  readonly newest: Date | null;
}

/** A consumer's failing messages (attempt counters without a key), as a store's grouped read gives them. */
export interface InboxFailingGroup {
  readonly consumer: string;
  readonly count: number;
}

/** `stats`' argument validated: undefined (every consumer) or a non-empty string; OUTBOX_INVALID_OPTIONS otherwise. */
export function statsConsumer(consumer: unknown): string | undefined {
  if (consumer === undefined) return undefined;
  if (typeof consumer !== "string" || consumer.length === 0) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      "stats takes a consumer name (a non-empty string) or nothing",
      {
        details: { option: "consumer" },
      },
    );
  }
  return consumer;
}

/** What `stats(consumer)` answers for a consumer that recorded nothing. */
export function emptyConsumerStats(consumer: string): InboxConsumerStats {
  return {
    consumer,
    processed: 0,
    dead: 0,
    failing: 0,
    oldestProcessedAt: null,
    newestProcessedAt: null,
    oldestDeadAt: null,
  };
}

/**
 * `InboxStore.stats`' answer from a store's grouped reads. With `consumer`: exactly its element, zeros when nothing
 * was read; without: one per consumer read, ordered by name.
 */
export function consumerStats(
  consumer: string | undefined,
  keys: readonly InboxKeyGroup[],
  failing: readonly InboxFailingGroup[],
): InboxConsumerStats[] {
  const byConsumer = new Map<string, { -readonly [K in keyof InboxConsumerStats]: InboxConsumerStats[K] }>();
  const entry = (name: string) => {
    let stats = byConsumer.get(name);
    if (!stats) {
      stats = emptyConsumerStats(name);
      byConsumer.set(name, stats);
    }
    return stats;
  };
  if (consumer !== undefined) entry(consumer);
  for (const group of keys) {
    if (group.count === 0 || (consumer !== undefined && group.consumer !== consumer)) continue;
    const stats = entry(group.consumer);
    if (group.status === "processed") {
      stats.processed += group.count;
      stats.oldestProcessedAt = earliest(stats.oldestProcessedAt, group.oldest);
      stats.newestProcessedAt = latest(stats.newestProcessedAt, group.newest);
    } else {
      stats.dead += group.count;
      stats.oldestDeadAt = earliest(stats.oldestDeadAt, group.oldest);
    }
  }
  for (const group of failing) {
    if (group.count === 0 || (consumer !== undefined && group.consumer !== consumer)) continue;
    entry(group.consumer).failing += group.count;
  }
  return [...byConsumer.values()].sort((a, b) => (a.consumer < b.consumer ? -1 : a.consumer > b.consumer ? 1 : 0));
}

function earliest(a: Date | null, b: Date | null): Date | null {
  return a === null ? b : b === null || a <= b ? a : b;
}

function latest(a: Date | null, b: Date | null): Date | null {
  return a === null ? b : b === null || a >= b ? a : b;
}
