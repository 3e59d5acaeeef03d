/** The dead-letter queue's operator calls: list (with filters), drop, requeue. */
import { type DeadLetterFilter, matchesDeadLetterFilter, type OutboxEntry } from "@outbox/core";
import type { Collection, Filter } from "mongodb";
import { type EntryDoc, longs, type TicketDoc, toEntry } from "./documents.js";
import type { Run } from "./errors.js";

/** Dead entries' ids and errors read per round while listDead looks for an error text. */
const deadScanBatch = 1_000;

export async function listDead(
  entries: Collection<EntryDoc>,
  run: Run,
  filter: DeadLetterFilter,
  after: number,
  limit: number,
): Promise<OutboxEntry[]> {
  // Topic and key are equalities the server answers (through (status, key, _id) for a key).
  const query: Filter<EntryDoc> = {
    status: "dead",
    ...(filter.topic === undefined ? {} : { topic: filter.topic }),
    ...(filter.key === undefined ? {} : { key: filter.key }),
  };
  if (filter.errorContains !== undefined) return listDeadMatching(entries, run, query, filter, after, limit);
  const docs = await run("listDead", true, () =>
    entries.find({ ...query, _id: { $gt: after } }, { sort: { _id: 1 }, limit }).toArray(),
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
async function listDeadMatching(
  entries: Collection<EntryDoc>,
  run: Run,
  query: Filter<EntryDoc>,
  filter: DeadLetterFilter,
  after: number,
  limit: number,
): Promise<OutboxEntry[]> {
  const needle = (filter.errorContains as string).toLowerCase();
  const matched: OutboxEntry[] = [];
  let cursor = after;
  for (;;) {
    const from = cursor;
    const batch = await run("listDead", true, () =>
      entries
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
      if (matched.length + picked.length === limit) break;
    }
    if (picked.length > 0) {
      const docs = await run("listDead", true, () =>
        entries.find({ _id: { $in: longs(picked) }, status: "dead" }, { sort: { _id: 1 } }).toArray(),
      );
      // One requeued (or dead again with another error) since the scan is left out; the scan goes on.
      matched.push(...docs.map(toEntry).filter((entry) => matchesDeadLetterFilter(entry, filter)));
    }
    const last = batch.at(-1);
    const scannedAll = batch.length < deadScanBatch && (last === undefined || Number(last._id) === cursor);
    if (matched.length >= limit || scannedAll) return matched;
  }
}

/** Deletes the dead entries of `ids`, and their claim tickets; returns how many entries. */
export async function dropDead(
  entries: Collection<EntryDoc>,
  claims: Collection<TicketDoc>,
  ids: readonly number[],
): Promise<number> {
  const result = await entries.deleteMany({ _id: { $in: longs(ids) }, status: "dead" });
  // Tickets of the dropped entries, and only of those (a live entry keeps its tickets).
  const left = new Set(
    (await entries.find({ _id: { $in: longs(ids) } }, { projection: { _id: 1 } }).toArray()).map((doc) =>
      Number(doc._id),
    ),
  );
  const gone = ids.filter((id) => !left.has(id));
  if (gone.length > 0) await claims.deleteMany({ seq: { $in: longs(gone) } });
  return result.deletedCount;
}

/** Makes the dead entries of `ids` pending again, available at `now`; returns how many. */
export async function requeueDead(entries: Collection<EntryDoc>, ids: readonly number[], now: Date): Promise<number> {
  const result = await entries.updateMany(
    { _id: { $in: longs(ids) }, status: "dead" },
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
  );
  return result.modifiedCount;
}
