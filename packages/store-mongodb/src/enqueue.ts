/** Enqueue's writes: entry ids from a counter document, and the insert of the entries. */
import type { PreparedMessage } from "@outbox/core";
import { Binary, type ClientSession, type Collection } from "mongodb";
import { type EntryDoc, long, type SequenceDoc } from "./documents.js";
import { duplicateIndexes, hasLabel, isDuplicateKey, storeError } from "./errors.js";

/** Enqueue re-reserves ids this often when the counter handed out taken ids (servers without atomic $inc). */
const sequenceRetries = 20;

/**
 * Ids come from a counter document, incremented outside your transaction: concurrent
 * enqueuers never conflict on it. A rolled-back transaction leaves a gap, and ids can
 * commit out of order; claims select by status, never "id > last seen", so neither loses
 * an entry (see the README). Returns the ids.
 */
export async function insertEntries(
  entries: Collection<EntryDoc>,
  ids: IdSequence,
  prepared: readonly PreparedMessage[],
  createdAt: Date,
  session: ClientSession | null,
  inTransaction: boolean,
): Promise<string[]> {
  for (let attempt = 1; ; attempt++) {
    const first = await ids.reserve(prepared.length);
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
      await entries.insertMany(docs, { ordered: true, ...(session ? { session } : {}) });
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
          await entries
            .deleteMany({ _id: { $in: docs.slice(0, inserted).map((doc) => doc._id) }, status: "pending", gen: 0 })
            .catch((cleanup: unknown) => {
              throw storeError("enqueue", cleanup);
            });
        }
        await ids.skipPast(first + docs.length - 1, docs.length * 2 ** Math.min(attempt - 1, 10));
        continue;
      }
      throw storeError("enqueue", error);
    }
    return docs.map((doc) => String(doc._id));
  }
}

/**
 * Reserves ids from the `entries` counter document. One `$inc` at a time per store: the
 * calls that arrive meanwhile share the next one, in arrival order. Concurrent enqueuers then
 * pay one round trip between them, and on a server whose `$inc` is not atomic (FerretDB 1.x)
 * they do not collide with each other (every collision costs a retry, see insertEntries).
 */
export class IdSequence {
  readonly #sequence: Collection<SequenceDoc>;
  /** Id reservations waiting for the next `$inc`. */
  readonly #reservations: Array<{ count: number; resolve: (first: number) => void; reject: (e: unknown) => void }> = [];
  #reserving = false;

  constructor(sequence: Collection<SequenceDoc>) {
    this.#sequence = sequence;
  }

  /** Reserves `count` consecutive ids; returns the first. */
  reserve(count: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#reservations.push({ count, resolve, reject });
      if (this.#reservations.length === 1 && !this.#reserving) void this.#reserveWaiting();
    });
  }

  /**
   * After a duplicate id: moves the counter past `tried` (the highest id the failed attempt
   * used) and `gap` more, doubling per retry. Lost increments (or a stale write-back) can leave
   * the counter behind ids in use; jumping ahead finds free ids in a few retries without looking
   * for the highest id in use, which FerretDB answers by reading the whole collection. Ids only
   * need to grow; the gap costs nothing.
   */
  async skipPast(tried: number, gap: number): Promise<void> {
    try {
      await this.#sequence.updateOne({ _id: "entries" }, { $max: { value: long(tried + gap) } });
    } catch (error) {
      throw storeError("enqueue", error);
    }
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
}
