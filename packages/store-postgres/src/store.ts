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
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  type OutboxStore,
  type PendingSummary,
  type PendingSummaryOptions,
  type PreparedMessage,
  type PurgeRequest,
  prepareMessages,
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
import { claimSql, entryColumns } from "./claim.js";
import { closedError, isConnectionError, sqlState, storeError } from "./errors.js";
import { fenceColumns, fenceCte, fenceGuard } from "./fence.js";
import {
  type ListenConnection,
  type PGliteListenApi,
  PGliteWakeSource,
  PgWakeSource,
  type WakeSource,
} from "./listener.js";
import type { Queryable } from "./queryable.js";
import { fnv1a, resolveNames, type SchemaNames, type SchemaOptions } from "./schema.js";

/** The parts of a pg `Pool` the store uses (structural: no dependency on pg). */
export interface PgPoolLike extends Queryable {
  on(event: "error", listener: (error: Error) => void): unknown;
  removeListener(event: "error", listener: (error: Error) => void): unknown;
  listenerCount?(event: "error"): number;
  /** pg-pool keeps the Client class and the connection options: the store's LISTEN uses them. */
  readonly Client?: new (
    options: never,
  ) => ListenConnection & { connect(): Promise<unknown> };
  readonly options?: unknown;
  connect?(): Promise<
    Queryable & {
      release(error?: Error): void;
      on?(event: "error", listener: (error: Error) => void): unknown;
      removeListener?(event: "error", listener: (error: Error) => void): unknown;
    }
  >;
}

export interface PostgresStoreOptions extends SchemaOptions {
  /** A pg `Pool`: relay-side statements run on it, LISTEN gets its own connection from its options. */
  pool?: PgPoolLike;
  /**
   * Any Queryable for relay-side statements instead of a pool: a PGlite instance (which also
   * provides LISTEN), a pg `Client`, ... Give either `pool` or `db`.
   */
  db?: Queryable;
  clock?: Clock;
  limits?: Partial<EntryLimits>;
  /**
   * Channel for wake-up notifications, or false for none. Enqueue sends one `pg_notify` per
   * statement, inside the caller's transaction (delivered at commit). Default
   * `outbox:<schema>.<table>` (hashed when longer than 63 bytes).
   */
  notifyChannel?: string | false;
  /**
   * How the store LISTENs: false for no wake-ups (poll only), or a factory returning a connected
   * pg `Client` dedicated to LISTEN (the store ends it on close). Default: PGlite's `listen()`
   * for PGlite, a new `pool.Client(pool.options)` for a pg Pool, none otherwise.
   */
  listen?: false | (() => Promise<ListenConnection>);
  /**
   * Acks commit with `synchronous_commit = off`: they do not wait for the WAL flush. A crash of
   * the server can forget the last acks, which republishes those entries (a duplicate, never a
   * loss). Claims and every other write stay durable. Default false: on the test machine it bought
   * no measurable throughput, and fewer duplicates after a crash are worth more.
   */
  asyncAcks?: boolean;
  /**
   * Claims run on at most two connections of the store's own, opened with the pool's settings,
   * whose sessions carry `statement_timeout = claimTimeoutMs` (and `jit = off`): a claim that runs
   * longer fails with OUTBOX_STORE_UNAVAILABLE (`details.sqlState` "57014") and the relay claims
   * again, while each claim stays one round trip. Default 5000. `false`: claims run on `pool`
   * with its own sessions' settings. With `db`, claims always run on `db`.
   */
  claimTimeoutMs?: number | false;
  /**
   * Run relay-side statements as named prepared statements (pg's `{ name, text, values }`), so
   * PostgreSQL parses and plans them once per connection. Default: true with `pool`, false with
   * `db` (PGlite has no such API). Turn off behind a transaction-mode PgBouncer older than 1.21.
   */
  preparedStatements?: boolean;
  /**
   * Wake-ups are coalesced: at most one per window (leading and trailing edge). Default 1 ms:
   * commit -> publish p50 ~1-2 ms instead of ~4 ms at 10 ms, and NOTIFY bursts still fold.
   */
  wakeUpDebounceMs?: number;
  /**
   * Background errors nobody awaits: the LISTEN connection dropping, idle pool clients dying.
   * Default: console.warn.
   */
  onError?: (error: OutboxError) => void;
}

/** Attempts of an idempotent statement whose connection failed (see #run). */
const connectionRetries = 3;
const channelPattern = /^[A-Za-z0-9_.:$-]+$/;
const idPattern = /^[0-9]{1,19}$/;
const maxBigint = 9223372036854775807n;
const utf8 = new TextEncoder();

type Row = Record<string, unknown>;

/** pg's query-config form, used for named prepared statements. */
interface PgConfigQueryable {
  query(config: { name: string; text: string; values: unknown[] }): Promise<{ rows: unknown[] }>;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
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

/** listDead's `after`: an entry id, "0" (before every id) when absent. */
function cursorId(after: string | undefined): string {
  if (after === undefined) return "0";
  if (validIds([after]).length === 1) return after;
  throw new OutboxError(
    OutboxErrorCode.InvalidOptions,
    `listDead: after must be an entry id, got ${JSON.stringify(after)}`,
  );
}

/**
 * A LIKE pattern matching `text` anywhere, its wildcards taken literally. The escape is `!`, not
 * PostgreSQL's default backslash, whose meaning in a literal depends on standard_conforming_strings.
 */
function likeContains(text: string): string {
  return `%${text.replaceAll(/[!%_]/g, "!$&")}%`;
}

/** text columns cannot hold NUL; error texts come from brokers and may contain anything. */
function cleanText(value: string): string {
  return value.includes("\u0000") ? value.replaceAll("\u0000", "\uFFFD") : value;
}

/**
 * Payloads travel as base64 both ways (a third larger than the bytes, where bytea's hex text is
 * twice as large). Node's Buffer does the work when present; browsers running PGlite use atob/btoa.
 */
const NodeBuffer = (
  globalThis as {
    Buffer?: {
      from(
        buffer: ArrayBufferLike,
        offset: number,
        length: number,
      ): { toString(encoding: "base64"): string; write(text: string, encoding: "base64"): number };
    };
  }
).Buffer;
function toBase64(bytes: Uint8Array): string {
  if (NodeBuffer) return NodeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** Decodes the base64 payload column into a plain Uint8Array of its own (not a view of a shared pool). */
function fromBase64(text: unknown, byteLength: unknown): Uint8Array {
  if (typeof text !== "string") {
    throw new OutboxError(OutboxErrorCode.StoreUnavailable, `unexpected payload value of type ${typeof text}`);
  }
  const bytes = new Uint8Array(Number(byteLength));
  // PostgreSQL breaks base64 lines every 76 characters; both decoders below skip the newlines.
  let written: number;
  if (NodeBuffer) {
    written = NodeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).write(text, "base64");
  } else {
    const binary = atob(text.replaceAll("\n", ""));
    for (let i = 0; i < binary.length && i < bytes.length; i++) bytes[i] = binary.charCodeAt(i);
    written = binary.length;
  }
  if (written !== bytes.byteLength) {
    throw new OutboxError(
      OutboxErrorCode.StoreUnavailable,
      `payload decoded to ${written} bytes, expected ${bytes.byteLength}`,
    );
  }
  return bytes;
}

/** A row read with `entryColumns` as an entry (also used by the log-capture store). */
export function toEntry(row: Row): OutboxEntry {
  return {
    id: String(row.id),
    topic: String(row.topic),
    key: row.key === null ? null : String(row.key),
    payload: fromBase64(row.payload, row.payload_bytes),
    headers: JSON.parse(String(row.headers)) as Record<string, string>,
    idempotencyKey: String(row.idempotency_key),
    createdAt: new Date(Number(row.created_at)),
    availableAt: new Date(Number(row.available_at)),
    attempts: Number(row.attempts),
    lastError: row.last_error === null ? null : String(row.last_error),
  };
}

function defaultChannel(names: SchemaNames): string {
  const channel = `outbox:${names.schema}.${names.table}`;
  return utf8.encode(channel).byteLength <= 63
    ? channel
    : `outbox:${fnv1a(channel).toString(36)}:${names.table.slice(0, 40)}`;
}

function looksLikePGlite(db: unknown): db is Queryable & PGliteListenApi {
  const candidate = db as { listen?: unknown; transaction?: unknown; exec?: unknown } | null;
  return (
    typeof candidate?.listen === "function" &&
    typeof candidate.transaction === "function" &&
    typeof candidate.exec === "function"
  );
}

/**
 * The PostgreSQL outbox store (pg and PGlite). See the package README for the guarantees.
 * `enqueue` takes any Queryable inside the caller's transaction; everything else runs on the
 * store's own `pool`/`db`.
 */
export class PostgresStore implements OutboxStore<Queryable> {
  readonly capabilities: StoreCapabilities;
  readonly names: SchemaNames;
  readonly #db: Queryable;
  readonly #pool: PgPoolLike | null;
  readonly #clock: Clock;
  readonly #limits: Partial<EntryLimits> | undefined;
  readonly #channel: string | null;
  readonly #asyncAcks: boolean;
  readonly #onError: (error: OutboxError) => void;
  readonly #wakeSource: WakeSource | null;
  readonly #wakeUps: WakeUpListeners;
  readonly #poolErrorHandler: ((error: Error) => void) | null = null;
  #closed = false;
  readonly #sql: ReturnType<typeof buildStatements>;
  readonly #prepared: boolean;
  readonly #statementNames = new Map<string, string>();
  readonly #claimStatements = new Map<string, string>();
  /** Where the claim's next look past its window starts: each goes on where the last one stopped. */
  #walkFrom = "";
  #keylessFrom = "0";
  readonly #claimSessions: ClaimSessions | null;
  readonly #claimTimeoutMs: number | null;

  constructor(options: PostgresStoreOptions) {
    if (!options || (options.pool && options.db) || !(options.pool ?? options.db)) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "createPostgresStore needs exactly one of `pool` or `db`");
    }
    this.names = resolveNames(options);
    this.#pool = options.pool ?? null;
    this.#db = (options.pool ?? options.db) as Queryable;
    if (typeof this.#db.query !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "`pool`/`db` must have a query(text, params) method");
    }
    this.#clock = options.clock ?? systemClock;
    this.#limits = options.limits;
    this.#asyncAcks = options.asyncAcks ?? false;
    this.#onError =
      options.onError ?? ((error) => console.warn(`[@outbox/store-postgres ${this.names.qualifiedTable}]`, error));
    this.#wakeUps = new WakeUpListeners({ debounceMs: options.wakeUpDebounceMs ?? 1, onError: this.#onError });
    const channel = options.notifyChannel === undefined ? defaultChannel(this.names) : options.notifyChannel;
    if (channel !== false && (!channelPattern.test(channel) || utf8.encode(channel).byteLength > 63)) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        `notifyChannel must match ${channelPattern} and be at most 63 bytes, got ${JSON.stringify(channel)}`,
      );
    }
    this.#channel = channel === false ? null : channel;
    this.#wakeSource = this.#createWakeSource(options);
    this.capabilities = {
      wakeUps: this.#wakeSource !== null,
      transactions: true,
      // PGlite is one connection: a transaction cannot commit while another is open.
      concurrentWriters: !(options.pool === undefined && looksLikePGlite(options.db)),
      deadLetterFilters: true,
    };
    this.#sql = buildStatements(this.names);
    this.#prepared = options.preparedStatements ?? options.pool !== undefined;

    const timeout = options.claimTimeoutMs ?? 5_000;
    if (timeout !== false) positiveInteger(timeout, "claimTimeoutMs");
    this.#claimSessions =
      timeout === false || !this.#pool ? null : ClaimSessions.open(this.#pool, timeout, this.#onError);
    this.#claimTimeoutMs = this.#claimSessions ? (timeout as number) : null;

    const pool = this.#pool;
    if (pool && typeof pool.on === "function") {
      // An idle pooled connection dying (server restart, pg_terminate_backend) makes the pool
      // emit "error"; without a listener that would crash the process.
      this.#poolErrorHandler = (error) => this.#onError(storeError("idle pool connection", error));
      pool.on("error", this.#poolErrorHandler);
    }
  }

  #createWakeSource(options: PostgresStoreOptions): WakeSource | null {
    const channel = this.#channel;
    if (channel === null || options.listen === false) return null;
    const hooks = { onNotify: () => this.#wake(), onError: (error: OutboxError) => this.#onError(error) };
    if (typeof options.listen === "function") return new PgWakeSource({ connect: options.listen, channel }, hooks);
    if (options.db && looksLikePGlite(options.db)) return new PGliteWakeSource(options.db, channel, hooks);
    const pool = options.pool;
    if (pool?.Client && pool.options !== undefined) {
      const ClientClass = pool.Client;
      const connectOptions = pool.options as never;
      const connect = async (): Promise<ListenConnection> => {
        const client = new ClientClass(connectOptions);
        // An error before "connected" must not go unhandled; connect() rejects with it anyway.
        const swallow = () => undefined;
        client.on("error", swallow);
        await client.connect();
        return client;
      };
      return new PgWakeSource({ connect, channel }, hooks);
    }
    return null;
  }

  /** The LISTEN connection's wake source (exposed for diagnostics and tests). */
  get wakeSource(): WakeSource | null {
    return this.#wakeSource;
  }

  async enqueue(tx: Queryable, messages: OutboxMessage | readonly OutboxMessage[]): Promise<string[]> {
    this.#assertOpen();
    if (!tx || typeof tx.query !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "enqueue needs a Queryable inside your transaction");
    }
    const now = this.#clock.now();
    const prepared = prepareMessages(messages, { now, limits: this.#limits });
    if (prepared.length === 0) return [];
    checkNul(prepared);
    const params: unknown[] = [
      prepared.map((m) => m.topic),
      prepared.map((m) => m.key),
      prepared.map((m) => toBase64(m.payload)),
      prepared.map((m) => JSON.stringify(m.headers)),
      prepared.map((m) => m.idempotencyKey),
      iso(now),
      prepared.map((m) => m.availableAt.toISOString()),
    ];
    if (this.#channel) params.push(this.#channel);
    let rows: unknown[];
    try {
      ({ rows } = await tx.query(this.#channel ? this.#sql.enqueueNotify : this.#sql.enqueue, params));
    } catch (error) {
      throw storeError("enqueue", error);
    }
    if (rows.length !== prepared.length) {
      throw new OutboxError(
        OutboxErrorCode.StoreUnavailable,
        `enqueue inserted ${rows.length} rows for ${prepared.length} messages`,
      );
    }
    return rows.map((row) => String((row as Row).id));
  }

  async claim(request: ClaimRequest): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const limit = positiveInteger(request.limit, "limit");
    const leaseMs = positiveInteger(request.leaseMs, "leaseMs");
    const now = this.#clock.now();
    const fenced = request.fence !== undefined;
    const cacheKey = `${limit}:${fenced}`;
    let sql = this.#claimStatements.get(cacheKey);
    if (sql === undefined) {
      sql = claimSql(this.names, limit, fenced);
      this.#claimStatements.set(cacheKey, sql);
    }
    const params = [iso(now), iso(now + leaseMs), request.claimer, this.#walkFrom, this.#keylessFrom];
    const rows = await this.#run("claim", sql, params, request.fence);
    const { walk_next: walkNext, keyless_next: keylessNext } = rows[0] ?? {};
    if (typeof walkNext === "string") this.#walkFrom = walkNext;
    if (typeof keylessNext === "string") this.#keylessFrom = keylessNext;
    return rows.filter((row) => row.id !== null).map(toEntry);
  }

  async ack(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    const valid = validIds(ids);
    if (valid.length === 0 && !context.fence) return;
    const sql = this.#sql.ack(context.fence !== undefined, this.#asyncAcks);
    const rows = await this.#run("ack", sql, [valid, iso(this.#clock.now())], context.fence, true);
    // Acking a key's head makes its successor claimable: wake our own relay now rather than
    // after a poll interval.
    if (Number(rows[0]?.keyed ?? 0) > 0) this.#wake();
  }

  async retry(items: readonly RetryItem[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    const valid = items.filter((item) => validIds([item.id]).length === 1);
    for (const item of valid) {
      if (!(item.availableAt instanceof Date) || Number.isNaN(item.availableAt.getTime())) {
        throw new OutboxError(OutboxErrorCode.InvalidOptions, `retry of ${item.id}: availableAt must be a valid Date`);
      }
    }
    if (valid.length === 0 && !context.fence) return;
    await this.#run(
      "retry",
      this.#sql.retry(context.fence !== undefined),
      [
        valid.map((item) => item.id),
        valid.map((item) => cleanText(String(item.error))),
        valid.map((item) => item.availableAt.toISOString()),
        context.claimer,
      ],
      context.fence,
      true,
    );
  }

  async deadLetter(items: readonly DeadLetterItem[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    const valid = items.filter((item) => validIds([item.id]).length === 1);
    if (valid.length === 0 && !context.fence) return;
    const rows = await this.#run(
      "deadLetter",
      this.#sql.deadLetter(context.fence !== undefined),
      [
        valid.map((item) => item.id),
        valid.map((item) => cleanText(String(item.error))),
        context.claimer,
        iso(this.#clock.now()),
      ],
      context.fence,
      true,
    );
    // A dead entry unblocks the entries queued behind it on its key.
    if (Number(rows[0]?.n ?? 0) > 0) this.#wake();
  }

  async release(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    const valid = validIds(ids);
    if (valid.length === 0 && !context.fence) return;
    await this.#run(
      "release",
      this.#sql.release(context.fence !== undefined),
      [valid, context.claimer],
      context.fence,
      true,
    );
  }

  async releaseClaimer(context: SettleContext): Promise<number> {
    this.#assertOpen();
    const rows = await this.#run(
      "releaseClaimer",
      this.#sql.releaseClaimer(context.fence !== undefined),
      [context.claimer],
      context.fence,
      true,
    );
    const released = Number(rows[0]?.n ?? 0);
    if (released > 0) this.#wake();
    return released;
  }

  async listDead(options: ListDeadOptions = {}): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const limit = positiveInteger(options.limit ?? 100, "limit");
    const after = cursorId(options.after);
    const filter = deadLetterFilter(options);
    // enqueue refuses NUL in a topic or key (text cannot hold it): no entry has one.
    if (filter.topic?.includes("\u0000") || filter.key?.includes("\u0000")) return [];
    const params: unknown[] = [limit, after];
    if (filter.topic !== undefined) params.push(filter.topic);
    if (typeof filter.key === "string") params.push(filter.key);
    // Errors were stored with NUL replaced (cleanText): the text is looked for as it was stored.
    if (filter.errorContains !== undefined) params.push(likeContains(cleanText(filter.errorContains)));
    const rows = await this.#run("listDead", this.#sql.listDead(filter), params, undefined, true);
    return rows.map(toEntry);
  }

  async dropDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    const valid = validIds(ids);
    if (valid.length === 0) return 0;
    const rows = await this.#run("dropDead", this.#sql.dropDead, [valid]);
    return Number(rows[0]?.n ?? 0);
  }

  async requeueDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    const valid = validIds(ids);
    if (valid.length === 0) return 0;
    const rows = await this.#run("requeueDead", this.#sql.requeueDead, [valid, iso(this.#clock.now())]);
    const moved = Number(rows[0]?.n ?? 0);
    if (moved > 0) {
      this.#wake();
      // Relays in other processes learn about it too (best effort: polling is the fallback).
      if (this.#channel) await this.#db.query("SELECT pg_notify($1, '')", [this.#channel]).catch(() => undefined);
    }
    return moved;
  }

  async purge(request: PurgeRequest): Promise<number> {
    this.#assertOpen();
    if (!(request.olderThan instanceof Date) || Number.isNaN(request.olderThan.getTime())) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "purge needs olderThan as a valid Date");
    }
    const batchSize = positiveInteger(request.batchSize ?? 1000, "batchSize");
    let total = 0;
    for (;;) {
      this.#assertOpen();
      // One short statement per batch: no long locks, no giant transaction.
      const rows = await this.#run("purge", this.#sql.purge, [request.olderThan.toISOString(), batchSize]);
      const deleted = Number(rows[0]?.n ?? 0);
      total += deleted;
      if (deleted < batchSize) return total;
    }
  }

  async stats(): Promise<StoreStats> {
    this.#assertOpen();
    const [row] = await this.#run("stats", this.#sql.stats, [iso(this.#clock.now())], undefined, true);
    return {
      pending: Number(row?.pending ?? 0),
      inFlight: Number(row?.in_flight ?? 0),
      dead: Number(row?.dead ?? 0),
      oldestPendingAt: row?.oldest === null || row?.oldest === undefined ? null : new Date(Number(row.oldest)),
    };
  }

  /**
   * The oldest `scanLimit` pending entries (default 10,000), read in id order through the pending
   * index: one bounded range scan however deep the backlog. Retry-waiting and hot keys are counted
   * among them.
   */
  async pendingSummary(options: PendingSummaryOptions = {}): Promise<PendingSummary> {
    this.#assertOpen();
    const scanLimit = positiveInteger(options.scanLimit ?? 10_000, "scanLimit");
    const hotKeys = positiveInteger(options.hotKeys ?? 10, "hotKeys");
    const blockedKeys = positiveInteger(options.blockedKeys ?? 10, "blockedKeys");
    const params = [iso(this.#clock.now()), scanLimit, hotKeys, blockedKeys];
    const [row] = await this.#run("pendingSummary", this.#sql.pendingSummary, params, undefined, true);
    const hot = (row?.hot_keys ?? []) as Array<{ key: string; pending: number }>;
    const blocked = (row?.blocked_keys ?? []) as Array<{
      key: string;
      pending: number;
      id: string;
      attempts: number;
      last_error: string | null;
      available_at: number;
    }>;
    return {
      scanned: Number(row?.scanned ?? 0),
      retryWaiting: Number(row?.retry_waiting ?? 0),
      hotKeys: hot.map((entry) => ({ key: entry.key, pending: Number(entry.pending) })),
      blockedKeys: blocked.map((entry) => ({
        key: entry.key,
        pending: Number(entry.pending),
        entryId: String(entry.id),
        attempts: Number(entry.attempts),
        lastError: entry.last_error,
        availableAt: new Date(Number(entry.available_at)),
      })),
    };
  }

  /**
   * One statement, each part a bounded read through an index: the fence table (a row per lock
   * name), the oldest `scanLimit` pending entries (pending index), the newest `scanLimit` settled
   * ones (settled index, newest first, up to the first published one) and the newest
   * `recentErrors` dead ones (dead index).
   */
  async relayActivity(options: RelayActivityOptions = {}): Promise<RelayActivity> {
    this.#assertOpen();
    const scanLimit = positiveInteger(options.scanLimit ?? 10_000, "scanLimit");
    const recentErrors = positiveInteger(options.recentErrors ?? 10, "recentErrors");
    const params = [iso(this.#clock.now()), scanLimit, recentErrors, relayActivityMaxLocks];
    const [row] = await this.#run("relayActivity", this.#sql.relayActivity, params, undefined, true);
    const fences = (row?.fences ?? []) as Array<{ lock: string; token: string }>;
    const claimers = (row?.claimers ?? []) as Array<{ claimer: string; n: number; until: number }>;
    const errors = (row?.recent_errors ?? []) as Array<{
      id: string;
      key: string | null;
      topic: string;
      error: string;
      attempts: number;
      at: number;
      dead: boolean;
    }>;
    return {
      scanned: Number(row?.scanned ?? 0),
      fences: fences.map((fence) => ({ lock: fence.lock, token: BigInt(fence.token) })),
      claimers: claimersByRelay(
        claimers.map((c) => ({ claimer: c.claimer, inFlight: Number(c.n), leaseUntil: new Date(Number(c.until)) })),
      ),
      lastPublishedAt:
        row?.last_published === null || row?.last_published === undefined ? null : new Date(Number(row.last_published)),
      recentErrors: errors.map((e) => ({ ...e, attempts: Number(e.attempts), at: new Date(Number(e.at)) })),
    };
  }

  async subscribe(listener: () => void): Promise<Unsubscribe> {
    this.#assertOpen();
    if (!this.#wakeSource) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "this store has no LISTEN connection (wakeUps: false)");
    }
    return this.#wakeUps.subscribe(listener, this.#wakeSource);
  }

  /** Stops LISTEN and detaches from the pool. Does not end the pool or db: they are yours. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#wakeUps.close();
    await this.#claimSessions?.end();
    if (this.#pool && this.#poolErrorHandler) this.#pool.removeListener("error", this.#poolErrorHandler);
  }

  /**
   * Runs one relay-side statement. Settles (ack, retry, deadLetter, release) are idempotent, so
   * a statement that failed because its connection died is sent again on a fresh one (a pool
   * hands out another): one killed backend then costs no lease-length delay.
   */
  async #run(operation: string, sql: string, params: unknown[], fence?: Fence, idempotent = false): Promise<Row[]> {
    const sessions = operation === "claim" ? this.#claimSessions : null;
    const send = () => (sessions ? sessions.run((db) => this.#query(sql, params, db)) : this.#query(sql, params));
    if (fence) params.push(String(fence.lock), fence.token.toString());
    let rows: Row[] | undefined;
    for (let attempt = 1; rows === undefined; attempt++) {
      try {
        rows = (await send()).rows as Row[];
      } catch (error) {
        if (operation === "claim" && sqlState(error) === "57014" && this.#claimTimeoutMs !== null) {
          throw new OutboxError(
            OutboxErrorCode.StoreUnavailable,
            `claim ran longer than claimTimeoutMs (${this.#claimTimeoutMs} ms) and was cancelled`,
            { cause: error, details: { operation, sqlState: "57014", timeoutMs: this.#claimTimeoutMs } },
          );
        }
        if (!idempotent || attempt >= connectionRetries || !isConnectionError(error) || this.#closed) {
          throw storeError(operation, error);
        }
      }
    }
    if (this.#closed) throw closedError();
    if (fence && Number(rows[0]?.fence_ok) !== 1) {
      const newest = rows[0]?.newest_token;
      throw new OutboxError(
        OutboxErrorCode.Fenced,
        `${operation} refused: fencing token ${fence.token} for "${fence.lock}" is older than ${String(newest ?? "the newest seen")}`,
        {
          details: { lock: fence.lock, token: fence.token.toString(), newest: newest === null ? null : String(newest) },
        },
      );
    }
    return rows;
  }

  /** Relay-side statements on a pg Pool run as named prepared statements: parsed and planned once per connection. */
  #query(text: string, params: unknown[], db: Queryable = this.#db): Promise<{ rows: unknown[] }> {
    if (!this.#prepared) return db.query(text, params);
    let name = this.#statementNames.get(text);
    if (name === undefined) {
      name = `outbox_${fnv1a(text).toString(36)}_${text.length.toString(36)}`;
      this.#statementNames.set(text, name);
    }
    return (db as unknown as PgConfigQueryable).query({ name, text, values: params });
  }

  #wake(): void {
    if (!this.#closed) this.#wakeUps.wake();
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError();
  }
}

/** A pg Pool of the store's own for claims (see PostgresStoreOptions.claimTimeoutMs). */
interface ClaimPool {
  connect(): Promise<NonNullable<Awaited<ReturnType<NonNullable<PgPoolLike["connect"]>>>>>;
  on(event: "error", listener: (error: Error) => void): unknown;
  end(): Promise<void>;
}

/**
 * Claims' own sessions: opened from the user's pool's class and options (pg-pool keeps both), so
 * they reach the same server with the same credentials, and set up once each before their first
 * claim. The claim's plan has one shape whatever its parameters (see claim.ts): plan it once per
 * session, and never spend a claim's time compiling it.
 */
class ClaimSessions {
  readonly #pool: ClaimPool;
  readonly #setUp = new WeakSet<object>();
  readonly #settings: string;

  static open(pool: PgPoolLike, timeoutMs: number, onError: (error: OutboxError) => void): ClaimSessions | null {
    const PoolClass = (pool as { constructor?: unknown }).constructor;
    if (typeof PoolClass !== "function" || typeof pool.options !== "object" || pool.options === null) return null;
    if (typeof pool.connect !== "function" || !pool.Client) return null;
    const claims = new (PoolClass as new (options: object) => ClaimPool)({ ...pool.options, max: 2 });
    claims.on("error", (error) => onError(storeError("idle claim connection", error)));
    return new ClaimSessions(claims, timeoutMs);
  }

  private constructor(pool: ClaimPool, timeoutMs: number) {
    this.#pool = pool;
    this.#settings = `SET statement_timeout = ${timeoutMs}; SET jit = off; SET plan_cache_mode = force_generic_plan`;
  }

  async run<T>(work: (session: Queryable) => Promise<T>): Promise<T> {
    const client = await this.#pool.connect();
    // A backend dying while the client is checked out makes it emit "error"; unheard, that would
    // crash the process. The query in flight rejects with it anyway.
    const ignore = () => undefined;
    client.on?.("error", ignore);
    let failure: unknown;
    try {
      if (!this.#setUp.has(client)) {
        await client.query(this.#settings);
        this.#setUp.add(client);
      }
      return await work(client);
    } catch (error) {
      failure = error;
      throw error;
    } finally {
      client.removeListener?.("error", ignore);
      client.release(isConnectionError(failure) ? (failure as Error) : undefined);
    }
  }

  end(): Promise<void> {
    return this.#pool.end();
  }
}

function checkNul(prepared: readonly PreparedMessage[]): void {
  prepared.forEach((message, index) => {
    for (const [field, value] of [
      ["topic", message.topic],
      ["key", message.key],
      ["idempotencyKey", message.idempotencyKey],
    ] as const) {
      if (value?.includes("\u0000")) {
        throw new OutboxError(
          OutboxErrorCode.InvalidEntry,
          `message ${index}: ${field} contains U+0000, which PostgreSQL text cannot store`,
          { details: { index, field } },
        );
      }
    }
  });
}

/** Every statement the store runs, built once per table (identifiers are validated and quoted). */
function buildStatements(n: SchemaNames) {
  const t = n.qualifiedTable;
  const enqueueInsert = `ins AS (
    INSERT INTO ${t} (topic, key, payload, headers, idempotency_key, created_at, available_at)
    SELECT v.topic, v.key, decode(v.payload, 'base64'), v.headers::json, v.idem, $6::timestamptz, v.available_at
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $7::timestamptz[])
      WITH ORDINALITY AS v(topic, key, payload, headers, idem, available_at, n)
    ORDER BY v.n
    RETURNING id
  )`;

  return {
    enqueue: `WITH ${enqueueInsert} SELECT ins.id::text AS id FROM ins ORDER BY ins.id`,
    // One notification per statement, sent at commit of the caller's transaction.
    enqueueNotify: `WITH ${enqueueInsert}
      SELECT ins.id::text AS id FROM ins
      WHERE (SELECT count(*) FROM (SELECT pg_notify($8, '')) AS wake) = 1
      ORDER BY ins.id`,
    ack: (fenced: boolean, asyncCommit: boolean) => `WITH ${fenced ? `${fenceCte(n, 3)},` : ""}
    acked AS (
      UPDATE ${t} SET status = 'published', settled_at = $2::timestamptz, lease_until = NULL
      WHERE id = ANY($1::bigint[]) AND status = 'pending' ${fenced ? fenceGuard(3) : ""}
      RETURNING key
    )
    SELECT ${fenced ? `${fenceColumns(3)},` : ""}
      (SELECT count(*) FROM acked WHERE key IS NOT NULL)::int AS keyed
      ${asyncCommit ? ", set_config('synchronous_commit', 'off', true) AS commit_mode" : ""}`,
    retry: (fenced: boolean) => `WITH ${fenced ? `${fenceCte(n, 5)},` : ""}
    updated AS (
      UPDATE ${t} o SET last_error = v.error, available_at = v.available_at, lease_until = NULL, claimed_by = NULL
      FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS v(id, error, available_at)
      WHERE o.id = v.id AND o.status = 'pending' AND o.claimed_by = $4 ${fenced ? fenceGuard(5) : ""}
      RETURNING 1
    )
    SELECT ${fenced ? `${fenceColumns(5)},` : ""} (SELECT count(*) FROM updated)::int AS n`,
    deadLetter: (fenced: boolean) => `WITH ${fenced ? `${fenceCte(n, 5)},` : ""}
    updated AS (
      UPDATE ${t} o SET status = 'dead', last_error = v.error, settled_at = $4::timestamptz, lease_until = NULL
      FROM unnest($1::bigint[], $2::text[]) AS v(id, error)
      WHERE o.id = v.id AND o.status = 'pending' AND o.claimed_by = $3 ${fenced ? fenceGuard(5) : ""}
      RETURNING 1
    )
    SELECT ${fenced ? `${fenceColumns(5)},` : ""} (SELECT count(*) FROM updated)::int AS n`,
    release: (fenced: boolean) => `WITH ${fenced ? `${fenceCte(n, 3)},` : ""}
    updated AS (
      UPDATE ${t} SET attempts = greatest(attempts - 1, 0), lease_until = NULL, claimed_by = NULL
      WHERE id = ANY($1::bigint[]) AND status = 'pending' AND claimed_by = $2 ${fenced ? fenceGuard(3) : ""}
      RETURNING 1
    )
    SELECT ${fenced ? `${fenceColumns(3)},` : ""} (SELECT count(*) FROM updated)::int AS n`,
    // No index leads to one claimer's rows: this reads the pending index (a claim whose reply
    // was lost is rare, and its entries are among the oldest pending).
    releaseClaimer: (fenced: boolean) => `WITH ${fenced ? `${fenceCte(n, 2)},` : ""}
    updated AS (
      UPDATE ${t} SET attempts = greatest(attempts - 1, 0), lease_until = NULL, claimed_by = NULL
      WHERE status = 'pending' AND claimed_by = $1 ${fenced ? fenceGuard(2) : ""}
      RETURNING 1
    )
    SELECT ${fenced ? `${fenceColumns(2)},` : ""} (SELECT count(*) FROM updated)::int AS n`,
    // Dead entries in id order through the dead index; a filter is checked on each dead row the scan
    // reaches until the page is full (no index serves topic or error text, and dead entries are few
    // next to the table). One statement per filter shape (12 at most), each planned for its own test.
    // Params: limit, after, then those the filter has: topic, key, LIKE pattern.
    listDead: (filter: DeadLetterFilter) => {
      const where = ["o.status = 'dead'", "o.id > $2::bigint"];
      let n = 2;
      if (filter.topic !== undefined) where.push(`o.topic = $${++n}::text`);
      if (filter.key === null) where.push("o.key IS NULL");
      else if (filter.key !== undefined) where.push(`o.key = $${++n}::text`);
      // lower() on both sides: case folded by the database's own rules, the same for the text and the pattern.
      if (filter.errorContains !== undefined) where.push(`lower(o.last_error) LIKE lower($${++n}::text) ESCAPE '!'`);
      return `SELECT ${entryColumns("o")} FROM ${t} o WHERE ${where.join(" AND ")} ORDER BY o.id LIMIT $1`;
    },
    dropDead: `WITH gone AS (DELETE FROM ${t} WHERE id = ANY($1::bigint[]) AND status = 'dead' RETURNING 1)
    SELECT (SELECT count(*) FROM gone)::int AS n`,
    requeueDead: `WITH updated AS (
      UPDATE ${t} SET status = 'pending', attempts = 0, available_at = $2::timestamptz,
        claimed_by = NULL, lease_until = NULL, settled_at = NULL
      WHERE id = ANY($1::bigint[]) AND status = 'dead'
      RETURNING 1
    )
    SELECT (SELECT count(*) FROM updated)::int AS n`,
    purge: `WITH doomed AS (
      SELECT id FROM ${t}
      WHERE status <> 'pending' AND settled_at < $1::timestamptz
      ORDER BY settled_at
      LIMIT $2
      FOR UPDATE SKIP LOCKED
    ),
    gone AS (DELETE FROM ${t} o USING doomed d WHERE o.id = d.id RETURNING 1)
    SELECT (SELECT count(*) FROM gone)::int AS n`,
    // One pass over the pending entries (through the pending index) for their count, the leased
    // ones and the oldest, not three: the dashboard reads this every few seconds. Dead entries are
    // counted from their own index (an index-only scan once vacuum has visited the table).
    stats: `SELECT p.pending, p.in_flight, p.oldest,
      (SELECT count(*) FROM ${t} WHERE status = 'dead')::float8 AS dead
    FROM (
      SELECT count(*)::float8 AS pending,
        (count(*) FILTER (WHERE lease_until > $1::timestamptz))::float8 AS in_flight,
        (extract(epoch FROM min(created_at)) * 1000)::float8 AS oldest
      FROM ${t} WHERE status = 'pending'
    ) p`,
    // The scan is read once (it is referenced more than once: PostgreSQL materialises it).
    // A key is blocked when its first pending entry (its lowest id in the scan: no pending entry
    // lies below the scan) failed and waits for its retry.
    pendingSummary: `WITH scan AS (
      SELECT id, key, last_error IS NOT NULL AS failed,
        available_at > $1::timestamptz AND (lease_until IS NULL OR lease_until <= $1::timestamptz) AS waiting
      FROM ${t} WHERE status = 'pending' ORDER BY id LIMIT $2
    ),
    keys AS (
      SELECT key, count(*)::int AS pending, min(id) AS head FROM scan WHERE key IS NOT NULL GROUP BY key
    ),
    hot AS (
      SELECT key, pending FROM keys ORDER BY pending DESC, key COLLATE "C" LIMIT $3
    ),
    blocked AS (
      SELECT k.key, k.pending, k.head FROM keys k JOIN scan s ON s.id = k.head
      WHERE s.waiting AND s.failed
      ORDER BY k.pending DESC, k.key COLLATE "C" LIMIT $4
    )
    SELECT
      (SELECT count(*) FROM scan)::int AS scanned,
      (SELECT count(*) FROM scan WHERE waiting)::int AS retry_waiting,
      (SELECT coalesce(json_agg(json_build_object('key', key, 'pending', pending) ORDER BY pending DESC, key COLLATE "C"), '[]')
        FROM hot) AS hot_keys,
      (SELECT coalesce(json_agg(json_build_object('key', b.key, 'pending', b.pending, 'id', o.id::text,
          'attempts', o.attempts, 'last_error', o.last_error,
          'available_at', (extract(epoch FROM o.available_at) * 1000)::float8)
          ORDER BY b.pending DESC, b.key COLLATE "C"), '[]')
        FROM blocked b JOIN ${t} o ON o.id = b.head) AS blocked_keys`,
    // Params: now, scanLimit, recentErrors, lock names at most. The scan is read once (materialised).
    relayActivity: `WITH scan AS (
      SELECT id, claimed_by, lease_until, last_error IS NOT NULL AS failed
      FROM ${t} WHERE status = 'pending' ORDER BY id LIMIT $2
    ),
    errors AS (
      (SELECT o.id, o.key, o.topic, o.last_error, o.attempts, o.available_at AS at, false AS dead
        FROM scan s JOIN ${t} o ON o.id = s.id WHERE s.failed ORDER BY o.available_at DESC, o.id DESC LIMIT $3)
      UNION ALL
      (SELECT id, key, topic, last_error, attempts, settled_at AS at, true AS dead
        FROM ${t} WHERE status = 'dead' ORDER BY id DESC LIMIT $3)
    )
    SELECT
      (SELECT count(*) FROM scan)::int AS scanned,
      (SELECT coalesce(json_agg(json_build_object('lock', f.lock_name, 'token', f.token::text)
          ORDER BY f.lock_name COLLATE "C"), '[]')
        FROM (SELECT lock_name, token FROM ${n.qualifiedFence} ORDER BY lock_name COLLATE "C" LIMIT $4) f) AS fences,
      (SELECT coalesce(json_agg(json_build_object('claimer', c.claimed_by, 'n', c.n, 'until', c.until)), '[]')
        FROM (SELECT claimed_by, count(*)::int AS n, (extract(epoch FROM max(lease_until)) * 1000)::float8 AS until
          FROM scan WHERE lease_until > $1::timestamptz AND claimed_by IS NOT NULL GROUP BY claimed_by) c) AS claimers,
      (SELECT (extract(epoch FROM s.settled_at) * 1000)::float8
        FROM (SELECT status, settled_at FROM ${t} WHERE status <> 'pending' ORDER BY settled_at DESC LIMIT $2) s
        WHERE s.status = 'published' ORDER BY s.settled_at DESC LIMIT 1) AS last_published,
      (SELECT coalesce(json_agg(json_build_object('id', e.id::text, 'key', e.key, 'topic', e.topic,
          'error', e.last_error, 'attempts', e.attempts, 'at', (extract(epoch FROM e.at) * 1000)::float8,
          'dead', e.dead) ORDER BY e.at DESC, e.id DESC), '[]')
        FROM (SELECT * FROM errors WHERE last_error IS NOT NULL ORDER BY at DESC, id DESC LIMIT $3) e) AS recent_errors`,
  };
}

/** Creates the PostgreSQL store. Run `migrate()` once first (or apply `sql/schema.sql`). */
export function createPostgresStore(options: PostgresStoreOptions): PostgresStore {
  return new PostgresStore(options);
}
