import { type Fence, OutboxError, OutboxErrorCode } from "@outbox/core";
import type { ClientSession, Collection, MongoClient } from "mongodb";
import { type FenceDoc, toBigint, tokenLong } from "./documents.js";
import { isDuplicateKey } from "./errors.js";

/** What fencing needs of its store. */
export interface Fencing {
  readonly client: MongoClient;
  readonly fences: Collection<FenceDoc>;
  /** The token this process last recorded per lock (saves the insert on every fenced call). */
  readonly recorded: Map<string, bigint>;
  /** Check and effect in one transaction: `fenceInTransaction`, on a server that has transactions. */
  readonly inTransaction: boolean;
}

/**
 * Runs `work` under the fence. With transactions (replica sets) the fence upsert and `work`
 * share one transaction: a fenced operation changes nothing. Without, the fence is recorded
 * and checked first, then `work` runs; its documents carry their own per-document check.
 */
export async function withFence<T>(
  fencing: Fencing,
  operation: string,
  fence: Fence | undefined,
  work: (session: ClientSession | undefined) => Promise<T>,
): Promise<T> {
  if (!fence) return work(undefined);
  if (fencing.inTransaction) {
    const session = fencing.client.startSession();
    try {
      let result: { value: T } | null = null;
      await session.withTransaction(async () => {
        result = null;
        await recordFence(fencing, operation, fence, session);
        result = { value: await work(session) };
      });
      if (result === null) throw new Error("the fenced transaction did not run");
      return (result as { value: T }).value;
    } finally {
      await session.endSession().catch(() => undefined);
    }
  }
  await recordFence(fencing, operation, fence, undefined);
  return work(undefined);
}

/**
 * Records `fence` and refuses it (OUTBOX_FENCED) when a newer token of its lock is known.
 * In a transaction: `$max` on the lock's head document, read back in the same transaction;
 * concurrent fenced operations of one lock conflict on it, so check and effect are atomic.
 * Without: an insert-only record per token, then the highest record; records never go
 * back (a racing older token cannot overwrite a newer one, even where updates are not atomic).
 */
async function recordFence(
  fencing: Fencing,
  operation: string,
  fence: Fence,
  session: ClientSession | undefined,
): Promise<void> {
  const { fences, recorded } = fencing;
  const token = tokenLong(fence);
  let newest: bigint | null;
  if (session) {
    const head = `head:${fence.lock}`;
    await fences.updateOne({ _id: head }, { $max: { token } }, { upsert: true, session });
    newest = toBigint((await fences.findOne({ _id: head }, { session }))?.token);
  } else {
    const id = `${fence.lock}#${fence.token}`;
    if (recorded.get(fence.lock) !== fence.token) {
      try {
        await fences.insertOne({ _id: id, lock: fence.lock, token });
      } catch (error) {
        if (!isDuplicateKey(error)) throw error;
      }
      recorded.set(fence.lock, fence.token);
    }
    const top = await fences.findOne({ lock: fence.lock }, { sort: { token: -1 }, projection: { token: 1 } });
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
