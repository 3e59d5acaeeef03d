import { randomUUID } from "node:crypto";
import {
  type BlockedKey,
  type ClaimRequest,
  type Clock,
  claimersByRelay,
  type DeadLetterFilter,
  type DeadLetterItem,
  deadLetterFilter,
  type EntryLimits,
  type Fence,
  type ListDeadOptions,
  matchesDeadLetterFilter,
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
  type AnyBulkWriteOperation,
  Binary,
  type ClientSession,
  type Collection,
  type Document,
  type Filter,
  Long,
  type MongoClient,
} from "mongodb";
import {
  closedError,
  duplicateIndexes,
  hasLabel,
  isConnectionError,
  isDuplicateKey,
  mongoCode,
  storeError,
} from "./errors.js";
import { type Candidate, keepRuns, Selection } from "./select.js";
import { type ChangeStreamLike, ChangeStreamWakeSource } from "./wake.js";

/** What `enqueue` takes: your ClientSession (inside `session.withTransaction`), or null without transactions. */
export type MongoTransaction = ClientSession | null;

export interface MongoStoreOptions {
  /** A connected (or lazily connecting) MongoClient. The store never closes it. */
  client: MongoClient;
  /** Database name. */
  db: string;
  /**
   * Entries collection. Default "outbox". The store also uses `<collection>_sequence` (the id
   * counter) and `<collection>_fences` (newest fencing token per lock).
   */
  collection?: string;
  /**
   * true (default): `enqueue` must run inside your transaction (a ClientSession in
   * `session.withTransaction`); needs a replica set or sharded cluster. false: for servers without
   * transactions (standalone mongod, FerretDB 1.x): `enqueue` writes at once, not atomically
   * with your other writes (see the README for exactly what that guarantees).
   */
  transactions?: boolean;
  /**
   * "auto" (default): change-stream wake-ups when the server has change streams (replica sets,
   * sharded clusters: read from `hello` at `init()`), none otherwise. false: poll only.
   */
  wakeUps?: "auto" | false;
  /**
   * Where the server has transactions, fenced claims and settles run in a transaction together
   * with the fence check, so a fenced operation changes nothing (default true). Without
   * transactions the fence is checked first and then per document (see the README).
   */
  fenceInTransaction?: boolean;
  clock?: Clock;
  limits?: Partial<EntryLimits>;
  /** Wake-ups are coalesced: at most one per window (leading and trailing edge). Default 10 ms. */
  wakeUpDebounceMs?: number;
  /** Background errors nobody awaits (the change stream failing). Default: console.warn. */
  onError?: (error: OutboxError) => void;
}

/** An entry as stored. `_id` is the sequence number (int64). */
interface EntryDoc {
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
  /** Claim-state version: every claim, retry, release and requeue bumps it (see #claim). */
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

interface SequenceDoc {
  _id: string;
  value: Long | number;
}

/**
 * A claim ticket: "claim `claimId` consumed state `gen` of entry `seq`" (`_id` is `<seq>:<gen>`).
 * Inserting it is the claim's arbitration: a unique `_id` is the one write every server makes
 * atomic, FerretDB 1.x included (whose updates are read, filter, write back).
 */
interface TicketDoc {
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
interface FenceDoc {
  _id: string;
  lock?: string;
  token: Long | number;
}

interface ServerInfo {
  /** Replica set member or mongos: multi-document transactions and change streams. */
  readonly replicated: boolean;
  /**
   * Change streams open on the entries collection: always on replica sets and mongos; elsewhere
   * as probed at `init()` (a standalone mongod and FerretDB 1.x refuse them; mongo-java-server
   * with its oplog enabled has them, without transactions).
   */
  readonly changeStreams: boolean;
  /**
   * A conditional single-document update is a compare-and-set, so claims arbitrate with the
   * lease update itself: MongoDB, and mongo-java-server (every write command holds its
   * collection's lock). The three below are false on FerretDB (`buildInfo.ferretdbVersion`):
   * 1.x applies an update as read, filter, write back, so claims insert unique tickets first
   * there (see #tickets).
   */
  readonly atomicUpdates: boolean;
  /** `$group` has `$first`, for the claim's key heads past its window (FerretDB 1.x: no). */
  readonly groupFirst: boolean;
  /**
   * Queries use the store's indexes (created at `init()`). FerretDB 1.x uses none but `_id`'s
   * unique index, and that one only to write: it pushes equality filters down to PostgreSQL as
   * jsonb containment (`@>`, which no btree index serves) and sorts in memory, so every query is
   * a scan of the collection (EXPLAIN: Seq Scan). The store creates no indexes there (they would
   * only slow its writes down) and reads every pending entry in one query per claim.
   */
  readonly secondaryIndexes: boolean;
}

/** Collection names: 1-100 characters, no "$", no U+0000. */
function validCollection(name: string): boolean {
  return name.length >= 1 && name.length <= 100 && !name.includes("$") && !name.includes(String.fromCharCode(0));
}

/**
 * The `client`, `db` and `collection` options the stores share, validated (OUTBOX_INVALID_OPTIONS naming
 * `factory`). Returns the collection name.
 */
export function checkNamespace(
  options: { client?: MongoClient; db?: string; collection?: string } | undefined,
  factory: string,
  defaultCollection: string,
): string {
  if (!options?.client || typeof options.client.db !== "function") {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${factory} needs \`client\`: a MongoClient`);
  }
  if (typeof options.db !== "string" || options.db.length === 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${factory} needs \`db\`: a database name`);
  }
  const collection = options.collection ?? defaultCollection;
  if (typeof collection !== "string" || !validCollection(collection) || collection.startsWith("system.")) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `collection must be 1-100 characters without "$" or U+0000, got ${JSON.stringify(collection)}`,
    );
  }
  return collection;
}
const idPattern = /^[0-9]{1,16}$/;
/** The server's "no such command" error code. */
const commandNotFound = 59;
const minInt64 = -(2n ** 63n);
const maxInt64 = 2n ** 63n - 1n;
/** Attempts of an idempotent operation whose connection failed. */
const connectionRetries = 3;
/** Keyed ids remembered between claim and settle (for local wake-ups); bounded. */
const maxTrackedIds = 100_000;

const candidateProjection = { key: 1, gen: 1, availableAt: 1, leaseUntil: 1, leaseLock: 1, leaseToken: 1 } as const;
/** Enqueue re-reserves ids this often when the counter handed out taken ids (servers without atomic $inc). */
const sequenceRetries = 20;
/** Rounds of one claim when concurrent claimers took some of its picks. */
const claimRounds = 4;
/** Candidates per batch when a claim reads every pending entry past its window (FerretDB 1.x). */
const allBatch = 10_000;
/** Statements per write command (see #bulk). */
const bulkStatements = 8;
/** Dead entries' ids and errors read per round while listDead looks for an error text. */
const deadScanBatch = 1_000;
/** Fence documents relayActivity reads at most (one per lock, or one per token without transactions). */
const maxFenceDocs = 10_000;

/**
 * Creates the indexes that are missing. Only those: FerretDB 1.24 drops the connection (a
 * panic) on createIndexes for indexes that already exist.
 */
export async function ensureIndexes(
  collection: {
    listIndexes(): { toArray(): Promise<Array<{ name?: unknown }>> };
    createIndexes: Collection["createIndexes"];
  },
  wanted: Array<{ key: Record<string, 1 | -1>; name: string }>,
): Promise<void> {
  let existing: string[] = [];
  try {
    existing = (await collection.listIndexes().toArray()).map((index) => String(index.name));
  } catch (error) {
    // NamespaceNotFound: the collection does not exist yet.
    if (mongoCode(error) !== 26) throw error;
  }
  const missing = wanted.filter((index) => !existing.includes(index.name));
  if (missing.length > 0) await collection.createIndexes(missing);
}

/**
 * What a store reads of the server at `init()`: whether it is a replica set member or mongos (multi-document
 * transactions, change streams) and whether it is FerretDB. Fails with OUTBOX_INVALID_OPTIONS when
 * `transactions` is asked for on a standalone server.
 */
export async function probeServer(
  client: MongoClient,
  transactions: boolean,
): Promise<{ replicated: boolean; ferretdb: boolean }> {
  const admin = client.db("admin");
  // Servers without `hello` (older ones, mongo-java-server) answer the legacy isMaster.
  const hello = await admin.command({ hello: 1 }).catch((error: unknown) => {
    if (mongoCode(error) !== commandNotFound) throw error;
    return admin.command({ isMaster: 1 });
  });
  const replicated = typeof hello.setName === "string" || hello.msg === "isdbgrid";
  if (transactions && !replicated) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      "transactions: true needs a replica set or a sharded cluster, and this server is standalone (no multi-document transactions): use transactions: false (see the README)",
    );
  }
  // FerretDB names itself in buildInfo. What the store knows of it is 1.24 (see ServerInfo and
  // the README); any version is treated the same way, which is correct everywhere.
  const ferretdb = typeof (await admin.command({ buildInfo: 1 })).ferretdbVersion === "string";
  return { replicated, ferretdb };
}

function groupBy<T, K>(items: readonly T[], keyOf: (item: T) => K): Map<K, T[]> {
  const groups = new Map<K, T[]>();
  for (const item of items) {
    const key = keyOf(item);
    const group = groups.get(key);
    if (group) group.push(item);
    else groups.set(key, [item]);
  }
  return groups;
}

function positiveInteger(value: unknown, name: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

/** Keeps well-formed ids (decimal sequence numbers); others cannot name an entry and are ignored. */
function validIds(ids: readonly string[]): number[] {
  const out: number[] = [];
  for (const id of ids) {
    if (typeof id !== "string" || !idPattern.test(id)) continue;
    const n = Number(id);
    if (Number.isSafeInteger(n)) out.push(n);
  }
  return out;
}

const long = (n: number): Long => Long.fromNumber(n);
const longs = (ns: readonly number[]): Long[] => ns.map(long);

function tokenLong(fence: Fence): Long {
  if (typeof fence.token !== "bigint" || fence.token < minInt64 || fence.token > maxInt64) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `fencing token must be a 64-bit bigint, got ${String(fence.token)}`,
    );
  }
  return Long.fromString(fence.token.toString());
}

function toBigint(value: Long | number | null | undefined): bigint | null {
  if (value === null || value === undefined) return null;
  return BigInt(value.toString());
}

function toCandidate(doc: Partial<EntryDoc>): Candidate {
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

function toEntry(doc: EntryDoc): OutboxEntry {
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

export function looksLikeSession(value: unknown): value is ClientSession {
  const candidate = value as { inTransaction?: unknown; endSession?: unknown } | null;
  return typeof candidate?.inTransaction === "function" && typeof candidate.endSession === "function";
}

/**
 * The MongoDB outbox store (mongodb driver). See the package README for the design and the
 * guarantees. `enqueue` takes your ClientSession; everything else runs on the store's client.
 */
export class MongoStore implements OutboxStore<MongoTransaction> {
  readonly #client: MongoClient;
  readonly #entries: Collection<EntryDoc>;
  readonly #sequence: Collection<SequenceDoc>;
  readonly #fences: Collection<FenceDoc>;
  readonly #claims: Collection<TicketDoc>;
  readonly #transactions: boolean;
  readonly #wakeUps: boolean;
  readonly #fenceInTransaction: boolean;
  readonly #clock: Clock;
  readonly #limits: Partial<EntryLimits> | undefined;
  readonly #onError: (error: OutboxError) => void;
  readonly #subscribers: WakeUpListeners;
  readonly #keyed = new Set<number>();
  /** Id reservations waiting for the next `$inc` (see #reserve). */
  readonly #reservations: Array<{ count: number; resolve: (first: number) => void; reject: (e: unknown) => void }> = [];
  #reserving = false;
  /** Entries this store's claims in flight picked (see #claim). */
  readonly #picking = new Set<number>();
  /** Tickets this store lost, with when it first lost each (see #unstick); bounded. */
  readonly #lostTickets = new Map<string, number>();
  /** The token this process last recorded per lock (saves the insert on every fenced call). */
  readonly #recorded = new Map<string, bigint>();
  #server: ServerInfo | null = null;
  #init: Promise<void> | null = null;
  #wakeSource: ChangeStreamWakeSource | null = null;
  #closed = false;
  /** The collection names, for diagnostics. */
  readonly names: {
    readonly db: string;
    readonly entries: string;
    readonly sequence: string;
    readonly fences: string;
    readonly claims: string;
  };

  constructor(options: MongoStoreOptions) {
    const collection = checkNamespace(options, "createMongoStore", "outbox");
    this.#client = options.client;
    const db = options.client.db(options.db);
    this.names = {
      db: options.db,
      entries: collection,
      sequence: `${collection}_sequence`,
      fences: `${collection}_fences`,
      claims: `${collection}_claims`,
    };
    this.#entries = db.collection<EntryDoc>(this.names.entries);
    this.#sequence = db.collection<SequenceDoc>(this.names.sequence);
    this.#fences = db.collection<FenceDoc>(this.names.fences);
    this.#claims = db.collection<TicketDoc>(this.names.claims);
    this.#transactions = options.transactions ?? true;
    this.#wakeUps = options.wakeUps !== false;
    this.#fenceInTransaction = options.fenceInTransaction ?? true;
    this.#clock = options.clock ?? systemClock;
    this.#limits = options.limits;
    this.#onError =
      options.onError ?? ((error) => console.warn(`[@outbox/store-mongodb ${options.db}.${collection}]`, error));
    this.#subscribers = new WakeUpListeners({ debounceMs: options.wakeUpDebounceMs ?? 10, onError: this.#onError });
  }

  /**
   * `transactions` as configured; `wakeUps` once `init()` has read the server's capabilities
   * (false before, and on servers without change streams).
   */
  get capabilities(): StoreCapabilities {
    return {
      wakeUps: this.#wakeUps && this.#server?.changeStreams === true,
      transactions: this.#transactions,
      deadLetterFilters: true,
    };
  }

  /** The server's capabilities as read by `init()` (null before). */
  get server(): ServerInfo | null {
    return this.#server;
  }

  /**
   * Reads the server's capabilities (`hello`) and creates the indexes. Idempotent; every
   * operation runs it once if you did not, but call it at startup, before starting the relay,
   * so that `capabilities.wakeUps` is known when the relay reads it.
   */
  init(): Promise<void> {
    this.#assertOpen();
    this.#init ??= this.#initialize().catch((error: unknown) => {
      this.#init = null;
      throw storeError("init", error);
    });
    return this.#init;
  }

  async #initialize(): Promise<void> {
    const { replicated, ferretdb } = await probeServer(this.#client, this.#transactions);
    if (!ferretdb) {
      await ensureIndexes(this.#entries as unknown as Collection, [
        // The claim's window: the oldest pending entries; also dead entries oldest first.
        { key: { status: 1, _id: 1 }, name: "outbox_status_id" },
        // Past the window: each key's head ($group/$first: a distinct scan), null-key entries.
        { key: { status: 1, key: 1, _id: 1 }, name: "outbox_status_key_id" },
        // purge: settled entries by settle time.
        { key: { status: 1, settledAt: 1 }, name: "outbox_status_settled" },
      ]);
      // purge removes the tickets of purged entries.
      await ensureIndexes(this.#claims as unknown as Collection, [{ key: { seq: 1 }, name: "outbox_claims_seq" }]);
      // The newest fencing token of a lock: its highest record.
      await ensureIndexes(this.#fences as unknown as Collection, [
        { key: { lock: 1, token: -1 }, name: "outbox_fences_lock_token" },
      ]);
    }
    const changeStreams = replicated || (this.#wakeUps && (await this.#probeChangeStreams()));
    this.#server = {
      replicated,
      changeStreams,
      atomicUpdates: !ferretdb,
      groupFirst: !ferretdb,
      secondaryIndexes: !ferretdb,
    };
  }

  /**
   * Whether the server opens a change stream on the entries collection: one `aggregate` with
   * `$changeStream` and an empty first batch, its cursor killed at once. A server that refuses
   * it (standalone mongod: "only supported on replica sets"; FerretDB 1.x: unknown stage) has
   * none; a connection failure is not an answer and fails `init()`.
   */
  async #probeChangeStreams(): Promise<boolean> {
    const db = this.#client.db(this.names.db);
    let reply: { cursor?: { id?: unknown } };
    try {
      reply = await db.command({
        aggregate: this.names.entries,
        pipeline: [{ $changeStream: {} }],
        cursor: { batchSize: 0 },
      });
    } catch (error) {
      // Only the server's refusal is an answer; a failed connection or a timeout fails init().
      if (isConnectionError(error) || (error as { name?: unknown } | null)?.name !== "MongoServerError") throw error;
      return false;
    }
    const id = reply.cursor?.id;
    if ((typeof id === "number" || id instanceof Long) && String(id) !== "0") {
      // A cursor id is an int64 (the driver hands small ones back as numbers).
      const cursor = typeof id === "number" ? Long.fromNumber(id) : id;
      await db.command({ killCursors: this.names.entries, cursors: [cursor] }).catch(() => undefined);
    }
    return true;
  }

  async enqueue(tx: MongoTransaction, messages: OutboxMessage | readonly OutboxMessage[]): Promise<string[]> {
    this.#assertOpen();
    const session = tx ?? null;
    if (this.#transactions) {
      if (!looksLikeSession(session) || !session.inTransaction()) {
        throw new OutboxError(
          OutboxErrorCode.InvalidOptions,
          "enqueue needs your ClientSession inside session.withTransaction (or create the store with transactions: false)",
        );
      }
    } else if (session !== null && !looksLikeSession(session)) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "enqueue takes a ClientSession or null");
    }
    const now = this.#clock.now();
    const prepared = prepareMessages(messages, { now, limits: this.#limits });
    if (prepared.length === 0) return [];
    await this.init();
    // Ids come from a counter document, incremented outside your transaction: concurrent
    // enqueuers never conflict on it. A rolled-back transaction leaves a gap, and ids can
    // commit out of order; claims select by status, never "id > last seen", so neither loses
    // an entry (see the README).
    const createdAt = new Date(now);
    const inTransaction = session?.inTransaction() === true;
    for (let attempt = 1; ; attempt++) {
      const first = await this.#reserve(prepared.length);
      const docs: EntryDoc[] = prepared.map((message, i) => ({
        _id: long(first + i),
        topic: message.topic,
        key: message.key,
        payload: new Binary(message.payload),
        headers: JSON.stringify(message.headers),
        idempotencyKey: message.idempotencyKey,
        createdAt,
        availableAt: message.availableAt,
        status: "pending",
        gen: 0,
        attempts: 0,
        lastError: null,
        claimedBy: null,
        claimId: null,
        leaseUntil: null,
        leaseLock: null,
        leaseToken: null,
        settledAt: null,
      }));
      try {
        await this.#entries.insertMany(docs, { ordered: true, ...(session ? { session } : {}) });
      } catch (error) {
        // withTransaction retries on these labels: the driver's own error must reach it.
        if (hasLabel(error, "TransientTransactionError") || hasLabel(error, "UnknownTransactionCommitResult")) {
          throw error;
        }
        // A server whose $inc is not atomic (FerretDB 1.x) or whose findAndModify can return
        // another caller's result (mongo-java-server, rarely) hands two enqueuers the same ids.
        // Without a transaction, take back what this attempt inserted and reserve new ids.
        if (!inTransaction && isDuplicateKey(error) && attempt < sequenceRetries) {
          // An ordered insert stops at its first failed document: the ones before it are ours.
          // Not the reply's count: mongo-java-server counts the failed document as inserted, and
          // deleting by it would delete the other enqueuer's entry.
          const failed = duplicateIndexes(error);
          const inserted = failed.size > 0 ? Math.min(...failed) : 0;
          if (inserted > 0) {
            await this.#entries
              .deleteMany({ _id: { $in: docs.slice(0, inserted).map((doc) => doc._id) }, status: "pending", gen: 0 })
              .catch((cleanup: unknown) => {
                throw storeError("enqueue", cleanup);
              });
          }
          await this.#skipPast(first + docs.length - 1, docs.length * 2 ** Math.min(attempt - 1, 10));
          continue;
        }
        throw storeError("enqueue", error);
      }
      if (!inTransaction) this.#wake();
      return docs.map((doc) => String(doc._id));
    }
  }

  /**
   * After a duplicate id: moves the counter past `tried` (the highest id the failed attempt
   * used) and `gap` more, doubling per retry. Lost increments (or a stale write-back) can leave
   * the counter behind ids in use; jumping ahead finds free ids in a few retries without looking
   * for the highest id in use, which FerretDB answers by reading the whole collection. Ids only
   * need to grow; the gap costs nothing.
   */
  async #skipPast(tried: number, gap: number): Promise<void> {
    try {
      await this.#sequence.updateOne({ _id: "entries" }, { $max: { value: long(tried + gap) } });
    } catch (error) {
      throw storeError("enqueue", error);
    }
  }

  /**
   * Reserves `count` consecutive ids; returns the first. One `$inc` at a time per store: the
   * calls that arrive meanwhile share the next one, in arrival order. Concurrent enqueuers then
   * pay one round trip between them, and on a server whose `$inc` is not atomic (FerretDB 1.x)
   * they do not collide with each other (every collision costs a retry, see enqueue).
   */
  #reserve(count: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#reservations.push({ count, resolve, reject });
      if (this.#reservations.length === 1 && !this.#reserving) void this.#reserveWaiting();
    });
  }

  async #reserveWaiting(): Promise<void> {
    this.#reserving = true;
    while (this.#reservations.length > 0) {
      const batch = this.#reservations.splice(0);
      try {
        let first = await this.#reserveShared(batch.reduce((sum, r) => sum + r.count, 0));
        for (const r of batch) {
          r.resolve(first);
          first += r.count;
        }
      } catch (error) {
        for (const r of batch) r.reject(error);
      }
    }
    this.#reserving = false;
  }

  async #reserveShared(count: number): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#reserveOnce(count);
      } catch (error) {
        // Two first-ever upserts of the counter race to insert it (MongoDB documents this too).
        const cause = (error as { cause?: unknown }).cause;
        if (!isDuplicateKey(cause) || attempt >= sequenceRetries) throw error;
      }
    }
  }

  async #reserveOnce(count: number): Promise<number> {
    try {
      const doc = await this.#sequence.findOneAndUpdate(
        { _id: "entries" },
        { $inc: { value: long(count) } },
        { upsert: true, returnDocument: "after" },
      );
      const last = Number(doc?.value);
      if (!Number.isSafeInteger(last)) throw new Error(`unexpected sequence value ${String(doc?.value)}`);
      return last - count + 1;
    } catch (error) {
      throw storeError("enqueue", error);
    }
  }

  async claim(request: ClaimRequest): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const limit = positiveInteger(request.limit, "limit");
    const leaseMs = positiveInteger(request.leaseMs, "leaseMs");
    if (request.fence) tokenLong(request.fence);
    await this.init();
    const now = this.#clock.now();
    const entries = await this.#run("claim", false, () =>
      this.#withFence("claim", request.fence, (session) =>
        this.#claim(request.claimer, limit, leaseMs, now, request.fence, session),
      ),
    );
    for (const entry of entries) if (entry.key !== null) this.#track(Number(entry.id));
    return entries;
  }

  /**
   * One claim, in three round trips when nobody competes: (1) read the candidates (the oldest
   * pending entries, without payloads) and pick heads, runs and null-key entries; (2) lease the
   * picks with one conditional updateMany (#leaseUpdate); (3) read back, with payloads, what now
   * carries this claim's id. A run is cut at the first entry another claimer got, and what lies
   * past the cut goes back; picks lost to a concurrent claimer are replaced from the same
   * candidates, up to `claimRounds` times.
   *
   * FerretDB 1.x, in three round trips too: (1) read the window whole (#candidates); (2) insert
   * tickets for the picks (#tickets: its updates are not atomic); (3) one lease update for the
   * runs the tickets won (each of its updates reads all pending entries). No read-back, unless
   * picks came from past the window.
   */
  async #claim(
    claimer: string,
    limit: number,
    leaseMs: number,
    now: number,
    fence: Fence | undefined,
    session: ClientSession | undefined,
  ): Promise<OutboxEntry[]> {
    const { candidates, whole } = await this.#candidates(limit, now, fence, session);
    const atomic = this.#server?.atomicUpdates === true;
    const claimId = randomUUID();
    const lease = {
      claimedBy: claimer,
      claimId,
      leaseUntil: new Date(now + leaseMs),
      leaseLock: fence?.lock ?? null,
      leaseToken: fence ? tokenLong(fence) : null,
    };
    const won = new Set<number>();
    // What this claim cannot take: what it won or lost in an earlier round, and what this store's
    // other claims in flight (the relay runs two at once) picked: those it does not contest.
    const taken = new Set(this.#picking);
    const mine: number[] = [];
    try {
      for (let round = 0; round < claimRounds && won.size < limit; round++) {
        // After losing picks to concurrent claimers (who read the same oldest entries), start at a
        // random point instead of where they all would: see Selection's `skip`.
        const skip = round === 0 ? 0 : Math.floor(Math.random() * limit);
        const selection = new Selection(limit - won.size, now, fence, taken, skip);
        selection.walk(candidates);
        const picks = selection.picked;
        if (picks.length === 0) break;
        for (const e of picks) {
          taken.add(e.seq);
          this.#picking.add(e.seq);
          mine.push(e.seq);
        }
        const got = atomic
          ? await this.#leaseUpdate(picks, lease, session)
          : await this.#tickets(picks, lease, now, session);
        for (const seq of got) won.add(seq);
        if (got.size === picks.length) break;
      }
      if (won.size === 0) return [];
      const leased = atomic ? won : await this.#leaseTicketed(candidates, won, lease, session);
      if (leased.size === 0) return [];
      // The entries, with payloads: read back what carries this claim's id, except what the
      // window brought whole (FerretDB: there tickets and the lease's count already say it is ours).
      const known = [...leased].flatMap((seq) => {
        const doc = whole?.get(seq);
        return doc ? [{ ...doc, attempts: Number(doc.attempts) + 1 }] : [];
      });
      const missing = [...leased].filter((seq) => !whole?.has(seq));
      const readBack =
        missing.length === 0
          ? []
          : await this.#entries
              .find(
                { _id: { $in: longs(missing) }, claimId },
                { limit: missing.length, batchSize: missing.length, session },
              )
              .toArray();
      const docs = [...known, ...readBack].sort((a, b) => Number(a._id) - Number(b._id));
      // What this claim holds (a takeover may have moved an entry on since the lease) cut to runs.
      const { keep, giveBack } = keepRuns(candidates, new Set(docs.map((doc) => Number(doc._id))));
      if (giveBack.length > 0) {
        await this.#entries.updateMany(
          { _id: { $in: longs(giveBack) }, claimId },
          { $set: { claimedBy: null, claimId: null, leaseUntil: null }, $inc: { attempts: -1, gen: 1 } },
          { session },
        );
      }
      const kept = new Set(keep);
      return docs.filter((doc) => kept.has(Number(doc._id))).map(toEntry);
    } finally {
      for (const seq of mine) this.#picking.delete(seq);
    }
  }

  /**
   * The claim's candidates, in id order: a window of the oldest pending entries (the
   * `(status, _id)` index, `4 x limit` of them, at least 64). No pending entry lies below the
   * window, so the first entry of a key in it is the key's head. Only when the window is full
   * and holds fewer than `limit` claimable entries (keys blocked by leases or retries) does the
   * claim look past it (#beyond).
   *
   * FerretDB 1.x uses no index: it answers any query on pending entries by decoding them all,
   * whole, and sorting in memory, whatever the limit or projection. There the window comes whole
   * (`whole`: the claim needs no read-back for it), and past it the claim reads the rest of the
   * pending entries at once (projected), instead of once per key.
   */
  async #candidates(
    limit: number,
    now: number,
    fence: Fence | undefined,
    session: ClientSession | undefined,
  ): Promise<{ candidates: Candidate[]; whole?: Map<number, EntryDoc> }> {
    const indexed = this.#server?.secondaryIndexes === true;
    const pageSize = Math.max(64, limit * 4);
    const docs = await this.#entries
      .find(
        { status: "pending" },
        // One batch: the driver would otherwise fetch past 101 documents with a getMore.
        {
          ...(indexed ? { projection: candidateProjection } : {}),
          sort: { _id: 1 },
          limit: pageSize,
          batchSize: pageSize,
          session,
        },
      )
      .toArray();
    const window = docs.map(toCandidate);
    const whole = indexed ? undefined : new Map(docs.map((doc) => [Number(doc._id), doc]));
    const last = window.at(-1);
    if (window.length < pageSize || !last) return { candidates: window, whole };
    const selection = new Selection(limit, now, fence);
    selection.walk(window);
    if (selection.full) return { candidates: window, whole };
    const beyond = indexed
      ? await this.#beyond(last.seq, pageSize, now, fence, session)
      : (
          await this.#entries
            .find(
              { status: "pending", _id: { $gt: long(last.seq) } },
              { projection: candidateProjection, sort: { _id: 1 }, batchSize: allBatch, session },
            )
            .toArray()
        ).map(toCandidate);
    return { candidates: [...window, ...beyond], whole };
  }

  /**
   * Candidates past the window (ids above `last`), at a cost bounded by the number of keys, never
   * by how deep a blocked key's backlog is: every key's head (one per key: `$group`/`$first`
   * after a `$sort` on the `(status, key, _id)` index, which MongoDB answers with a distinct scan),
   * of which only those that may be claimable, oldest first, at most `count` (room for the
   * claim's rounds); and as many of the oldest null-key entries that may be claimable (same
   * index, `key: null`). Keys met in the window are left out: their heads lie in it. A head's
   * successors past the window are not read: its run continues next claim.
   */
  async #beyond(
    last: number,
    count: number,
    now: number,
    fence: Fence | undefined,
    session: ClientSession | undefined,
  ): Promise<Candidate[]> {
    const at = new Date(now);
    // A superset of the claimable heads (the Selection decides): available, and unleased, or
    // leased until now, or leased under this fence's lock (takeover by a newer token).
    const free: Filter<EntryDoc>[] = [{ leaseUntil: null }, { leaseUntil: { $lte: at } }];
    if (fence) free.push({ leaseLock: fence.lock });
    const heads = await this.#entries
      .aggregate<Partial<EntryDoc>>(
        [
          { $match: { status: "pending" } },
          { $sort: { status: 1, key: 1, _id: 1 } },
          {
            $group: {
              _id: "$key",
              seq: { $first: "$_id" },
              gen: { $first: "$gen" },
              availableAt: { $first: "$availableAt" },
              leaseUntil: { $first: "$leaseUntil" },
              leaseLock: { $first: "$leaseLock" },
              leaseToken: { $first: "$leaseToken" },
            },
          },
          { $match: { _id: { $ne: null }, seq: { $gt: long(last) }, availableAt: { $lte: at }, $or: free } },
          { $sort: { seq: 1 } },
          { $limit: count },
          {
            $project: { _id: "$seq", key: "$_id", gen: 1, availableAt: 1, leaseUntil: 1, leaseLock: 1, leaseToken: 1 },
          },
        ],
        // One more than the pipeline can return: the server sees the cursor exhausted (no getMore).
        { batchSize: count + 1, session },
      )
      .toArray();
    const nulls = await this.#entries
      .find(
        { status: "pending", key: null, _id: { $gt: long(last) }, availableAt: { $lte: at }, $or: free },
        { projection: candidateProjection, sort: { _id: 1 }, limit: count, batchSize: count, session },
      )
      .toArray();
    return [...heads, ...nulls].map(toCandidate).sort((a, b) => a.seq - b.seq);
  }

  /**
   * Without atomic updates (FerretDB 1.x): leases the runs whose tickets this claim won whole,
   * and deletes its tickets past a cut, which would otherwise hold those entries from every
   * claimer until their lease time. Returns the seqs leased.
   */
  async #leaseTicketed(
    candidates: readonly Candidate[],
    won: ReadonlySet<number>,
    lease: { claimId: string } & Partial<EntryDoc>,
    session: ClientSession | undefined,
  ): Promise<Set<number>> {
    const { keep, giveBack } = keepRuns(candidates, won);
    if (giveBack.length > 0) {
      const gens = new Map(candidates.map((e) => [e.seq, e.gen]));
      await this.#claims.deleteMany(
        { _id: { $in: giveBack.map((seq) => `${seq}:${gens.get(seq)}`) }, claimId: lease.claimId },
        { session },
      );
    }
    const kept = new Set(keep);
    return this.#leaseUpdate(
      candidates.filter((e) => kept.has(e.seq)),
      lease,
      session,
    );
  }

  /**
   * Leases `entries` for this claim, each only in the state the claim read (pending, same `gen`:
   * one statement per distinct gen, few), and returns the seqs it got. On MongoDB and
   * mongo-java-server a conditional update is a compare-and-set, so this is the arbitration
   * between concurrent claimers: one write per entry. FerretDB 1.x applies an update as read,
   * filter, write back, so two claimers could both "win" one entry: there, only entries whose
   * ticket this claim won come here.
   */
  async #leaseUpdate(
    entries: readonly Candidate[],
    lease: { claimId: string } & Partial<EntryDoc>,
    session: ClientSession | undefined,
  ): Promise<Set<number>> {
    if (entries.length === 0) return new Set();
    const ops: AnyBulkWriteOperation<EntryDoc>[] = [...groupBy(entries, (e) => e.gen)].map(([gen, group]) => ({
      updateMany: {
        filter: { _id: { $in: longs(group.map((e) => e.seq)) }, status: "pending", gen },
        update: { $set: lease, $inc: { attempts: 1, gen: 1 } },
      },
    }));
    const modified = await this.#bulk(ops, session);
    if (modified === entries.length) return new Set(entries.map((e) => e.seq));
    // Some went to a concurrent claimer (or were acked meanwhile): which ones we got.
    const docs = await this.#entries
      .find(
        { _id: { $in: longs(entries.map((e) => e.seq)) }, claimId: lease.claimId },
        { projection: { _id: 1 }, limit: entries.length, batchSize: entries.length, session },
      )
      .toArray();
    return new Set(docs.map((doc) => Number(doc._id)));
  }

  /**
   * Servers without atomic updates (FerretDB 1.x): one ticket `{_id: "<seq>:<gen>"}` per pick;
   * who inserts it first has won that state of the entry (a unique `_id` is the one write
   * FerretDB makes atomic). Returns the seqs this claim won.
   */
  async #tickets(
    picks: readonly Candidate[],
    lease: { claimId: string; leaseUntil: Date },
    now: number,
    session: ClientSession | undefined,
  ): Promise<Set<number>> {
    const ticket = (e: Candidate) => ({
      _id: `${e.seq}:${e.gen}`,
      seq: long(e.seq),
      claimId: lease.claimId,
      until: lease.leaseUntil,
    });
    const won = new Set<number>();
    const lost: Candidate[] = [];
    let rest = picks;
    // Ordered: an insert stops at the first ticket another claimer holds. FerretDB inserts a batch
    // in one transaction and, when that fails, one document per transaction; unordered, one taken
    // ticket would cost a commit per pick. The picks past a taken ticket go in the next insert at
    // once, not in a later claim: tickets left by claimers that died before leasing (a killed
    // relay, a cut connection) then all show up in this claim, and #unstick frees them together,
    // one lease time after they were first lost, instead of one after the other, a lease time each,
    // while every claim stopped at the first of them (seen: 14 such tickets held the oldest
    // entries, and every key behind them in the window, for minutes).
    while (rest.length > 0) {
      try {
        await this.#claims.insertMany(rest.map(ticket), { ordered: true, session });
        for (const e of rest) won.add(e.seq);
        break;
      } catch (error) {
        const failed = duplicateIndexes(error);
        if (failed.size === 0) throw error;
        const first = Math.min(...failed);
        for (const e of rest.slice(0, first)) won.add(e.seq);
        lost.push(rest[first] as Candidate);
        rest = rest.slice(first + 1);
      }
    }
    if (lost.length > 0) await this.#unstick(lost, now, lease.leaseUntil.getTime() - now, session);
    return won;
  }

  /**
   * Entries whose ticket for their current state was taken but never followed by a lease (the
   * claimer died in between, a few milliseconds): once that ticket's lease time has passed, bump
   * the entry's gen so that the next claim competes for a fresh ticket. A lost ticket is looked
   * up only when this store lost the same one a lease time (`leaseMs`) earlier already: a live
   * winner leases within milliseconds, and on FerretDB a read of tickets by id reads them all.
   */
  async #unstick(
    entries: readonly Candidate[],
    now: number,
    leaseMs: number,
    session: ClientSession | undefined,
  ): Promise<void> {
    const due: string[] = [];
    for (const e of entries) {
      const ticket = `${e.seq}:${e.gen}`;
      const since = this.#lostTickets.get(ticket);
      if (since === undefined) {
        if (this.#lostTickets.size >= maxTrackedIds) this.#lostTickets.clear();
        this.#lostTickets.set(ticket, now);
      } else if (now - since >= leaseMs) {
        due.push(ticket);
      }
    }
    if (due.length === 0) return;
    const expired = await this.#claims
      .find({ _id: { $in: due }, until: { $lte: new Date(now) } }, { projection: { _id: 1 }, session })
      .toArray();
    if (expired.length === 0) return;
    const stale = new Set(expired.map((doc) => doc._id));
    const groups = groupBy(
      entries.filter((e) => stale.has(`${e.seq}:${e.gen}`)),
      (e) => e.gen,
    );
    const ops: AnyBulkWriteOperation<EntryDoc>[] = [...groups].map(([gen, group]) => ({
      updateMany: {
        filter: { _id: { $in: longs(group.map((e) => e.seq)) }, status: "pending", gen },
        update: { $inc: { gen: 1 } },
      },
    }));
    await this.#bulk(ops, session);
    for (const ticket of stale) this.#lostTickets.delete(ticket);
  }

  /**
   * Runs write operations in commands of at most 8 statements. FerretDB 1.x keeps each
   * statement's read (a PostgreSQL connection, from a pool of 50) open until its command ends and
   * takes one more to write, so a long bulk command can exhaust the pool and hang the server;
   * MongoDB pays a round trip per 8 groups (claims have one or two: statements go by `gen`).
   */
  async #bulk(ops: AnyBulkWriteOperation<EntryDoc>[], session: ClientSession | undefined): Promise<number> {
    let modified = 0;
    for (let i = 0; i < ops.length; i += bulkStatements) {
      const result = await this.#entries.bulkWrite(ops.slice(i, i + bulkStatements), { ordered: false, session });
      modified += result.modifiedCount;
    }
    return modified;
  }

  async ack(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    // Once each: the claimer-only update below counts on matching every id.
    const valid = [...new Set(validIds(ids))];
    if (valid.length === 0 && !context.fence) return;
    await this.init();
    const now = new Date(this.#clock.now());
    const modified = await this.#run("ack", true, () =>
      this.#withFence("ack", context.fence, async (session) => {
        if (valid.length === 0) return 0;
        const filter: Filter<EntryDoc> = {
          _id: { $in: longs(valid) },
          status: "pending",
          ...this.#guard(context.fence),
        };
        const published = { $set: { status: "published" as const, settledAt: now, leaseUntil: null } };
        // The claimer acks what it holds, almost always. With its name in the filter, FerretDB
        // reads only those entries (an equality it pushes down; `_id: {$in}` it does not), not
        // every pending one. Anyone may ack, though: what that missed is acked by id alone.
        const own = await this.#entries.updateMany({ ...filter, claimedBy: context.claimer }, published, { session });
        if (own.matchedCount === valid.length) return own.modifiedCount;
        const rest = await this.#entries.updateMany(filter, published, { session });
        return own.modifiedCount + rest.modifiedCount;
      }),
    );
    // Acking a key's entry can make its successor claimable: wake this process's relay now.
    if (this.#untrack(valid) && modified > 0) this.#wake();
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
    await this.init();
    const groups = groupBy(valid, (item) => JSON.stringify([String(item.error), item.availableAt.getTime()]));
    const ops: AnyBulkWriteOperation<EntryDoc>[] = [...groups.values()].map((group) => ({
      updateMany: {
        filter: this.#owned(
          group.map((item) => Number(item.id)),
          context,
        ),
        update: {
          $set: {
            lastError: String(group[0]?.error),
            availableAt: new Date((group[0] as RetryItem).availableAt.getTime()),
            leaseUntil: null,
            claimedBy: null,
            claimId: null,
          },
          $inc: { gen: 1 },
        },
      },
    }));
    await this.#run("retry", true, () =>
      this.#withFence("retry", context.fence, async (session) => {
        await this.#bulk(ops, session);
      }),
    );
    this.#untrack(valid.map((item) => Number(item.id)));
  }

  async deadLetter(items: readonly DeadLetterItem[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    const valid = items.filter((item) => validIds([item.id]).length === 1);
    if (valid.length === 0 && !context.fence) return;
    await this.init();
    const now = new Date(this.#clock.now());
    const groups = groupBy(valid, (item) => String(item.error));
    const ops: AnyBulkWriteOperation<EntryDoc>[] = [...groups].map(([error, group]) => ({
      updateMany: {
        filter: this.#owned(
          group.map((item) => Number(item.id)),
          context,
        ),
        update: { $set: { status: "dead", lastError: error, settledAt: now, leaseUntil: null } },
      },
    }));
    const modified = await this.#run("deadLetter", true, () =>
      this.#withFence("deadLetter", context.fence, async (session) => {
        return this.#bulk(ops, session);
      }),
    );
    this.#untrack(valid.map((item) => Number(item.id)));
    // A dead entry unblocks the entries queued behind it on its key.
    if (modified > 0) this.#wake();
  }

  async release(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    const valid = validIds(ids);
    if (valid.length === 0 && !context.fence) return;
    await this.init();
    await this.#run("release", true, () =>
      this.#withFence("release", context.fence, async (session) => {
        if (valid.length === 0) return;
        await this.#entries.updateMany(
          {
            _id: { $in: longs(valid) },
            status: "pending",
            claimedBy: context.claimer,
            ...this.#guard(context.fence),
          },
          // Claimed entries have attempts >= 1 (the claim counted one).
          { $set: { leaseUntil: null, claimedBy: null, claimId: null }, $inc: { attempts: -1, gen: 1 } },
          { session },
        );
      }),
    );
    this.#untrack(valid);
  }

  async releaseClaimer(context: SettleContext): Promise<number> {
    this.#assertOpen();
    await this.init();
    const released = await this.#run("releaseClaimer", true, () =>
      this.#withFence("releaseClaimer", context.fence, async (session) => {
        const result = await this.#entries.updateMany(
          { status: "pending", claimedBy: context.claimer, ...this.#guard(context.fence) },
          // As release: claimed entries have attempts >= 1 (the claim counted one).
          { $set: { leaseUntil: null, claimedBy: null, claimId: null }, $inc: { attempts: -1, gen: 1 } },
          { session },
        );
        return result.modifiedCount;
      }),
    );
    if (released > 0) this.#wake();
    return released;
  }

  async listDead(options: ListDeadOptions = {}): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const limit = positiveInteger(options.limit ?? 100, "limit");
    const [after] = options.after === undefined ? [0] : validIds([options.after]);
    if (after === undefined) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        `listDead: after must be an entry id, got ${JSON.stringify(options.after)}`,
      );
    }
    const filter = deadLetterFilter(options);
    await this.init();
    // Topic and key are equalities the server answers (through (status, key, _id) for a key).
    const query: Filter<EntryDoc> = {
      status: "dead",
      ...(filter.topic === undefined ? {} : { topic: filter.topic }),
      ...(filter.key === undefined ? {} : { key: filter.key }),
    };
    if (filter.errorContains !== undefined) return this.#listDeadMatching(query, filter, after, limit);
    const docs = await this.#run("listDead", true, () =>
      this.#entries.find({ ...query, _id: { $gt: after } }, { sort: { _id: 1 }, limit }).toArray(),
    );
    return docs.map(toEntry);
  }

  /**
   * listDead with `errorContains`, matched in this process on every server: FerretDB 1.x pushes
   * no regular expression down (it filters what it read), and a case-insensitive `$regex` folds
   * letters differently per server (mongo-java-server: ASCII only); here it is the in-memory
   * store's match. Reads the ids and errors of the dead entries `query` selects, in id order,
   * `deadScanBatch` at a time, until `limit` match or none are left, then the matching entries
   * whole: the page is full however many entries lie between its matches, and memory holds one
   * batch of errors plus the page.
   */
  async #listDeadMatching(
    query: Filter<EntryDoc>,
    filter: DeadLetterFilter,
    after: number,
    limit: number,
  ): Promise<OutboxEntry[]> {
    const needle = (filter.errorContains as string).toLowerCase();
    const entries: OutboxEntry[] = [];
    let cursor = after;
    for (;;) {
      const from = cursor;
      const batch = await this.#run("listDead", true, () =>
        this.#entries
          .find<Pick<EntryDoc, "_id" | "lastError">>(
            { ...query, _id: { $gt: from } },
            { sort: { _id: 1 }, limit: deadScanBatch, projection: { _id: 1, lastError: 1 } },
          )
          .toArray(),
      );
      const picked: number[] = [];
      for (const doc of batch) {
        cursor = Number(doc._id);
        if (!doc.lastError?.toLowerCase().includes(needle)) continue;
        picked.push(cursor);
        if (entries.length + picked.length === limit) break;
      }
      if (picked.length > 0) {
        const docs = await this.#run("listDead", true, () =>
          this.#entries.find({ _id: { $in: longs(picked) }, status: "dead" }, { sort: { _id: 1 } }).toArray(),
        );
        // One requeued (or dead again with another error) since the scan is left out; the scan goes on.
        entries.push(...docs.map(toEntry).filter((entry) => matchesDeadLetterFilter(entry, filter)));
      }
      const last = batch.at(-1);
      const scannedAll = batch.length < deadScanBatch && (last === undefined || Number(last._id) === cursor);
      if (entries.length >= limit || scannedAll) return entries;
    }
  }

  /** Deletes dead entries for good (and their claim tickets); other ids are ignored. */
  async dropDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    const valid = validIds(ids);
    if (valid.length === 0) return 0;
    await this.init();
    // Not sent again on a failed connection: a second delete would under-report the count.
    return this.#run("dropDead", false, async () => {
      const result = await this.#entries.deleteMany({ _id: { $in: longs(valid) }, status: "dead" });
      // Tickets of the dropped entries, and only of those (a live entry keeps its tickets).
      const left = new Set(
        (await this.#entries.find({ _id: { $in: longs(valid) } }, { projection: { _id: 1 } }).toArray()).map((doc) =>
          Number(doc._id),
        ),
      );
      const gone = valid.filter((id) => !left.has(id));
      if (gone.length > 0) await this.#claims.deleteMany({ seq: { $in: longs(gone) } });
      return result.deletedCount;
    });
  }

  async requeueDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    const valid = validIds(ids);
    if (valid.length === 0) return 0;
    await this.init();
    const now = new Date(this.#clock.now());
    const result = await this.#run("requeueDead", false, () =>
      this.#entries.updateMany(
        { _id: { $in: longs(valid) }, status: "dead" },
        {
          $set: {
            status: "pending",
            attempts: 0,
            availableAt: now,
            claimedBy: null,
            claimId: null,
            leaseUntil: null,
            settledAt: null,
          },
          $inc: { gen: 1 },
        },
      ),
    );
    if (result.modifiedCount > 0) this.#wake();
    return result.modifiedCount;
  }

  async purge(request: PurgeRequest): Promise<number> {
    this.#assertOpen();
    if (!(request.olderThan instanceof Date) || Number.isNaN(request.olderThan.getTime())) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "purge needs olderThan as a valid Date");
    }
    const batchSize = positiveInteger(request.batchSize ?? 1000, "batchSize");
    await this.init();
    const cutoff = new Date(request.olderThan.getTime());
    const settled: Filter<EntryDoc> = { status: { $in: ["published", "dead"] }, settledAt: { $lt: cutoff } };
    let total = 0;
    for (;;) {
      this.#assertOpen();
      // One bounded batch per round: find the oldest settled ids, delete those that are still settled.
      const deleted = await this.#run("purge", true, async () => {
        const docs = await this.#entries
          .find(settled, { projection: { _id: 1 }, sort: { settledAt: 1 }, limit: batchSize })
          .toArray();
        if (docs.length === 0) return { found: 0, deleted: 0 };
        const ids = docs.map((doc) => doc._id);
        const result = await this.#entries.deleteMany({ _id: { $in: ids }, ...settled });
        // Their claim tickets go with them (a requeue in between keeps its entry, and tickets of
        // a live entry only name states it has left).
        await this.#claims.deleteMany({ seq: { $in: ids } });
        return { found: docs.length, deleted: result.deletedCount };
      });
      total += deleted.deleted;
      if (deleted.found < batchSize) return total;
    }
  }

  async stats(): Promise<StoreStats> {
    this.#assertOpen();
    await this.init();
    const now = new Date(this.#clock.now());
    const [pending, inFlight, dead, oldest] = await this.#run("stats", true, () =>
      Promise.all([
        this.#entries.countDocuments({ status: "pending" }),
        this.#entries.countDocuments({ status: "pending", leaseUntil: { $gt: now } }),
        this.#entries.countDocuments({ status: "dead" }),
        // The oldest pending entry by id (index), whose createdAt is the outbox's lag.
        this.#entries.findOne({ status: "pending" }, { sort: { _id: 1 }, projection: { createdAt: 1 } }),
      ]),
    );
    return {
      pending,
      inFlight,
      dead,
      oldestPendingAt: oldest?.createdAt ? new Date(oldest.createdAt.getTime()) : null,
    };
  }

  /**
   * The oldest `scanLimit` pending entries (default 10,000), read in id order through the
   * { status, _id } index: bounded, however deep the backlog. Retry-waiting and hot keys are
   * counted among them, on the server (three aggregations, each a bounded scan, at once with the
   * blocked keys' two).
   */
  async pendingSummary(options: PendingSummaryOptions = {}): Promise<PendingSummary> {
    this.#assertOpen();
    const scanLimit = positiveInteger(options.scanLimit ?? 10_000, "scanLimit");
    const hotKeys = positiveInteger(options.hotKeys ?? 10, "hotKeys");
    const blockedKeys = positiveInteger(options.blockedKeys ?? 10, "blockedKeys");
    await this.init();
    const now = new Date(this.#clock.now());
    const scan = [{ $match: { status: "pending" } }, { $sort: { _id: 1 } }, { $limit: scanLimit }];
    // Waiting: available later and not leased (leaseUntil missing, null or past; no $cond: FerretDB 1.x has none).
    const waiting: Filter<EntryDoc> = {
      availableAt: { $gt: now },
      $or: [{ leaseUntil: null }, { leaseUntil: { $lte: now } }],
    };
    const count = (match: Filter<EntryDoc>[]) =>
      this.#entries
        .aggregate<{ n: number }>([
          ...scan,
          ...match.map(($match) => ({ $match })),
          { $group: { _id: null, n: { $sum: 1 } } },
        ])
        .toArray()
        .then((rows) => Number(rows[0]?.n ?? 0));
    const [scanned, retryWaiting, hot, blocked] = await this.#run("pendingSummary", true, () =>
      Promise.all([
        count([]),
        count([waiting]),
        this.#entries
          .aggregate<{ _id: string; pending: number }>([
            ...scan,
            { $match: { key: { $ne: null } } },
            { $group: { _id: "$key", pending: { $sum: 1 } } },
            { $sort: { pending: -1, _id: 1 } },
            { $limit: hotKeys },
          ])
          .toArray(),
        this.#blockedKeys(scan, waiting, blockedKeys),
      ]),
    );
    return {
      scanned,
      retryWaiting,
      hotKeys: hot.map((row) => ({ key: row._id, pending: Number(row.pending) })).sort(mostPendingFirst),
      blockedKeys: blocked,
    };
  }

  /**
   * Bounded reads at once: the oldest `scanLimit` pending entries ({ status, _id }: their count,
   * the unexpired leases per claimer, the failed ones), the newest published entry ({ status,
   * settledAt }: exact, not bounded by `scanLimit`), the newest `recentErrors` dead ones
   * ({ status, _id }) and at most 10,000 fence documents.
   */
  async relayActivity(options: RelayActivityOptions = {}): Promise<RelayActivity> {
    this.#assertOpen();
    const scanLimit = positiveInteger(options.scanLimit ?? 10_000, "scanLimit");
    const recentErrors = positiveInteger(options.recentErrors ?? 10, "recentErrors");
    await this.init();
    const now = new Date(this.#clock.now());
    const scan = [{ $match: { status: "pending" } }, { $sort: { _id: 1 } }, { $limit: scanLimit }];
    const errorProjection = {
      _id: 1,
      key: 1,
      topic: 1,
      lastError: 1,
      attempts: 1,
      availableAt: 1,
      settledAt: 1,
      status: 1,
    };
    const [scanned, leases, published, failed, dead, fenceDocs] = await this.#run("relayActivity", true, () =>
      Promise.all([
        this.#entries
          .aggregate<{ n: number }>([...scan, { $group: { _id: null, n: { $sum: 1 } } }])
          .toArray()
          .then((rows) => Number(rows[0]?.n ?? 0)),
        this.#entries
          // One group per claim in flight (its entries share their lease end: FerretDB 1.x has no $max).
          .aggregate<{ _id: { claimer: string; until: Date }; n: number }>([
            ...scan,
            { $match: { leaseUntil: { $gt: now }, claimedBy: { $ne: null } } },
            { $group: { _id: { claimer: "$claimedBy", until: "$leaseUntil" }, n: { $sum: 1 } } },
          ])
          .toArray(),
        this.#entries.findOne({ status: "published" }, { sort: { settledAt: -1 }, projection: { settledAt: 1 } }),
        this.#entries
          .aggregate<EntryDoc>([
            ...scan,
            { $match: { lastError: { $ne: null } } },
            { $sort: { availableAt: -1, _id: -1 } },
            { $limit: recentErrors },
            { $project: errorProjection },
          ])
          .toArray(),
        this.#entries
          .find({ status: "dead" }, { sort: { _id: -1 }, limit: recentErrors, projection: errorProjection })
          .toArray(),
        this.#fences.find({}, { projection: { _id: 1, lock: 1, token: 1 }, limit: maxFenceDocs }).toArray(),
      ]),
    );
    // With transactions a lock's head document (`head:<lock>`); without, a record per token.
    const newest = new Map<string, bigint>();
    for (const doc of fenceDocs) {
      const lock = doc.lock ?? (doc._id.startsWith("head:") ? doc._id.slice("head:".length) : null);
      const token = toBigint(doc.token);
      if (lock === null || token === null) continue;
      const seen = newest.get(lock);
      if (seen === undefined || token > seen) newest.set(lock, token);
    }
    return {
      scanned,
      fences: [...newest]
        .map(([lock, token]) => ({ lock, token }))
        .sort((a, b) => (a.lock < b.lock ? -1 : a.lock > b.lock ? 1 : 0))
        .slice(0, relayActivityMaxLocks),
      claimers: claimersByRelay(
        leases.map((row) => ({
          claimer: row._id.claimer,
          inFlight: Number(row.n),
          leaseUntil: new Date(row._id.until.getTime()),
        })),
      ),
      lastPublishedAt: published?.settledAt ? new Date(published.settledAt.getTime()) : null,
      recentErrors: [...failed, ...dead]
        .filter((doc) => doc.lastError !== null && doc.lastError !== undefined)
        .map(
          (doc): RecentError => ({
            id: String(doc._id),
            key: doc.key ?? null,
            topic: doc.topic,
            error: doc.lastError as string,
            attempts: doc.attempts,
            at: new Date((doc.status === "dead" ? (doc.settledAt as Date) : doc.availableAt).getTime()),
            dead: doc.status === "dead",
          }),
        )
        .sort(newestErrorFirst)
        .slice(0, recentErrors),
    };
  }

  /**
   * Keys whose first pending entry in the scan failed and waits: the failing waiting entries
   * first (few), then the scan's entries of their keys only (`_id` and key), to see which of them
   * come first in their key and how many entries wait behind.
   */
  async #blockedKeys(scan: Document[], waiting: Filter<EntryDoc>, limit: number): Promise<BlockedKey[]> {
    const failing = await this.#entries
      .aggregate<EntryDoc>([...scan, { $match: { key: { $ne: null }, lastError: { $ne: null }, ...waiting } }])
      .toArray();
    if (failing.length === 0) return [];
    const keys = [...new Set(failing.map((entry) => entry.key as string))];
    const ofKeys = await this.#entries
      .aggregate<{ _id: Long | number; key: string }>([
        ...scan,
        { $match: { key: { $in: keys } } },
        { $project: { _id: 1, key: 1 } },
      ])
      .toArray();
    const heads = new Map<string, string>();
    const pending = new Map<string, number>();
    for (const entry of ofKeys) {
      if (!heads.has(entry.key)) heads.set(entry.key, String(entry._id));
      pending.set(entry.key, (pending.get(entry.key) ?? 0) + 1);
    }
    return failing
      .filter((entry) => heads.get(entry.key as string) === String(entry._id))
      .map((entry) => ({
        key: entry.key as string,
        pending: pending.get(entry.key as string) ?? 0,
        entryId: String(entry._id),
        attempts: entry.attempts,
        lastError: entry.lastError,
        availableAt: entry.availableAt,
      }))
      .sort(mostPendingFirst)
      .slice(0, limit);
  }

  async subscribe(listener: () => void): Promise<Unsubscribe> {
    this.#assertOpen();
    await this.init();
    if (!this.capabilities.wakeUps) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        "this server has no change streams (or wakeUps: false): capabilities.wakeUps is false, poll instead",
      );
    }
    this.#wakeSource ??= new ChangeStreamWakeSource(
      {
        open: () =>
          // Only inserts, and of each event only its resume token (`_id`): a wake-up needs no more.
          this.#entries.watch([
            { $match: { operationType: "insert" } },
            { $project: { _id: 1 } },
          ]) as unknown as ChangeStreamLike,
      },
      { onWake: () => this.#wake(), onError: (error) => this.#onError(error) },
    );
    return this.#subscribers.subscribe(listener, this.#wakeSource);
  }

  /** Stops the change stream. Does not close the client: it is yours. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#subscribers.close();
  }

  /** A settle by a fenced caller never touches an entry leased under a newer token of its lock. */
  #fenceGuard(fence: Fence): Filter<EntryDoc> {
    return { $or: [{ leaseLock: { $ne: fence.lock } }, { leaseToken: { $lte: tokenLong(fence) } }] };
  }

  #guard(fence: Fence | undefined): Filter<EntryDoc> {
    return fence ? { $and: [this.#fenceGuard(fence)] } : {};
  }

  #owned(ids: number[], context: SettleContext): Filter<EntryDoc> {
    return { _id: { $in: longs(ids) }, status: "pending", claimedBy: context.claimer, ...this.#guard(context.fence) };
  }

  /**
   * Runs `work` under the fence. With transactions (replica sets) the fence upsert and `work`
   * share one transaction: a fenced operation changes nothing. Without, the fence is recorded
   * and checked first, then `work` runs; its documents carry their own per-document check.
   */
  async #withFence<T>(
    operation: string,
    fence: Fence | undefined,
    work: (session: ClientSession | undefined) => Promise<T>,
  ): Promise<T> {
    if (!fence) return work(undefined);
    if (this.#fenceInTransaction && this.#server?.replicated) {
      const session = this.#client.startSession();
      try {
        let result: { value: T } | null = null;
        await session.withTransaction(async () => {
          result = null;
          await this.#recordFence(operation, fence, session);
          result = { value: await work(session) };
        });
        if (result === null) throw new Error("the fenced transaction did not run");
        return (result as { value: T }).value;
      } finally {
        await session.endSession().catch(() => undefined);
      }
    }
    await this.#recordFence(operation, fence, undefined);
    return work(undefined);
  }

  /**
   * Records `fence` and refuses it (OUTBOX_FENCED) when a newer token of its lock is known.
   * In a transaction: `$max` on the lock's head document, read back in the same transaction;
   * concurrent fenced operations of one lock conflict on it, so check and effect are atomic.
   * Without: an insert-only record per token, then the highest record; records never go
   * back (a racing older token cannot overwrite a newer one, even where updates are not atomic).
   */
  async #recordFence(operation: string, fence: Fence, session: ClientSession | undefined): Promise<void> {
    const token = tokenLong(fence);
    let newest: bigint | null;
    if (session) {
      const head = `head:${fence.lock}`;
      await this.#fences.updateOne({ _id: head }, { $max: { token } }, { upsert: true, session });
      newest = toBigint((await this.#fences.findOne({ _id: head }, { session }))?.token);
    } else {
      const id = `${fence.lock}#${fence.token}`;
      if (this.#recorded.get(fence.lock) !== fence.token) {
        try {
          await this.#fences.insertOne({ _id: id, lock: fence.lock, token });
        } catch (error) {
          if (!isDuplicateKey(error)) throw error;
        }
        this.#recorded.set(fence.lock, fence.token);
      }
      const top = await this.#fences.findOne({ lock: fence.lock }, { sort: { token: -1 }, projection: { token: 1 } });
      newest = toBigint(top?.token);
    }
    if (newest !== null && newest > fence.token) {
      throw new OutboxError(
        OutboxErrorCode.Fenced,
        `${operation} refused: fencing token ${fence.token} for "${fence.lock}" is older than ${newest}`,
        { details: { lock: fence.lock, token: fence.token.toString(), newest: newest.toString() } },
      );
    }
  }

  /**
   * Runs one store operation; driver errors become OUTBOX_STORE_UNAVAILABLE. Idempotent ones
   * (settles, reads) are sent again when their connection failed, so one dropped connection
   * does not leave a batch leased until its lease ends.
   */
  async #run<T>(operation: string, idempotent: boolean, work: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await work();
        if (this.#closed) throw closedError();
        return result;
      } catch (error) {
        if (OutboxError.is(error)) throw error;
        if (!idempotent || attempt >= connectionRetries || !isConnectionError(error) || this.#closed) {
          throw storeError(operation, error);
        }
      }
    }
  }

  #track(id: number): void {
    if (this.#keyed.size >= maxTrackedIds) this.#keyed.clear();
    this.#keyed.add(id);
  }

  /** Forgets settled ids; true when one of them was keyed. */
  #untrack(ids: readonly number[]): boolean {
    let keyed = false;
    for (const id of ids) if (this.#keyed.delete(id)) keyed = true;
    return keyed;
  }

  #wake(): void {
    if (!this.#closed) this.#subscribers.wake();
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError();
  }
}

/** Creates the MongoDB store. Call `await store.init()` once at startup (indexes, server capabilities). */
export function createMongoStore(options: MongoStoreOptions): MongoStore {
  return new MongoStore(options);
}
