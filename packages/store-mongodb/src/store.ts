import { randomUUID } from "node:crypto";
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
import {
  type AnyBulkWriteOperation,
  Binary,
  type ClientSession,
  type Collection,
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
import { type Candidate, Selection } from "./select.js";
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
}

/** Collection names: 1-100 characters, no "$", no U+0000. */
function validCollection(name: string): boolean {
  return name.length >= 1 && name.length <= 100 && !name.includes("$") && !name.includes(String.fromCharCode(0));
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
/** Statements per write command (see #bulk). */
const bulkStatements = 8;

/**
 * Creates the indexes that are missing. Only those: FerretDB 1.24 drops the connection (a
 * panic) on createIndexes for indexes that already exist.
 */
async function ensureIndexes(
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

function looksLikeSession(value: unknown): value is ClientSession {
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
    if (!options?.client || typeof options.client.db !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "createMongoStore needs `client`: a MongoClient");
    }
    if (typeof options.db !== "string" || options.db.length === 0) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "createMongoStore needs `db`: a database name");
    }
    const collection = options.collection ?? "outbox";
    if (typeof collection !== "string" || !validCollection(collection) || collection.startsWith("system.")) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        `collection must be 1-100 characters without "$" or U+0000, got ${JSON.stringify(collection)}`,
      );
    }
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
    const admin = this.#client.db("admin");
    // Servers without `hello` (older ones, mongo-java-server) answer the legacy isMaster.
    const hello = await admin.command({ hello: 1 }).catch((error: unknown) => {
      if (mongoCode(error) !== commandNotFound) throw error;
      return admin.command({ isMaster: 1 });
    });
    const replicated = typeof hello.setName === "string" || hello.msg === "isdbgrid";
    if (this.#transactions && !replicated) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        "transactions: true needs a replica set or a sharded cluster, and this server is standalone (no multi-document transactions): use transactions: false (see the README)",
      );
    }
    await ensureIndexes(this.#entries as unknown as Collection, [
      // The claim's window: the oldest pending entries; also dead entries oldest first.
      { key: { status: 1, _id: 1 }, name: "outbox_status_id" },
      // Key runs and the claim's pages past the window (key $nin the closed keys).
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
    const changeStreams = replicated || (this.#wakeUps && (await this.#probeChangeStreams()));
    this.#server = { replicated, changeStreams };
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
        // A server whose $inc is not atomic (FerretDB 1.x) can hand two enqueuers the same ids.
        // Without a transaction, take back what this attempt inserted and reserve new ids.
        if (!inTransaction && isDuplicateKey(error) && attempt < sequenceRetries) {
          const inserted = Number((error as { insertedCount?: unknown }).insertedCount ?? 0);
          if (inserted > 0) {
            await this.#entries
              .deleteMany({ _id: { $in: docs.slice(0, inserted).map((doc) => doc._id) }, status: "pending", gen: 0 })
              .catch((cleanup: unknown) => {
                throw storeError("enqueue", cleanup);
              });
          }
          await this.#catchUp();
          continue;
        }
        throw storeError("enqueue", error);
      }
      if (!inTransaction) this.#wake();
      return docs.map((doc) => String(doc._id));
    }
  }

  /** Lost increments left the counter behind ids in use: move it past the highest one. */
  async #catchUp(): Promise<void> {
    try {
      const top = await this.#entries.findOne({}, { sort: { _id: -1 }, projection: { _id: 1 } });
      if (top) await this.#sequence.updateOne({ _id: "entries" }, { $max: { value: long(Number(top._id)) } });
    } catch (error) {
      throw storeError("enqueue", error);
    }
  }

  /** Reserves `count` consecutive ids; returns the first. */
  async #reserve(count: number): Promise<number> {
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
   * One claim: (1) walk the oldest pending entries in pages (the first page is a bounded window;
   * later pages skip the keys already closed, so a blocked key's backlog is never walked) and
   * pick heads, null-key entries and runs; (2) lease the heads and null-key entries with one
   * conditional updateMany (each document re-checks that it is still claimable); (3) lease the
   * run successors of the heads it won; a run is cut at the first successor it did not win;
   * (4) read back what carries this claim's id.
   */
  async #claim(
    claimer: string,
    limit: number,
    leaseMs: number,
    now: number,
    fence: Fence | undefined,
    session: ClientSession | undefined,
  ): Promise<OutboxEntry[]> {
    const pageSize = Math.max(64, limit * 4);
    const pages: Candidate[][] = [];
    let exhausted = false;
    /** Walks the pages read so far (reading more while needed) with what earlier rounds lost. */
    const select = async (lost: ReadonlySet<number>): Promise<Selection> => {
      const selection = new Selection(limit, now, fence, lost);
      for (const page of pages) selection.walk(page);
      while (!selection.full && !exhausted) {
        const filter: Filter<EntryDoc> = { status: "pending" };
        const last = pages.at(-1)?.at(-1);
        if (last) {
          filter._id = { $gt: long(last.seq) };
          const closed = selection.closedKeys();
          if (closed.length > 0) filter.key = { $nin: closed };
        }
        const docs = await this.#entries
          .find(filter, { projection: candidateProjection, sort: { _id: 1 }, limit: pageSize, session })
          .toArray();
        const page = docs.map(toCandidate);
        pages.push(page);
        selection.walk(page);
        if (page.length < pageSize) exhausted = true;
      }
      return selection;
    };

    const claimId = randomUUID();
    const token = fence ? tokenLong(fence) : null;
    const until = new Date(now + leaseMs);
    const lease = {
      claimedBy: claimer,
      claimId,
      leaseUntil: until,
      leaseLock: fence?.lock ?? null,
      leaseToken: token,
    };

    /** Step 1 of a lease: the unique ticket `<seq>:<gen>`; who inserts it first won that state. */
    const tickets = async (entries: readonly Candidate[]): Promise<Candidate[]> => {
      if (entries.length === 0) return [];
      const docs = entries.map((e) => ({ _id: `${e.seq}:${e.gen}`, seq: long(e.seq), claimId, until }));
      let lost = new Set<number>();
      try {
        await this.#claims.insertMany(docs, { ordered: false, session });
      } catch (error) {
        lost = duplicateIndexes(error);
        if (lost.size === 0) throw error;
        await this.#unstick(
          entries.filter((_, i) => lost.has(i)),
          now,
          session,
        );
      }
      return entries.filter((_, i) => !lost.has(i));
    };
    /**
     * Step 2: the lease itself, on the state the ticket names (gen unchanged since the read,
     * atomic per document on MongoDB). Returns the seqs that now carry this claim's id.
     */
    const leases = async (entries: readonly Candidate[]): Promise<Set<number>> => {
      if (entries.length === 0) return new Set();
      // One statement per distinct gen (few: most entries are at 0), not one per entry.
      const ops: AnyBulkWriteOperation<EntryDoc>[] = [...groupBy(entries, (e) => e.gen)].map(([gen, group]) => ({
        updateMany: {
          filter: { _id: { $in: longs(group.map((e) => e.seq)) }, status: "pending", gen },
          update: { $set: lease, $inc: { attempts: 1, gen: 1 } },
        },
      }));
      const modified = await this.#bulk(ops, session);
      if (modified === entries.length) return new Set(entries.map((e) => e.seq));
      const docs = await this.#entries
        .find({ _id: { $in: longs(entries.map((e) => e.seq)) }, claimId }, { projection: { _id: 1 }, session })
        .toArray();
      return new Set(docs.map((doc) => Number(doc._id)));
    };

    // Rounds: concurrent claimers read the same oldest entries, so a claim that lost some of
    // them picks the next ones from the same pages (a bounded number of times).
    const won = new Set<number>();
    const lost = new Set<number>();
    for (let round = 0; round < claimRounds; round++) {
      const selection = await select(lost);
      const heads = selection.heads.filter((e) => !won.has(e.seq));
      // Keys whose head this claim holds (from this round or an earlier one).
      const headKeys = new Set(selection.heads.filter((h) => h.key !== null).map((h) => h.seq));
      const gotHeads = await leases(await tickets(heads));
      for (const e of heads) (gotHeads.has(e.seq) ? won : lost).add(e.seq);
      const wonKeys = new Set(
        selection.heads.filter((h) => h.key !== null && headKeys.has(h.seq) && won.has(h.seq)).map((h) => h.key),
      );
      const successors = selection.successors.filter((e) => wonKeys.has(e.key) && !won.has(e.seq));
      if (successors.length > 0) {
        const got = await leases(await tickets(successors));
        const cut = new Set<string | null>();
        const giveBack: number[] = [];
        for (const entry of successors) {
          if (cut.has(entry.key)) {
            if (got.has(entry.seq)) giveBack.push(entry.seq);
          } else if (got.has(entry.seq)) {
            won.add(entry.seq);
          } else {
            lost.add(entry.seq);
            cut.add(entry.key);
          }
        }
        if (giveBack.length > 0) {
          // A run is a prefix of its key: what lies past a successor we did not win goes back.
          await this.#entries.updateMany(
            { _id: { $in: longs(giveBack) }, claimId },
            { $set: { claimedBy: null, claimId: null, leaseUntil: null }, $inc: { attempts: -1, gen: 1 } },
            { session },
          );
          for (const seq of giveBack) lost.add(seq);
        }
      }
      const lostThisRound = heads.length + successors.length > 0 && won.size < selection.size;
      if (!lostThisRound || won.size >= limit) break;
    }
    const claimed = [...won];
    if (claimed.length === 0) return [];
    const docs = await this.#entries
      .find({ _id: { $in: longs(claimed) }, claimId }, { sort: { _id: 1 }, session })
      .toArray();
    return docs.map(toEntry);
  }

  /**
   * Entries whose ticket for their current state was taken but never followed by a lease (the
   * claimer died in between, a few milliseconds): once that ticket's lease time has passed,
   * bump the entry's gen so that the next claim competes for a fresh ticket.
   */
  async #unstick(entries: readonly Candidate[], now: number, session: ClientSession | undefined): Promise<void> {
    const expired = await this.#claims
      .find(
        { _id: { $in: entries.map((e) => `${e.seq}:${e.gen}`) }, until: { $lte: new Date(now) } },
        { projection: { _id: 1 }, session },
      )
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
  }

  /**
   * Runs write operations in commands of at most 8 statements. FerretDB 1.x holds one SQLite
   * connection per statement until its command ends (plus one to write), so a long bulk command
   * can exhaust its pool of 100 and hang the server; MongoDB pays a round trip per 8 groups.
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
    const valid = validIds(ids);
    if (valid.length === 0 && !context.fence) return;
    await this.init();
    const now = new Date(this.#clock.now());
    const modified = await this.#run("ack", true, () =>
      this.#withFence("ack", context.fence, async (session) => {
        if (valid.length === 0) return 0;
        const result = await this.#entries.updateMany(
          { _id: { $in: longs(valid) }, status: "pending", ...this.#guard(context.fence) },
          { $set: { status: "published", settledAt: now, leaseUntil: null } },
          { session },
        );
        return result.modifiedCount;
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
    await this.init();
    const docs = await this.#run("listDead", true, () =>
      this.#entries.find({ status: "dead", _id: { $gt: after } }, { sort: { _id: 1 }, limit }).toArray(),
    );
    return docs.map(toEntry);
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
