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
  type PreparedMessage,
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
import { closedError, isConnectionError, storeError } from "./errors.js";
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

// The byte count lets the client decode the base64 payload straight into the entry's own array.
const entryColumns = (alias: string) => `${alias}.id::text AS id, ${alias}.topic, ${alias}.key,
  encode(${alias}.payload, 'base64') AS payload, length(${alias}.payload) AS payload_bytes,
  ${alias}.headers::text AS headers, coalesce(${alias}.idempotency_key, ${alias}.id::text) AS idempotency_key,
  (extract(epoch FROM ${alias}.created_at) * 1000)::float8 AS created_at,
  (extract(epoch FROM ${alias}.available_at) * 1000)::float8 AS available_at,
  ${alias}.attempts, ${alias}.last_error`;

/**
 * A claim first looks for key heads among the oldest `limit x this` pending entries; only when
 * that window holds too few claimable heads does it walk the distinct pending keys.
 */
const claimWindowFactor = 4;
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

function toEntry(row: Row): OutboxEntry {
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
  #jitActive: Promise<boolean> | undefined;

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
    };
    this.#sql = buildStatements(this.names);
    this.#prepared = options.preparedStatements ?? options.pool !== undefined;

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
    const params: unknown[] = [iso(now), iso(now + leaseMs), limit, request.claimer, limit * claimWindowFactor];
    const rows = await this.#run(
      "claim",
      request.fence ? this.#sql.claimFenced : this.#sql.claim,
      params,
      request.fence,
    );
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

  async listDead(options: ListDeadOptions = {}): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const limit = positiveInteger(options.limit ?? 100, "limit");
    const after = cursorId(options.after);
    const rows = await this.#run("listDead", this.#sql.listDead, [limit, after], undefined, true);
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
    if (this.#pool && this.#poolErrorHandler) this.#pool.removeListener("error", this.#poolErrorHandler);
  }

  /**
   * Runs one relay-side statement. Settles (ack, retry, deadLetter, release) are idempotent, so
   * a statement that failed because its connection died is sent again on a fresh one (a pool
   * hands out another): one killed backend then costs no lease-length delay.
   */
  async #run(operation: string, sql: string, params: unknown[], fence?: Fence, idempotent = false): Promise<Row[]> {
    const send = operation === "claim" ? this.#claimQuery.bind(this) : this.#query.bind(this);
    if (fence) params.push(String(fence.lock), fence.token.toString());
    let rows: Row[] | undefined;
    for (let attempt = 1; rows === undefined; attempt++) {
      try {
        rows = (await send(sql, params)).rows as Row[];
      } catch (error) {
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

  /**
   * The claim's worst-case row estimates (a run per key) cross `jit_above_cost`, and compiling
   * it costs far more than running it (60-800 ms against ~5 ms). Where the server would JIT,
   * the claim runs with `SET LOCAL jit = off` on a pooled connection of its own.
   */
  async #claimQuery(text: string, params: unknown[]): Promise<{ rows: unknown[] }> {
    const pool = this.#pool;
    if (!pool?.connect) return this.#query(text, params);
    this.#jitActive ??= this.#db
      .query("SELECT (pg_jit_available() AND current_setting('jit')::boolean) AS jit", [])
      .then(({ rows }) => (rows[0] as Row | undefined)?.jit === true)
      .catch(() => true);
    if (!(await this.#jitActive)) return this.#query(text, params);
    const client = await pool.connect();
    // A checked-out client whose backend dies emits "error"; unheard, that would crash the process.
    // The failing query rejects with it anyway.
    const ignore = () => undefined;
    client.on?.("error", ignore);
    let failure: unknown;
    try {
      await client.query("BEGIN", []);
      await client.query("SET LOCAL jit = off", []);
      const result = await this.#query(text, params, client);
      await client.query("COMMIT", []);
      return result;
    } catch (error) {
      failure = error;
      await client.query("ROLLBACK", []).catch(() => undefined);
      throw error;
    } finally {
      client.removeListener?.("error", ignore);
      client.release(isConnectionError(failure) ? (failure as Error) : undefined);
    }
  }

  #wake(): void {
    if (!this.#closed) this.#wakeUps.wake();
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError();
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
  // The fence parameters always come last ($k lock name, $k+1 token): see #run. The upsert keeps
  // the greater token and returns it, so a refusal reports the true newest token even when a
  // newer leader's statement committed a moment ago.
  const fenceCte = (k: number) => `fence AS (
    INSERT INTO ${n.qualifiedFence} AS f (lock_name, token) VALUES ($${k}, $${k + 1}::numeric)
    ON CONFLICT (lock_name) DO UPDATE SET token = greatest(f.token, excluded.token)
    RETURNING token
  )`;
  const fenceColumns = (k: number) => `(SELECT count(*) FROM fence WHERE token = $${k + 1}::numeric)::int AS fence_ok,
    (SELECT token::text FROM fence) AS newest_token`;
  const fenceGuard = (k: number) => `AND EXISTS (SELECT 1 FROM fence WHERE token = $${k + 1}::numeric)`;

  const enqueueInsert = `ins AS (
    INSERT INTO ${t} (topic, key, payload, headers, idempotency_key, created_at, available_at)
    SELECT v.topic, v.key, decode(v.payload, 'base64'), v.headers::json, v.idem, $6::timestamptz, v.available_at
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $7::timestamptz[])
      WITH ORDINALITY AS v(topic, key, payload, headers, idem, available_at, n)
    ORDER BY v.n
    RETURNING id
  )`;

  /**
   * The claim, in one statement (params: $1 now, $2 lease end, $3 limit, $4 claimer, $5 window,
   * then the fence). Its cost does not grow with the backlog behind a key:
   * 1. Key heads are looked for among the oldest pending entries, ids from the oldest to
   *    (oldest + limit x 4). No pending entry lies below the oldest, so the first pending entry of
   *    each key in that window is the key's head: one pass and a sort, no probe per entry, however
   *    many entries of one key the window holds (keys compare bytewise, COLLATE "C": fast, and two
   *    different keys never count as one). The oldest 2 x limit claimable heads are locked with
   *    SKIP LOCKED in id order: a head another claim holds is skipped, and its key with it, so two
   *    claimers never share a key.
   * 2. Only when that window yields fewer than `limit` heads and more entries lie past it, a loose
   *    index scan over (key, id) visits each pending key once for heads past the window (and the
   *    keyless index supplies keyless ones).
   * 3. Each head's run follows from the (key, id) index, a fair share of `limit` per key; the run
   *    stops before its first successor that is not claimable or not lockable.
   * Rows a scan has found are locked through their ctid (a TID scan: one page read per row, no
   * second index descent). The version found is visible to this statement's snapshot, so it cannot
   * be pruned meanwhile; a version updated since is followed to its newest one by the row lock,
   * and the conditions are checked again there (READ COMMITTED), as for any FOR UPDATE.
   * Claimable: available now and unleased, lease expired, or (with a fence) leased under an
   * older token of the same lock: a new leader takes a deposed leader's entries over at once.
   */
  // Is there a pending entry of this key below `id`? Read downwards from `id`, never below the
  // oldest pending id: acked entries not yet vacuumed sit at the bottom of a key's range.
  const earlierPending = (key: string, id: string) => `SELECT 1 FROM ${t} p
        WHERE p.key = ${key} AND p.status = 'pending' AND p.id < ${id} AND p.id >= (SELECT id FROM oldest)
        ORDER BY p.key DESC, p.id DESC LIMIT 1`;
  const claimable = (a: string, fenced: boolean) => `${a}.available_at <= $1::timestamptz
    AND (${a}.lease_until IS NULL OR ${a}.lease_until <= $1::timestamptz${
      fenced ? ` OR (${a}.lease_lock = $6 AND ${a}.lease_token < $7::numeric)` : ""
    })`;
  const claim = (fenced: boolean) => `WITH RECURSIVE ${fenced ? `${fenceCte(6)},` : ""}
  oldest AS MATERIALIZED (
    SELECT min(id) AS id FROM ${t} WHERE status = 'pending'
  ),
  edge AS MATERIALIZED (SELECT id + $5 AS id FROM oldest),
  near_window AS MATERIALIZED (
    SELECT DISTINCT ON (o.key IS NULL, coalesce(o.key, o.id::text) COLLATE "C")
      o.id, o.ctid AS row, ${claimable("o", fenced)} AS ok
    FROM ${t} o
    WHERE o.status = 'pending' AND o.id >= (SELECT id FROM oldest) AND o.id < (SELECT id FROM edge)
    ORDER BY o.key IS NULL, coalesce(o.key, o.id::text) COLLATE "C", o.id
  ),
  near_heads AS MATERIALIZED (
    SELECT o.id, o.key FROM ${t} o
    WHERE o.ctid = ANY (ARRAY(SELECT row FROM near_window WHERE ok ORDER BY id LIMIT 2 * $3))
      AND o.status = 'pending' AND ${claimable("o", fenced)}
      ${fenced ? fenceGuard(6) : ""}
    ORDER BY o.id
    LIMIT $3
    FOR UPDATE OF o SKIP LOCKED
  ),
  past AS MATERIALIZED (
    SELECT (SELECT count(*) FROM near_heads) < $3
      AND EXISTS (SELECT 1 FROM ${t} WHERE status = 'pending' AND id >= (SELECT id FROM edge)) AS needed
  ),
  far_keys AS (
    (SELECT max(key) AS key FROM ${t} WHERE status = 'pending' AND key IS NOT NULL AND (SELECT needed FROM past))
    UNION ALL
    SELECT (SELECT max(o.key) FROM ${t} o WHERE o.status = 'pending' AND o.key < f.key)
    FROM far_keys f WHERE f.key IS NOT NULL
  ),
  far_candidates AS (
    SELECT h.id FROM far_keys f
    CROSS JOIN LATERAL (
      SELECT p.id FROM ${t} p
      WHERE p.status = 'pending' AND p.key = f.key AND p.id >= (SELECT id FROM edge)
      ORDER BY p.key, p.id LIMIT 1
    ) h
    WHERE f.key IS NOT NULL
      AND NOT EXISTS (${earlierPending("f.key", "(SELECT id FROM edge)")})
  ),
  far_heads AS MATERIALIZED (
    SELECT o.id, o.key FROM ${t} o
    WHERE o.id IN (SELECT id FROM far_candidates) AND o.status = 'pending' AND ${claimable("o", fenced)}
      ${fenced ? fenceGuard(6) : ""}
    ORDER BY o.id
    LIMIT greatest($3 - (SELECT count(*) FROM near_heads), 0)
    FOR UPDATE OF o SKIP LOCKED
  ),
  far_keyless AS MATERIALIZED (
    SELECT o.id, o.key FROM ${t} o
    WHERE (SELECT needed FROM past) AND o.status = 'pending' AND o.key IS NULL
      AND o.id >= (SELECT id FROM edge) AND ${claimable("o", fenced)}
      ${fenced ? fenceGuard(6) : ""}
    ORDER BY o.id
    LIMIT greatest($3 - (SELECT count(*) FROM near_heads), 0)
    FOR UPDATE OF o SKIP LOCKED
  ),
  heads AS (
    SELECT id, key FROM near_heads UNION ALL SELECT id, key FROM far_heads UNION ALL SELECT id, key FROM far_keyless
  ),
  share AS (
    SELECT ceil($3::float8 / greatest(count(*), 1))::int - 1 AS n FROM heads WHERE key IS NOT NULL
  ),
  succ AS MATERIALIZED (
    SELECT s.id, s.key, s.ok, s.row FROM heads h
    CROSS JOIN LATERAL (
      SELECT p.id, p.key, (${claimable("p", fenced)}) AS ok, p.ctid AS row FROM ${t} p
      WHERE p.status = 'pending' AND p.key = h.key AND p.id > h.id
      ORDER BY p.id LIMIT (SELECT n FROM share)
    ) s
    WHERE h.key IS NOT NULL
  ),
  succ_locked AS MATERIALIZED (
    SELECT o.id, o.key FROM ${t} o
    WHERE o.ctid = ANY (ARRAY(SELECT row FROM succ WHERE ok)) AND o.status = 'pending' AND ${claimable("o", fenced)}
    FOR UPDATE OF o SKIP LOCKED
  ),
  stops AS (
    SELECT s.key, min(s.id) AS stop FROM succ s LEFT JOIN succ_locked l ON l.id = s.id
    WHERE l.id IS NULL GROUP BY s.key
  ),
  chosen AS (
    SELECT id FROM heads
    UNION ALL
    SELECT l.id FROM succ_locked l LEFT JOIN stops st ON st.key = l.key WHERE st.stop IS NULL OR l.id < st.stop
    ORDER BY id LIMIT $3
  ),
  claimed AS (
    UPDATE ${t} o SET attempts = o.attempts + 1, claimed_by = $4, lease_until = $2::timestamptz,
      lease_lock = ${fenced ? "$6" : "NULL"}, lease_token = ${fenced ? "$7::numeric" : "NULL"}
    FROM chosen c WHERE o.id = c.id
    RETURNING o.*
  )
  SELECT ${fenced ? `${fenceColumns(6)},` : ""} ${entryColumns("c")}
  FROM (SELECT 1) AS one LEFT JOIN claimed c ON true
  ORDER BY c.id`;

  return {
    enqueue: `WITH ${enqueueInsert} SELECT ins.id::text AS id FROM ins ORDER BY ins.id`,
    // One notification per statement, sent at commit of the caller's transaction.
    enqueueNotify: `WITH ${enqueueInsert}
      SELECT ins.id::text AS id FROM ins
      WHERE (SELECT count(*) FROM (SELECT pg_notify($8, '')) AS wake) = 1
      ORDER BY ins.id`,
    claim: claim(false),
    claimFenced: claim(true),
    ack: (fenced: boolean, asyncCommit: boolean) => `WITH ${fenced ? `${fenceCte(3)},` : ""}
    acked AS (
      UPDATE ${t} SET status = 'published', settled_at = $2::timestamptz, lease_until = NULL
      WHERE id = ANY($1::bigint[]) AND status = 'pending' ${fenced ? fenceGuard(3) : ""}
      RETURNING key
    )
    SELECT ${fenced ? `${fenceColumns(3)},` : ""}
      (SELECT count(*) FROM acked WHERE key IS NOT NULL)::int AS keyed
      ${asyncCommit ? ", set_config('synchronous_commit', 'off', true) AS commit_mode" : ""}`,
    retry: (fenced: boolean) => `WITH ${fenced ? `${fenceCte(5)},` : ""}
    updated AS (
      UPDATE ${t} o SET last_error = v.error, available_at = v.available_at, lease_until = NULL, claimed_by = NULL
      FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS v(id, error, available_at)
      WHERE o.id = v.id AND o.status = 'pending' AND o.claimed_by = $4 ${fenced ? fenceGuard(5) : ""}
      RETURNING 1
    )
    SELECT ${fenced ? `${fenceColumns(5)},` : ""} (SELECT count(*) FROM updated)::int AS n`,
    deadLetter: (fenced: boolean) => `WITH ${fenced ? `${fenceCte(5)},` : ""}
    updated AS (
      UPDATE ${t} o SET status = 'dead', last_error = v.error, settled_at = $4::timestamptz, lease_until = NULL
      FROM unnest($1::bigint[], $2::text[]) AS v(id, error)
      WHERE o.id = v.id AND o.status = 'pending' AND o.claimed_by = $3 ${fenced ? fenceGuard(5) : ""}
      RETURNING 1
    )
    SELECT ${fenced ? `${fenceColumns(5)},` : ""} (SELECT count(*) FROM updated)::int AS n`,
    release: (fenced: boolean) => `WITH ${fenced ? `${fenceCte(3)},` : ""}
    updated AS (
      UPDATE ${t} SET attempts = greatest(attempts - 1, 0), lease_until = NULL, claimed_by = NULL
      WHERE id = ANY($1::bigint[]) AND status = 'pending' AND claimed_by = $2 ${fenced ? fenceGuard(3) : ""}
      RETURNING 1
    )
    SELECT ${fenced ? `${fenceColumns(3)},` : ""} (SELECT count(*) FROM updated)::int AS n`,
    listDead: `SELECT ${entryColumns("o")} FROM ${t} o WHERE o.status = 'dead' AND o.id > $2::bigint ORDER BY o.id LIMIT $1`,
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
    stats: `SELECT
      (SELECT count(*) FROM ${t} WHERE status = 'pending')::float8 AS pending,
      (SELECT count(*) FROM ${t} WHERE status = 'pending' AND lease_until > $1::timestamptz)::float8 AS in_flight,
      (SELECT count(*) FROM ${t} WHERE status = 'dead')::float8 AS dead,
      (SELECT (extract(epoch FROM min(created_at)) * 1000)::float8 FROM ${t} WHERE status = 'pending') AS oldest`,
  };
}

/** Creates the PostgreSQL store. Run `migrate()` once first (or apply `sql/schema.sql`). */
export function createPostgresStore(options: PostgresStoreOptions): PostgresStore {
  return new PostgresStore(options);
}
