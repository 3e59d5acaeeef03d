/** What a claim reads to choose from: the oldest pending entries, and past them each key's head. */
import type { Fence } from "@outbox/core";
import type { ClientSession, Collection, Filter } from "mongodb";
import { candidateProjection, type EntryDoc, long, toCandidate } from "./documents.js";
import { type Candidate, Selection } from "./select.js";
import type { ServerInfo } from "./setup.js";

/** Candidates per batch when a claim reads every pending entry past its window (FerretDB 1.x). */
const allBatch = 10_000;

/**
 * The claim's candidates, in id order: a window of the oldest pending entries (the
 * `(status, _id)` index, `4 x limit` of them, at least 64). No pending entry lies below the
 * window, so the first entry of a key in it is the key's head. Only when the window is full
 * and holds fewer than `limit` claimable entries (keys blocked by leases or retries) does the
 * claim look past it (beyondWindow).
 *
 * FerretDB 1.x uses no index: it answers any query on pending entries by decoding them all,
 * whole, and sorting in memory, whatever the limit or projection. There the window comes whole
 * (`whole`: the claim needs no read-back for it), and past it the claim reads the rest of the
 * pending entries at once (projected), instead of once per key.
 */
export async function readCandidates(
  entries: Collection<EntryDoc>,
  server: ServerInfo | null,
  limit: number,
  now: number,
  fence: Fence | undefined,
  session: ClientSession | undefined,
): Promise<{ candidates: Candidate[]; whole?: Map<number, EntryDoc> }> {
  const indexed = server?.secondaryIndexes === true;
  const pageSize = Math.max(64, limit * 4);
  const docs = await entries
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
    ? await beyondWindow(entries, last.seq, pageSize, now, fence, session)
    : (
        await entries
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
async function beyondWindow(
  entries: Collection<EntryDoc>,
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
  const heads = await entries
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
  const nulls = await entries
    .find(
      { status: "pending", key: null, _id: { $gt: long(last) }, availableAt: { $lte: at }, $or: free },
      { projection: candidateProjection, sort: { _id: 1 }, limit: count, batchSize: count, session },
    )
    .toArray();
  return [...heads, ...nulls].map(toCandidate).sort((a, b) => a.seq - b.seq);
}
