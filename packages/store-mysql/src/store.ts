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
  type PendingSummary,
  type PendingSummaryOptions,
  type PurgeRequest,
  prepareMessages,
  type RelayActivity,
  type RelayActivityOptions,
  type RetryItem,
  type SettleContext,
  type StoreCapabilities,
  type StoreStats,
  systemClock,
  type Unsubscribe,
  WakeUpListeners,
} from "@outbox/core";
import { type ClaimPass, claimableAt, claimCandidates, claimCursors, lockCandidates } from "./claim.js";
import { closedError, isStatementTimeout, storeError, timeoutError } from "./errors.js";
import * as operator from "./operator.js";
import {
  checkPool,
  type MySqlPoolConnectionLike,
  type MySqlPoolLike,
  onConnection,
  poolTransaction,
  type RetryPolicy,
  withRetries,
} from "./pool.js";
import { type MySqlQueryable, type Row, runStatement } from "./queryable.js";
import { resolveNames, type SchemaNames, type SchemaOptions } from "./schema.js";
import { buildStatements, type Dialect, type Statements, withTimeout } from "./statements.js";
import {
  bytes,
  checkClaimer,
  checkFence,
  cleanError,
  keyHash,
  maxColumnChars,
  nullableBytes,
  positiveInteger,
  toBuffer,
  toEntry,
  utf8,
  validIds,
} from "./values.js";

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
   * The server stops any statement of a claim that runs longer than this (MariaDB:
   * `SET STATEMENT max_statement_time`; MySQL 8: the `MAX_EXECUTION_TIME` hint, on the claim's
   * reads). The claim then fails with OUTBOX_STORE_UNAVAILABLE (`details.statementTimeoutMs`),
   * having leased nothing; the relay retries with backoff. Default 5,000 ms.
   */
  statementTimeoutMs?: number;
  /**
   * Errors nobody awaits (a wake-up listener throwing). Default: console.warn.
   */
  onError?: (error: OutboxError) => void;
}

const defaultStatementTimeoutMs = 5_000;

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
  readonly #onError: (error: OutboxError) => void;
  readonly #subscribers: WakeUpListeners;
  readonly #sql: Statements;
  readonly #statementTimeoutMs: number;
  readonly #retryPolicy: RetryPolicy;
  readonly #operator: operator.OperatorContext;
  /** The newest token this store recorded per lock name: a claim or settle with it only reads the fence row. */
  readonly #recorded = new Map<string, bigint>();
  #dialect: Promise<Dialect> | undefined;
  /** Where this store's next claim reads past its window: each claim moves them on, so every key gets its turn. */
  readonly #cursors = claimCursors();
  #closed = false;
  /** Lock conflicts the store absorbed by running the unit again (for tests and diagnostics). */
  lockConflictsRetried = 0;

  constructor(options: MySqlStoreOptions) {
    this.#pool = checkPool(options?.pool, "createMySqlStore");
    this.names = resolveNames(options);
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
    this.#retryPolicy = {
      lockRetries: positiveInteger(options.lockRetries ?? 8, "lockRetries"),
      isClosed: () => this.#closed,
      lockConflictRetried: () => {
        this.lockConflictsRetried += 1;
      },
    };
    this.#statementTimeoutMs = positiveInteger(
      options.statementTimeoutMs ?? defaultStatementTimeoutMs,
      "statementTimeoutMs",
    );
    this.#onError =
      options.onError ?? ((error) => console.warn(`[@outbox/store-mysql ${this.names.qualifiedTable}]`, error));
    this.#subscribers = new WakeUpListeners({ onError: this.#onError });
    this.#sql = buildStatements(this.names);
    this.#operator = {
      sql: this.#sql,
      clock: this.#clock,
      onPool: (operation, unit) => this.#withRetries(operation, true, () => unit(this.#pool)),
      assertOpen: () => this.#assertOpen(),
    };
    this.capabilities = { wakeUps: options.wakeUps !== false, transactions: true, deadLetterFilters: true };
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
   * Claims key runs, oldest first (see the README for the plan). Every read is an ordered range
   * scan with LIMIT or a lookup by primary key, so its cost is bounded by `limit` whatever the
   * optimizer's statistics say:
   * 1. Window: the oldest `max(4 x limit, 64)` pending entries, read without locks, walked in id
   *    order. A key's first entry in the window is its head; a claimable head opens a run, which
   *    goes on while its entries are claimable.
   * 2. Only when the window is full and gave fewer than `2 x limit` (say, a frozen relay's keys
   *    fill it): the heads of the keys in the next slab of the key index (`max(16 x limit, 4,096)`
   *    entries over 8 slices of key_hash, each from its own cursor) and the next keyless entries
   *    after another cursor; then one bounded range per key for the runs (32 keys at most). The
   *    cursors move on from claim to claim, so every key is visited in turn, and a deep key costs
   *    its slice one read per round.
   * 3. A short READ COMMITTED transaction: the first candidates no other claim holds, in id order
   *    (`ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED` by primary key), re-checked under the lock (a
   *    head that is skipped, gone or no longer claimable drops its whole run; a successor ends its
   *    run), then one UPDATE that also checks the fence (a consistent read of the fence row: no
   *    lock), COMMIT.
   * A fence token this store has not recorded yet is recorded first, in a statement of its own.
   * Each statement runs under `statementTimeoutMs`.
   */
  async claim(request: ClaimRequest): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const limit = positiveInteger(request.limit, "limit");
    const leaseMs = positiveInteger(request.leaseMs, "leaseMs");
    const claimer = checkClaimer(request.claimer);
    const fence = request.fence;
    checkFence(fence);
    const now = this.#clock.now();
    const claimable = claimableAt(now, fence);
    const claimableParams = [now, now, fence ? bytes(fence.lock) : null, fence ? fence.token.toString() : null];
    const dialect = await this.#dialectOf();
    const timeoutMs = this.#statementTimeoutMs;
    const read = (conn: MySqlQueryable, sql: string, params: unknown[]) =>
      runStatement(conn, withTimeout(dialect, timeoutMs, sql, "read"), params);
    const write = (conn: MySqlQueryable, sql: string, params: unknown[]) =>
      runStatement(conn, withTimeout(dialect, timeoutMs, sql, "write"), params);
    const pass: ClaimPass = { sql: this.#sql, limit, claimable, claimableParams, read, write };
    try {
      if (fence) await this.#recordFence("claim", fence, (sql, params) => write(this.#pool, sql, params));
      return await this.#withRetries("claim", false, () =>
        onConnection(this.#pool, async (conn, tx) => {
          const candidates = await claimCandidates(pass, conn, this.#cursors);
          let chosen: Row[] = [];
          if (candidates.length > 0) {
            await tx.begin();
            chosen = await lockCandidates(pass, conn, candidates);
          }
          if (chosen.length > 0) {
            const leased = await write(conn, this.#sql.lease(chosen.length, fence !== undefined), [
              bytes(claimer),
              now + leaseMs,
              fence ? bytes(fence.lock) : null,
              fence ? fence.token.toString() : null,
              ...chosen.map((row) => String(row.id)),
              ...(fence ? [bytes(fence.lock), fence.token.toString()] : []),
            ]);
            // The rows are locked by this transaction: only the fence check can make it lease fewer.
            if (fence && leased.affectedRows !== chosen.length) await this.#refuse(conn, "claim", fence, true);
          } else if (fence) {
            // Nothing to lease, but a claim with an older token is still refused.
            await this.#refuse(conn, "claim", fence, false);
          }
          await tx.commit();
          return chosen.map((row) => toEntry(row, Number(row.attempts) + 1));
        }),
      );
    } catch (error) {
      throw isStatementTimeout(error) ? timeoutError("claim", timeoutMs, error) : error;
    }
  }

  async ack(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    checkFence(context.fence);
    const valid = validIds(ids);
    if (valid.length === 0 && !context.fence) return;
    await this.#settle(
      "ack",
      context.fence,
      (fenced) => (valid.length === 0 ? null : this.#sql.ack(valid.length, fenced)),
      [this.#clock.now(), ...valid],
    );
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
    await this.#settle(
      "retry",
      context.fence,
      (fenced) => (valid.length === 0 ? null : this.#sql.retry(valid.length, fenced)),
      [
        ...valid.flatMap((item) => [item.id, bytes(cleanError(item.error))]),
        ...valid.flatMap((item) => [item.id, item.availableAt.getTime()]),
        ...valid.map((item) => item.id),
        bytes(claimer),
      ],
    );
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
      (fenced) => (valid.length === 0 ? null : this.#sql.deadLetter(valid.length, fenced)),
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
    await this.#settle(
      "release",
      context.fence,
      (fenced) => (valid.length === 0 ? null : this.#sql.release(valid.length, fenced)),
      [...valid, bytes(claimer)],
    );
  }

  async releaseClaimer(context: SettleContext): Promise<number> {
    this.#assertOpen();
    checkFence(context.fence);
    const claimer = checkClaimer(context.claimer);
    // Under the claim's read timeout: a claim that timed out is given back next, and what held
    // that claim up must not hold the relay in its release instead.
    const dialect = await this.#dialectOf();
    const timeoutMs = this.#statementTimeoutMs;
    const { rows } = await this.#withRetries("releaseClaimer", true, () =>
      runStatement(this.#pool, withTimeout(dialect, timeoutMs, this.#sql.heldBy, "read"), [bytes(claimer)]),
    ).catch((error: unknown) => {
      throw isStatementTimeout(error) ? timeoutError("releaseClaimer", timeoutMs, error) : error;
    });
    const held = rows.map((row) => String(row.id));
    if (held.length === 0 && !context.fence) return 0;
    // By id, as release: the rows' own claimed_by check keeps a row taken over since untouched.
    const released = await this.#settle(
      "releaseClaimer",
      context.fence,
      (fenced) => (held.length === 0 ? null : this.#sql.release(held.length, fenced)),
      [...held, bytes(claimer)],
    );
    if (released > 0) this.#wake();
    return released;
  }

  async listDead(options: ListDeadOptions = {}): Promise<OutboxEntry[]> {
    this.#assertOpen();
    return operator.listDead(this.#operator, options);
  }

  async dropDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    return operator.dropDead(this.#operator, ids);
  }

  async requeueDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    const moved = await operator.requeueDead(this.#operator, ids);
    if (moved > 0) this.#wake();
    return moved;
  }

  async purge(request: PurgeRequest): Promise<number> {
    this.#assertOpen();
    return operator.purge(this.#operator, request);
  }

  async pendingSummary(options: PendingSummaryOptions = {}): Promise<PendingSummary> {
    this.#assertOpen();
    return operator.pendingSummary(this.#operator, options);
  }

  async relayActivity(options: RelayActivityOptions = {}): Promise<RelayActivity> {
    this.#assertOpen();
    return operator.relayActivity(this.#operator, options);
  }

  async stats(): Promise<StoreStats> {
    this.#assertOpen();
    return operator.stats(this.#operator);
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
    const result = await poolTransaction(this.#pool, "transaction", work);
    this.#wake();
    return result;
  }

  /** Every later call fails with OUTBOX_CLOSED. Does not end the pool: it is yours. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#subscribers.clear();
  }

  /**
   * One settle. Without a fence: one autocommit statement. With a fence: the statement also
   * checks the fence (the token must be the newest recorded), as a consistent read of the fence
   * row: it runs as a one-statement READ COMMITTED transaction (`SET TRANSACTION` applies to the
   * next transaction only), so it takes no lock on the fence row, whatever the session's isolation
   * level. A settle that changed nothing reads the fence to tell "refused" from "already settled".
   */
  async #settle(
    operation: string,
    fence: Fence | undefined,
    sql: (fenced: boolean) => string | null,
    params: unknown[],
  ): Promise<number> {
    if (!fence) {
      const statement = sql(false);
      if (statement === null) return 0;
      const result = await this.#withRetries(operation, true, () => runStatement(this.#pool, statement, params));
      return result.affectedRows ?? 0;
    }
    await this.#recordFence(operation, fence, (statement, values) => runStatement(this.#pool, statement, values));
    const statement = sql(true);
    const changed =
      statement === null
        ? 0
        : await this.#withRetries(operation, true, () =>
            onConnection(this.#pool, async (conn) => {
              await runStatement(conn, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED");
              const result = await runStatement(conn, statement, [
                ...params,
                bytes(fence.lock),
                fence.token.toString(),
              ]);
              return result.affectedRows ?? 0;
            }),
          );
    if (changed === 0) {
      await this.#withRetries(operation, true, () => this.#refuse(this.#pool, operation, fence, false));
    }
    return changed;
  }

  /**
   * Records the fence's token (keeping the greater) when this store has not recorded it yet: the
   * only statement that writes the fence row, in a statement of its own (autocommit), so it holds
   * the row for that statement only. Refuses an older token, reporting the newest.
   */
  async #recordFence(
    operation: string,
    fence: Fence,
    run: (sql: string, params: unknown[]) => Promise<unknown>,
  ): Promise<void> {
    const known = this.#recorded.get(fence.lock);
    if (known !== undefined && known >= fence.token) return;
    const token = fence.token.toString();
    await this.#withRetries(operation, true, () => run(this.#sql.fenceUpsert, [bytes(fence.lock), token, token]));
    await this.#withRetries(operation, true, () => this.#refuse(this.#pool, operation, fence, false));
    const latest = this.#recorded.get(fence.lock);
    if (latest === undefined || latest < fence.token) this.#recorded.set(fence.lock, fence.token);
  }

  /**
   * Reads the newest token of the fence's lock (a consistent read, no lock) and throws
   * OUTBOX_FENCED when it is newer than the fence's. `refused`: the caller already knows its
   * statement was refused by the fence check.
   */
  async #refuse(conn: MySqlQueryable, operation: string, fence: Fence, refused: boolean): Promise<void> {
    const [row] = (await runStatement(conn, this.#sql.fenceRead, [bytes(fence.lock)])).rows;
    const newest = row?.token === undefined || row.token === null ? null : BigInt(String(row.token));
    if (newest !== null && newest <= fence.token) {
      if (!refused) return;
      throw new OutboxError(
        OutboxErrorCode.StoreUnavailable,
        `${operation}: the lease update changed fewer rows than were locked`,
        { details: { operation } },
      );
    }
    throw new OutboxError(
      OutboxErrorCode.Fenced,
      `${operation} refused: fencing token ${fence.token} for "${fence.lock}" is older than ${String(newest ?? "the newest seen")}`,
      {
        details: { lock: fence.lock, token: fence.token.toString(), newest: newest === null ? null : String(newest) },
      },
    );
  }

  /** MariaDB or MySQL: they spell a statement timeout differently. Asked once per store. */
  async #dialectOf(): Promise<Dialect> {
    if (this.#dialect === undefined) {
      const asked = this.#withRetries("claim", true, () => runStatement(this.#pool, "SELECT VERSION() AS v")).then(
        ({ rows }) => (/mariadb/i.test(String(rows[0]?.v)) ? "mariadb" : "mysql") as Dialect,
      );
      this.#dialect = asked;
      asked.catch(() => {
        if (this.#dialect === asked) this.#dialect = undefined;
      });
    }
    return this.#dialect;
  }

  #withRetries<T>(operation: string, idempotent: boolean, unit: () => Promise<T>): Promise<T> {
    return withRetries(this.#retryPolicy, operation, idempotent, unit);
  }

  #wake(): void {
    if (!this.#closed) this.#subscribers.wake();
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError();
  }
}

/** Creates the MySQL/MariaDB store. Run `migrate()` once first (or apply `sql/schema.sql`). */
export function createMySqlStore(options: MySqlStoreOptions): MySqlStore {
  return new MySqlStore(options);
}
