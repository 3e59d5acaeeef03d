/** Operator reads (stats, pending summary, relay activity) and purge, each a bounded read. */
import {
  type BlockedKey,
  claimersByRelay,
  mostPendingFirst,
  newestErrorFirst,
  type PendingSummary,
  type RecentError,
  type RelayActivity,
  relayActivityMaxLocks,
  type StoreStats,
} from "@outbox/core";
import type { Collection, Document, Filter, Long } from "mongodb";
import { type EntryDoc, type FenceDoc, type TicketDoc, toBigint } from "./documents.js";
import type { Run } from "./errors.js";

/** Fence documents relayActivity reads at most (one per lock, or one per token without transactions). */
const maxFenceDocs = 10_000;

export async function stats(entries: Collection<EntryDoc>, run: Run, now: Date): Promise<StoreStats> {
  const [pending, inFlight, dead, oldest] = await run("stats", true, () =>
    Promise.all([
      entries.countDocuments({ status: "pending" }),
      entries.countDocuments({ status: "pending", leaseUntil: { $gt: now } }),
      entries.countDocuments({ status: "dead" }),
      // The oldest pending entry by id (index), whose createdAt is the outbox's lag.
      entries.findOne({ status: "pending" }, { sort: { _id: 1 }, projection: { createdAt: 1 } }),
    ]),
  );
  return {
    pending,
    inFlight,
    dead,
    oldestPendingAt: oldest?.createdAt ? new Date(oldest.createdAt.getTime()) : null,
  };
}

export async function pendingSummary(
  entries: Collection<EntryDoc>,
  run: Run,
  now: Date,
  limits: { scanLimit: number; hotKeys: number; blockedKeys: number },
): Promise<PendingSummary> {
  const scan = [{ $match: { status: "pending" } }, { $sort: { _id: 1 } }, { $limit: limits.scanLimit }];
  // Waiting: available later and not leased (leaseUntil missing, null or past; no $cond: FerretDB 1.x has none).
  const waiting: Filter<EntryDoc> = {
    availableAt: { $gt: now },
    $or: [{ leaseUntil: null }, { leaseUntil: { $lte: now } }],
  };
  const count = (match: Filter<EntryDoc>[]) =>
    entries
      .aggregate<{ n: number }>([
        ...scan,
        ...match.map(($match) => ({ $match })),
        { $group: { _id: null, n: { $sum: 1 } } },
      ])
      .toArray()
      .then((rows) => Number(rows[0]?.n ?? 0));
  const [scanned, retryWaiting, hot, blocked] = await run("pendingSummary", true, () =>
    Promise.all([
      count([]),
      count([waiting]),
      entries
        .aggregate<{ _id: string; pending: number }>([
          ...scan,
          { $match: { key: { $ne: null } } },
          { $group: { _id: "$key", pending: { $sum: 1 } } },
          { $sort: { pending: -1, _id: 1 } },
          { $limit: limits.hotKeys },
        ])
        .toArray(),
      blockedKeys(entries, scan, waiting, limits.blockedKeys),
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
 * Keys whose first pending entry in the scan failed and waits: the failing waiting entries
 * first (few), then the scan's entries of their keys only (`_id` and key), to see which of them
 * come first in their key and how many entries wait behind.
 */
async function blockedKeys(
  entries: Collection<EntryDoc>,
  scan: Document[],
  waiting: Filter<EntryDoc>,
  limit: number,
): Promise<BlockedKey[]> {
  const failing = await entries
    .aggregate<EntryDoc>([...scan, { $match: { key: { $ne: null }, lastError: { $ne: null }, ...waiting } }])
    .toArray();
  if (failing.length === 0) return [];
  const keys = [...new Set(failing.map((entry) => entry.key as string))];
  const ofKeys = await entries
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

export async function relayActivity(
  entries: Collection<EntryDoc>,
  fences: Collection<FenceDoc>,
  run: Run,
  now: Date,
  limits: { scanLimit: number; recentErrors: number },
): Promise<RelayActivity> {
  const { scanLimit, recentErrors } = limits;
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
  const [scanned, leases, published, failed, dead, fenceDocs] = await run("relayActivity", true, () =>
    Promise.all([
      entries
        .aggregate<{ n: number }>([...scan, { $group: { _id: null, n: { $sum: 1 } } }])
        .toArray()
        .then((rows) => Number(rows[0]?.n ?? 0)),
      entries
        // One group per claim in flight (its entries share their lease end: FerretDB 1.x has no $max).
        .aggregate<{ _id: { claimer: string; until: Date }; n: number }>([
          ...scan,
          { $match: { leaseUntil: { $gt: now }, claimedBy: { $ne: null } } },
          { $group: { _id: { claimer: "$claimedBy", until: "$leaseUntil" }, n: { $sum: 1 } } },
        ])
        .toArray(),
      entries.findOne({ status: "published" }, { sort: { settledAt: -1 }, projection: { settledAt: 1 } }),
      entries
        .aggregate<EntryDoc>([
          ...scan,
          { $match: { lastError: { $ne: null } } },
          { $sort: { availableAt: -1, _id: -1 } },
          { $limit: recentErrors },
          { $project: errorProjection },
        ])
        .toArray(),
      entries
        .find({ status: "dead" }, { sort: { _id: -1 }, limit: recentErrors, projection: errorProjection })
        .toArray(),
      fences.find({}, { projection: { _id: 1, lock: 1, token: 1 }, limit: maxFenceDocs }).toArray(),
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

/** One purge round; it found fewer than `batchSize` in the last one. */
export async function purgeBatch(
  entries: Collection<EntryDoc>,
  claims: Collection<TicketDoc>,
  settled: Filter<EntryDoc>,
  batchSize: number,
): Promise<{ found: number; deleted: number }> {
  const docs = await entries
    .find(settled, { projection: { _id: 1 }, sort: { settledAt: 1 }, limit: batchSize })
    .toArray();
  if (docs.length === 0) return { found: 0, deleted: 0 };
  const ids = docs.map((doc) => doc._id);
  const result = await entries.deleteMany({ _id: { $in: ids }, ...settled });
  // Their claim tickets go with them (a requeue in between keeps its entry, and tickets of
  // a live entry only name states it has left).
  await claims.deleteMany({ seq: { $in: ids } });
  return { found: docs.length, deleted: result.deletedCount };
}
