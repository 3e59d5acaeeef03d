import {
  type Clock,
  claimersByRelay,
  deadLetterFilter,
  type ListDeadOptions,
  mostPendingFirst,
  newestErrorFirst,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type PendingSummary,
  type PendingSummaryOptions,
  type PurgeRequest,
  type RecentError,
  type RelayActivity,
  type RelayActivityOptions,
  relayActivityMaxLocks,
  type StoreStats,
} from "@outbox/core";
import { type MySqlQueryable, runStatement } from "./queryable.js";
import type { Statements } from "./statements.js";
import { bytes, keyHash, likeContains, nullableText, num, positiveInteger, text, toEntry, validIds } from "./values.js";

/** What the operator reads and writes need of the store. */
export interface OperatorContext {
  readonly sql: Statements;
  readonly clock: Clock;
  /**
   * Runs `unit` on the store's pool, again after a lock conflict or a connection error (every
   * statement here is idempotent); OUTBOX_CLOSED once the store is closed.
   */
  onPool<T>(operation: string, unit: (pool: MySqlQueryable) => Promise<T>): Promise<T>;
  /** OUTBOX_CLOSED once the store is closed: a purge checks it before each batch. */
  assertOpen(): void;
}

export async function listDead(ctx: OperatorContext, options: ListDeadOptions): Promise<OutboxEntry[]> {
  const limit = positiveInteger(options.limit ?? 100, "limit");
  if (options.after !== undefined && validIds([options.after]).length === 0) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `listDead: after must be an entry id, got ${JSON.stringify(options.after)}`,
    );
  }
  const filter = deadLetterFilter(options);
  const params: unknown[] = [];
  if (typeof filter.key === "string") params.push(keyHash(filter.key), bytes(filter.key));
  params.push(options.after ?? "0");
  if (filter.topic !== undefined) params.push(bytes(filter.topic));
  if (filter.errorContains !== undefined) params.push(bytes(likeContains(filter.errorContains)));
  params.push(limit);
  const { rows } = await ctx.onPool("listDead", (pool) => runStatement(pool, ctx.sql.listDead(filter), params));
  return rows.map((row) => toEntry(row, Number(row.attempts)));
}

export async function dropDead(ctx: OperatorContext, ids: readonly string[]): Promise<number> {
  const valid = validIds(ids);
  if (valid.length === 0) return 0;
  const result = await ctx.onPool("dropDead", (pool) => runStatement(pool, ctx.sql.dropDead(valid.length), valid));
  return result.affectedRows ?? 0;
}

/** Entries moved back to pending (the store wakes its relays when there are any). */
export async function requeueDead(ctx: OperatorContext, ids: readonly string[]): Promise<number> {
  const valid = validIds(ids);
  if (valid.length === 0) return 0;
  const result = await ctx.onPool("requeueDead", (pool) =>
    runStatement(pool, ctx.sql.requeueDead(valid.length), [ctx.clock.now(), ...valid]),
  );
  return result.affectedRows ?? 0;
}

export async function purge(ctx: OperatorContext, request: PurgeRequest): Promise<number> {
  if (!(request.olderThan instanceof Date) || Number.isNaN(request.olderThan.getTime())) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, "purge needs olderThan as a valid Date");
  }
  const batchSize = positiveInteger(request.batchSize ?? 1000, "batchSize");
  const cutoff = request.olderThan.getTime();
  let total = 0;
  for (;;) {
    ctx.assertOpen();
    // Ids first (no locks), then a DELETE by primary key that re-checks: no gap locks, no
    // long transaction, never a pending entry.
    const { rows } = await ctx.onPool("purge", (pool) => runStatement(pool, ctx.sql.purgeIds, [cutoff, batchSize]));
    if (rows.length === 0) return total;
    const ids = rows.map((row) => String(row.id));
    const result = await ctx.onPool("purge", (pool) => runStatement(pool, ctx.sql.purge(ids.length), [...ids, cutoff]));
    total += result.affectedRows ?? 0;
    if (rows.length < batchSize) return total;
  }
}

/**
 * The oldest `scanLimit` pending entries (default 10,000), read in id order through the
 * (status, id) index: bounded range scans however deep the backlog, in one statement (one
 * snapshot). Retry-waiting and hot keys are counted among them.
 */
export async function pendingSummary(ctx: OperatorContext, options: PendingSummaryOptions): Promise<PendingSummary> {
  const scanLimit = positiveInteger(options.scanLimit ?? 10_000, "scanLimit");
  const hotKeys = positiveInteger(options.hotKeys ?? 10, "hotKeys");
  const blockedKeys = positiveInteger(options.blockedKeys ?? 10, "blockedKeys");
  const now = ctx.clock.now();
  const params = [now, now, scanLimit, scanLimit, hotKeys, scanLimit, now, now, blockedKeys];
  const { rows } = await ctx.onPool("pendingSummary", (pool) => runStatement(pool, ctx.sql.pendingSummary, params));
  const summary = rows.find((row) => Number(row.kind) === 0);
  const ofKind = (kind: number) => rows.filter((row) => Number(row.kind) === kind);
  return {
    scanned: Number(summary?.n ?? 0),
    retryWaiting: Number(summary?.waiting ?? 0),
    hotKeys: ofKind(1)
      .map((row) => ({ key: String(row.entry_key), pending: Number(row.n) }))
      .sort(mostPendingFirst),
    blockedKeys: ofKind(2)
      .map((row) => ({
        key: String(row.entry_key),
        pending: Number(row.n),
        entryId: String(row.head_id),
        attempts: Number(row.attempts),
        lastError: nullableText(row.last_error),
        availableAt: new Date(Number(row.available_at)),
      }))
      .sort(mostPendingFirst),
  };
}

/**
 * Four bounded reads at once, each through an index: the fence table (a row per lock name), the
 * oldest `scanLimit` pending entries ((status, id), twice: leases, then errors), the newest
 * `scanLimit` settled ones (settled_at, newest first, up to the first published one) and the
 * newest `recentErrors` dead ones ((status, id)).
 */
export async function relayActivity(ctx: OperatorContext, options: RelayActivityOptions): Promise<RelayActivity> {
  const scanLimit = positiveInteger(options.scanLimit ?? 10_000, "scanLimit");
  const recentErrors = positiveInteger(options.recentErrors ?? 10, "recentErrors");
  const now = ctx.clock.now();
  const read = (sql: string, params: unknown[]) =>
    ctx.onPool("relayActivity", (pool) => runStatement(pool, sql, params)).then(({ rows }) => rows);
  const [fences, leases, published, errors] = await Promise.all([
    read(ctx.sql.activityFences, [relayActivityMaxLocks]),
    read(ctx.sql.activityLeases, [now, scanLimit]),
    read(ctx.sql.activityPublished, [scanLimit]),
    read(ctx.sql.activityErrors, [scanLimit, recentErrors, recentErrors]),
  ]);
  const lastPublished = published[0]?.settled_at;
  return {
    scanned: leases.reduce((sum, row) => sum + num(row.n), 0),
    fences: fences.map((row) => ({ lock: text(row.lock_name), token: BigInt(text(row.token)) })),
    claimers: claimersByRelay(
      leases
        .filter((row) => row.claimed_by !== null)
        .map((row) => ({
          claimer: text(row.claimed_by),
          inFlight: num(row.n),
          leaseUntil: new Date(num(row.until)),
        })),
    ),
    lastPublishedAt: lastPublished === undefined || lastPublished === null ? null : new Date(num(lastPublished)),
    recentErrors: errors
      .filter((row) => row.last_error !== null)
      .map(
        (row): RecentError => ({
          id: String(row.id),
          key: nullableText(row.entry_key),
          topic: text(row.topic),
          error: text(row.last_error),
          attempts: num(row.attempts),
          at: new Date(num(row.at)),
          dead: num(row.status) === 2,
        }),
      )
      .sort(newestErrorFirst)
      .slice(0, recentErrors),
  };
}

export async function stats(ctx: OperatorContext): Promise<StoreStats> {
  const {
    rows: [row],
  } = await ctx.onPool("stats", (pool) => runStatement(pool, ctx.sql.stats, [ctx.clock.now()]));
  return {
    pending: Number(row?.pending ?? 0),
    inFlight: Number(row?.in_flight ?? 0),
    dead: Number(row?.dead ?? 0),
    oldestPendingAt: row?.oldest === null || row?.oldest === undefined ? null : new Date(Number(row.oldest)),
  };
}
