import { createHash } from "node:crypto";
import {
  type ClaimRequest,
  type Clock,
  claimersByRelay,
  type DeadLetterFilter,
  type DeadLetterItem,
  deadLetterFilter,
  type EntryLimits,
  type Fence,
  type ListDeadOptions,
  mostPendingFirst,
  newestErrorFirst,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  type OutboxStore,
  type PendingSummary,
  type PendingSummaryOptions,
  type PurgeRequest,
  prepareMessages,
  type RecentError,
  type RelayActivity,
  type RelayActivityOptions,
  type RetryItem,
  relayActivityMaxLocks,
  type SettleContext,
  type StoreCapabilities,
  type StoreStats,
  systemClock,
  type Unsubscribe,
  WakeUpListeners,
} from "@outbox/core";
import {
  closedError,
  isConnectionError,
  isLockConflict,
  isStatementTimeout,
  storeError,
  timeoutError,
} from "./errors.js";
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

/**
 * A claim's window of the oldest pending entries, and its read of keyless entries past it, are
 * `max(limit x this, minScan)` rows.
 */
const scanFactor = 4;
const minScan = 64;
/**
 * The slab of the key index a claim reads past a blocked window: `slabFactor x` the window, at
 * least `minSlab` index entries, read in `slices` ranges of key_hash (by its first byte), each
 * from its own cursor.
 */
const slabFactor = 4;
const minSlab = 4_096;
const slices = 8;
/** Keys whose runs a claim continues past its window (a UNION of one range scan per key). */
const maxRunKeys = 32;
/** Locking rounds of a claim (another goes on when skipped heads left it short). */
const maxLockRounds = 4;
const defaultStatementTimeoutMs = 5_000;
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
export const TXT = "CONVERT(? USING utf8mb4) COLLATE utf8mb4_bin";

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

export function bytes(text: string): Buffer {
  return Buffer.from(utf8.encode(text.toWellFormed()));
}

function nullableBytes(text: string | null): Buffer | null {
  return text === null ? null : bytes(text);
}

function toBuffer(value: Uint8Array): Buffer {
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

export function text(value: unknown): string {
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

/**
 * A LIKE pattern matching `text` anywhere, its wildcards taken literally. The escape is `!`: a
 * backslash in a literal means something else under NO_BACKSLASH_ESCAPES.
 */
function likeContains(text: string): string {
  return `%${text.replaceAll(/[!%_]/g, "!$&")}%`;
}

export function cleanError(error: unknown): string {
  const message = String(error);
  return message.length > maxErrorChars ? `${message.slice(0, maxErrorChars - 1)}…` : message;
}

function placeholders(count: number): string {
  return Array.from({ length: count }, () => "?").join(", ");
}

/** A key_hash's slice, by its first byte (SHA-256 spreads keys evenly over the slices). */
function sliceOf(hash: Uint8Array): number {
  return Math.floor((hash[0] ?? 0) / (256 / slices));
}

/** Below every key_hash of the slice: its first byte alone (a shorter binary string sorts first). */
function sliceStart(slice: number): Buffer {
  return Buffer.from([slice * (256 / slices)]);
}

/** Above every key_hash of the slice: the next slice's start, or 17 bytes of 0xff after the last. */
function sliceEnd(slice: number): Buffer {
  return slice + 1 < slices ? sliceStart(slice + 1) : Buffer.alloc(17, 0xff);
}

type Dialect = "mariadb" | "mysql";

/**
 * Gives a claim's statement the server-side timeout: MariaDB stops any statement
 * (`SET STATEMENT max_statement_time`, seconds); MySQL 8 only SELECTs that lock nothing
 * (`MAX_EXECUTION_TIME`, ms), the claim's reads (its writes go by primary key, and its locking
 * read skips locked rows instead of waiting).
 */
function withTimeout(dialect: Dialect, timeoutMs: number, sql: string, kind: "read" | "write"): string {
  if (dialect === "mariadb") return `SET STATEMENT max_statement_time = ${timeoutMs / 1000} FOR ${sql}`;
  return kind === "read" ? sql.replace("SELECT ", `SELECT /*+ MAX_EXECUTION_TIME(${timeoutMs}) */ `) : sql;
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
  readonly #statementTimeoutMs: number;
  /** The newest token this store recorded per lock name: a claim or settle with it only reads the fence row. */
  readonly #recorded = new Map<string, bigint>();
  #dialect: Promise<Dialect> | undefined;
  /** Where the next read of keyless entries past the window starts (an id; null: at the window's edge). */
  #keylessFrom: bigint | null = null;
  /** Per slice of key_hash, where the next read of the key index past the window starts. */
  #keysFrom: Buffer[] = Array.from({ length: slices }, (_, slice) => sliceStart(slice));
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
    this.#lockRetries = positiveInteger(options.lockRetries ?? 8, "lockRetries");
    this.#statementTimeoutMs = positiveInteger(
      options.statementTimeoutMs ?? defaultStatementTimeoutMs,
      "statementTimeoutMs",
    );
    this.#onError =
      options.onError ?? ((error) => console.warn(`[@outbox/store-mysql ${this.names.qualifiedTable}]`, error));
    this.#subscribers = new WakeUpListeners({ onError: this.#onError });
    this.#sql = buildStatements(this.names);
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
    const claimable = (row: StateRow) =>
      row.availableAt <= now &&
      (row.leaseUntil === null ||
        row.leaseUntil <= now ||
        (fence !== undefined &&
          row.leaseLock === fence.lock &&
          row.leaseToken !== null &&
          row.leaseToken < fence.token));
    const claimableParams = [now, now, fence ? bytes(fence.lock) : null, fence ? fence.token.toString() : null];
    const dialect = await this.#dialectOf();
    const timeoutMs = this.#statementTimeoutMs;
    const read = (conn: MySqlQueryable, sql: string, params: unknown[]) =>
      runStatement(conn, withTimeout(dialect, timeoutMs, sql, "read"), params);
    const write = (conn: MySqlQueryable, sql: string, params: unknown[]) =>
      runStatement(conn, withTimeout(dialect, timeoutMs, sql, "write"), params);
    try {
      if (fence) await this.#recordFence("claim", fence, (sql, params) => write(this.#pool, sql, params));
      return await this.#withRetries("claim", false, () =>
        this.#onConnection(async (conn, tx) => {
          const candidates = await this.#candidates(conn, read, limit, claimable);
          const chosen: Row[] = [];
          if (candidates.length > 0) {
            await tx.begin();
            // Lock candidates in id order, skipping rows other claims hold, up to what is still
            // missing (one statement: concurrent claimers spread over the candidates as PostgreSQL's
            // SKIP LOCKED scan does). A head that is skipped, gone or no longer claimable ends its
            // key for this claim (a successor locked behind it is left unleased); another round
            // goes on after the last row locked while the claim is short.
            const done = new Set<string>();
            let from = 0;
            for (let round = 0; round < maxLockRounds && chosen.length < limit && from < candidates.length; round++) {
              const untried = candidates.slice(from).filter((c) => c.key === null || !done.has(c.key));
              if (untried.length === 0) break;
              const wanted = limit - chosen.length;
              const { rows } = await write(conn, this.#sql.lockRows(untried.length), [
                ...untried.map((c) => c.id),
                ...claimableParams,
                wanted,
              ]);
              const locked = new Map<string, Row>();
              for (const row of rows) locked.set(String(row.id), row);
              // A full answer tried the candidates up to its last row; a short one tried them all.
              const last = rows.length < wanted ? null : (rows.map(stateOf).sort(byId).at(-1) as StateRow).n;
              for (; from < candidates.length; from++) {
                const candidate = candidates[from] as StateRow;
                if (last !== null && candidate.n > last) break;
                if (candidate.key !== null && done.has(candidate.key)) continue;
                const row = locked.get(candidate.id);
                if (!row || Number(row.status) !== 0 || !claimable(stateOf(row))) {
                  if (candidate.key !== null) done.add(candidate.key);
                  continue;
                }
                chosen.push(row);
              }
            }
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

  /**
   * Steps 1 and 2 of a claim: candidates in id order, runs included, read without locks.
   */
  async #candidates(
    conn: MySqlQueryable,
    read: (conn: MySqlQueryable, sql: string, params: unknown[]) => Promise<{ rows: Row[] }>,
    limit: number,
    claimable: (row: StateRow) => boolean,
  ): Promise<StateRow[]> {
    const size = Math.max(limit * scanFactor, minScan);
    const window = (await read(conn, this.#sql.window, [size])).rows.map(stateOf);
    // Keys met in the window: their first entry there is their head (every lower pending id is
    // in the window too), so the window decides them. `ended`: their run is over.
    const met = new Set<string>();
    const ended = new Set<string>();
    const out: StateRow[] = [];
    for (const row of window) {
      if (row.key !== null) {
        if (ended.has(row.key)) continue;
        met.add(row.key);
      }
      if (claimable(row)) out.push(row);
      else if (row.key !== null) ended.add(row.key);
    }
    // A short window holds every pending entry. A full one that gave twice what the claim needs
    // is enough: the spare candidates take the place of those concurrent claims lock first.
    if (window.length < size || out.length >= 2 * limit) return out;

    // Past the window: the heads of the keys in the next slab of the key index, read in `slices`
    // ranges of key_hash from one cursor each (a deep key costs its slice's share of one slab at
    // most: the next read of that slice starts after it), and the next `size` keyless entries
    // after the window's edge or the keyless cursor.
    const edge = (window.at(-1) as StateRow).n;
    const keylessFrom = this.#keylessFrom !== null && this.#keylessFrom > edge ? this.#keylessFrom : edge;
    const perSlice = Math.ceil(Math.max(size * slabFactor, minSlab) / slices);
    const past = (
      await read(conn, this.#sql.pastWindow, [
        ...this.#keysFrom.flatMap((from, slice) => [from, sliceEnd(slice), perSlice]),
        keylessFrom.toString(),
        size,
      ])
    ).rows;
    const heads: StateRow[] = [];
    const keyless: StateRow[] = [];
    // Entries of each key in the slab: a key inside its slice's read has exactly these pending.
    const inSlab = new Map<string, number>();
    const bySlice: StateRow[][] = Array.from({ length: slices }, () => []);
    const sliceRead = new Array<number>(slices).fill(0);
    for (const row of past) {
      const state = stateOf(row);
      if (state.key === null) {
        keyless.push(state);
        continue;
      }
      heads.push(state);
      inSlab.set(state.key, Number(row.slab));
      const slice = sliceOf(row.key_hash as Uint8Array);
      bySlice[slice]?.push(state);
      sliceRead[slice] = (sliceRead[slice] ?? 0) + Number(row.slab);
    }
    // What the claim asks for from this read: the oldest of the new heads (keys the window did not
    // decide) and of the claimable keyless entries, up to `size` candidates with the window's
    // (more than it needs: the spares stand in for rows concurrent claims lock first).
    const need = Math.max(0, limit - out.length);
    const ask = Math.max(0, size - out.length);
    const candidate = (head: StateRow) => !met.has(head.key as string) && claimable(head);
    const found = [...heads.filter(candidate), ...keyless.filter(claimable)].sort(byId);
    const offered = found.slice(0, ask);
    const taken = new Set(found.slice(0, need).map((row) => row.id));
    const leftOut = (row: StateRow) => !taken.has(row.id);
    // The cursors move past everything the claim had room for: the next read of a slice (or of
    // the keyless entries) starts at its first candidate beyond that (the claim was full), else
    // after this read (the rest of a deep key is skipped), or over from the start when this read
    // came back short. The last key of a full slice may have more entries than the slab shows
    // (`cut`).
    const cut = new Set<string>();
    this.#keysFrom = this.#keysFrom.map((from, slice) => {
      const read = (bySlice[slice] ?? []).sort((a, b) => ((a.key as string) < (b.key as string) ? -1 : 1));
      const last = read.at(-1);
      const full = (sliceRead[slice] ?? 0) >= perSlice && last !== undefined;
      if (full) cut.add(last.key as string);
      const first = read.findIndex((head) => candidate(head) && leftOut(head));
      if (first > 0) return Buffer.from((read[first - 1] as StateRow).key as string, "hex");
      if (first === 0) return from;
      return full ? Buffer.from(last.key as string, "hex") : sliceStart(slice);
    });
    const firstKeyless = keyless.findIndex((row) => claimable(row) && leftOut(row));
    if (firstKeyless > 0) this.#keylessFrom = (keyless[firstKeyless - 1] as StateRow).n;
    else if (firstKeyless < 0) this.#keylessFrom = keyless.length === size ? (keyless.at(-1) as StateRow).n : null;

    const newHeads = offered.filter((row) => row.key !== null);
    // Runs past the edge, when the heads alone leave room: the successors of new heads that have
    // some (the slab shows it), then those of window runs still open at the edge; at most
    // `maxRunKeys` keys (one range scan each).
    const room = ask - offered.length;
    const runFrom = new Map<string, string>();
    for (const head of newHeads) {
      const key = head.key as string;
      if (runFrom.size < maxRunKeys && (cut.has(key) || (inSlab.get(key) ?? 0) > 1)) runFrom.set(key, head.id);
    }
    for (const row of out) {
      if (runFrom.size >= maxRunKeys) break;
      if (row.key !== null && !ended.has(row.key)) runFrom.set(row.key, edge.toString());
    }
    const share = Math.ceil(room / Math.max(1, runFrom.size));
    const runRows =
      room > 0 && runFrom.size > 0
        ? (
            await read(
              conn,
              this.#sql.runs(runFrom.size),
              [...runFrom].flatMap(([key, after]) => [Buffer.from(key, "hex"), after, share]),
            )
          ).rows.map(stateOf)
        : [];
    const more: StateRow[] = offered.filter((row) => row.key === null);
    const runs = [...newHeads, ...runRows].sort(byId);
    for (const row of runs) {
      const key = row.key as string;
      if (ended.has(key)) continue;
      if (claimable(row)) more.push(row);
      else ended.add(key);
    }
    return [...out, ...more].sort(byId);
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
    const { rows } = await this.#withRetries("listDead", true, () =>
      runStatement(this.#pool, this.#sql.listDead(filter), params),
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

  /**
   * The oldest `scanLimit` pending entries (default 10,000), read in id order through the
   * (status, id) index: bounded range scans however deep the backlog, in one statement (one
   * snapshot). Retry-waiting and hot keys are counted among them.
   */
  async pendingSummary(options: PendingSummaryOptions = {}): Promise<PendingSummary> {
    this.#assertOpen();
    const scanLimit = positiveInteger(options.scanLimit ?? 10_000, "scanLimit");
    const hotKeys = positiveInteger(options.hotKeys ?? 10, "hotKeys");
    const blockedKeys = positiveInteger(options.blockedKeys ?? 10, "blockedKeys");
    const now = this.#clock.now();
    const params = [now, now, scanLimit, scanLimit, hotKeys, scanLimit, now, now, blockedKeys];
    const { rows } = await this.#withRetries("pendingSummary", true, () =>
      runStatement(this.#pool, this.#sql.pendingSummary, params),
    );
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
  async relayActivity(options: RelayActivityOptions = {}): Promise<RelayActivity> {
    this.#assertOpen();
    const scanLimit = positiveInteger(options.scanLimit ?? 10_000, "scanLimit");
    const recentErrors = positiveInteger(options.recentErrors ?? 10, "recentErrors");
    const now = this.#clock.now();
    const read = (sql: string, params: unknown[]) =>
      this.#withRetries("relayActivity", true, () => runStatement(this.#pool, sql, params)).then(({ rows }) => rows);
    const [fences, leases, published, errors] = await Promise.all([
      read(this.#sql.activityFences, [relayActivityMaxLocks]),
      read(this.#sql.activityLeases, [now, scanLimit]),
      read(this.#sql.activityPublished, [scanLimit]),
      read(this.#sql.activityErrors, [scanLimit, recentErrors, recentErrors]),
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
            this.#onConnection(async (conn) => {
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

  /**
   * Runs `work` on one pooled connection; `tx.begin()` opens a short READ COMMITTED transaction
   * there (`tx.commit()` ends it; a throw rolls it back). A connection error before COMMIT was
   * sent is tagged as uncommitted (the server rolls back a dropped connection's transaction), so
   * even a claim may run again.
   */
  async #onConnection<T>(
    work: (conn: MySqlQueryable, tx: { begin(): Promise<void>; commit(): Promise<void> }) => Promise<T>,
  ): Promise<T> {
    let conn: MySqlPoolConnectionLike;
    try {
      conn = await this.#pool.getConnection();
    } catch (error) {
      throw new Uncommitted(error);
    }
    const connection = conn;
    let open = false;
    let committing = false;
    let broken = false;
    const tx = {
      async begin() {
        // Applies to the next transaction only: the session's own setting is left alone.
        await runStatement(connection, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED");
        await runStatement(connection, "START TRANSACTION");
        open = true;
      },
      async commit() {
        if (!open) return;
        committing = true;
        await runStatement(connection, "COMMIT");
        open = false;
      },
    };
    try {
      return await work(connection, tx);
    } catch (error) {
      if (isConnectionError(error)) broken = true;
      else if (open)
        await runStatement(connection, "ROLLBACK").catch(() => {
          broken = true;
        });
      throw committing || OutboxError.is(error) ? error : new Uncommitted(error);
    } finally {
      if (broken && connection.destroy) connection.destroy();
      else connection.release();
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
        if (OutboxError.is(error) || isStatementTimeout(error)) throw error;
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
  // Pending entries, as a range the optimizer can only scan as a range: with `status = 0` it may
  // plan a ref scan of (status) or (status, key_hash) from the first matching entry, filtering
  // the rest of the condition, which statistics taken on an empty table make look cheap
  // (measured on MariaDB 10.11: 26,911 index reads instead of 511 for one slice of the slab).
  // Each read past the window then orders by the whole index, so no sort is needed either
  // (`<=> NULL`, not `IS NULL`, for the same reason).
  const pendingRange = "status >= 0 AND status <= 0";
  // A statement carrying a fence checks it in its WHERE clause: the token must be the newest
  // recorded (params: lock, token, appended last).
  const fenceCheck = (fenced: boolean) =>
    fenced
      ? ` AND (SELECT f.token FROM ${n.qualifiedFence} f WHERE f.lock_name = ${TXT}) <= CAST(? AS DECIMAL(65,0))`
      : "";
  const caseById = (count: number, value: string) =>
    `CASE id ${Array.from({ length: count }, () => `WHEN ? THEN ${value}`).join(" ")} END`;

  return {
    insert: (count: number) =>
      `INSERT INTO ${t} ${columns} VALUES ${Array.from({ length: count }, () => valueRow).join(", ")}`,
    // LAST_INSERT_ID() is the statement's first id on this connection; the marker picks its rows.
    insertedIds: `SELECT CAST(o.id AS CHAR) AS id FROM ${t} o
      WHERE o.id >= LAST_INSERT_ID() AND o.claimed_by = ${TXT} ORDER BY o.id`,
    // The oldest pending entries: an ordered range scan of (status, id) with LIMIT.
    window: `SELECT ${state("o")} FROM ${t} o FORCE INDEX (${indexNames.pending})
      WHERE o.status = 0 ORDER BY o.id LIMIT ?`,
    // Past the window, two bounded reads in one statement. The heads of the keys in the next
    // slab of the key index: in each of `slices` ranges of key_hash, the entries after that
    // range's cursor (index only). Each slice starts at a key boundary, so a key's first entry in
    // it is its head; the slices are grouped per key (`slab` counts the key's entries read) and
    // joined in that order (STRAIGHT_JOIN) to the rows by primary key. Then the next keyless
    // entries after the keyless cursor.
    pastWindow: `SELECT ${state("o")}, h.slab FROM (
        SELECT s.key_hash, MIN(s.id) AS id, COUNT(*) AS slab FROM (${Array.from(
          { length: slices },
          () => `(SELECT key_hash, id FROM ${t} FORCE INDEX (${indexNames.key})
            WHERE ${pendingRange} AND key_hash > ? AND key_hash < ? ORDER BY status, key_hash, id LIMIT ?)`,
        ).join(" UNION ALL ")}) s GROUP BY s.key_hash
      ) h STRAIGHT_JOIN ${t} o FORCE INDEX (PRIMARY) ON o.id = h.id
      UNION ALL (SELECT ${state("o")}, 0 AS slab FROM ${t} o FORCE INDEX (${indexNames.key})
        WHERE ${pendingRange.replaceAll("status", "o.status")} AND o.key_hash <=> NULL AND o.id > ?
        ORDER BY o.status, o.key_hash, o.id LIMIT ?)`,
    // One range scan with LIMIT per key, after the key's head or after the window's edge.
    runs: (keys: number) =>
      Array.from(
        { length: keys },
        () => `(SELECT ${state("o")} FROM ${t} o FORCE INDEX (${indexNames.key})
          WHERE ${pendingRange.replaceAll("status", "o.status")} AND o.key_hash = ? AND o.id > ?
          ORDER BY o.status, o.key_hash, o.id LIMIT ?)`,
      ).join(" UNION ALL "),
    // Params: the ids, the claimable params, how many. The first lockable candidates in id order,
    // skipping rows other claims hold; rows the WHERE clause rejects are not kept locked (READ
    // COMMITTED) nor counted.
    lockRows: (count: number) => `SELECT ${entry} FROM ${t} o FORCE INDEX (PRIMARY)
      WHERE o.id IN ${inList(count)} AND o.status = 0 AND ${claimableSql("o")} ORDER BY o.id LIMIT ?
      FOR UPDATE SKIP LOCKED`,
    lease: (count: number, fenced: boolean) => `UPDATE ${t} FORCE INDEX (PRIMARY) SET attempts = attempts + 1,
      claimed_by = ${TXT}, lease_until = ?, lease_lock = ${TXT}, lease_token = CAST(? AS DECIMAL(65,0))
      WHERE id IN ${inList(count)}${fenceCheck(fenced)}`,
    fenceUpsert: `INSERT INTO ${n.qualifiedFence} (lock_name, token) VALUES (${TXT}, CAST(? AS DECIMAL(65,0)))
      ON DUPLICATE KEY UPDATE token = GREATEST(token, CAST(? AS DECIMAL(65,0)))`,
    fenceRead: `SELECT CAST(token AS CHAR) AS token FROM ${n.qualifiedFence} WHERE lock_name = ${TXT}`,
    ack: (count: number, fenced: boolean) => `UPDATE ${t} FORCE INDEX (PRIMARY) SET status = 1, settled_at = ?,
      lease_until = NULL WHERE id IN ${inList(count)} AND status = 0${fenceCheck(fenced)}`,
    retry: (count: number, fenced: boolean) => `UPDATE ${t} FORCE INDEX (PRIMARY) SET
      last_error = ${caseById(count, TXT)}, available_at = ${caseById(count, "?")}, lease_until = NULL,
      claimed_by = NULL, lease_lock = NULL, lease_token = NULL
      WHERE id IN ${inList(count)} AND status = 0 AND claimed_by = ${TXT}${fenceCheck(fenced)}`,
    deadLetter: (count: number, fenced: boolean) => `UPDATE ${t} FORCE INDEX (PRIMARY) SET status = 2,
      last_error = ${caseById(count, TXT)}, settled_at = ?, lease_until = NULL
      WHERE id IN ${inList(count)} AND status = 0 AND claimed_by = ${TXT}${fenceCheck(fenced)}`,
    release: (count: number, fenced: boolean) => `UPDATE ${t} FORCE INDEX (PRIMARY) SET
      attempts = GREATEST(attempts - 1, 0), lease_until = NULL, claimed_by = NULL, lease_lock = NULL, lease_token = NULL
      WHERE id IN ${inList(count)} AND status = 0 AND claimed_by = ${TXT}${fenceCheck(fenced)}`,
    // One claimer's rows have no index of their own: a consistent read of the pending entries
    // (no locks; a claim whose reply was lost is rare, and its entries are among the oldest).
    heldBy: `SELECT CAST(o.id AS CHAR) AS id FROM ${t} o FORCE INDEX (${indexNames.pending})
      WHERE o.status = 0 AND o.claimed_by = ${TXT} ORDER BY o.id`,
    // Dead entries in id order: through (status, id), or with a key filter through (status, key_hash,
    // id), that key's dead entries only. Topic and error text are checked on each row the scan
    // reaches until the page is full (no index serves them; dead entries are few next to the
    // table). Topic and key compare as bytes: utf8mb4_bin pads with spaces ('k1' = 'k1 '). The
    // error text is lowered by utf8mb4's rules on both sides and matched with LIKE, '!' escaping
    // its wildcards. Params: [key hash, key], after, [topic], [pattern], limit.
    listDead: (filter: DeadLetterFilter) => {
      const where = ["o.status = 2"];
      if (filter.key === null) where.push("o.key_hash <=> NULL");
      else if (filter.key !== undefined) where.push("o.key_hash = ?", "CAST(o.entry_key AS BINARY) = ?");
      where.push("o.id > ?");
      if (filter.topic !== undefined) where.push("CAST(o.topic AS BINARY) = ?");
      if (filter.errorContains !== undefined) where.push(`LOWER(o.last_error) LIKE LOWER(${TXT}) ESCAPE '!'`);
      const byKey = filter.key !== undefined;
      return `SELECT ${entry} FROM ${t} o FORCE INDEX (${byKey ? indexNames.key : indexNames.pending})
        WHERE ${where.join(" AND ")} ORDER BY ${byKey ? "o.status, o.key_hash, o.id" : "o.id"} LIMIT ?`;
    },
    dropDead: (count: number) => `DELETE FROM ${t} WHERE id IN ${inList(count)} AND status = 2`,
    requeueDead: (count: number) => `UPDATE ${t} SET status = 0, attempts = 0, available_at = ?, claimed_by = NULL,
      lease_until = NULL, lease_lock = NULL, lease_token = NULL, settled_at = NULL
      WHERE id IN ${inList(count)} AND status = 2`,
    purgeIds: `SELECT CAST(o.id AS CHAR) AS id FROM ${t} o FORCE INDEX (${indexNames.settled})
      WHERE o.settled_at < ? ORDER BY o.settled_at LIMIT ?`,
    purge: (count: number) => `DELETE FROM ${t} WHERE id IN ${inList(count)} AND status <> 0 AND settled_at < ?`,
    // One pass over the pending entries through the (status, id) index for their count, the leased
    // ones and the oldest. Without the hint the optimizer reads the leased count and the oldest
    // with full table scans (2 s for 1,000,000 rows, 100,000 of them pending).
    stats: `SELECT p.pending, p.in_flight, p.oldest,
      (SELECT COUNT(*) FROM ${t} FORCE INDEX (${indexNames.pending}) WHERE status = 2) AS dead
      FROM (SELECT COUNT(*) AS pending, COALESCE(SUM(o.lease_until > ?), 0) AS in_flight, MIN(o.created_at) AS oldest
        FROM ${t} o FORCE INDEX (${indexNames.pending}) WHERE o.status = 0) p`,
    // Row kind 0: the scan's size and retry-waiting count; kind 1: one hot key each; kind 2: one
    // blocked key each (its first pending entry, its lowest id in the scan, failed and waits).
    pendingSummary: `SELECT 0 AS kind, NULL AS entry_key, COUNT(*) AS n,
        COALESCE(SUM(s.available_at > ? AND (s.lease_until IS NULL OR s.lease_until <= ?)), 0) AS waiting,
        NULL AS head_id, NULL AS attempts, NULL AS last_error, NULL AS available_at
      FROM (SELECT o.available_at, o.lease_until FROM ${t} o FORCE INDEX (${indexNames.pending})
        WHERE o.status = 0 ORDER BY o.id LIMIT ?) s
      UNION ALL
      SELECT 1 AS kind, h.entry_key, h.n, NULL AS waiting, NULL, NULL, NULL, NULL
      FROM (SELECT s.entry_key, COUNT(*) AS n
        FROM (SELECT o.entry_key FROM ${t} o FORCE INDEX (${indexNames.pending})
          WHERE o.status = 0 ORDER BY o.id LIMIT ?) s
        WHERE s.entry_key IS NOT NULL GROUP BY s.entry_key ORDER BY n DESC, s.entry_key LIMIT ?) h
      UNION ALL
      SELECT 2 AS kind, b.entry_key, b.n, NULL AS waiting, CAST(b.id AS CHAR), b.attempts,
        CAST(b.last_error AS BINARY), b.available_at
      FROM (SELECT k.entry_key, k.n, o.id, o.attempts, o.last_error, o.available_at
        FROM (SELECT s.entry_key, COUNT(*) AS n, MIN(s.id) AS head
          FROM (SELECT o.id, o.entry_key FROM ${t} o FORCE INDEX (${indexNames.pending})
            WHERE o.status = 0 ORDER BY o.id LIMIT ?) s
          WHERE s.entry_key IS NOT NULL GROUP BY s.entry_key) k
        JOIN ${t} o ON o.id = k.head
        WHERE o.last_error IS NOT NULL AND o.available_at > ? AND (o.lease_until IS NULL OR o.lease_until <= ?)
        ORDER BY k.n DESC, k.entry_key LIMIT ?) b`,
    activityFences: `SELECT CAST(f.lock_name AS BINARY) AS lock_name, CAST(f.token AS CHAR) AS token
      FROM ${n.qualifiedFence} f ORDER BY f.lock_name LIMIT ?`,
    // One group per claimer holding unexpired leases, and one (NULL) for the other pending entries looked at.
    activityLeases: `SELECT CAST(s.holder AS BINARY) AS claimed_by, COUNT(*) AS n, MAX(s.lease_until) AS until
      FROM (SELECT CASE WHEN o.lease_until > ? THEN o.claimed_by END AS holder, o.lease_until
        FROM ${t} o FORCE INDEX (${indexNames.pending}) WHERE o.status = 0 ORDER BY o.id LIMIT ?) s
      GROUP BY s.holder`,
    activityPublished: `SELECT s.settled_at FROM (SELECT o.status, o.settled_at FROM ${t} o FORCE INDEX (${indexNames.settled})
        WHERE o.settled_at IS NOT NULL ORDER BY o.settled_at DESC LIMIT ?) s
      WHERE s.status = 1 ORDER BY s.settled_at DESC LIMIT 1`,
    // The failed among the oldest pending entries (their retry's due time as `at`), and the newest dead entries.
    activityErrors: `(SELECT CAST(o.id AS CHAR) AS id, CAST(o.entry_key AS BINARY) AS entry_key,
        CAST(o.topic AS BINARY) AS topic, CAST(o.last_error AS BINARY) AS last_error, o.attempts, o.status,
        o.available_at AS at
      FROM (SELECT p.id FROM ${t} p FORCE INDEX (${indexNames.pending}) WHERE p.status = 0 ORDER BY p.id LIMIT ?) s
      STRAIGHT_JOIN ${t} o FORCE INDEX (PRIMARY) ON o.id = s.id
      WHERE o.last_error IS NOT NULL ORDER BY o.available_at DESC, o.id DESC LIMIT ?)
      UNION ALL
      (SELECT CAST(o.id AS CHAR), CAST(o.entry_key AS BINARY), CAST(o.topic AS BINARY), CAST(o.last_error AS BINARY),
        o.attempts, o.status, o.settled_at
      FROM ${t} o FORCE INDEX (${indexNames.pending})
      WHERE o.status = 2 ORDER BY o.id DESC LIMIT ?)`,
  };
}

/** `pool` as the stores take it (a mysql2/promise Pool), or OUTBOX_INVALID_OPTIONS naming `factory`. */
export function checkPool<P extends MySqlQueryable & { getConnection(): unknown }>(
  pool: P | undefined,
  factory: string,
): P {
  if (!pool || typeof pool.getConnection !== "function" || typeof pool.query !== "function") {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `${factory} needs \`pool\`: a mysql2/promise Pool (query() and getConnection())`,
    );
  }
  return pool;
}

/**
 * START TRANSACTION, `work`, COMMIT on a connection of `pool`; ROLLBACK when anything throws, and the error is
 * rethrown as it is (`boundary` may turn failures of START TRANSACTION and COMMIT into other errors). A
 * connection that failed, or whose ROLLBACK failed, is destroyed instead of going back to the pool.
 */
export async function poolTransaction<T, C extends MySqlPoolConnectionLike = MySqlPoolConnectionLike>(
  pool: { getConnection(): Promise<C> },
  operation: string,
  work: (tx: C) => Promise<T>,
  boundary: (error: unknown) => unknown = (error) => error,
): Promise<T> {
  let conn: C;
  try {
    conn = await pool.getConnection();
  } catch (error) {
    throw storeError(operation, error);
  }
  let broken = false;
  try {
    await runStatement(conn, "START TRANSACTION").catch((error: unknown) => {
      throw boundary(error);
    });
    const result = await work(conn);
    await runStatement(conn, "COMMIT").catch((error: unknown) => {
      throw boundary(error);
    });
    return result;
  } catch (error) {
    if (isConnectionError(error) || isConnectionError((error as { cause?: unknown } | null)?.cause)) broken = true;
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

/** Creates the MySQL/MariaDB store. Run `migrate()` once first (or apply `sql/schema.sql`). */
export function createMySqlStore(options: MySqlStoreOptions): MySqlStore {
  return new MySqlStore(options);
}
