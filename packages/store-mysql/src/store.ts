import { createHash } from "node:crypto";
import {
  type ClaimRequest,
  type Clock,
  type DeadLetterItem,
  type EntryLimits,
  type Fence,
  type ListDeadOptions,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  type OutboxStore,
  type PurgeRequest,
  prepareMessages,
  type RetryItem,
  type SettleContext,
  type StoreCapabilities,
  type StoreStats,
  systemClock,
  type Unsubscribe,
  WakeUpListeners,
} from "@outbox/core";
import { closedError, isConnectionError, isLockConflict, storeError } from "./errors.js";
import { type MySqlQueryable, type Row, runStatement } from "./queryable.js";
import { indexNames, resolveNames, type SchemaNames, type SchemaOptions } from "./schema.js";

/** A connection borrowed from the pool (mysql2/promise `PoolConnection`). */
export interface MySqlPoolConnectionLike extends MySqlQueryable {
  release(): void;
  /** Closes the connection and drops it from the pool (used after a connection error). */
  destroy?(): void;
}

/** The parts of a mysql2/promise `Pool` the store uses (structural: no dependency on mysql2). */
export interface MySqlPoolLike extends MySqlQueryable {
  getConnection(): Promise<MySqlPoolConnectionLike>;
}

export interface MySqlStoreOptions extends SchemaOptions {
  /** A mysql2/promise `Pool`: every relay-side statement runs on it. */
  pool: MySqlPoolLike;
  clock?: Clock;
  /** Passed to `prepareMessages`; topic and key may not exceed 1024 characters (the columns). */
  limits?: Partial<EntryLimits>;
  /**
   * An enqueue splits its rows into INSERT statements of at most about this many bytes of SQL
   * text (payloads travel hex-encoded, twice their size). Keep it well under the server's
   * `max_allowed_packet` (16 MiB on MariaDB, 64 MiB on MySQL 8.0). Default 4 MiB. A single
   * entry larger than this goes in a statement of its own.
   */
  maxStatementBytes?: number;
  /**
   * In-process wake-up hints (there is no LISTEN/NOTIFY): `subscribe()` listeners hear about
   * commits made through `store.transaction()`, `notifyCommitted()` calls, dead letters and
   * requeues in this process. Default "local". `false` when your application commits elsewhere
   * and will not call `notifyCommitted()`: the store then declares `wakeUps: false` and relays
   * rely on polling alone.
   */
  wakeUps?: "local" | false;
  /** Runs of a unit of work after an InnoDB deadlock (1213) or lock-wait timeout (1205). Default 8. */
  lockRetries?: number;
  /**
   * Errors nobody awaits (a wake-up listener throwing). Default: console.warn.
   */
  onError?: (error: OutboxError) => void;
}

/**
 * A claim first looks for key heads among the oldest `limit x this` pending entries; only when
 * that window is full and holds fewer than `limit` claimable entries does it look past it.
 */
const claimWindowFactor = 4;
/** Pages a claim reads while they keep yielding candidates that concurrent claims took first. */
const maxPages = 8;
/** Attempts of a statement whose connection failed before it could have committed. */
const connectionRetries = 3;
const idPattern = /^[0-9]{1,19}$/;
const maxBigint = 9223372036854775807n;
/** DECIMAL(65,0). */
const maxTokenDigits = 65;
const maxColumnChars = 1024;
const maxLockNameChars = 255;
/** TEXT holds 65,535 bytes; a UTF-16 unit is at most 3 UTF-8 bytes. */
const maxErrorChars = 16_000;
const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** A text value as UTF-8 bytes, re-read as utf8mb4 by the server: immune to the connection's charset. */
const TXT = "CONVERT(? USING utf8mb4) COLLATE utf8mb4_bin";

/** The state a claim decides on, read from the window, the fallback scans or the locked rows. */
interface StateRow {
  id: string;
  n: bigint;
  key: string | null;
  availableAt: number;
  leaseUntil: number | null;
  leaseLock: string | null;
  leaseToken: bigint | null;
}

function positiveInteger(value: unknown, name: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

/** Keeps well-formed ids (bigint text); others cannot name an entry and are ignored. */
function validIds(ids: readonly string[]): string[] {
  return ids.filter((id) => typeof id === "string" && idPattern.test(id) && BigInt(id) <= maxBigint);
}

function bytes(text: string): Buffer {
  return Buffer.from(utf8.encode(text.toWellFormed()));
}

function nullableBytes(text: string | null): Buffer | null {
  return text === null ? null : bytes(text);
}

function toBuffer(value: Uint8Array): Buffer {
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

function text(value: unknown): string {
  if (value instanceof Uint8Array) return utf8Decoder.decode(value);
  return String(value);
}

function nullableText(value: unknown): string | null {
  return value === null || value === undefined ? null : text(value);
}

function num(value: unknown): number {
  return Number(value);
}

function nullableNum(value: unknown): number | null {
  return value === null || value === undefined ? null : Number(value);
}

function hashHex(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("hex");
  return String(value);
}

/** First 16 bytes of SHA-256 over the key's UTF-8 bytes: the key's index column. */
export function keyHash(key: string): Buffer {
  return createHash("sha256").update(utf8.encode(key)).digest().subarray(0, 16);
}

function cleanError(error: unknown): string {
  const message = String(error);
  return message.length > maxErrorChars ? `${message.slice(0, maxErrorChars - 1)}…` : message;
}

function placeholders(count: number): string {
  return Array.from({ length: count }, () => "?").join(", ");
}

function checkFence(fence: Fence | undefined): void {
  if (!fence) return;
  if (typeof fence.lock !== "string" || fence.lock.length === 0 || fence.lock.length > maxLockNameChars) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `fence.lock must be a non-empty string of at most ${maxLockNameChars} characters`,
    );
  }
  if (typeof fence.token !== "bigint" || fence.token.toString().replace("-", "").length > maxTokenDigits) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `fence.token must be a bigint of at most 65 digits`);
  }
}

function checkClaimer(claimer: unknown): string {
  if (typeof claimer !== "string" || claimer.length === 0 || claimer.length > maxColumnChars) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `claimer must be a non-empty string of at most ${maxColumnChars} characters`,
    );
  }
  return claimer;
}

function stateOf(row: Row): StateRow {
  const token = row.lease_token;
  return {
    id: String(row.id),
    n: BigInt(String(row.id)),
    key: hashHex(row.key_hash),
    availableAt: num(row.available_at),
    leaseUntil: nullableNum(row.lease_until),
    leaseLock: nullableText(row.lease_lock),
    leaseToken: token === null || token === undefined ? null : BigInt(String(token)),
  };
}

function byId(a: { n: bigint }, b: { n: bigint }): number {
  return a.n < b.n ? -1 : a.n > b.n ? 1 : 0;
}

/** Thrown inside a unit of work to carry "the transaction never reached COMMIT" to the retry loop. */
class Uncommitted extends Error {
  readonly inner: unknown;
  constructor(inner: unknown) {
    super("uncommitted");
    this.inner = inner;
  }
}

/**
 * The MySQL / MariaDB outbox store. `enqueue` takes any MySqlQueryable inside the caller's
 * transaction; everything else runs on the store's own `pool`.
 */
export class MySqlStore implements OutboxStore<MySqlQueryable> {
  readonly capabilities: StoreCapabilities;
  readonly names: SchemaNames;
  readonly #pool: MySqlPoolLike;
  readonly #clock: Clock;
  readonly #limits: Partial<EntryLimits> | undefined;
  readonly #maxStatementBytes: number;
  readonly #lockRetries: number;
  readonly #onError: (error: OutboxError) => void;
  readonly #subscribers: WakeUpListeners;
  readonly #sql: ReturnType<typeof buildStatements>;
  #closed = false;
  /** Lock conflicts the store absorbed by running the unit again (for tests and diagnostics). */
  lockConflictsRetried = 0;

  constructor(options: MySqlStoreOptions) {
    if (
      !options?.pool ||
      typeof options.pool.getConnection !== "function" ||
      typeof options.pool.query !== "function"
    ) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        "createMySqlStore needs `pool`: a mysql2/promise Pool (query() and getConnection())",
      );
    }
    this.names = resolveNames(options);
    this.#pool = options.pool;
    this.#clock = options.clock ?? systemClock;
    this.#limits = options.limits;
    for (const field of ["maxTopicLength", "maxKeyLength"] as const) {
      const value = options.limits?.[field];
      if (value !== undefined && value > maxColumnChars) {
        throw new OutboxError(
          OutboxErrorCode.InvalidOptions,
          `limits.${field} may be at most ${maxColumnChars} (the column is VARCHAR(${maxColumnChars}))`,
        );
      }
    }
    this.#maxStatementBytes = positiveInteger(options.maxStatementBytes ?? 4 * 1024 * 1024, "maxStatementBytes");
    this.#lockRetries = positiveInteger(options.lockRetries ?? 8, "lockRetries");
    this.#onError =
      options.onError ?? ((error) => console.warn(`[@outbox/store-mysql ${this.names.qualifiedTable}]`, error));
    this.#subscribers = new WakeUpListeners({ onError: this.#onError });
    this.#sql = buildStatements(this.names);
    this.capabilities = { wakeUps: options.wakeUps !== false, transactions: true };
  }

  /**
   * Inserts the entries on `tx`, the connection of your open transaction. Returns their ids in
   * message order. Rows go in multi-row INSERTs (split by `maxStatementBytes`); a single row's id
   * is the driver's insert id, several rows' ids are read back on `tx` by a one-off marker (no
   * assumption about how InnoDB allocates AUTO_INCREMENT values, e.g. with an
   * `auto_increment_increment` > 1 as on Galera).
   */
  async enqueue(tx: MySqlQueryable, messages: OutboxMessage | readonly OutboxMessage[]): Promise<string[]> {
    this.#assertOpen();
    if (!tx || typeof tx.query !== "function") {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        "enqueue needs the connection of your transaction (a mysql2/promise PoolConnection) or a from*() adapter",
      );
    }
    const now = this.#clock.now();
    const prepared = prepareMessages(messages, { now, limits: this.#limits });
    if (prepared.length === 0) return [];
    const ids: string[] = [];
    let chunk: unknown[][] = [];
    let chunkBytes = 0;
    const flush = async () => {
      if (chunk.length === 0) return;
      const rows = chunk;
      chunk = [];
      chunkBytes = 0;
      // Multi-row INSERTs carry a one-off marker in claimed_by (overwritten by the first claim),
      // and their ids are read back by it: nothing assumes how InnoDB allocated them.
      const marker = rows.length > 1 ? `enqueue:${globalThis.crypto.randomUUID()}` : null;
      for (const row of rows) row[8] = marker === null ? null : bytes(marker);
      try {
        const result = await runStatement(tx, this.#sql.insert(rows.length), rows.flat());
        if (result.affectedRows !== undefined && result.affectedRows !== rows.length) {
          throw new OutboxError(
            OutboxErrorCode.StoreUnavailable,
            `enqueue inserted ${result.affectedRows} rows for ${rows.length} messages`,
          );
        }
        if (marker === null && result.insertId !== undefined) {
          ids.push(result.insertId.toString());
          return;
        }
        const found =
          marker === null
            ? (await runStatement(tx, "SELECT CAST(LAST_INSERT_ID() AS CHAR) AS id")).rows
            : (await runStatement(tx, this.#sql.insertedIds, [bytes(marker)])).rows;
        if (found.length !== rows.length) {
          throw new OutboxError(
            OutboxErrorCode.StoreUnavailable,
            `enqueue found ${found.length} ids for ${rows.length} inserted rows`,
          );
        }
        for (const row of found) ids.push(String(row.id));
      } catch (error) {
        throw storeError("enqueue", error);
      }
    };
    for (const m of prepared) {
      const headers = Buffer.from(utf8.encode(JSON.stringify(m.headers)));
      const size =
        2 * (m.payload.byteLength + headers.byteLength) +
        6 * (m.topic.length + (m.key?.length ?? 0) + (m.idempotencyKey?.length ?? 0)) +
        160;
      if (chunk.length > 0 && (chunkBytes + size > this.#maxStatementBytes || chunk.length >= 2_000)) await flush();
      chunk.push([
        bytes(m.topic),
        nullableBytes(m.key),
        m.key === null ? null : keyHash(m.key),
        toBuffer(m.payload),
        headers,
        nullableBytes(m.idempotencyKey),
        now,
        m.availableAt.getTime(),
        null,
      ]);
      chunkBytes += size;
    }
    await flush();
    return ids;
  }

  /**
   * Claims key runs, oldest first (see the README for the plan):
   * 1. Window: the oldest `4 x limit` pending entries, read without locks, walked in id order. A
   *    key's first entry in the window is its head (every lower pending id is in the window too);
   *    a claimable head opens a run, which goes on while its entries are claimable.
   * 2. Only when the window is full and gave fewer than `limit`: a loose index scan over
   *    (status, key_hash, id) finds the heads of the keys past the window, the keyless index the
   *    keyless entries past it, and one bounded range scan per key the runs' continuations.
   * 3. In a short READ COMMITTED transaction: the fence upsert (when fenced), the chosen rows
   *    `FOR UPDATE SKIP LOCKED`, re-checked under the lock (a head that is gone, locked or no
   *    longer claimable drops its whole run; a successor ends its run), the UPDATE, COMMIT.
   */
  async claim(request: ClaimRequest): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const limit = positiveInteger(request.limit, "limit");
    const leaseMs = positiveInteger(request.leaseMs, "leaseMs");
    const claimer = checkClaimer(request.claimer);
    const fence = request.fence;
    checkFence(fence);
    const now = this.#clock.now();
    const claimable = (row: StateRow) =>
      row.availableAt <= now &&
      (row.leaseUntil === null ||
        row.leaseUntil <= now ||
        (fence !== undefined &&
          row.leaseLock === fence.lock &&
          row.leaseToken !== null &&
          row.leaseToken < fence.token));
    const claimableParams = [now, now, fence ? bytes(fence.lock) : null, fence ? fence.token.toString() : null];
    const leaseUntil = now + leaseMs;
    return this.#withRetries("claim", false, () =>
      this.#transaction(async (conn) => {
        if (fence) await this.#fence(conn, "claim", fence);
        const scan = new CandidateScan(conn, this.#sql, limit, claimable, claimableParams);
        // Lock candidates in slices of what is still missing: rows another claim holds are
        // skipped (ending their key's run) and the next candidates take their place, so
        // concurrent claimers spread over the backlog like PostgreSQL's SKIP LOCKED scan does.
        const done = new Set<string>();
        const chosen: Row[] = [];
        let queue: StateRow[] = [];
        while (chosen.length < limit) {
          if (queue.length === 0) {
            const more = await scan.next(limit - chosen.length);
            if (more === null) break;
            queue = more;
            continue;
          }
          const slice: StateRow[] = [];
          while (slice.length < limit - chosen.length && queue.length > 0) {
            const candidate = queue.shift() as StateRow;
            if (candidate.key === null || !done.has(candidate.key)) slice.push(candidate);
          }
          if (slice.length === 0) continue;
          const { rows } = await runStatement(
            conn,
            this.#sql.lockRows(slice.length),
            slice.map((c) => c.id),
          );
          const locked = new Map<string, Row>();
          for (const row of rows) locked.set(String(row.id), row);
          for (const candidate of slice) {
            if (candidate.key !== null && done.has(candidate.key)) continue;
            const row = locked.get(candidate.id);
            if (!row || Number(row.status) !== 0 || !claimable(stateOf(row))) {
              if (candidate.key !== null) done.add(candidate.key);
              continue;
            }
            chosen.push(row);
          }
        }
        if (chosen.length === 0) return [];
        await runStatement(conn, this.#sql.lease(chosen.length), [
          bytes(claimer),
          leaseUntil,
          fence ? bytes(fence.lock) : null,
          fence ? fence.token.toString() : null,
          ...chosen.map((row) => String(row.id)),
        ]);
        return chosen.map((row) => toEntry(row, Number(row.attempts) + 1));
      }),
    );
  }

  async ack(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    checkFence(context.fence);
    const valid = validIds(ids);
    if (valid.length === 0 && !context.fence) return;
    await this.#settle("ack", context.fence, valid.length === 0 ? null : this.#sql.ack(valid.length), [
      this.#clock.now(),
      ...valid,
    ]);
  }

  async retry(items: readonly RetryItem[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    checkFence(context.fence);
    const claimer = checkClaimer(context.claimer);
    const valid = items.filter((item) => validIds([item.id]).length === 1);
    for (const item of valid) {
      if (!(item.availableAt instanceof Date) || Number.isNaN(item.availableAt.getTime())) {
        throw new OutboxError(OutboxErrorCode.InvalidOptions, `retry of ${item.id}: availableAt must be a valid Date`);
      }
    }
    if (valid.length === 0 && !context.fence) return;
    await this.#settle("retry", context.fence, valid.length === 0 ? null : this.#sql.retry(valid.length), [
      ...valid.flatMap((item) => [item.id, bytes(cleanError(item.error))]),
      ...valid.flatMap((item) => [item.id, item.availableAt.getTime()]),
      ...valid.map((item) => item.id),
      bytes(claimer),
    ]);
  }

  async deadLetter(items: readonly DeadLetterItem[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    checkFence(context.fence);
    const claimer = checkClaimer(context.claimer);
    const valid = items.filter((item) => validIds([item.id]).length === 1);
    if (valid.length === 0 && !context.fence) return;
    const moved = await this.#settle(
      "deadLetter",
      context.fence,
      valid.length === 0 ? null : this.#sql.deadLetter(valid.length),
      [
        ...valid.flatMap((item) => [item.id, bytes(cleanError(item.error))]),
        this.#clock.now(),
        ...valid.map((item) => item.id),
        bytes(claimer),
      ],
    );
    // A dead entry unblocks the entries queued behind it on its key.
    if (moved > 0) this.#wake();
  }

  async release(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    checkFence(context.fence);
    const claimer = checkClaimer(context.claimer);
    const valid = validIds(ids);
    if (valid.length === 0 && !context.fence) return;
    await this.#settle("release", context.fence, valid.length === 0 ? null : this.#sql.release(valid.length), [
      ...valid,
      bytes(claimer),
    ]);
  }

  async listDead(options: ListDeadOptions = {}): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const limit = positiveInteger(options.limit ?? 100, "limit");
    if (options.after !== undefined && validIds([options.after]).length === 0) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        `listDead: after must be an entry id, got ${JSON.stringify(options.after)}`,
      );
    }
    const { rows } = await this.#withRetries("listDead", true, () =>
      runStatement(this.#pool, this.#sql.listDead, [options.after ?? "0", limit]),
    );
    return rows.map((row) => toEntry(row, Number(row.attempts)));
  }

  async dropDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    const valid = validIds(ids);
    if (valid.length === 0) return 0;
    const result = await this.#withRetries("dropDead", true, () =>
      runStatement(this.#pool, this.#sql.dropDead(valid.length), valid),
    );
    return result.affectedRows ?? 0;
  }

  async requeueDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    const valid = validIds(ids);
    if (valid.length === 0) return 0;
    const result = await this.#withRetries("requeueDead", true, () =>
      runStatement(this.#pool, this.#sql.requeueDead(valid.length), [this.#clock.now(), ...valid]),
    );
    const moved = result.affectedRows ?? 0;
    if (moved > 0) this.#wake();
    return moved;
  }

  async purge(request: PurgeRequest): Promise<number> {
    this.#assertOpen();
    if (!(request.olderThan instanceof Date) || Number.isNaN(request.olderThan.getTime())) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "purge needs olderThan as a valid Date");
    }
    const batchSize = positiveInteger(request.batchSize ?? 1000, "batchSize");
    const cutoff = request.olderThan.getTime();
    let total = 0;
    for (;;) {
      this.#assertOpen();
      // Ids first (no locks), then a DELETE by primary key that re-checks: no gap locks, no
      // long transaction, never a pending entry.
      const { rows } = await this.#withRetries("purge", true, () =>
        runStatement(this.#pool, this.#sql.purgeIds, [cutoff, batchSize]),
      );
      if (rows.length === 0) return total;
      const ids = rows.map((row) => String(row.id));
      const result = await this.#withRetries("purge", true, () =>
        runStatement(this.#pool, this.#sql.purge(ids.length), [...ids, cutoff]),
      );
      total += result.affectedRows ?? 0;
      if (rows.length < batchSize) return total;
    }
  }

  async stats(): Promise<StoreStats> {
    this.#assertOpen();
    const {
      rows: [row],
    } = await this.#withRetries("stats", true, () => runStatement(this.#pool, this.#sql.stats, [this.#clock.now()]));
    return {
      pending: Number(row?.pending ?? 0),
      inFlight: Number(row?.in_flight ?? 0),
      dead: Number(row?.dead ?? 0),
      oldestPendingAt: row?.oldest === null || row?.oldest === undefined ? null : new Date(Number(row.oldest)),
    };
  }

  /**
   * In-process wake-up hints. MySQL has no LISTEN/NOTIFY: hints come after commits this store
   * sees, i.e. `transaction()` commits that enqueued, `notifyCommitted()` calls, dead letters and
   * requeues. Other processes' commits are found by polling.
   */
  async subscribe(listener: () => void): Promise<Unsubscribe> {
    this.#assertOpen();
    if (!this.capabilities.wakeUps) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "this store was created with wakeUps: false");
    }
    return this.#subscribers.subscribe(listener);
  }

  /**
   * Tells this process's relays that entries were just committed (call it after your own COMMIT
   * when you did not use `transaction()`): they claim at once instead of at their next poll.
   */
  notifyCommitted(): void {
    this.#wake();
  }

  /**
   * Runs `work` in a transaction on a connection of the store's pool: COMMIT when it resolves,
   * ROLLBACK when it throws. After a commit that enqueued, this process's relays are woken.
   */
  async transaction<T>(work: (tx: MySqlPoolConnectionLike) => Promise<T>): Promise<T> {
    this.#assertOpen();
    let conn: MySqlPoolConnectionLike;
    try {
      conn = await this.#pool.getConnection();
    } catch (error) {
      throw storeError("transaction", error);
    }
    let broken = false;
    try {
      await runStatement(conn, "START TRANSACTION");
      const result = await work(conn);
      await runStatement(conn, "COMMIT");
      this.#wake();
      return result;
    } catch (error) {
      if (isConnectionError(error)) broken = true;
      else
        await runStatement(conn, "ROLLBACK").catch(() => {
          broken = true;
        });
      throw error;
    } finally {
      if (broken && conn.destroy) conn.destroy();
      else conn.release();
    }
  }

  /** Every later call fails with OUTBOX_CLOSED. Does not end the pool: it is yours. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#subscribers.clear();
  }

  /** One settle: a single autocommit statement, or with a fence the fence check and it in one transaction. */
  async #settle(operation: string, fence: Fence | undefined, sql: string | null, params: unknown[]): Promise<number> {
    if (!fence) {
      if (sql === null) return 0;
      const result = await this.#withRetries(operation, true, () => runStatement(this.#pool, sql, params));
      return result.affectedRows ?? 0;
    }
    return this.#withRetries(operation, true, () =>
      this.#transaction(async (conn) => {
        await this.#fence(conn, operation, fence);
        if (sql === null) return 0;
        return (await runStatement(conn, sql, params)).affectedRows ?? 0;
      }),
    );
  }

  /**
   * Records the fence's token (keeping the greater) and refuses an older one, inside the caller's
   * transaction: the fence row stays locked until COMMIT, so nothing with an older token can
   * commit after a newer one did. The refusal reports the newest token read under that lock.
   */
  async #fence(conn: MySqlQueryable, operation: string, fence: Fence): Promise<void> {
    const token = fence.token.toString();
    const lock = bytes(fence.lock);
    await runStatement(conn, this.#sql.fenceUpsert, [lock, token, token]);
    const [row] = (await runStatement(conn, this.#sql.fenceRead, [lock])).rows;
    const newest = row?.token === undefined || row.token === null ? null : BigInt(String(row.token));
    if (newest === null || newest > fence.token) {
      throw new OutboxError(
        OutboxErrorCode.Fenced,
        `${operation} refused: fencing token ${fence.token} for "${fence.lock}" is older than ${String(newest ?? "the newest seen")}`,
        {
          details: { lock: fence.lock, token: fence.token.toString(), newest: newest === null ? null : String(newest) },
        },
      );
    }
  }

  /**
   * A short READ COMMITTED transaction on a pooled connection. A connection error before COMMIT
   * was sent is tagged as uncommitted (the server rolls back a dropped connection's transaction),
   * so even a claim may run again.
   */
  async #transaction<T>(work: (conn: MySqlQueryable) => Promise<T>): Promise<T> {
    let conn: MySqlPoolConnectionLike;
    try {
      conn = await this.#pool.getConnection();
    } catch (error) {
      throw new Uncommitted(error);
    }
    let committing = false;
    let broken = false;
    try {
      await runStatement(conn, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED");
      await runStatement(conn, "START TRANSACTION");
      const result = await work(conn);
      committing = true;
      await runStatement(conn, "COMMIT");
      return result;
    } catch (error) {
      if (isConnectionError(error)) broken = true;
      else
        await runStatement(conn, "ROLLBACK").catch(() => {
          broken = true;
        });
      throw committing || OutboxError.is(error) ? error : new Uncommitted(error);
    } finally {
      if (broken && conn.destroy) conn.destroy();
      else conn.release();
    }
  }

  /**
   * Runs a unit of work again after an InnoDB deadlock (1213) or lock-wait timeout (1205), with a
   * short jittered backoff: the unit was rolled back whole, so nothing is lost or doubled. A
   * connection error is retried when the unit is idempotent or never reached COMMIT.
   */
  async #withRetries<T>(operation: string, idempotent: boolean, unit: () => Promise<T>): Promise<T> {
    let lockAttempts = 0;
    let connectionAttempts = 0;
    for (;;) {
      try {
        const result = await unit();
        if (this.#closed) throw closedError();
        return result;
      } catch (caught) {
        const uncommitted = caught instanceof Uncommitted;
        const error = uncommitted ? caught.inner : caught;
        if (this.#closed) throw closedError();
        if (OutboxError.is(error)) throw error;
        if (isLockConflict(error) && ++lockAttempts < this.#lockRetries) {
          this.lockConflictsRetried += 1;
          await new Promise((resolve) => setTimeout(resolve, Math.random() * 2 ** Math.min(lockAttempts, 6)));
          continue;
        }
        if (isConnectionError(error) && (idempotent || uncommitted) && ++connectionAttempts < connectionRetries) {
          continue;
        }
        throw storeError(operation, error);
      }
    }
  }

  #wake(): void {
    if (!this.#closed) this.#subscribers.wake();
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError();
  }
}

/**
 * Steps 1 and 2 of a claim: candidates in id order, runs included, read without locks.
 * `next()` gives the eligible entries of the next page of the oldest pending entries (`4 x
 * limit` each, at most 8 pages, while a claim is still missing entries); a page that is mostly
 * backlog blocked behind its keys' heads ends the paging. Then, once, the bounded scans past the
 * last page; then null.
 */
class CandidateScan {
  readonly #done = new Set<string>();
  readonly #open = new Set<string>();
  readonly #seen = new Set<string | null>();
  #edge: string | null = null;
  #pages = 0;
  #state: "pages" | "far" | "end" = "pages";

  readonly conn: MySqlQueryable;
  readonly sql: ReturnType<typeof buildStatements>;
  readonly limit: number;
  readonly claimable: (row: StateRow) => boolean;
  readonly claimableParams: unknown[];

  constructor(
    conn: MySqlQueryable,
    sql: ReturnType<typeof buildStatements>,
    limit: number,
    claimable: (row: StateRow) => boolean,
    claimableParams: unknown[],
  ) {
    this.conn = conn;
    this.sql = sql;
    this.limit = limit;
    this.claimable = claimable;
    this.claimableParams = claimableParams;
  }

  /** Rows skipped by the last walk because an earlier entry of their key blocks them. */
  #backlog = 0;

  #walk(list: readonly StateRow[]): StateRow[] {
    const out: StateRow[] = [];
    this.#backlog = 0;
    for (const row of list) {
      if (row.key !== null && this.#done.has(row.key)) {
        this.#backlog += 1;
        continue;
      }
      if (!this.claimable(row)) {
        if (row.key !== null) {
          this.#done.add(row.key);
          this.#open.delete(row.key);
        }
        continue;
      }
      if (row.key !== null) this.#open.add(row.key);
      out.push(row);
    }
    return out;
  }

  async next(missing: number): Promise<StateRow[] | null> {
    const page = this.limit * claimWindowFactor;
    if (this.#state === "pages") {
      const rows = (
        await runStatement(this.conn, this.#edge === null ? this.sql.window : this.sql.windowAfter, [
          ...(this.#edge === null ? [] : [this.#edge]),
          page,
        ])
      ).rows.map(stateOf);
      this.#pages += 1;
      for (const row of rows) this.#seen.add(row.key);
      if (rows.length > 0) this.#edge = (rows.at(-1) as StateRow).id;
      const out = this.#walk(rows);
      // A short page covered every pending entry. A page that is mostly backlog blocked behind
      // its keys' heads is where paging would start costing per backlog entry: look past it with
      // the bounded scans instead. (Leased entries themselves are in-flight work, bounded.)
      if (rows.length < page) this.#state = "end";
      else if (this.#backlog * 2 > rows.length || this.#pages >= maxPages) this.#state = "far";
      return out;
    }
    if (this.#state === "far") {
      this.#state = "end";
      return this.#far(missing);
    }
    return null;
  }

  /**
   * Past the pages (e.g. a hot key's backlog behind a leased head): the heads of the keys past
   * the edge by a loose index scan, the keyless entries past it, and one bounded range scan per
   * key for the runs. Bounded by `missing` and the number of distinct keys, never by the depth
   * of one key's backlog.
   */
  async #far(missing: number): Promise<StateRow[]> {
    const edge = this.#edge as string;
    const heads = (await runStatement(this.conn, this.sql.farHeads, [edge, ...this.claimableParams, missing])).rows.map(
      stateOf,
    );
    const runKeys = [...this.#open];
    for (const head of heads) {
      if (head.key !== null && !this.#seen.has(head.key) && !this.#done.has(head.key)) runKeys.push(head.key);
    }
    const keyless = await runStatement(this.conn, this.sql.farKeyless, [edge, ...this.claimableParams, missing]);
    const runs =
      runKeys.length === 0
        ? { rows: [] as Row[] }
        : await runStatement(
            this.conn,
            this.sql.runs(runKeys.length),
            runKeys.flatMap((key) => [Buffer.from(key, "hex"), edge, missing]),
          );
    return this.#walk([...keyless.rows, ...runs.rows].map(stateOf).sort(byId));
  }
}

function toEntry(row: Row, attempts: number): OutboxEntry {
  const id = String(row.id);
  const payload = row.payload as Uint8Array;
  return {
    id,
    topic: text(row.topic),
    key: nullableText(row.entry_key),
    payload: new Uint8Array(payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.byteLength)),
    headers: JSON.parse(text(row.headers)) as Record<string, string>,
    idempotencyKey: nullableText(row.idempotency_key) ?? id,
    createdAt: new Date(num(row.created_at)),
    availableAt: new Date(num(row.available_at)),
    attempts,
    lastError: nullableText(row.last_error),
  };
}

/** Every statement the store runs, built once per table (identifiers are validated and quoted). */
function buildStatements(n: SchemaNames) {
  const t = n.qualifiedTable;
  const state = (a: string) => `CAST(${a}.id AS CHAR) AS id, ${a}.key_hash, ${a}.available_at, ${a}.lease_until,
    CAST(${a}.lease_lock AS BINARY) AS lease_lock, CAST(${a}.lease_token AS CHAR) AS lease_token`;
  // Columns are always qualified: MySQL resolves an unqualified ORDER BY id to the text alias.
  const entry = `CAST(o.id AS CHAR) AS id, CAST(o.topic AS BINARY) AS topic, CAST(o.entry_key AS BINARY) AS entry_key,
    o.key_hash, o.payload, o.headers, CAST(o.idempotency_key AS BINARY) AS idempotency_key, o.created_at,
    o.available_at, o.status, o.attempts, CAST(o.last_error AS BINARY) AS last_error, o.lease_until,
    CAST(o.lease_lock AS BINARY) AS lease_lock, CAST(o.lease_token AS CHAR) AS lease_token`;
  const columns =
    "(topic, entry_key, key_hash, payload, headers, idempotency_key, created_at, available_at, claimed_by)";
  const valueRow = `(${TXT}, ${TXT}, ?, ?, ?, ${TXT}, ?, ?, ${TXT})`;
  // Params: now, now, fence lock (NULL without a fence), fence token (NULL without a fence).
  const claimableSql = (a: string) => `${a}.available_at <= ? AND (${a}.lease_until IS NULL OR ${a}.lease_until <= ?
    OR (${a}.lease_lock = ${TXT} AND ${a}.lease_token < CAST(? AS DECIMAL(65,0))))`;
  const inList = (count: number) => `(${placeholders(count)})`;
  const caseById = (count: number, value: string) =>
    `CASE id ${Array.from({ length: count }, () => `WHEN ? THEN ${value}`).join(" ")} END`;

  return {
    insert: (count: number) =>
      `INSERT INTO ${t} ${columns} VALUES ${Array.from({ length: count }, () => valueRow).join(", ")}`,
    // LAST_INSERT_ID() is the statement's first id on this connection; the marker picks its rows.
    insertedIds: `SELECT CAST(o.id AS CHAR) AS id FROM ${t} o
      WHERE o.id >= LAST_INSERT_ID() AND o.claimed_by = ${TXT} ORDER BY o.id`,
    window: `SELECT ${state("o")} FROM ${t} o FORCE INDEX (${indexNames.pending})
      WHERE o.status = 0 ORDER BY o.id LIMIT ?`,
    // Loose index scan ("Using index for group-by"): one index dive per distinct pending key.
    windowAfter: `SELECT ${state("o")} FROM ${t} o FORCE INDEX (${indexNames.pending})
      WHERE o.status = 0 AND o.id > ? ORDER BY o.id LIMIT ?`,
    farHeads: `SELECT ${state("o")} FROM (
        SELECT MIN(id) AS id FROM ${t} FORCE INDEX (${indexNames.key}) WHERE status = 0 GROUP BY status, key_hash
      ) h JOIN ${t} o ON o.id = h.id
      WHERE o.key_hash IS NOT NULL AND o.id > ? AND ${claimableSql("o")} ORDER BY o.id LIMIT ?`,
    farKeyless: `SELECT ${state("o")} FROM ${t} o FORCE INDEX (${indexNames.key})
      WHERE o.status = 0 AND o.key_hash IS NULL AND o.id > ? AND ${claimableSql("o")} ORDER BY o.id LIMIT ?`,
    runs: (keys: number) =>
      Array.from(
        { length: keys },
        () => `(SELECT ${state("o")} FROM ${t} o FORCE INDEX (${indexNames.key})
          WHERE o.status = 0 AND o.key_hash = ? AND o.id > ? ORDER BY o.id LIMIT ?)`,
      ).join(" UNION ALL "),
    lockRows: (count: number) => `SELECT ${entry} FROM ${t} o WHERE o.id IN ${inList(count)} FOR UPDATE SKIP LOCKED`,
    lease: (count: number) => `UPDATE ${t} SET attempts = attempts + 1, claimed_by = ${TXT}, lease_until = ?,
      lease_lock = ${TXT}, lease_token = CAST(? AS DECIMAL(65,0)) WHERE id IN ${inList(count)}`,
    fenceUpsert: `INSERT INTO ${n.qualifiedFence} (lock_name, token) VALUES (${TXT}, CAST(? AS DECIMAL(65,0)))
      ON DUPLICATE KEY UPDATE token = GREATEST(token, CAST(? AS DECIMAL(65,0)))`,
    fenceRead: `SELECT CAST(token AS CHAR) AS token FROM ${n.qualifiedFence} WHERE lock_name = ${TXT}`,
    ack: (count: number) => `UPDATE ${t} SET status = 1, settled_at = ?, lease_until = NULL
      WHERE id IN ${inList(count)} AND status = 0`,
    retry: (count: number) => `UPDATE ${t} SET last_error = ${caseById(count, TXT)},
      available_at = ${caseById(count, "?")}, lease_until = NULL, claimed_by = NULL, lease_lock = NULL, lease_token = NULL
      WHERE id IN ${inList(count)} AND status = 0 AND claimed_by = ${TXT}`,
    deadLetter: (count: number) => `UPDATE ${t} SET status = 2, last_error = ${caseById(count, TXT)}, settled_at = ?,
      lease_until = NULL WHERE id IN ${inList(count)} AND status = 0 AND claimed_by = ${TXT}`,
    release: (count: number) => `UPDATE ${t} SET attempts = GREATEST(attempts - 1, 0), lease_until = NULL,
      claimed_by = NULL, lease_lock = NULL, lease_token = NULL
      WHERE id IN ${inList(count)} AND status = 0 AND claimed_by = ${TXT}`,
    listDead: `SELECT ${entry} FROM ${t} o FORCE INDEX (${indexNames.pending})
      WHERE o.status = 2 AND o.id > ? ORDER BY o.id LIMIT ?`,
    dropDead: (count: number) => `DELETE FROM ${t} WHERE id IN ${inList(count)} AND status = 2`,
    requeueDead: (count: number) => `UPDATE ${t} SET status = 0, attempts = 0, available_at = ?, claimed_by = NULL,
      lease_until = NULL, lease_lock = NULL, lease_token = NULL, settled_at = NULL
      WHERE id IN ${inList(count)} AND status = 2`,
    purgeIds: `SELECT CAST(o.id AS CHAR) AS id FROM ${t} o FORCE INDEX (${indexNames.settled})
      WHERE o.settled_at < ? ORDER BY o.settled_at LIMIT ?`,
    purge: (count: number) => `DELETE FROM ${t} WHERE id IN ${inList(count)} AND status <> 0 AND settled_at < ?`,
    stats: `SELECT
      (SELECT COUNT(*) FROM ${t} WHERE status = 0) AS pending,
      (SELECT COUNT(*) FROM ${t} WHERE status = 0 AND lease_until > ?) AS in_flight,
      (SELECT COUNT(*) FROM ${t} WHERE status = 2) AS dead,
      (SELECT MIN(created_at) FROM ${t} WHERE status = 0) AS oldest`,
  };
}

/** Creates the MySQL/MariaDB store. Run `migrate()` once first (or apply `sql/schema.sql`). */
export function createMySqlStore(options: MySqlStoreOptions): MySqlStore {
  return new MySqlStore(options);
}
