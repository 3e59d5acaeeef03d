/** The claim: rounds of pick and lease, arbitrated by a compare-and-set update or by tickets. */
import { randomUUID } from "node:crypto";
import type { Fence, OutboxEntry } from "@outbox/core";
import type { AnyBulkWriteOperation, ClientSession } from "mongodb";
import { readCandidates } from "./claim-candidates.js";
import { type TicketStore, tickets } from "./claim-tickets.js";
import { bulk, type EntryDoc, groupBy, longs, toEntry, tokenLong } from "./documents.js";
import { type Candidate, keepRuns, Selection } from "./select.js";
import type { ServerInfo } from "./setup.js";

/** Rounds of one claim when concurrent claimers took some of its picks. */
const claimRounds = 4;

/** What a claim needs of its store. */
export interface ClaimStore extends TicketStore {
  readonly server: ServerInfo | null;
  /** Entries this store's claims in flight picked (see claimEntries). */
  readonly picking: Set<number>;
}

/**
 * One claim, in three round trips when nobody competes: (1) read the candidates (the oldest
 * pending entries, without payloads) and pick heads, runs and null-key entries; (2) lease the
 * picks with one conditional updateMany (leaseUpdate); (3) read back, with payloads, what now
 * carries this claim's id. A run is cut at the first entry another claimer got, and what lies
 * past the cut goes back; picks lost to a concurrent claimer are replaced from the same
 * candidates, up to `claimRounds` times.
 *
 * FerretDB 1.x, in three round trips too: (1) read the window whole (claim-candidates.ts); (2)
 * insert tickets for the picks (claim-tickets.ts: its updates are not atomic); (3) one lease
 * update for the runs the tickets won (each of its updates reads all pending entries). No
 * read-back, unless picks came from past the window.
 */
export async function claimEntries(
  store: ClaimStore,
  claimer: string,
  limit: number,
  leaseMs: number,
  now: number,
  fence: Fence | undefined,
  session: ClientSession | undefined,
): Promise<OutboxEntry[]> {
  const { candidates, whole } = await readCandidates(store.entries, store.server, limit, now, fence, session);
  const atomic = store.server?.atomicUpdates === true;
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
  const taken = new Set(store.picking);
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
        store.picking.add(e.seq);
        mine.push(e.seq);
      }
      const got = atomic
        ? await leaseUpdate(store, picks, lease, session)
        : await tickets(store, picks, lease, now, session);
      for (const seq of got) won.add(seq);
      if (got.size === picks.length) break;
    }
    if (won.size === 0) return [];
    const leased = atomic ? won : await leaseTicketed(store, candidates, won, lease, session);
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
        : await store.entries
            .find(
              { _id: { $in: longs(missing) }, claimId },
              { limit: missing.length, batchSize: missing.length, session },
            )
            .toArray();
    const docs = [...known, ...readBack].sort((a, b) => Number(a._id) - Number(b._id));
    // What this claim holds (a takeover may have moved an entry on since the lease) cut to runs.
    const { keep, giveBack } = keepRuns(candidates, new Set(docs.map((doc) => Number(doc._id))));
    if (giveBack.length > 0) {
      await store.entries.updateMany(
        { _id: { $in: longs(giveBack) }, claimId },
        { $set: { claimedBy: null, claimId: null, leaseUntil: null }, $inc: { attempts: -1, gen: 1 } },
        { session },
      );
    }
    const kept = new Set(keep);
    return docs.filter((doc) => kept.has(Number(doc._id))).map(toEntry);
  } finally {
    for (const seq of mine) store.picking.delete(seq);
  }
}

/**
 * Without atomic updates (FerretDB 1.x): leases the runs whose tickets this claim won whole,
 * and deletes its tickets past a cut, which would otherwise hold those entries from every
 * claimer until their lease time. Returns the seqs leased.
 */
async function leaseTicketed(
  store: ClaimStore,
  candidates: readonly Candidate[],
  won: ReadonlySet<number>,
  lease: { claimId: string } & Partial<EntryDoc>,
  session: ClientSession | undefined,
): Promise<Set<number>> {
  const { keep, giveBack } = keepRuns(candidates, won);
  if (giveBack.length > 0) {
    const gens = new Map(candidates.map((e) => [e.seq, e.gen]));
    await store.claims.deleteMany(
      { _id: { $in: giveBack.map((seq) => `${seq}:${gens.get(seq)}`) }, claimId: lease.claimId },
      { session },
    );
  }
  const kept = new Set(keep);
  return leaseUpdate(
    store,
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
async function leaseUpdate(
  store: ClaimStore,
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
  const modified = await bulk(store.entries, ops, session);
  if (modified === entries.length) return new Set(entries.map((e) => e.seq));
  // Some went to a concurrent claimer (or were acked meanwhile): which ones we got.
  const docs = await store.entries
    .find(
      { _id: { $in: longs(entries.map((e) => e.seq)) }, claimId: lease.claimId },
      { projection: { _id: 1 }, limit: entries.length, batchSize: entries.length, session },
    )
    .toArray();
  return new Set(docs.map((doc) => Number(doc._id)));
}
