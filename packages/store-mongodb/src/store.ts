import {
  type ClaimRequest,
  type Clock,
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
import type { ClientSession, Collection, Filter, MongoClient } from "mongodb";
import { claimEntries } from "./claim.js";
import { dropDead, listDead, requeueDead } from "./dead.js";
import {
  bulk,
  type EntryDoc,
  type FenceDoc,
  positiveInteger,
  type SequenceDoc,
  type TicketDoc,
  tokenLong,
  validIds,
} from "./documents.js";
import { IdSequence, insertEntries } from "./enqueue.js";
import { closedError, isConnectionError, type Run, storeError } from "./errors.js";
import { withFence } from "./fence.js";
import { pendingSummary, purgeBatch, relayActivity, stats } from "./operator.js";
import { ack, deadLetterOps, release, releaseClaimer, retryOps } from "./settle.js";
import { checkNamespace, ensureStoreIndexes, probeChangeStreams, probeServer, type ServerInfo } from "./setup.js";
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

/** Attempts of an idempotent operation whose connection failed. */
const connectionRetries = 3;
/** Keyed ids remembered between claim and settle (for local wake-ups); bounded. */
const maxTrackedIds = 100_000;

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
  readonly #fences: Collection<FenceDoc>;
  readonly #claims: Collection<TicketDoc>;
  readonly #ids: IdSequence;
  readonly #transactions: boolean;
  readonly #wakeUps: boolean;
  readonly #fenceInTransaction: boolean;
  readonly #clock: Clock;
  readonly #limits: Partial<EntryLimits> | undefined;
  readonly #onError: (error: OutboxError) => void;
  readonly #subscribers: WakeUpListeners;
  readonly #keyed = new Set<number>();
  /** Entries this store's claims in flight picked (see claimEntries). */
  readonly #picking = new Set<number>();
  /** Tickets this store lost, with when it first lost each (see claim-tickets.ts); bounded. */
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
    this.#ids = new IdSequence(db.collection<SequenceDoc>(this.names.sequence));
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
      await ensureStoreIndexes(
        this.#entries as unknown as Collection,
        this.#claims as unknown as Collection,
        this.#fences as unknown as Collection,
      );
    }
    const changeStreams =
      replicated || (this.#wakeUps && (await probeChangeStreams(this.#client, this.names.db, this.names.entries)));
    this.#server = {
      replicated,
      changeStreams,
      atomicUpdates: !ferretdb,
      groupFirst: !ferretdb,
      secondaryIndexes: !ferretdb,
    };
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
    const createdAt = new Date(now);
    const inTransaction = session?.inTransaction() === true;
    const ids = await insertEntries(this.#entries, this.#ids, prepared, createdAt, session, inTransaction);
    if (!inTransaction) this.#wake();
    return ids;
  }

  async claim(request: ClaimRequest): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const limit = positiveInteger(request.limit, "limit");
    const leaseMs = positiveInteger(request.leaseMs, "leaseMs");
    if (request.fence) tokenLong(request.fence);
    await this.init();
    const now = this.#clock.now();
    const store = {
      entries: this.#entries,
      claims: this.#claims,
      lostTickets: this.#lostTickets,
      picking: this.#picking,
      server: this.#server,
    };
    const entries = await this.#run("claim", false, () =>
      this.#withFence("claim", request.fence, (session) =>
        claimEntries(store, request.claimer, limit, leaseMs, now, request.fence, session),
      ),
    );
    for (const entry of entries) if (entry.key !== null) this.#track(Number(entry.id));
    return entries;
  }

  async ack(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    // Once each: the claimer-only update of the ack counts on matching every id.
    const valid = [...new Set(validIds(ids))];
    if (valid.length === 0 && !context.fence) return;
    await this.init();
    const now = new Date(this.#clock.now());
    const modified = await this.#run("ack", true, () =>
      this.#withFence("ack", context.fence, (session) => ack(this.#entries, valid, context, now, session)),
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
    const ops = retryOps(valid, context);
    await this.#run("retry", true, () =>
      this.#withFence("retry", context.fence, (session) => bulk(this.#entries, ops, session)),
    );
    this.#untrack(valid.map((item) => Number(item.id)));
  }

  async deadLetter(items: readonly DeadLetterItem[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    const valid = items.filter((item) => validIds([item.id]).length === 1);
    if (valid.length === 0 && !context.fence) return;
    await this.init();
    const now = new Date(this.#clock.now());
    const ops = deadLetterOps(valid, context, now);
    const modified = await this.#run("deadLetter", true, () =>
      this.#withFence("deadLetter", context.fence, (session) => bulk(this.#entries, ops, session)),
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
      this.#withFence("release", context.fence, (session) => release(this.#entries, valid, context, session)),
    );
    this.#untrack(valid);
  }

  async releaseClaimer(context: SettleContext): Promise<number> {
    this.#assertOpen();
    await this.init();
    const released = await this.#run("releaseClaimer", true, () =>
      this.#withFence("releaseClaimer", context.fence, (session) => releaseClaimer(this.#entries, context, session)),
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
    return listDead(this.#entries, this.#run, filter, after, limit);
  }

  /** Deletes dead entries for good (and their claim tickets); other ids are ignored. */
  async dropDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    const valid = validIds(ids);
    if (valid.length === 0) return 0;
    await this.init();
    // Not sent again on a failed connection: a second delete would under-report the count.
    return this.#run("dropDead", false, () => dropDead(this.#entries, this.#claims, valid));
  }

  async requeueDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    const valid = validIds(ids);
    if (valid.length === 0) return 0;
    await this.init();
    const now = new Date(this.#clock.now());
    const requeued = await this.#run("requeueDead", false, () => requeueDead(this.#entries, valid, now));
    if (requeued > 0) this.#wake();
    return requeued;
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
      const deleted = await this.#run("purge", true, () => purgeBatch(this.#entries, this.#claims, settled, batchSize));
      total += deleted.deleted;
      if (deleted.found < batchSize) return total;
    }
  }

  async stats(): Promise<StoreStats> {
    this.#assertOpen();
    await this.init();
    const now = new Date(this.#clock.now());
    return stats(this.#entries, this.#run, now);
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
    return pendingSummary(this.#entries, this.#run, now, { scanLimit, hotKeys, blockedKeys });
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
    return relayActivity(this.#entries, this.#fences, this.#run, now, { scanLimit, recentErrors });
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

  #withFence<T>(
    operation: string,
    fence: Fence | undefined,
    work: (session: ClientSession | undefined) => Promise<T>,
  ): Promise<T> {
    const fencing = {
      client: this.#client,
      fences: this.#fences,
      recorded: this.#recorded,
      inTransaction: this.#fenceInTransaction && this.#server?.replicated === true,
    };
    return withFence(fencing, operation, fence, work);
  }

  /**
   * Runs one store operation; driver errors become OUTBOX_STORE_UNAVAILABLE. Idempotent ones
   * (settles, reads) are sent again when their connection failed, so one dropped connection
   * does not leave a batch leased until its lease ends.
   */
  readonly #run: Run = async (operation, idempotent, work) => {
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
  };

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
