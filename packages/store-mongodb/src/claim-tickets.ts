/**
 * The claim's arbitration on servers without atomic updates (FerretDB 1.x): claim tickets, and
 * freeing the entries of tickets whose claimer died before leasing.
 */
import type { AnyBulkWriteOperation, ClientSession, Collection } from "mongodb";
import { bulk, type EntryDoc, groupBy, long, longs, type TicketDoc } from "./documents.js";
import { duplicateIndexes } from "./errors.js";
import type { Candidate } from "./select.js";

/** Lost tickets a store remembers at most (see unstick). */
const maxLostTickets = 100_000;

export interface TicketStore {
  readonly entries: Collection<EntryDoc>;
  readonly claims: Collection<TicketDoc>;
  /** Tickets this store lost, with when it first lost each (see unstick); bounded. */
  readonly lostTickets: Map<string, number>;
}

/**
 * Servers without atomic updates (FerretDB 1.x): one ticket `{_id: "<seq>:<gen>"}` per pick;
 * who inserts it first has won that state of the entry (a unique `_id` is the one write
 * FerretDB makes atomic). Returns the seqs this claim won.
 */
export async function tickets(
  store: TicketStore,
  picks: readonly Candidate[],
  lease: { claimId: string; leaseUntil: Date },
  now: number,
  session: ClientSession | undefined,
): Promise<Set<number>> {
  const ticket = (e: Candidate) => ({
    _id: `${e.seq}:${e.gen}`,
    seq: long(e.seq),
    claimId: lease.claimId,
    until: lease.leaseUntil,
  });
  const won = new Set<number>();
  const lost: Candidate[] = [];
  let rest = picks;
  // Ordered: an insert stops at the first ticket another claimer holds. FerretDB inserts a batch
  // in one transaction and, when that fails, one document per transaction; unordered, one taken
  // ticket would cost a commit per pick. The picks past a taken ticket go in the next insert at
  // once, not in a later claim: tickets left by claimers that died before leasing (a killed
  // relay, a cut connection) then all show up in this claim, and unstick frees them together,
  // one lease time after they were first lost, instead of one after the other, a lease time each,
  // while every claim stopped at the first of them (seen: 14 such tickets held the oldest
  // entries, and every key behind them in the window, for minutes).
  while (rest.length > 0) {
    try {
      await store.claims.insertMany(rest.map(ticket), { ordered: true, session });
      for (const e of rest) won.add(e.seq);
      break;
    } catch (error) {
      const failed = duplicateIndexes(error);
      if (failed.size === 0) throw error;
      const first = Math.min(...failed);
      for (const e of rest.slice(0, first)) won.add(e.seq);
      lost.push(rest[first] as Candidate);
      rest = rest.slice(first + 1);
    }
  }
  if (lost.length > 0) await unstick(store, lost, now, lease.leaseUntil.getTime() - now, session);
  return won;
}

/**
 * Entries whose ticket for their current state was taken but never followed by a lease (the
 * claimer died in between, a few milliseconds): once that ticket's lease time has passed, bump
 * the entry's gen so that the next claim competes for a fresh ticket. A lost ticket is looked
 * up only when this store lost the same one a lease time (`leaseMs`) earlier already: a live
 * winner leases within milliseconds, and on FerretDB a read of tickets by id reads them all.
 */
async function unstick(
  store: TicketStore,
  entries: readonly Candidate[],
  now: number,
  leaseMs: number,
  session: ClientSession | undefined,
): Promise<void> {
  const due: string[] = [];
  for (const e of entries) {
    const ticket = `${e.seq}:${e.gen}`;
    const since = store.lostTickets.get(ticket);
    if (since === undefined) {
      if (store.lostTickets.size >= maxLostTickets) store.lostTickets.clear();
      store.lostTickets.set(ticket, now);
    } else if (now - since >= leaseMs) {
      due.push(ticket);
    }
  }
  if (due.length === 0) return;
  const expired = await store.claims
    .find({ _id: { $in: due }, until: { $lte: new Date(now) } }, { projection: { _id: 1 }, session })
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
  await bulk(store.entries, ops, session);
  for (const ticket of stale) store.lostTickets.delete(ticket);
}
