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

/** Per-key state while walking the pending entries in id order. */
type KeyState = "run" | "closed";

/**
 * Walks pending entries in id order and picks what one claim takes:
 * - a null-key entry when it is claimable;
 * - for a key, its head (the first pending entry of the key seen: the walk starts at the oldest
 *   pending entry overall) when claimable, then its successors while each is claimable: a *run*.
 *   The first entry of a key that is not claimable closes the key for this claim.
 * Stops at `limit`. Call `walk` again with the next page of pending entries to continue.
 */
export class Selection {
  readonly #limit: number;
  readonly #now: number;
  readonly #fence: SelectionFence | undefined;
  readonly #keys = new Map<string, KeyState>();
  /** Heads and null-key entries (each contested on its own). */
  readonly heads: Candidate[] = [];
  /** Run successors, in id order (claimable only after their key's head was won). */
  readonly successors: Candidate[] = [];

  readonly #lost: ReadonlySet<number>;

  /** `lost`: entries another claimer got first in an earlier round of this claim (not claimable). */
  constructor(limit: number, now: number, fence: SelectionFence | undefined, lost: ReadonlySet<number> = new Set()) {
    this.#limit = limit;
    this.#now = now;
    this.#fence = fence;
    this.#lost = lost;
  }

  get size(): number {
    return this.heads.length + this.successors.length;
  }

  get full(): boolean {
    return this.size >= this.#limit;
  }

  /** Keys that can take no more entries in this claim (their run ended or never started). */
  closedKeys(): string[] {
    return [...this.#keys].filter(([, state]) => state === "closed").map(([key]) => key);
  }

  walk(page: readonly Candidate[]): void {
    for (const entry of page) {
      if (this.full) return;
      const ok = !this.#lost.has(entry.seq) && claimable(entry, this.#now, this.#fence);
      if (entry.key === null) {
        if (ok) this.heads.push(entry);
        continue;
      }
      const state = this.#keys.get(entry.key);
      if (state === "closed") continue;
      if (state === undefined) {
        this.#keys.set(entry.key, ok ? "run" : "closed");
        if (ok) this.heads.push(entry);
        continue;
      }
      if (ok) this.successors.push(entry);
      else this.#keys.set(entry.key, "closed");
    }
  }
}
