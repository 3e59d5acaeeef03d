/**
 * The writes of settles (ack, retry, deadLetter, release), each limited to pending entries and,
 * for a fenced caller, to entries no newer token of its lock has leased.
 */
import type { DeadLetterItem, Fence, RetryItem, SettleContext } from "@outbox/core";
import type { AnyBulkWriteOperation, ClientSession, Collection, Filter } from "mongodb";
import { type EntryDoc, groupBy, longs, tokenLong } from "./documents.js";

/** A settle by a fenced caller never touches an entry leased under a newer token of its lock. */
function fenceGuard(fence: Fence): Filter<EntryDoc> {
  return { $or: [{ leaseLock: { $ne: fence.lock } }, { leaseToken: { $lte: tokenLong(fence) } }] };
}

function guard(fence: Fence | undefined): Filter<EntryDoc> {
  return fence ? { $and: [fenceGuard(fence)] } : {};
}

function owned(ids: number[], context: SettleContext): Filter<EntryDoc> {
  return { _id: { $in: longs(ids) }, status: "pending", claimedBy: context.claimer, ...guard(context.fence) };
}

export async function ack(
  entries: Collection<EntryDoc>,
  ids: readonly number[],
  context: SettleContext,
  now: Date,
  session: ClientSession | undefined,
): Promise<number> {
  if (ids.length === 0) return 0;
  const filter: Filter<EntryDoc> = {
    _id: { $in: longs(ids) },
    status: "pending",
    ...guard(context.fence),
  };
  const published = { $set: { status: "published" as const, settledAt: now, leaseUntil: null } };
  // The claimer acks what it holds, almost always. With its name in the filter, FerretDB
  // reads only those entries (an equality it pushes down; `_id: {$in}` it does not), not
  // every pending one. Anyone may ack, though: what that missed is acked by id alone.
  const own = await entries.updateMany({ ...filter, claimedBy: context.claimer }, published, { session });
  if (own.matchedCount === ids.length) return own.modifiedCount;
  const rest = await entries.updateMany(filter, published, { session });
  return own.modifiedCount + rest.modifiedCount;
}

export function retryOps(items: readonly RetryItem[], context: SettleContext): AnyBulkWriteOperation<EntryDoc>[] {
  const groups = groupBy(items, (item) => JSON.stringify([String(item.error), item.availableAt.getTime()]));
  return [...groups.values()].map((group) => ({
    updateMany: {
      filter: owned(
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
}

export function deadLetterOps(
  items: readonly DeadLetterItem[],
  context: SettleContext,
  now: Date,
): AnyBulkWriteOperation<EntryDoc>[] {
  const groups = groupBy(items, (item) => String(item.error));
  return [...groups].map(([error, group]) => ({
    updateMany: {
      filter: owned(
        group.map((item) => Number(item.id)),
        context,
      ),
      update: { $set: { status: "dead", lastError: error, settledAt: now, leaseUntil: null } },
    },
  }));
}

export async function release(
  entries: Collection<EntryDoc>,
  ids: readonly number[],
  context: SettleContext,
  session: ClientSession | undefined,
): Promise<void> {
  if (ids.length === 0) return;
  await entries.updateMany(
    {
      _id: { $in: longs(ids) },
      status: "pending",
      claimedBy: context.claimer,
      ...guard(context.fence),
    },
    // Claimed entries have attempts >= 1 (the claim counted one).
    { $set: { leaseUntil: null, claimedBy: null, claimId: null }, $inc: { attempts: -1, gen: 1 } },
    { session },
  );
}

export async function releaseClaimer(
  entries: Collection<EntryDoc>,
  context: SettleContext,
  session: ClientSession | undefined,
): Promise<number> {
  const result = await entries.updateMany(
    { status: "pending", claimedBy: context.claimer, ...guard(context.fence) },
    // As release: claimed entries have attempts >= 1 (the claim counted one).
    { $set: { leaseUntil: null, claimedBy: null, claimId: null }, $inc: { attempts: -1, gen: 1 } },
    { session },
  );
  return result.modifiedCount;
}
