import {
  type CaptureStats,
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
  type RetryItem,
  type SettleContext,
  type StoreCapabilities,
  type StoreStats,
  systemClock,
  type Unsubscribe,
  WakeUpListeners,
} from "@outbox/core";
import { entryColumns } from "./claim.js";
import { sqlState, storeError } from "./errors.js";
import { fenceColumns, fenceCte, fenceGuard } from "./fence.js";
import { type Queryable, runScript } from "./queryable.js";
import { fnv1a, quoteIdent, resolveNames, type SchemaNames, type SchemaOptions } from "./schema.js";
import { type PgPoolLike, PostgresStore, toEntry } from "./store.js";

/**
 * EXPERIMENTAL: log-based capture for PostgreSQL (see docs/capture-modes.md). The names of the
 * publication, the replication slot and the requeue trigger of one outbox table.
 */
export interface CaptureNames extends SchemaNames {
  readonly publication: string;
  readonly slot: string;
  /** Prefix of the transactional logical messages the requeue trigger emits. */
  readonly requeuePrefix: string;
  readonly requeueFunction: string;
  readonly requeueTrigger: string;
}

export interface CaptureOptions extends SchemaOptions {
  /** Publication name. Default `<schema>_<table>_outbox` (lower case; hashed past 63 bytes). */
  publication?: string;
  /** Replication slot name ([a-z0-9_], at most 63). Default like the publication's. */
  slot?: string;
}

const slotPattern = /^[a-z0-9_]{1,63}$/;

function defaultCaptureName(n: SchemaNames): string {
  const name = `${n.schema}_${n.table}_outbox`.toLowerCase();
  const plain = name.replace(/[^a-z0-9_]/g, "_");
  return plain.length <= 63 && plain === name
    ? plain
    : `outbox_${fnv1a(`${n.schema}.${n.table}`).toString(36)}_${plain.slice(0, 40)}`;
}

/** Resolves (and validates) the capture object names of a table. */
export function resolveCaptureNames(options: CaptureOptions = {}): CaptureNames {
  const n = resolveNames(options);
  const base = defaultCaptureName(n);
  const publication = options.publication ?? base;
  const slot = options.slot ?? base;
  for (const [what, value] of [
    ["publication", publication],
    ["slot", slot],
  ] as const) {
    if (!slotPattern.test(value)) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        `${what} must match ${slotPattern}, got ${JSON.stringify(value)}`,
        { details: { option: what } },
      );
    }
  }
  return {
    ...n,
    publication,
    slot,
    requeuePrefix: `outbox-requeue:${n.schema}.${n.table}`,
    requeueFunction: `${n.quotedSchema}.${quoteIdent(`${n.table}_capture_requeue`)}`,
    requeueTrigger: quoteIdent(`${n.table}_capture_requeue`),
  };
}

/**
 * EXPERIMENTAL. Creates what log capture needs, idempotently: the publication (inserts of the
 * outbox table only), a trigger that announces requeued dead letters in the log (a transactional
 * logical message, so they are delivered again), and the logical replication slot (pgoutput).
 * Run `migrate()` first. Needs `wal_level = logical` and a role with REPLICATION (or superuser).
 * `db` is a pg Pool or Client (PGlite has no replication: it keeps polling).
 */
export async function migrateCapture(db: Queryable, options: CaptureOptions = {}): Promise<void> {
  const c = resolveCaptureNames(options);
  const lockId = fnv1a(`@outbox/store-postgres:migrate-capture:${c.schema}.${c.table}`);
  const script = `SELECT pg_advisory_xact_lock(${lockId});
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = '${c.publication}') THEN
    CREATE PUBLICATION ${quoteIdent(c.publication)} FOR TABLE ${c.qualifiedTable} WITH (publish = 'insert');
  END IF;
END $$;
CREATE OR REPLACE FUNCTION ${c.requeueFunction}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM pg_logical_emit_message(true, '${c.requeuePrefix}', json_build_object('id', NEW.id::text, 'key', NEW.key)::text);
  RETURN NULL;
END $fn$;
DO $$ BEGIN
  IF NOT EXISTS (
    SELECT 1 FROM pg_trigger WHERE tgrelid = '${c.qualifiedTable}'::regclass AND tgname = '${c.table}_capture_requeue'
  ) THEN
    CREATE TRIGGER ${c.requeueTrigger} AFTER UPDATE OF status ON ${c.qualifiedTable}
      FOR EACH ROW WHEN (OLD.status = 'dead' AND NEW.status = 'pending') EXECUTE FUNCTION ${c.requeueFunction}();
  END IF;
END $$;`;
  try {
    const { rows } = await db.query("SHOW wal_level");
    const level = (rows[0] as { wal_level?: string } | undefined)?.wal_level;
    if (level !== "logical") {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        `log capture needs wal_level = logical (the server has ${String(level)}); see docs/capture-modes.md`,
      );
    }
    await runScript(db, script);
    // Not in the script: a slot cannot be created in a transaction that has written.
    await db
      .query(
        `SELECT pg_create_logical_replication_slot($1, 'pgoutput')
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`,
        [c.slot],
      )
      .catch((error: unknown) => {
        // Another process created it between the check and the call.
        if (sqlState(error) !== "42710") throw error;
      });
  } catch (cause) {
    if (OutboxError.is(cause)) throw cause;
    throw new OutboxError(OutboxErrorCode.StoreUnavailable, `migrating log capture of ${c.qualifiedTable} failed`, {
      cause,
    });
  }
}

/** How long dropCapture waits for a slot's consumer to let go (a store closed a moment ago). */
const dropWaitMs = 5_000;

/**
 * Drops the slot, the trigger and the publication (e.g. to go back to polling). A slot still in
 * use is waited for up to 5 s (a consumer closed a moment ago), then refused with
 * OUTBOX_STORE_UNAVAILABLE and nothing dropped: close the store (stop the relay) holding it first.
 */
export async function dropCapture(db: Queryable, options: CaptureOptions = {}): Promise<void> {
  const c = resolveCaptureNames(options);
  const deadline = Date.now() + dropWaitMs;
  for (;;) {
    const { rows } = await db.query("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", [c.slot]);
    const row = rows[0] as { active_pid: number | null } | undefined;
    if (!row) break;
    if (row.active_pid === null) {
      const dropped = await db.query("SELECT pg_drop_replication_slot($1)", [c.slot]).then(
        () => true,
        (error: unknown) => {
          // 42704: dropped meanwhile; 55006: a consumer took it meanwhile (waited for below).
          if (sqlState(error) === "42704") return true;
          if (sqlState(error) === "55006") return false;
          throw error;
        },
      );
      if (dropped) break;
    } else if (Date.now() > deadline) {
      throw new OutboxError(
        OutboxErrorCode.StoreUnavailable,
        `replication slot "${c.slot}" is in use by backend ${row.active_pid}: close the store (stop the relay) ` +
          "that holds it, then run dropCapture again; nothing was dropped",
        { details: { operation: "dropCapture", slot: c.slot } },
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await runScript(
    db,
    `DROP TRIGGER IF EXISTS ${c.requeueTrigger} ON ${c.qualifiedTable};
DROP FUNCTION IF EXISTS ${c.requeueFunction}();
DROP PUBLICATION IF EXISTS ${quoteIdent(c.publication)};`,
  );
}

/** The parts of pg-logical-replication the store uses (loaded on demand: an optional peer). */
interface ReplicationService {
  on(event: string, listener: (...args: never[]) => unknown): unknown;
  once(event: string, listener: (...args: never[]) => unknown): unknown;
  subscribe(plugin: unknown, slot: string): Promise<unknown>;
  acknowledge(lsn: string, ping?: boolean): Promise<boolean>;
  destroy(): Promise<unknown>;
}
interface ReplicationModule {
  LogicalReplicationService: new (client: object, config: object) => ReplicationService;
  PgoutputPlugin: new (options: { protoVersion: 1 | 2; publicationNames: string[]; messages?: boolean }) => unknown;
}

interface PgoutputMessage {
  tag: string;
  relation?: { schema: string; name: string };
  new?: Record<string, unknown>;
  commitLsn?: string | null;
  commitEndLsn?: string | null;
  prefix?: string;
  transactional?: boolean;
  content?: Uint8Array;
}

export interface PostgresCaptureStoreOptions extends CaptureOptions {
  /** A pg `Pool`: enqueue-side and settle statements run on it. */
  pool: PgPoolLike;
  /**
   * Connection settings of the replication connection (a pg `ClientConfig`). Default: the pool's
   * own options (pg-pool keeps them).
   */
  replication?: object;
  /**
   * Most unsettled entries held in memory (received, not acked or dead). Past it, or past 16 x
   * as many settled entries still waiting for the slot's position to pass them, the stream is
   * paused (backpressure to the server). Default 10000.
   */
  maxBuffered?: number;
  /**
   * Every claim first catches up with the log (see `catchUp()`): it then sees every entry
   * committed before it started, as a polling store's claim does, at the cost of a statement and a
   * stream round trip per claim. Default false: a claim serves what the stream has delivered, and
   * a claim that finds nothing catches up first. The relay needs no more: the stream wakes it.
   */
  catchUpClaims?: boolean;
  clock?: Clock;
  limits?: Partial<EntryLimits>;
  /** Background errors: the stream ending, status updates failing. Default console.warn. */
  onError?: (error: OutboxError) => void;
}

type ItemState = "ready" | "leased" | "done";

interface Item {
  entry: OutboxEntry;
  /** Key of the run: the entry's key, or `#id` for a keyless entry (a run of its own). */
  runKey: string;
  /** End LSN of the transaction that committed (or requeued) it. */
  lsn: bigint;
  /** Read from the log before this stream started: checked against the table before it is served. */
  verified: boolean;
  state: ItemState;
  claimer: string | null;
  leaseUntil: number;
  leaseToken: bigint | null;
  leaseLock: string | null;
  /** A requeue announcement: the entry itself is read from the table. */
  requeued: boolean;
  /** Position in the commit order (requeues: where the requeue committed). */
  seq: number;
}

function parseLsn(text: string | null | undefined): bigint {
  if (!text) return 0n;
  const [high, low] = text.split("/");
  return (BigInt(`0x${high ?? "0"}`) << 32n) | BigInt(`0x${low ?? "0"}`);
}

function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

function positiveInteger(value: unknown, name: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

/** The entry of an insert tuple as pgoutput delivers it (values parsed by pg's type parsers). */
function tupleEntry(row: Record<string, unknown>): OutboxEntry {
  const date = (value: unknown) => (value instanceof Date ? value : new Date(String(value)));
  const payload = row.payload;
  const headers = row.headers;
  const id = String(row.id);
  return {
    id,
    topic: String(row.topic),
    key: row.key === null || row.key === undefined ? null : String(row.key),
    payload: payload instanceof Uint8Array ? new Uint8Array(payload) : new Uint8Array(0),
    headers: (typeof headers === "string" ? JSON.parse(headers) : (headers ?? {})) as Record<string, string>,
    idempotencyKey:
      row.idempotency_key === null || row.idempotency_key === undefined ? id : String(row.idempotency_key),
    createdAt: date(row.created_at),
    availableAt: date(row.available_at),
    attempts: Number(row.attempts ?? 0),
    lastError: row.last_error === null || row.last_error === undefined ? null : String(row.last_error),
  };
}

/**
 * Settled entries that wait behind an unsettled one for the slot's position (payload dropped)
 * may be this many times maxBuffered before the stream pauses: a key waiting for a retry holds
 * back the slot, not the other keys, for that long.
 */
const settledBehindFactor = 16;
const noBytes = new Uint8Array(0);

/** Entries verified against the table per statement. */
const verifyChunk = 2_000;
/** A status update goes to the server at least this often (it also keeps wal_sender_timeout away). */
const statusIntervalMs = 5_000;

/**
 * EXPERIMENTAL: the PostgreSQL outbox store with log-based capture. `enqueue` is the polling
 * store's (an INSERT in the caller's transaction); `claim` serves committed entries read from a
 * logical replication slot (pgoutput), buffered in memory in commit order, by key runs; settles,
 * `stats`, `listDead`, requeue and purge keep using the table, which stays the operators' source of
 * truth. The slot's confirmed position only passes an entry once it and every entry before it
 * are settled (acked or dead). One consumer per slot: run relays with a leader lock. See
 * docs/capture-modes.md for the guarantees and what differs from polling.
 */
export class PostgresCaptureStore implements OutboxStore<Queryable> {
  readonly capabilities: StoreCapabilities = {
    wakeUps: true,
    transactions: true,
    concurrentWriters: true,
    // listDead is the table store's.
    deadLetterFilters: true,
  };
  readonly names: CaptureNames;
  readonly #table: PostgresStore;
  readonly #pool: PgPoolLike;
  readonly #clock: Clock;
  readonly #onError: (error: OutboxError) => void;
  readonly #wakeUps: WakeUpListeners;
  readonly #maxBuffered: number;
  readonly #replicationConfig: object;
  readonly #sql: ReturnType<typeof captureStatements>;
  #closed = false;

  /** Items added and not settled: what maxBuffered bounds. */
  #unsettled = 0;
  /** Every item received and not yet popped, by id. */
  readonly #items = new Map<string, Item>();
  /** Items in commit order (from #orderHead on): the slot's position follows its settled prefix. */
  #order: Item[] = [];
  #orderHead = 0;
  /** Unsettled items per run, in commit order; Map order is the order runs are offered in. */
  readonly #runs = new Map<string, Item[]>();
  readonly #unverified: Item[] = [];
  /** Highest commit end LSN whose transaction's entries are all settled. */
  #confirmed = 0n;
  #sentConfirmed = 0n;
  #space: { promise: Promise<void>; resolve: () => void } | null = null;

  #service: ReplicationService | null = null;
  #streamAlive = false;
  #streamFence: Fence | null = null;
  /** WAL position when this stream started: transactions committed before it may be handled. */
  #startLsn = 0n;
  #txn: Item[] | null = null;
  #statusTimer: ReturnType<typeof setInterval> | null = null;
  #starting: Promise<void> | null = null;
  #fatal: OutboxError | null = null;
  readonly #catchUpClaims: boolean;
  /** Markers written by catchUp() and not seen in the stream yet. */
  readonly #markers = new Map<string, (seen: boolean) => void>();
  #markerCount = 0;
  #sequence = 0;
  /** Markers in the transaction being received. */
  readonly #txnMarkers: string[] = [];

  constructor(options: PostgresCaptureStoreOptions) {
    if (!options?.pool || typeof options.pool.query !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "createPostgresCaptureStore needs a pg `pool`");
    }
    this.names = resolveCaptureNames(options);
    this.#pool = options.pool;
    this.#clock = options.clock ?? systemClock;
    this.#onError =
      options.onError ??
      ((error) => console.warn(`[@outbox/store-postgres capture ${this.names.qualifiedTable}]`, error));
    this.#maxBuffered = positiveInteger(options.maxBuffered ?? 10_000, "maxBuffered");
    this.#catchUpClaims = options.catchUpClaims ?? false;
    const replication = options.replication ?? options.pool.options;
    if (typeof replication !== "object" || replication === null) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        "log capture needs `replication` connection settings (or a pg Pool, whose options it reuses)",
      );
    }
    this.#replicationConfig = replication;
    this.#table = new PostgresStore({
      pool: options.pool,
      schema: options.schema,
      table: options.table,
      clock: options.clock,
      limits: options.limits,
      notifyChannel: false,
      listen: false,
      claimTimeoutMs: false,
      onError: options.onError,
    });
    this.#wakeUps = new WakeUpListeners({ debounceMs: 0, onError: this.#onError });
    this.#sql = captureStatements(this.names);
  }

  /** Entries held in memory and not settled (received, not acked or dead). */
  get buffered(): number {
    return this.#unsettled;
  }

  /** The LSN up to which the slot has been told everything is settled. */
  get confirmedLsn(): string {
    return formatLsn(this.#sentConfirmed);
  }

  enqueue(tx: Queryable, messages: OutboxMessage | readonly OutboxMessage[]): Promise<string[]> {
    return this.#table.enqueue(tx, messages);
  }

  async claim(request: ClaimRequest): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const limit = positiveInteger(request.limit, "limit");
    const leaseMs = positiveInteger(request.leaseMs, "leaseMs");
    await this.#ensureStream(request.fence);
    if (this.#catchUpClaims) await this.catchUp();
    let entries = await this.#take(request, limit, leaseMs);
    if (entries.length === 0 && !this.#catchUpClaims) {
      // Nothing delivered yet: make sure nothing committed is still on its way.
      await this.catchUp();
      entries = await this.#take(request, limit, leaseMs);
    }
    return entries;
  }

  /**
   * Waits until the stream has delivered every transaction committed before this call: writes a
   * logical message (a marker) and waits for it to come back through the slot. Also moves the
   * slot's position past idle WAL when nothing is pending. Returns early when the buffer is full
   * (`maxBuffered`): the stream is paused until entries are settled, and what is buffered comes
   * first in commit order anyway.
   */
  async catchUp(timeoutMs = 5_000): Promise<void> {
    this.#assertOpen();
    if (!this.#streamAlive || this.#space !== null) return;
    this.#markerCount += 1;
    const marker = `${this.#markerCount}:${Math.random().toString(36).slice(2)}`;
    const seen = new Promise<boolean>((resolve) => this.#markers.set(marker, resolve));
    try {
      // Transactional: its commit flushes the WAL, so the walsender sends it at once (a
      // non-transactional message waits for the WAL writer on PostgreSQL < 17).
      await this.#pool.query("SELECT pg_logical_emit_message(true, $1, $2)", [this.#markerPrefix, marker]);
    } catch (error) {
      this.#markers.delete(marker);
      throw storeError("claim", error);
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), timeoutMs);
    });
    const arrived = await Promise.race([seen, timedOut.then(() => false)]);
    clearTimeout(timer);
    this.#markers.delete(marker);
    if (!arrived) {
      throw new OutboxError(
        OutboxErrorCode.StoreUnavailable,
        `the replication stream did not catch up within ${timeoutMs} ms`,
        {
          details: { operation: "claim", slot: this.names.slot },
        },
      );
    }
  }

  get #markerPrefix(): string {
    return `outbox-sync:${this.names.slot}`;
  }

  async #take(request: ClaimRequest, limit: number, leaseMs: number): Promise<OutboxEntry[]> {
    await this.#verify();
    const now = this.#clock.now();
    const token = request.fence?.token ?? null;
    const lock = request.fence?.lock ?? null;
    const claimable = (item: Item) =>
      item.verified &&
      item.entry.availableAt.getTime() <= now &&
      (item.state === "ready" ||
        (item.state === "leased" &&
          (item.leaseUntil <= now ||
            (lock !== null &&
              item.leaseLock === lock &&
              item.leaseToken !== null &&
              item.leaseToken < (token as bigint)))));
    const taken: Item[] = [];
    for (const run of this.#runs.values()) {
      if (taken.length >= limit) break;
      for (const item of run) {
        if (taken.length >= limit || !claimable(item)) break;
        taken.push(item);
      }
    }
    // Commit order (a key's run is in it already; across keys it is the order of the log).
    taken.sort((a, b) => a.seq - b.seq);
    return taken.map((item) => {
      item.state = "leased";
      item.claimer = request.claimer;
      item.leaseUntil = now + leaseMs;
      item.leaseToken = token;
      item.leaseLock = lock;
      item.entry = { ...item.entry, attempts: item.entry.attempts + 1 };
      return item.entry;
    });
  }

  async ack(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    await this.#table.ack(ids, context);
    for (const id of ids) {
      const item = this.#items.get(id);
      if (item) this.#settle(item);
    }
    this.#advance();
  }

  async retry(items: readonly RetryItem[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    const own = items.filter((retry) => this.#ownedBy(retry.id, context.claimer));
    for (const retry of own) {
      if (!(retry.availableAt instanceof Date) || Number.isNaN(retry.availableAt.getTime())) {
        throw new OutboxError(OutboxErrorCode.InvalidOptions, `retry of ${retry.id}: availableAt must be a valid Date`);
      }
    }
    if (own.length === 0 && !context.fence) return;
    await this.#run(
      "retry",
      this.#sql.retry(context.fence !== undefined),
      [own.map((r) => r.id), own.map((r) => clean(String(r.error))), own.map((r) => r.availableAt.toISOString())],
      context.fence,
    );
    for (const retry of own) {
      const item = this.#items.get(retry.id);
      if (!item) continue;
      item.state = "ready";
      item.claimer = null;
      item.leaseToken = null;
      item.entry = { ...item.entry, availableAt: retry.availableAt, lastError: clean(String(retry.error)) };
    }
    // The retry time passes without a commit: wake the relay when it has.
    const soonest = Math.min(...own.map((r) => r.availableAt.getTime()));
    if (Number.isFinite(soonest)) {
      setTimeout(() => this.#wake(), Math.max(0, soonest - this.#clock.now())).unref?.();
    }
  }

  async deadLetter(items: readonly DeadLetterItem[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    const own = items.filter((letter) => this.#ownedBy(letter.id, context.claimer));
    if (own.length === 0 && !context.fence) return;
    await this.#run(
      "deadLetter",
      this.#sql.deadLetter(context.fence !== undefined),
      [own.map((l) => l.id), own.map((l) => clean(String(l.error))), new Date(this.#clock.now()).toISOString()],
      context.fence,
    );
    for (const letter of own) {
      const item = this.#items.get(letter.id);
      if (item) this.#settle(item);
    }
    this.#advance();
    if (own.length > 0) this.#wake();
  }

  async release(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    await this.#checkFence(context.fence);
    let released = 0;
    for (const id of ids) {
      if (!this.#ownedBy(id, context.claimer)) continue;
      const item = this.#items.get(id) as Item;
      this.#giveBack(item);
      released += 1;
    }
    if (released > 0) this.#wake();
  }

  async releaseClaimer(context: SettleContext): Promise<number> {
    this.#assertOpen();
    await this.#checkFence(context.fence);
    let released = 0;
    for (const item of this.#items.values()) {
      if (item.state === "leased" && item.claimer === context.claimer) {
        this.#giveBack(item);
        released += 1;
      }
    }
    if (released > 0) this.#wake();
    return released;
  }

  listDead(options?: ListDeadOptions): Promise<OutboxEntry[]> {
    return this.#table.listDead(options);
  }

  /** Requeued entries reach the stream through the requeue trigger (see migrateCapture). */
  requeueDead(ids: readonly string[]): Promise<number> {
    return this.#table.requeueDead(ids);
  }

  dropDead(ids: readonly string[]): Promise<number> {
    return this.#table.dropDead(ids);
  }

  purge(request: PurgeRequest): Promise<number> {
    return this.#table.purge(request);
  }

  /**
   * From the table, except `inFlight` (leases live in this store's memory in log mode), plus where
   * the slot stands: how far behind the log it is and how much WAL the server keeps for it.
   */
  async stats(): Promise<StoreStats> {
    const [stats, slot] = await Promise.all([this.#table.stats(), this.#slotStats()]);
    const now = this.#clock.now();
    let inFlight = 0;
    for (const item of this.#items.values()) if (item.state === "leased" && item.leaseUntil > now) inFlight += 1;
    return { ...stats, inFlight, capture: slot };
  }

  async #slotStats(): Promise<CaptureStats> {
    const source = this.names.slot;
    const { rows } = await this.#pool
      .query(
        `SELECT active, coalesce(wal_status, 'reserved') AS state,
           pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8 AS lag,
           pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 AS retained
         FROM pg_replication_slots WHERE slot_name = $1`,
        [source],
      )
      .catch((error: unknown) => {
        throw storeError("stats", error);
      });
    const [row] = rows as { active: boolean; state: string; lag: number | null; retained: number | null }[];
    if (!row) return { source, active: false, state: "missing", lagBytes: null, retainedBytes: null };
    return { source, active: row.active, state: row.state, lagBytes: row.lag, retainedBytes: row.retained };
  }

  subscribe(listener: () => void): Promise<Unsubscribe> {
    this.#assertOpen();
    return this.#wakeUps.subscribe(listener);
  }

  /** Ends the replication connection (without confirming anything more) and the table store. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#stopStream();
    this.#space?.resolve();
    await this.#wakeUps.close();
    await this.#table.close();
  }

  // ------------------------------------------------------------------ the stream

  async #ensureStream(fence: Fence | undefined): Promise<void> {
    if (this.#fatal) throw this.#fatal;
    const newToken =
      fence !== undefined &&
      (this.#streamFence === null || this.#streamFence.lock !== fence.lock || this.#streamFence.token !== fence.token);
    if (!newToken && this.#streamAlive) return;
    if (fence) await this.#fenceCheck(fence);
    // A newer token: what older tokens leased is claimable again at once (see claimable in #take).
    if (newToken) this.#streamFence = fence ?? null;
    // Another consumer may have held the slot since this store last read it (a leader in between,
    // or a relay without a lock) and settled entries held here: check them against the table
    // before serving them again (the fence check above has made that table state final).
    this.#recheckHeld();
    // This store holds the slot already: a new token of ours needs no new stream.
    if (this.#streamAlive) return;
    this.#starting ??= this.#startStream(fence !== undefined).finally(() => {
      this.#starting = null;
    });
    await this.#starting;
  }

  async #fenceCheck(fence: Fence): Promise<void> {
    try {
      await this.#run("claim", this.#sql.fenceOnly, [], fence);
    } catch (error) {
      const current = this.#streamFence;
      const newerHere = current !== null && current.lock === fence.lock && current.token > fence.token;
      if (OutboxError.is(error, OutboxErrorCode.Fenced) && !newerHere) {
        // Deposed: nothing in memory is ours to publish any more.
        await this.#stopStream();
        this.#forgetAll();
      }
      throw error;
    }
  }

  /**
   * (Re)starts streaming from the slot's confirmed position. With `takeover` (a fenced leader,
   * whose token the table has just accepted as the newest), a walsender still holding the slot
   * (a frozen or deposed holder) is terminated first.
   */
  async #startStream(takeover: boolean): Promise<void> {
    await this.#stopStream();
    const slot = this.names.slot;
    const { rows } = await this.#pool
      .query(
        "SELECT active_pid, wal_status, confirmed_flush_lsn::text AS confirmed FROM pg_replication_slots WHERE slot_name = $1",
        [slot],
      )
      .catch((error: unknown) => {
        throw storeError("claim", error);
      });
    const row = rows[0] as
      | { active_pid: number | null; wal_status: string | null; confirmed: string | null }
      | undefined;
    if (!row || row.wal_status === "lost") {
      this.#fatal = new OutboxError(
        OutboxErrorCode.StoreUnavailable,
        row
          ? `replication slot "${slot}" is invalidated (wal_status lost): entries may be missing from the log. ` +
              "Stop, drain the table with a polling relay, then drop and recreate the slot (docs/capture-modes.md)"
          : `replication slot "${slot}" does not exist: run migrateCapture() (if it was dropped, entries committed ` +
              "meanwhile are only in the table: drain them with a polling relay first, docs/capture-modes.md)",
        { details: { operation: "claim", slot } },
      );
      throw this.#fatal;
    }
    if (row.active_pid !== null) {
      if (!takeover) {
        throw new OutboxError(
          OutboxErrorCode.StoreUnavailable,
          `replication slot "${slot}" is in use by backend ${row.active_pid}: one consumer per slot (use a leader lock)`,
          { details: { operation: "claim", slot } },
        );
      }
      await this.#pool.query("SELECT pg_terminate_backend($1)", [row.active_pid]).catch(() => undefined);
      const deadline = Date.now() + 5_000;
      for (;;) {
        const { rows: active } = await this.#pool.query(
          "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
          [slot],
        );
        if ((active[0] as { active?: boolean } | undefined)?.active !== true) break;
        if (Date.now() > deadline) {
          throw new OutboxError(OutboxErrorCode.StoreUnavailable, `replication slot "${slot}" still active after 5 s`);
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
    const { rows: lsnRows } = await this.#pool.query("SELECT pg_current_wal_lsn()::text AS lsn");
    this.#startLsn = parseLsn((lsnRows[0] as { lsn: string }).lsn);

    let mod: ReplicationModule;
    try {
      const loaded = (await import("pg-logical-replication")) as { default?: unknown };
      mod = (loaded.default ?? loaded) as ReplicationModule;
    } catch (cause) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        "log capture needs the pg-logical-replication package: npm install pg-logical-replication",
        { cause },
      );
    }
    const service = new mod.LogicalReplicationService(this.#replicationConfig, {
      // Never acknowledge on its own: the slot's position is this store's to move (see #advance).
      acknowledge: { auto: false, timeoutSeconds: 0 },
      // The data handler is awaited, and the socket paused meanwhile: backpressure.
      flowControl: { enabled: true },
    });
    const plugin = new mod.PgoutputPlugin({
      protoVersion: 1,
      publicationNames: [this.names.publication],
      messages: true,
    });
    this.#service = service;
    this.#txn = null;
    service.on("data", (lsn: never, message: never) => this.#onMessage(lsn, message));
    service.on("error", (error: never) => {
      if (this.#service === service) this.#onError(storeError("replication stream", error));
    });
    const started = new Promise<void>((resolve, reject) => {
      service.once("start", () => resolve());
      const ended = (error?: unknown) => {
        const failure = storeError("replication stream", error ?? new Error("replication stream ended"));
        reject(failure);
        if (this.#service !== service) return;
        this.#streamAlive = false;
        for (const resolve of this.#markers.values()) resolve(false);
        this.#markers.clear();
        if (!this.#closed) {
          this.#onError(failure);
          // The relay claims again (and restarts the stream).
          this.#wake();
        }
      };
      service.subscribe(plugin, slot).then(
        () => ended(),
        (error: unknown) => ended(error),
      );
    });
    try {
      await started;
    } catch (error) {
      if (sqlState((error as OutboxError).cause) === "42704") {
        this.#fatal = new OutboxError(OutboxErrorCode.StoreUnavailable, `replication slot "${slot}" does not exist`, {
          cause: error,
        });
        throw this.#fatal;
      }
      throw error;
    }
    this.#streamAlive = true;
    // The periodic status update is also what keeps wal_sender_timeout away: it needs a position
    // to send before anything is settled in this stream, and the slot's own one changes nothing.
    const flushed = parseLsn(row.confirmed);
    if (flushed > this.#confirmed) this.#confirmed = flushed;
    this.#statusTimer = setInterval(() => this.#sendStatus(true), statusIntervalMs);
    this.#statusTimer.unref?.();
  }

  async #stopStream(): Promise<void> {
    const service = this.#service;
    this.#service = null;
    this.#streamAlive = false;
    if (this.#statusTimer) clearInterval(this.#statusTimer);
    this.#statusTimer = null;
    // Nobody waits for a marker of a stream that has ended.
    for (const resolve of this.#markers.values()) resolve(false);
    this.#markers.clear();
    // A handler waiting for room must not hold the old stream open.
    this.#space?.resolve();
    this.#space = null;
    await service?.destroy().catch(() => undefined);
  }

  async #onMessage(lsn: string, message: PgoutputMessage): Promise<void> {
    if (this.#closed) return;
    switch (message.tag) {
      case "begin":
        this.#txn = [];
        this.#txnMarkers.length = 0;
        return;
      case "insert": {
        const relation = message.relation;
        if (!relation || relation.schema !== this.names.schema || relation.name !== this.names.table) return;
        const entry = tupleEntry(message.new ?? {});
        this.#txn?.push(this.#newItem(entry, false));
        return;
      }
      case "message": {
        if (message.prefix === this.#markerPrefix && message.content) {
          // Seen at its commit (below): everything committed before it has been delivered by then.
          this.#txnMarkers.push(new TextDecoder().decode(message.content));
          return;
        }
        if (!message.transactional || message.prefix !== this.names.requeuePrefix || !message.content) return;
        const { id, key } = JSON.parse(new TextDecoder().decode(message.content)) as { id: string; key: string | null };
        // A placeholder: the entry is read from the table before it is served.
        const entry: OutboxEntry = {
          id,
          key,
          topic: "",
          payload: new Uint8Array(0),
          headers: {},
          idempotencyKey: id,
          createdAt: new Date(0),
          availableAt: new Date(0),
          attempts: 0,
          lastError: null,
        };
        this.#txn?.push(this.#newItem(entry, true));
        return;
      }
      case "commit": {
        const items = this.#txn ?? [];
        this.#txn = null;
        const end = parseLsn(message.commitEndLsn ?? lsn);
        const replayed = parseLsn(message.commitLsn) < this.#startLsn;
        let added = 0;
        for (const item of items) {
          const known = this.#items.get(item.entry.id);
          // Already held (a stream restarted): keep its state. A requeue announcement (unverified
          // here) of an entry settled as dead is a new delivery.
          if (known && (known.state !== "done" || item.verified)) continue;
          item.lsn = end;
          if (replayed && item.verified) item.verified = false;
          this.#add(item);
          added += 1;
        }
        if (added === 0 && this.#orderHead >= this.#order.length && end > this.#confirmed) {
          // Nothing of ours in it and nothing pending before it.
          this.#confirmed = end;
          this.#sendStatus(false);
        }
        if (added > 0) this.#wake();
        for (const marker of this.#txnMarkers.splice(0)) this.#markers.get(marker)?.(true);
        while (this.#full() && !this.#closed && this.#service) {
          this.#space ??= promiseWithResolve();
          // Paused until entries are settled: a marker behind the pause would only arrive after
          // the claims waiting for it had settled entries. Those claims serve the buffer instead.
          for (const resolve of this.#markers.values()) resolve(true);
          await this.#space.promise;
        }
        return;
      }
      default:
        return;
    }
  }

  /** `requeued`: a requeue announcement, whose entry is read from the table before it is served. */
  #newItem(entry: OutboxEntry, requeued: boolean): Item {
    return {
      entry,
      runKey: entry.key === null ? `i:${entry.id}` : `k:${entry.key}`,
      lsn: 0n,
      verified: !requeued,
      requeued,
      state: "ready",
      claimer: null,
      leaseUntil: 0,
      leaseToken: null,
      leaseLock: null,
      seq: 0,
    };
  }

  #full(): boolean {
    const held = this.#order.length - this.#orderHead;
    return this.#unsettled >= this.#maxBuffered || held >= this.#maxBuffered * settledBehindFactor;
  }

  #add(item: Item): void {
    this.#unsettled += 1;
    this.#sequence += 1;
    item.seq = this.#sequence;
    this.#items.set(item.entry.id, item);
    this.#order.push(item);
    const run = this.#runs.get(item.runKey);
    if (run) run.push(item);
    else this.#runs.set(item.runKey, [item]);
    if (!item.verified) this.#unverified.push(item);
  }

  /**
   * Entries read from the log that committed before this stream started may have been settled
   * by an earlier holder of the slot (acked, dead, retried), or are requeue announcements: the
   * table says what they are now. Entries no longer pending are dropped (settled).
   */
  async #verify(): Promise<void> {
    while (this.#unverified.length > 0) {
      const chunk = this.#unverified.splice(0, verifyChunk).filter((item) => item.state !== "done");
      if (chunk.length === 0) continue;
      const requeued = chunk.filter((item) => item.requeued);
      let states: Record<string, unknown>[];
      let rows: Record<string, unknown>[] = [];
      try {
        // What changed since the insert (attempts, retry time, error); the log's tuple keeps the rest.
        ({ rows: states } = (await this.#pool.query(this.#sql.verify, [chunk.map((item) => item.entry.id)])) as {
          rows: Record<string, unknown>[];
        });
        if (requeued.length > 0) {
          ({ rows } = (await this.#pool.query(this.#sql.entries, [requeued.map((item) => item.entry.id)])) as {
            rows: Record<string, unknown>[];
          });
        }
      } catch (error) {
        this.#unverified.unshift(...chunk);
        throw storeError("claim", error);
      }
      const pending = new Map(states.map((row) => [String(row.id), row]));
      const full = new Map(rows.map((row) => [String(row.id), row]));
      for (const item of chunk) {
        const state = pending.get(item.entry.id);
        const row = full.get(item.entry.id);
        if (!state || (item.requeued && !row)) {
          this.#settle(item);
          continue;
        }
        const base = row ? toEntry(row) : item.entry;
        item.entry = {
          ...base,
          // The table counts failed attempts; an entry held here also counts its claims.
          attempts: Math.max(base.attempts, Number(state.attempts)),
          availableAt: new Date(Number(state.available_at)),
          lastError: state.last_error === null ? null : String(state.last_error),
        };
        item.verified = true;
        item.requeued = false;
      }
      this.#advance();
    }
  }

  /** Every entry held and not settled is checked against the table again (see #verify). */
  #recheckHeld(): void {
    for (const item of this.#items.values()) {
      if (item.state === "done" || !item.verified) continue;
      item.verified = false;
      this.#unverified.push(item);
    }
  }

  #ownedBy(id: string, claimer: string): boolean {
    const item = this.#items.get(id);
    return item !== undefined && item.state === "leased" && item.claimer === claimer;
  }

  #giveBack(item: Item): void {
    item.state = "ready";
    item.claimer = null;
    item.leaseToken = null;
    item.entry = { ...item.entry, attempts: Math.max(0, item.entry.attempts - 1) };
  }

  #settle(item: Item): void {
    if (item.state === "done") return;
    item.state = "done";
    this.#unsettled -= 1;
    // Only its place in the commit order matters now.
    item.entry = { ...item.entry, payload: noBytes, headers: {} };
    const run = this.#runs.get(item.runKey);
    if (run) {
      const index = run.indexOf(item);
      if (index >= 0) run.splice(index, 1);
      if (run.length === 0) this.#runs.delete(item.runKey);
    }
  }

  /** Pops the settled prefix of the commit order and moves the slot's position past it. */
  #advance(): void {
    const order = this.#order;
    let moved = false;
    while (this.#orderHead < order.length) {
      const item = order[this.#orderHead] as Item;
      if (item.state !== "done") break;
      this.#orderHead += 1;
      if (this.#items.get(item.entry.id) === item) this.#items.delete(item.entry.id);
      const next = order[this.#orderHead];
      // A transaction's entries share its LSN: it is confirmed once the last of them is settled.
      if ((next === undefined || next.lsn !== item.lsn) && item.lsn > this.#confirmed) {
        this.#confirmed = item.lsn;
        moved = true;
      }
    }
    if (this.#orderHead > 1024 && this.#orderHead * 2 > order.length) {
      this.#order = order.slice(this.#orderHead);
      this.#orderHead = 0;
    }
    if (moved) this.#sendStatus(false);
    if (this.#space && !this.#full()) {
      this.#space.resolve();
      this.#space = null;
    }
  }

  /** Tells the server the slot may move up to #confirmed (pg-logical-replication sends lsn + 1). */
  #sendStatus(always: boolean): void {
    const service = this.#service;
    if (!service || !this.#streamAlive || this.#confirmed === 0n) return;
    if (!always && this.#confirmed === this.#sentConfirmed) return;
    this.#sentConfirmed = this.#confirmed;
    service.acknowledge(formatLsn(this.#confirmed - 1n)).catch((error: unknown) => {
      this.#onError(storeError("replication status update", error));
    });
  }

  #forgetAll(): void {
    this.#unsettled = 0;
    this.#items.clear();
    this.#order = [];
    this.#orderHead = 0;
    this.#runs.clear();
    this.#unverified.length = 0;
    this.#streamFence = null;
  }

  /** Release is settled in memory only: the table's fence still decides whether it may. */
  async #checkFence(fence: Fence | undefined): Promise<void> {
    if (fence) await this.#run("release", this.#sql.fenceOnly, [], fence);
  }

  async #run(operation: string, sql: string, params: unknown[], fence?: Fence): Promise<Record<string, unknown>[]> {
    if (fence) params.push(String(fence.lock), fence.token.toString());
    let rows: Record<string, unknown>[];
    try {
      ({ rows } = (await this.#pool.query(sql, params)) as { rows: Record<string, unknown>[] });
    } catch (error) {
      throw storeError(operation, error);
    }
    if (fence && Number(rows[0]?.fence_ok) !== 1) {
      const newest = rows[0]?.newest_token;
      throw new OutboxError(
        OutboxErrorCode.Fenced,
        `${operation} refused: fencing token ${fence.token} for "${fence.lock}" is older than ${String(newest ?? "the newest seen")}`,
        {
          details: { lock: fence.lock, token: fence.token.toString(), newest: newest == null ? null : String(newest) },
        },
      );
    }
    return rows;
  }

  #wake(): void {
    if (!this.#closed) this.#wakeUps.wake();
  }

  #assertOpen(): void {
    if (this.#closed) throw new OutboxError(OutboxErrorCode.Closed, "the postgres capture store is closed");
  }
}

function promiseWithResolve(): { promise: Promise<void>; resolve: () => void } {
  let resolve: () => void = () => undefined;
  const promise = new Promise<void>((done) => {
    resolve = done;
  });
  return { promise, resolve };
}

function clean(value: string): string {
  return value.includes("\u0000") ? value.replaceAll("\u0000", "\uFFFD") : value;
}

/** Settles of log mode: no lease in the table, so no claimer check; attempts are counted here. */
function captureStatements(n: CaptureNames) {
  const t = n.qualifiedTable;
  return {
    fenceOnly: `WITH ${fenceCte(n, 1)} SELECT ${fenceColumns(1)}`,
    verify: `SELECT o.id::text AS id, o.attempts, (extract(epoch FROM o.available_at) * 1000)::float8 AS available_at,
      o.last_error FROM ${t} o WHERE o.id = ANY($1::bigint[]) AND o.status = 'pending'`,
    entries: `SELECT ${entryColumns("o")} FROM ${t} o WHERE o.id = ANY($1::bigint[]) AND o.status = 'pending'`,
    retry: (fenced: boolean) => `WITH ${fenced ? `${fenceCte(n, 4)},` : ""}
    updated AS (
      UPDATE ${t} o SET last_error = v.error, available_at = v.available_at, attempts = o.attempts + 1
      FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS v(id, error, available_at)
      WHERE o.id = v.id AND o.status = 'pending' ${fenced ? fenceGuard(4) : ""}
      RETURNING 1
    )
    SELECT ${fenced ? `${fenceColumns(4)},` : ""} (SELECT count(*) FROM updated)::int AS n`,
    deadLetter: (fenced: boolean) => `WITH ${fenced ? `${fenceCte(n, 4)},` : ""}
    updated AS (
      UPDATE ${t} o SET status = 'dead', last_error = v.error, settled_at = $3::timestamptz,
        attempts = o.attempts + 1, lease_until = NULL
      FROM unnest($1::bigint[], $2::text[]) AS v(id, error)
      WHERE o.id = v.id AND o.status = 'pending' ${fenced ? fenceGuard(4) : ""}
      RETURNING 1
    )
    SELECT ${fenced ? `${fenceColumns(4)},` : ""} (SELECT count(*) FROM updated)::int AS n`,
  };
}

/** EXPERIMENTAL: creates the log-capture store. Run `migrate()` and `migrateCapture()` first. */
export function createPostgresCaptureStore(options: PostgresCaptureStoreOptions): PostgresCaptureStore {
  return new PostgresCaptureStore(options);
}
