/**
 * The store's documents as MongoDB holds them, and their codecs: entry documents to
 * `OutboxEntry`s and claim candidates, ids and fencing tokens to int64. Also the one bulk write
 * every writer of entries goes through (see bulk).
 */
import { type Fence, type OutboxEntry, OutboxError, OutboxErrorCode } from "@outbox/core";
import { type AnyBulkWriteOperation, Binary, type ClientSession, type Collection, Long } from "mongodb";
import type { Candidate } from "./select.js";

/** An entry as stored. `_id` is the sequence number (int64). */
export interface EntryDoc {
  _id: Long | number;
  topic: string;
  key: string | null;
  payload: Binary;
  /** JSON text: header names may contain any character (".", "$", U+0000). */
  headers: string;
  idempotencyKey: string | null;
  createdAt: Date;
  availableAt: Date;
  status: "pending" | "published" | "dead";
  /** Claim-state version: every claim, retry, release and requeue bumps it (see claimEntries). */
  gen: number;
  attempts: number;
  lastError: string | null;
  claimedBy: string | null;
  /** Unique per claim call: how a claim finds what it won. */
  claimId: string | null;
  leaseUntil: Date | null;
  /** Lock name and token of the last fenced claim (null for an unfenced one); kept after settles. */
  leaseLock: string | null;
  leaseToken: Long | number | null;
  settledAt: Date | null;
}

export interface SequenceDoc {
  _id: string;
  value: Long | number;
}

/**
 * A claim ticket: "claim `claimId` consumed state `gen` of entry `seq`" (`_id` is `<seq>:<gen>`).
 * Inserting it is the claim's arbitration: a unique `_id` is the one write every server makes
 * atomic, FerretDB 1.x included (whose updates are read, filter, write back).
 */
export interface TicketDoc {
  _id: string;
  seq: Long | number;
  claimId: string;
  until: Date;
}

/**
 * Fencing tokens. Without transactions: one insert-only record per (lock, token), `_id`
 * `<lock>#<token>`; the newest token is the highest record, so it can never go back. With
 * transactions: one `head:<lock>` document raised with $max inside the operation's transaction.
 */
export interface FenceDoc {
  _id: string;
  lock?: string;
  token: Long | number;
}

const idPattern = /^[0-9]{1,16}$/;
const minInt64 = -(2n ** 63n);
const maxInt64 = 2n ** 63n - 1n;
/** Statements per write command (see bulk). */
const bulkStatements = 8;

export const candidateProjection = {
  key: 1,
  gen: 1,
  availableAt: 1,
  leaseUntil: 1,
  leaseLock: 1,
  leaseToken: 1,
} as const;

export function groupBy<T, K>(items: readonly T[], keyOf: (item: T) => K): Map<K, T[]> {
  const groups = new Map<K, T[]>();
  for (const item of items) {
    const key = keyOf(item);
    const group = groups.get(key);
    if (group) group.push(item);
    else groups.set(key, [item]);
  }
  return groups;
}

export function positiveInteger(value: unknown, name: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

/** Keeps well-formed ids (decimal sequence numbers); others cannot name an entry and are ignored. */
export function validIds(ids: readonly string[]): number[] {
  const out: number[] = [];
  for (const id of ids) {
    if (typeof id !== "string" || !idPattern.test(id)) continue;
    const n = Number(id);
    if (Number.isSafeInteger(n)) out.push(n);
  }
  return out;
}

export const long = (n: number): Long => Long.fromNumber(n);
export const longs = (ns: readonly number[]): Long[] => ns.map(long);

export function tokenLong(fence: Fence): Long {
  if (typeof fence.token !== "bigint" || fence.token < minInt64 || fence.token > maxInt64) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `fencing token must be a 64-bit bigint, got ${String(fence.token)}`,
    );
  }
  return Long.fromString(fence.token.toString());
}

export function toBigint(value: Long | number | null | undefined): bigint | null {
  if (value === null || value === undefined) return null;
  return BigInt(value.toString());
}

export function toCandidate(doc: Partial<EntryDoc>): Candidate {
  return {
    seq: Number(doc._id),
    gen: Number(doc.gen ?? 0),
    key: doc.key ?? null,
    availableAt: (doc.availableAt as Date).getTime(),
    leaseUntil: doc.leaseUntil ? doc.leaseUntil.getTime() : null,
    leaseLock: doc.leaseLock ?? null,
    leaseToken: toBigint(doc.leaseToken),
  };
}

function payloadBytes(value: unknown): Uint8Array {
  if (value instanceof Binary) return new Uint8Array(value.buffer.subarray(0, value.position));
  if (value instanceof Uint8Array) return new Uint8Array(value);
  throw new OutboxError(OutboxErrorCode.StoreUnavailable, `unexpected payload value of type ${typeof value}`);
}

export function toEntry(doc: EntryDoc): OutboxEntry {
  const id = String(doc._id);
  return {
    id,
    topic: doc.topic,
    key: doc.key ?? null,
    payload: payloadBytes(doc.payload),
    headers: JSON.parse(doc.headers) as Record<string, string>,
    idempotencyKey: doc.idempotencyKey ?? id,
    createdAt: new Date(doc.createdAt.getTime()),
    availableAt: new Date(doc.availableAt.getTime()),
    attempts: Number(doc.attempts),
    lastError: doc.lastError ?? null,
  };
}

/**
 * Runs write operations in commands of at most 8 statements. FerretDB 1.x keeps each
 * statement's read (a PostgreSQL connection, from a pool of 50) open until its command ends and
 * takes one more to write, so a long bulk command can exhaust the pool and hang the server;
 * MongoDB pays a round trip per 8 groups (claims have one or two: statements go by `gen`).
 */
export async function bulk(
  entries: Collection<EntryDoc>,
  ops: AnyBulkWriteOperation<EntryDoc>[],
  session: ClientSession | undefined,
): Promise<number> {
  let modified = 0;
  for (let i = 0; i < ops.length; i += bulkStatements) {
    const result = await entries.bulkWrite(ops.slice(i, i + bulkStatements), { ordered: false, session });
    modified += result.modifiedCount;
  }
  return modified;
}
