/**
 * The claim's selection rule, pure: which of the oldest pending entries (in id order) one claim
 * takes. Kept apart from the database calls so that it is unit-tested on its own.
 */

/** The fields of a pending entry that decide whether it can be claimed (a projection). */
export interface Candidate {
  readonly seq: number;
  /** The entry's claim-state version: bumped by every claim, retry, release and requeue. */
  readonly gen: number;
  readonly key: string | null;
  readonly availableAt: number;
  /** Epoch ms, or null when unleased. */
  readonly leaseUntil: number | null;
  readonly leaseLock: string | null;
  readonly leaseToken: bigint | null;
}

export interface SelectionFence {
  readonly lock: string;
  readonly token: bigint;
}

/** Can a claim at `now` (with `fence`) lease this entry, leaving aside its key? */
export function claimable(entry: Candidate, now: number, fence: SelectionFence | undefined): boolean {
  if (entry.availableAt > now) return false;
  // Never an entry a newer token of the same lock has leased, even when that lease has ended.
  if (fence && entry.leaseLock === fence.lock && entry.leaseToken !== null && entry.leaseToken > fence.token) {
    return false;
  }
  if (entry.leaseUntil === null || entry.leaseUntil <= now) return true;
  // Takeover: a newer token of the same lock does not wait for an older token's lease.
  return (
    fence !== undefined && entry.leaseLock === fence.lock && entry.leaseToken !== null && entry.leaseToken < fence.token
  );
}

/**
 * Walks pending entries in id order and picks what one claim takes:
 * - a null-key entry when it is claimable;
 * - for a key, its head (the first pending entry of the key seen: the walk starts at the oldest
 *   pending entry overall) when claimable, then its successors while each is claimable: a *run*.
 *   The first entry of a key that is not claimable closes the key for this claim.
 * Stops at `limit`. Call `walk` again with more pending entries (higher ids) to continue.
 */
export class Selection {
  readonly #limit: number;
  readonly #now: number;
  readonly #fence: SelectionFence | undefined;
  /** Keys that can take no more entries in this claim (their run ended or never started). */
  readonly #closed = new Set<string>();
  /** Keys whose head this claim picked: their next entries are successors. */
  readonly #open = new Set<string>();
  readonly #taken: ReadonlySet<number>;
  #skip: number;
  /** What the claim takes, in id order: heads, their runs and null-key entries. */
  readonly picked: Candidate[] = [];

  /**
   * `taken`: entries an earlier round of this claim already leased or lost to another claimer.
   * `skip`: claimable heads and null-key entries to pass over first (their keys are closed), so
   * that claimers who lost the oldest entries to each other spread out instead of all moving on
   * to the same next ones.
   */
  constructor(
    limit: number,
    now: number,
    fence: SelectionFence | undefined,
    taken: ReadonlySet<number> = new Set(),
    skip = 0,
  ) {
    this.#limit = limit;
    this.#now = now;
    this.#fence = fence;
    this.#taken = taken;
    this.#skip = skip;
  }

  get full(): boolean {
    return this.picked.length >= this.#limit;
  }

  walk(page: readonly Candidate[]): void {
    for (const entry of page) {
      if (this.full) return;
      const key = entry.key;
      if (key !== null && this.#closed.has(key)) continue;
      const successor = key !== null && this.#open.has(key);
      let ok = !this.#taken.has(entry.seq) && claimable(entry, this.#now, this.#fence);
      if (ok && !successor && this.#skip > 0) {
        this.#skip--;
        ok = false;
      }
      if (!ok) {
        if (key !== null) this.#closed.add(key);
        continue;
      }
      this.picked.push(entry);
      if (key !== null) this.#open.add(key);
    }
  }
}

/**
 * What a claim keeps of the entries it leased: for each key, its entries up to the first
 * candidate of that key it did not lease (a run is a prefix of the key's pending entries, so
 * nothing past a gap may be published); every null-key entry it leased. `candidates` are in id
 * order, and each key's first one is its head. The rest goes back.
 */
export function keepRuns(
  candidates: readonly Candidate[],
  leased: ReadonlySet<number>,
): { keep: number[]; giveBack: number[] } {
  const keep: number[] = [];
  const giveBack: number[] = [];
  const cut = new Set<string>();
  for (const entry of candidates) {
    const mine = leased.has(entry.seq);
    if (entry.key === null || (mine && !cut.has(entry.key))) {
      if (mine) keep.push(entry.seq);
      continue;
    }
    cut.add(entry.key);
    if (mine) giveBack.push(entry.seq);
  }
  return { keep, giveBack };
}
