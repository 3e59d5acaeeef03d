import { AsyncLocalStorage } from "node:async_hooks";
import { randomUUID } from "node:crypto";
import { type Clock, OutboxError, OutboxErrorCode, systemClock } from "@outbox/core";
import type {
  InboxConsumerStats,
  InboxDeadItem,
  InboxDeadLetter,
  InboxFailure,
  InboxKeyGroup,
  InboxPurgeRequest,
  InboxRecord,
  InboxStore,
  InboxStoreCapabilities,
  ListInboxDeadOptions,
  RecordOutcome,
} from "@outbox/inbox";
import type { ClientSession, Collection, MongoClient } from "mongodb";
import { closedError, hasLabel, isDuplicateKey, storeError } from "./errors.js";
import { checkNamespace, ensureIndexes, probeServer } from "./setup.js";
import { looksLikeSession, type MongoTransaction } from "./store.js";

/** `@outbox/inbox`, an optional peer: loaded by the inbox store only, so the outbox store never needs it. */
const inboxHelpers = () => import("@outbox/inbox");

export interface MongoInboxStoreOptions {
  /** A connected (or lazily connecting) MongoClient. The store never closes it. */
  client: MongoClient;
  /** Database name. */
  db: string;
  /** Keys and dead letters. Default "inbox". The attempt counters live in `<collection>_attempts`. */
  collection?: string;
  /**
   * true (default): the handler runs in a transaction (`session.withTransaction`) and gets its ClientSession,
   * the handle `MongoStore.enqueue` takes; needs a replica set or a sharded cluster. false: for servers without
   * transactions (standalone mongod, FerretDB 1.x): the key is a lease while the handler runs and the handler's
   * writes are not atomic with it (see the README for exactly what that guarantees).
   */
  transactions?: boolean;
  /**
   * Without transactions: how long a delivery's hold on a key lasts unless renewed (the store renews it every
   * third of this while the handler runs). A delivery that finds the key held waits; once the hold has run out
   * (its process died) it takes the key over. Default 30,000 ms.
   */
  leaseMs?: number;
  /** Time of leases and of `dropDead`. Default `systemClock`. */
  clock?: Clock;
  /** Errors nobody awaits (renewing a hold failed). Default: console.warn. */
  onError?: (error: OutboxError) => void;
}

/**
 * A key. `_id` is the JSON text `["<consumer>","<message id>"]`: a unique `_id` is the one write every server makes
 * atomic (FerretDB 1.x included), so it is the dedupe.
 */
interface KeyDoc {
  _id: string;
  consumer: string;
  messageId: string;
  /** `running`: held by a delivery whose handler runs (without transactions only). */
  status: "processed" | "running" | "dead";
  recordedAt: Date;
  owner?: string;
  leaseUntil?: Date;
  attempts?: number;
  lastError?: string;
  /** A dead letter's message (JSON text: header names may hold "." or "$"). */
  message?: string;
}

interface AttemptDoc {
  _id: string;
  attempts: number;
  lastError: string;
  updatedAt: Date;
}

/** The keys one handler transaction holds without transactions, under its own owner id. */
interface Hold {
  readonly owner: string;
  readonly keys: string[];
}

const keyId = (consumer: string, messageId: string) => JSON.stringify([consumer, messageId]);
const keyIds = (consumer: string, messageIds: readonly string[]) => [
  ...new Set(messageIds.filter((id) => typeof id === "string").map((id) => keyId(consumer, id))),
];
/**
 * The `_id`s of a consumer's attempt counters: every one starts with `["<consumer>","`, and no other consumer's does
 * (JSON escapes its quotes). Ending that prefix in `#` (the character after `"`) bounds it above.
 */
function attemptRange(consumer: string): { $gte: string; $lt: string } {
  const prefix = keyId(consumer, "").slice(0, -2);
  return { $gte: prefix, $lt: `${prefix.slice(0, -1)}#` };
}
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * The MongoDB inbox store (mongodb driver). With transactions, `transaction()` runs the handler in
 * `session.withTransaction` and hands it the ClientSession, the handle `MongoStore.enqueue` takes: the key, the
 * handler's writes and follow-up outbox entries commit together. Without, see `MongoInboxStoreOptions.transactions`.
 */
export class MongoInboxStore implements InboxStore<MongoTransaction> {
  readonly capabilities: InboxStoreCapabilities;
  /** The collection names, for diagnostics. */
  readonly names: { readonly db: string; readonly keys: string; readonly attempts: string };
  readonly #client: MongoClient;
  readonly #keys: Collection<KeyDoc>;
  readonly #attempts: Collection<AttemptDoc>;
  readonly #transactions: boolean;
  readonly #leaseMs: number;
  readonly #clock: Clock;
  readonly #onError: (error: OutboxError) => void;
  readonly #holds = new AsyncLocalStorage<Hold>();
  #init: Promise<void> | null = null;
  #closed = false;

  constructor(options: MongoInboxStoreOptions) {
    const collection = checkNamespace(options, "createMongoInboxStore", "inbox");
    const leaseMs = options.leaseMs ?? 30_000;
    if (!Number.isInteger(leaseMs) || leaseMs < 3) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, `leaseMs must be an integer >= 3, got ${String(leaseMs)}`);
    }
    this.#client = options.client;
    this.names = { db: options.db, keys: collection, attempts: `${collection}_attempts` };
    const db = options.client.db(options.db);
    this.#keys = db.collection<KeyDoc>(this.names.keys);
    this.#attempts = db.collection<AttemptDoc>(this.names.attempts);
    this.#transactions = options.transactions ?? true;
    this.#leaseMs = leaseMs;
    this.#clock = options.clock ?? systemClock;
    this.#onError =
      options.onError ?? ((error) => console.warn(`[@outbox/store-mongodb inbox ${options.db}.${collection}]`, error));
    this.capabilities = { transactions: this.#transactions, concurrentWriters: true };
  }

  /**
   * Checks the server (transactions: true needs a replica set or mongos) and creates the indexes (not on
   * FerretDB 1.x, which uses none but `_id`'s). Idempotent; every operation runs it once if you did not.
   */
  init(): Promise<void> {
    this.#assertOpen();
    this.#init ??= (async () => {
      const { ferretdb } = await probeServer(this.#client, this.#transactions);
      if (ferretdb) return;
      await ensureIndexes(this.#keys as unknown as Collection, [
        // purge: processed keys by the time they were recorded.
        { key: { status: 1, recordedAt: 1 }, name: "inbox_status_recorded" },
        // listDead: a consumer's dead letters by message id.
        { key: { consumer: 1, status: 1, messageId: 1 }, name: "inbox_consumer_status_message" },
        // stats: a consumer's keys counted by status (index keys only), its oldest and newest times.
        { key: { consumer: 1, status: 1, recordedAt: 1 }, name: "inbox_consumer_status_recorded" },
      ]);
      await ensureIndexes(this.#attempts as unknown as Collection, [{ key: { updatedAt: 1 }, name: "inbox_updated" }]);
    })().catch((error: unknown) => {
      this.#init = null;
      throw storeError("inbox init", error);
    });
    return this.#init;
  }

  /**
   * With transactions: `work` runs in `session.withTransaction` on a new session (the driver runs it again on a
   * TransientTransactionError, e.g. a write conflict with a concurrent delivery of the same key) and gets the
   * session. `work`'s own error is rethrown untouched; a failed commit becomes OUTBOX_STORE_UNAVAILABLE.
   *
   * Without: `work` gets `null`. The keys it records are held under a lease, renewed while it runs; when it
   * resolves they become processed (OUTBOX_STORE_UNAVAILABLE when a hold was taken over meanwhile), when it
   * throws they are deleted. The handler's own writes are not undone.
   */
  async transaction<T>(work: (tx: MongoTransaction) => Promise<T>): Promise<T> {
    await this.init();
    this.#assertOpen();
    return this.#transactions ? this.#inTransaction(work) : this.#held(work);
  }

  async #inTransaction<T>(work: (tx: MongoTransaction) => Promise<T>): Promise<T> {
    const session = this.#client.startSession();
    try {
      let result: { value: T } | null = null;
      let failure: { error: unknown } | null = null;
      try {
        await session.withTransaction(async () => {
          result = null;
          failure = null;
          try {
            result = { value: await work(session) };
          } catch (error) {
            failure = { error };
            throw error;
          }
        });
      } catch (error) {
        if ((failure as { error: unknown } | null)?.error === error) throw error;
        throw storeError("inbox transaction", error);
      }
      if (result === null) throw storeError("inbox transaction", new Error("the transaction did not run"));
      return (result as { value: T }).value;
    } finally {
      await session.endSession().catch(() => undefined);
    }
  }

  async #held<T>(work: (tx: MongoTransaction) => Promise<T>): Promise<T> {
    const hold: Hold = { owner: randomUUID(), keys: [] };
    const renewal = setInterval(
      () => {
        // A closed store renews nothing: its holds run out as a dead process's do.
        if (this.#closed) clearInterval(renewal);
        if (this.#closed || hold.keys.length === 0) return;
        this.#keys
          .updateMany(this.#holding(hold), { $set: { leaseUntil: new Date(this.#clock.now() + this.#leaseMs) } })
          .catch((error: unknown) => this.#onError(storeError("inbox lease renewal", error)));
      },
      Math.floor(this.#leaseMs / 3),
    );
    renewal.unref?.();
    let result: T;
    try {
      result = await this.#holds.run(hold, () => work(null));
    } catch (error) {
      clearInterval(renewal);
      // A hold left behind (this delete failed) runs out after leaseMs; the redelivery then takes it over.
      if (hold.keys.length > 0) await this.#keys.deleteMany(this.#holding(hold)).catch(() => undefined);
      throw error;
    }
    clearInterval(renewal);
    if (hold.keys.length > 0) {
      const done = await this.#run("inbox commit", () =>
        this.#keys.updateMany(this.#holding(hold), {
          $set: { status: "processed" },
          $unset: { owner: "", leaseUntil: "" },
        }),
      );
      if (done.matchedCount < hold.keys.length) {
        throw new OutboxError(
          OutboxErrorCode.StoreUnavailable,
          "inbox commit failed: the hold on the key ran out and another delivery took it over (its handler may run too)",
          { details: { operation: "inbox commit" } },
        );
      }
    }
    return result;
  }

  #holding(hold: Hold) {
    return { _id: { $in: hold.keys }, owner: hold.owner, status: "running" as const };
  }

  async record(tx: MongoTransaction, record: InboxRecord): Promise<RecordOutcome> {
    this.#assertOpen();
    const _id = keyId(record.consumer, record.messageId);
    if (this.#transactions) {
      if (!looksLikeSession(tx) || !tx.inTransaction()) {
        throw new OutboxError(
          OutboxErrorCode.InvalidOptions,
          "record needs the ClientSession of the handler's transaction",
        );
      }
      return this.#recordIn(tx, _id, record);
    }
    const hold = this.#holds.getStore();
    if (!hold) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "record runs inside this store's transaction()");
    }
    return this.#recordHeld(hold, _id, record);
  }

  /**
   * In the handler's transaction: an upsert that only inserts. A concurrent delivery's transaction writing the
   * same key conflicts (WriteConflict, a TransientTransactionError: rethrown untouched so that withTransaction
   * runs the delivery again, which then finds the committed key, or inserts it after a rollback).
   */
  async #recordIn(session: ClientSession, _id: string, record: InboxRecord): Promise<RecordOutcome> {
    try {
      const inserted = await this.#keys.updateOne(
        { _id },
        {
          $setOnInsert: {
            consumer: record.consumer,
            messageId: record.messageId,
            status: "processed",
            recordedAt: record.at,
          },
        },
        { upsert: true, session },
      );
      if (inserted.upsertedCount === 1) return "recorded";
      const found = await this.#keys.findOne({ _id }, { session, projection: { status: 1 } });
      return found?.status === "dead" ? "dead" : "duplicate";
    } catch (error) {
      if (hasLabel(error, "TransientTransactionError")) throw error;
      throw storeError("inbox record", error);
    }
  }

  /**
   * Without transactions: insert the key as held by this delivery (a unique `_id`). Found processed or dead:
   * duplicate or dead. Held by another delivery: wait for it to end (poll), or take it over once its lease ran
   * out. Gone meanwhile (rolled back, requeued): insert again.
   */
  async #recordHeld(hold: Hold, _id: string, record: InboxRecord): Promise<RecordOutcome> {
    for (let pause = 5; ; pause = Math.min(pause * 2, 200)) {
      this.#assertOpen();
      const now = this.#clock.now();
      const doc: KeyDoc = {
        _id,
        consumer: record.consumer,
        messageId: record.messageId,
        status: "running",
        recordedAt: record.at,
        owner: hold.owner,
        leaseUntil: new Date(now + this.#leaseMs),
      };
      try {
        await this.#keys.insertOne(doc);
        hold.keys.push(_id);
        return "recorded";
      } catch (error) {
        if (!isDuplicateKey(error)) throw storeError("inbox record", error);
      }
      const found = await this.#run("inbox record", () => this.#keys.findOne({ _id }));
      if (found === null) continue;
      if (found.status === "processed") return "duplicate";
      if (found.status === "dead") return "dead";
      if ((found.leaseUntil?.getTime() ?? 0) <= now) {
        // The delivery holding it is gone (its lease ran out): take the key over.
        await this.#run("inbox record", () => this.#keys.deleteOne({ _id, status: "running", owner: found.owner }));
        continue;
      }
      await sleep(pause);
    }
  }

  async recordFailure(failure: InboxFailure): Promise<number> {
    await this.init();
    const _id = keyId(failure.consumer, failure.messageId);
    const update = { $inc: { attempts: 1 }, $set: { lastError: failure.error, updatedAt: failure.at } };
    for (let attempt = 1; ; attempt++) {
      try {
        const doc = await this.#attempts.findOneAndUpdate({ _id }, update, { upsert: true, returnDocument: "after" });
        return Number(doc?.attempts ?? 0);
      } catch (error) {
        // Two concurrent upserts of a new counter: one inserts, the other runs again and increments it.
        if (isDuplicateKey(error) && attempt < 3) continue;
        throw storeError("inbox recordFailure", error);
      }
    }
  }

  async deadLetter(item: InboxDeadItem): Promise<boolean> {
    await this.init();
    const _id = keyId(item.consumer, item.messageId);
    const { encodeStoredMessage } = await inboxHelpers();
    const fields = {
      recordedAt: item.at,
      attempts: item.attempts,
      lastError: item.error,
      message: encodeStoredMessage(item.message),
    };
    const moved = await this.#run("inbox deadLetter", async () => {
      for (;;) {
        try {
          await this.#keys.insertOne({
            _id,
            consumer: item.consumer,
            messageId: item.messageId,
            status: "dead",
            ...fields,
          });
          return true;
        } catch (error) {
          if (!isDuplicateKey(error)) throw error;
        }
        if ((await this.#keys.updateOne({ _id, status: "dead" }, { $set: fields })).matchedCount > 0) return true;
        // Processed, or held by a concurrent delivery: that one decides. Gone since: insert again.
        if ((await this.#keys.findOne({ _id }, { projection: { _id: 1 } })) !== null) return false;
      }
    });
    await this.#run("inbox deadLetter", () => this.#attempts.deleteOne({ _id }));
    return moved;
  }

  async listDead(consumer: string, options: ListInboxDeadOptions = {}): Promise<InboxDeadLetter[]> {
    await this.init();
    const { listDeadOptions, decodeStoredMessage } = await inboxHelpers();
    const { limit, after } = listDeadOptions(options);
    const docs = await this.#run("inbox listDead", () =>
      this.#keys
        .find(
          { consumer, status: "dead", ...(after === null ? {} : { messageId: { $gt: after } }) },
          { sort: { messageId: 1 }, limit },
        )
        .toArray(),
    );
    return docs.map((doc) => ({
      consumer,
      messageId: doc.messageId,
      message: decodeStoredMessage(doc.message),
      error: doc.lastError ?? "",
      attempts: Number(doc.attempts ?? 0),
      deadAt: doc.recordedAt,
    }));
  }

  async requeueDead(consumer: string, messageIds: readonly string[]): Promise<number> {
    await this.init();
    const ids = keyIds(consumer, messageIds);
    if (ids.length === 0) return 0;
    return this.#run("inbox requeueDead", async () => {
      const dead = (
        await this.#keys.find({ _id: { $in: ids }, status: "dead" }, { projection: { _id: 1 } }).toArray()
      ).map((doc) => doc._id);
      if (dead.length === 0) return 0;
      const { deletedCount } = await this.#keys.deleteMany({ _id: { $in: dead }, status: "dead" });
      await this.#attempts.deleteMany({ _id: { $in: dead } });
      return deletedCount;
    });
  }

  async dropDead(consumer: string, messageIds: readonly string[]): Promise<number> {
    await this.init();
    const ids = keyIds(consumer, messageIds);
    if (ids.length === 0) return 0;
    const { modifiedCount } = await this.#run("inbox dropDead", () =>
      this.#keys.updateMany(
        { _id: { $in: ids }, status: "dead" },
        {
          $set: { status: "processed", recordedAt: new Date(this.#clock.now()) },
          $unset: { message: "", lastError: "", attempts: "" },
        },
      ),
    );
    return modifiedCount;
  }

  /** Ids first, then a delete by `_id` that re-checks. */
  async purge(request: InboxPurgeRequest): Promise<number> {
    await this.init();
    const { purgeInBatches } = await inboxHelpers();
    return purgeInBatches(request, {
      keys: (olderThan, size) =>
        this.#run("inbox purge", async () => {
          const filter = { status: "processed" as const, recordedAt: { $lt: olderThan } };
          const docs = await this.#keys
            .find(filter, { projection: { _id: 1 }, sort: { recordedAt: 1 }, limit: size })
            .toArray();
          if (docs.length === 0) return 0;
          return (await this.#keys.deleteMany({ _id: { $in: docs.map((doc) => doc._id) }, ...filter })).deletedCount;
        }),
      attempts: (olderThan, size) =>
        this.#run("inbox purge", async () => {
          const filter = { updatedAt: { $lt: olderThan } };
          const docs = await this.#attempts.find(filter, { projection: { _id: 1 }, limit: size }).toArray();
          if (docs.length === 0) return 0;
          return (await this.#attempts.deleteMany({ _id: { $in: docs.map((doc) => doc._id) }, ...filter }))
            .deletedCount;
        }),
    });
  }

  /**
   * Per consumer: counts by status and the oldest and newest key (the consumer index), and its attempt counters
   * (an `_id` range: their `_id` starts with the consumer's JSON) whose key is not there. Without a consumer, the
   * consumers are the distinct ones of the keys, and every counter is read.
   */
  async stats(consumer?: string): Promise<InboxConsumerStats[]> {
    await this.init();
    const { consumerStats, statsConsumer } = await inboxHelpers();
    const only = statsConsumer(consumer);
    return this.#run("inbox stats", async () => {
      const consumers = only === undefined ? await this.#keys.distinct("consumer") : [only];
      // One consumer at a time (its five reads side by side): however many consumers, a handful of connections.
      const keys: InboxKeyGroup[] = [];
      for (const name of consumers) keys.push(...(await this.#keyGroups(name)));
      const failing = await this.#failing(only === undefined ? {} : { _id: attemptRange(only) });
      return consumerStats(
        only,
        keys,
        [...failing].map(([name, count]) => ({ consumer: name, count })),
      );
    });
  }

  async #keyGroups(consumer: string): Promise<InboxKeyGroup[]> {
    const timeOf = async (status: KeyDoc["status"], direction: 1 | -1) =>
      (
        await this.#keys.findOne(
          { consumer, status },
          { sort: { recordedAt: direction }, projection: { _id: 0, recordedAt: 1 } },
        )
      )?.recordedAt ?? null;
    const [processed, dead, oldest, newest, oldestDead] = await Promise.all([
      this.#keys.countDocuments({ consumer, status: "processed" }),
      this.#keys.countDocuments({ consumer, status: "dead" }),
      timeOf("processed", 1),
      timeOf("processed", -1),
      timeOf("dead", 1),
    ]);
    return [
      { consumer, status: "processed", count: processed, oldest, newest },
      { consumer, status: "dead", count: dead, oldest: oldestDead, newest: null },
    ];
  }

  /** Attempt counters matching `filter` whose key is not there (a handled message's counter stays until purge). */
  async #failing(filter: Record<string, unknown>): Promise<Map<string, number>> {
    const counts = new Map<string, number>();
    const count = async (ids: string[]) => {
      const found = await this.#keys.find({ _id: { $in: ids } }, { projection: { _id: 1 } }).toArray();
      const there = new Set(found.map((doc) => doc._id));
      for (const id of ids) {
        if (there.has(id)) continue;
        const [name] = JSON.parse(id) as [string, string];
        counts.set(name, (counts.get(name) ?? 0) + 1);
      }
    };
    let batch: string[] = [];
    for await (const doc of this.#attempts.find(filter, { projection: { _id: 1 } })) {
      batch.push(doc._id);
      if (batch.length === 1_000) {
        await count(batch);
        batch = [];
      }
    }
    if (batch.length > 0) await count(batch);
    return counts;
  }

  /** Every later call fails with OUTBOX_CLOSED. Does not close the client: it is yours. */
  async close(): Promise<void> {
    this.#closed = true;
  }

  /** One store operation; driver errors become OUTBOX_STORE_UNAVAILABLE. */
  async #run<T>(operation: string, work: () => Promise<T>): Promise<T> {
    this.#assertOpen();
    try {
      return await work();
    } catch (error) {
      throw storeError(operation, error);
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError();
  }
}

/** Creates the MongoDB inbox store. Call `await store.init()` once at startup (indexes, server check). */
export function createMongoInboxStore(options: MongoInboxStoreOptions): MongoInboxStore {
  return new MongoInboxStore(options);
}
