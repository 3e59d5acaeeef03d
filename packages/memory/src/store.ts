import {
  type ClaimRequest,
  type Clock,
  claimersByRelay,
  type DeadLetterItem,
  deadLetterFilter,
  type EntryLimits,
  type Fence,
  type ListDeadOptions,
  matchesDeadLetterFilter,
  mostPendingFirst,
  newestErrorFirst,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  type OutboxStore,
  type PendingSummary,
  type PendingSummaryOptions,
  type PreparedMessage,
  type PurgeRequest,
  prepareMessages,
  type RecentError,
  type RelayActivity,
  type RelayActivityOptions,
  type RetryItem,
  relayActivityMaxLocks,
  type SettleContext,
  type StoreCapabilities,
  type StoreStats,
  systemClock,
  type Unsubscribe,
} from "@outbox/core";

interface Row {
  seq: number;
  message: PreparedMessage;
  createdAt: number;
  availableAt: number;
  status: "pending" | "published" | "dead";
  attempts: number;
  lastError: string | null;
  claimer: string | null;
  leaseUntil: number;
  /** The fence the lease was taken under: a claim with a newer token of that lock takes it over. */
  leaseFence: Fence | null;
  settledAt: number;
}

/** A transaction of the in-memory store: its entries become visible together at commit. */
export class MemoryTransaction {
  readonly staged: Row[] = [];
  #open = true;

  get open(): boolean {
    return this.#open;
  }

  finish(): Row[] {
    this.#open = false;
    return this.staged;
  }
}

export interface MemoryStoreOptions {
  clock?: Clock;
  limits?: Partial<EntryLimits>;
}

/**
 * The reference store: every rule of the store contract, in memory. Ids are assigned at
 * enqueue but rows become visible at commit, so a late-committing lower id is modelled too.
 */
export class MemoryStore implements OutboxStore<MemoryTransaction> {
  readonly capabilities: StoreCapabilities = { wakeUps: true, transactions: true, deadLetterFilters: true };
  readonly #clock: Clock;
  readonly #limits: Partial<EntryLimits> | undefined;
  readonly #rows = new Map<number, Row>();
  readonly #fences = new Map<string, bigint>();
  readonly #listeners = new Set<() => void>();
  #nextSeq = 1;
  #wakeScheduled = false;
  #closed = false;

  constructor(options: MemoryStoreOptions = {}) {
    this.#clock = options.clock ?? systemClock;
    this.#limits = options.limits;
  }

  /** Runs `work` in a transaction: committed when it resolves, discarded when it throws. */
  async transaction<T>(work: (tx: MemoryTransaction) => Promise<T>): Promise<T> {
    this.#assertOpen();
    const tx = new MemoryTransaction();
    let result: T;
    try {
      result = await work(tx);
    } catch (error) {
      tx.finish();
      throw error;
    }
    this.#assertOpen();
    for (const row of tx.finish()) this.#rows.set(row.seq, row);
    if (tx.staged.length > 0) this.#scheduleWakeUp();
    return result;
  }

  async enqueue(tx: MemoryTransaction, messages: OutboxMessage | readonly OutboxMessage[]): Promise<string[]> {
    this.#assertOpen();
    if (!(tx instanceof MemoryTransaction) || !tx.open) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "enqueue needs an open MemoryTransaction");
    }
    const now = this.#clock.now();
    const prepared = prepareMessages(messages, { now, limits: this.#limits });
    return prepared.map((message) => {
      const seq = this.#nextSeq++;
      tx.staged.push({
        seq,
        message,
        createdAt: now,
        availableAt: message.availableAt.getTime(),
        status: "pending",
        attempts: 0,
        lastError: null,
        claimer: null,
        leaseUntil: 0,
        leaseFence: null,
        settledAt: 0,
      });
      return String(seq);
    });
  }

  async claim(request: ClaimRequest): Promise<OutboxEntry[]> {
    this.#assertOpen();
    this.#checkFence(request.fence);
    const now = this.#clock.now();
    const claimable = (row: Row) =>
      row.availableAt <= now && (row.leaseUntil <= now || takesOver(request.fence, row.leaseFence));
    // A key's run starts at its head and goes on while its entries are claimable; the first one
    // that is not ends the key for this claim.
    const done = new Set<string>();
    const claimed: OutboxEntry[] = [];
    for (const row of this.#ordered()) {
      if (claimed.length >= request.limit) break;
      if (row.status !== "pending") continue;
      const key = row.message.key;
      if (key !== null && done.has(key)) continue;
      if (!claimable(row)) {
        if (key !== null) done.add(key);
        continue;
      }
      row.attempts += 1;
      row.claimer = request.claimer;
      row.leaseUntil = now + request.leaseMs;
      row.leaseFence = request.fence ?? null;
      claimed.push(this.#toEntry(row));
    }
    return claimed;
  }

  async ack(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    this.#checkFence(context.fence);
    const now = this.#clock.now();
    for (const row of this.#find(ids)) {
      if (row.status !== "pending") continue;
      row.status = "published";
      row.settledAt = now;
      row.leaseUntil = 0;
    }
  }

  async retry(items: readonly RetryItem[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    this.#checkFence(context.fence);
    for (const item of items) {
      const row = this.#owned(item.id, context);
      if (!row) continue;
      row.lastError = item.error;
      row.availableAt = item.availableAt.getTime();
      row.leaseUntil = 0;
      row.claimer = null;
    }
  }

  async deadLetter(items: readonly DeadLetterItem[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    this.#checkFence(context.fence);
    const now = this.#clock.now();
    for (const item of items) {
      const row = this.#owned(item.id, context);
      if (!row) continue;
      row.status = "dead";
      row.lastError = item.error;
      row.settledAt = now;
      row.leaseUntil = 0;
    }
    // A dead entry unblocks the entries queued behind it on its key.
    if (items.length > 0) this.#scheduleWakeUp();
  }

  async release(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#assertOpen();
    this.#checkFence(context.fence);
    for (const id of ids) {
      const row = this.#owned(id, context);
      if (!row) continue;
      row.attempts = Math.max(0, row.attempts - 1);
      row.leaseUntil = 0;
      row.claimer = null;
    }
  }

  async releaseClaimer(context: SettleContext): Promise<number> {
    this.#assertOpen();
    this.#checkFence(context.fence);
    const leased = [...this.#rows.values()].filter(
      (row) => row.status === "pending" && row.claimer === context.claimer,
    );
    await this.release(
      leased.map((row) => String(row.seq)),
      context,
    );
    return leased.length;
  }

  async listDead(options: ListDeadOptions = {}): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const after = options.after === undefined ? -1 : Number(options.after);
    if (!Number.isSafeInteger(after)) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        `listDead: after must be an entry id, got ${JSON.stringify(options.after)}`,
      );
    }
    const limit = positiveInteger(options.limit ?? 100, "limit");
    const filter = deadLetterFilter(options);
    return this.#ordered()
      .filter(
        (row) =>
          row.status === "dead" &&
          row.seq > after &&
          matchesDeadLetterFilter({ topic: row.message.topic, key: row.message.key, lastError: row.lastError }, filter),
      )
      .slice(0, limit)
      .map((row) => this.#toEntry(row));
  }

  async dropDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    let dropped = 0;
    for (const row of this.#find(ids)) {
      // A repeated id is dropped once.
      if (row.status === "dead" && this.#rows.delete(row.seq)) dropped += 1;
    }
    return dropped;
  }

  async requeueDead(ids: readonly string[]): Promise<number> {
    this.#assertOpen();
    let moved = 0;
    const now = this.#clock.now();
    for (const row of this.#find(ids)) {
      if (row.status !== "dead") continue;
      Object.assign(row, {
        status: "pending",
        attempts: 0,
        availableAt: now,
        claimer: null,
        leaseUntil: 0,
        settledAt: 0,
      });
      moved += 1;
    }
    if (moved > 0) this.#scheduleWakeUp();
    return moved;
  }

  async purge(request: PurgeRequest): Promise<number> {
    this.#assertOpen();
    const cutoff = request.olderThan.getTime();
    let purged = 0;
    for (const row of [...this.#rows.values()]) {
      if (row.status !== "pending" && row.settledAt < cutoff) {
        this.#rows.delete(row.seq);
        purged += 1;
      }
    }
    return purged;
  }

  async stats(): Promise<StoreStats> {
    this.#assertOpen();
    const now = this.#clock.now();
    let pending = 0;
    let inFlight = 0;
    let dead = 0;
    let oldest: number | null = null;
    for (const row of this.#rows.values()) {
      if (row.status === "dead") dead += 1;
      if (row.status !== "pending") continue;
      pending += 1;
      if (row.leaseUntil > now) inFlight += 1;
      if (oldest === null || row.createdAt < oldest) oldest = row.createdAt;
    }
    return { pending, inFlight, dead, oldestPendingAt: oldest === null ? null : new Date(oldest) };
  }

  async pendingSummary(options: PendingSummaryOptions = {}): Promise<PendingSummary> {
    this.#assertOpen();
    const scanLimit = positiveInteger(options.scanLimit ?? 10_000, "scanLimit");
    const hotKeys = positiveInteger(options.hotKeys ?? 10, "hotKeys");
    const blockedKeys = positiveInteger(options.blockedKeys ?? 10, "blockedKeys");
    const now = this.#clock.now();
    let scanned = 0;
    let retryWaiting = 0;
    const perKey = new Map<string, number>();
    // The first pending entry of each key, when it failed and waits for its retry.
    const failingHeads = new Map<string, Row>();
    for (const row of this.#ordered()) {
      if (scanned >= scanLimit) break;
      if (row.status !== "pending") continue;
      scanned += 1;
      const waiting = row.availableAt > now && row.leaseUntil <= now;
      if (waiting) retryWaiting += 1;
      const key = row.message.key;
      if (key === null) continue;
      if (!perKey.has(key) && waiting && row.lastError !== null) failingHeads.set(key, row);
      perKey.set(key, (perKey.get(key) ?? 0) + 1);
    }
    const hot = [...perKey]
      .map(([key, pending]) => ({ key, pending }))
      .sort(mostPendingFirst)
      .slice(0, hotKeys);
    const blocked = [...failingHeads]
      .map(([key, row]) => ({
        key,
        pending: perKey.get(key) ?? 0,
        entryId: String(row.seq),
        attempts: row.attempts,
        lastError: row.lastError,
        availableAt: new Date(row.availableAt),
      }))
      .sort(mostPendingFirst)
      .slice(0, blockedKeys);
    return { scanned, retryWaiting, hotKeys: hot, blockedKeys: blocked };
  }

  async relayActivity(options: RelayActivityOptions = {}): Promise<RelayActivity> {
    this.#assertOpen();
    const scanLimit = positiveInteger(options.scanLimit ?? 10_000, "scanLimit");
    const recentErrors = positiveInteger(options.recentErrors ?? 10, "recentErrors");
    const now = this.#clock.now();
    const ordered = this.#ordered();
    const scan = ordered.filter((row) => row.status === "pending").slice(0, scanLimit);
    const leased = scan.filter((row) => row.leaseUntil > now && row.claimer !== null);
    const settled = ordered
      .filter((row) => row.status !== "pending")
      .sort((a, b) => b.settledAt - a.settledAt)
      .slice(0, scanLimit);
    const published = settled.find((row) => row.status === "published");
    const newestDead = ordered
      .filter((row) => row.status === "dead")
      .slice(-recentErrors)
      .reverse();
    const failed = [...scan, ...newestDead].filter((row) => row.lastError !== null);
    return {
      scanned: scan.length,
      fences: [...this.#fences]
        .map(([lock, token]) => ({ lock, token }))
        .sort((a, b) => (a.lock < b.lock ? -1 : a.lock > b.lock ? 1 : 0))
        .slice(0, relayActivityMaxLocks),
      claimers: claimersByRelay(
        leased.map((row) => ({ claimer: row.claimer as string, inFlight: 1, leaseUntil: new Date(row.leaseUntil) })),
      ),
      lastPublishedAt: published ? new Date(published.settledAt) : null,
      recentErrors: failed
        .map((row): RecentError => {
          const dead = row.status === "dead";
          return {
            id: String(row.seq),
            key: row.message.key,
            topic: row.message.topic,
            error: row.lastError as string,
            attempts: row.attempts,
            at: new Date(dead ? row.settledAt : row.availableAt),
            dead,
          };
        })
        .sort(newestErrorFirst)
        .slice(0, recentErrors),
    };
  }

  async subscribe(listener: () => void): Promise<Unsubscribe> {
    this.#assertOpen();
    this.#listeners.add(listener);
    return async () => {
      this.#listeners.delete(listener);
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#listeners.clear();
  }

  #assertOpen(): void {
    if (this.#closed) throw new OutboxError(OutboxErrorCode.Closed, "the memory store is closed");
  }

  #checkFence(fence: Fence | undefined): void {
    if (!fence) return;
    const newest = this.#fences.get(fence.lock);
    if (newest !== undefined && fence.token < newest) {
      throw new OutboxError(OutboxErrorCode.Fenced, `fencing token ${fence.token} is older than ${newest}`, {
        details: { lock: fence.lock, token: fence.token.toString(), newest: newest.toString() },
      });
    }
    this.#fences.set(fence.lock, fence.token);
  }

  #ordered(): Row[] {
    return [...this.#rows.values()].sort((a, b) => a.seq - b.seq);
  }

  #find(ids: readonly string[]): Row[] {
    return ids.flatMap((id) => {
      const row = this.#rows.get(Number(id));
      return row ? [row] : [];
    });
  }

  #owned(id: string, context: SettleContext): Row | undefined {
    const row = this.#rows.get(Number(id));
    return row && row.status === "pending" && row.claimer === context.claimer ? row : undefined;
  }

  #scheduleWakeUp(): void {
    // Debounced: one notification per burst of commits, like NOTIFY once per statement.
    if (this.#wakeScheduled || this.#listeners.size === 0) return;
    this.#wakeScheduled = true;
    queueMicrotask(() => {
      this.#wakeScheduled = false;
      for (const listener of this.#listeners) listener();
    });
  }

  #toEntry(row: Row): OutboxEntry {
    const { message } = row;
    return {
      id: String(row.seq),
      topic: message.topic,
      key: message.key,
      payload: new Uint8Array(message.payload),
      headers: { ...message.headers },
      idempotencyKey: message.idempotencyKey ?? String(row.seq),
      createdAt: new Date(row.createdAt),
      availableAt: new Date(row.availableAt),
      attempts: row.attempts,
      lastError: row.lastError,
    };
  }
}

/** A claim under `fence` takes over a lease held under an older token of the same lock. */
function takesOver(fence: Fence | undefined, leaseFence: Fence | null): boolean {
  return fence !== undefined && leaseFence !== null && leaseFence.lock === fence.lock && leaseFence.token < fence.token;
}

function positiveInteger(value: unknown, name: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive integer, got ${String(value)}`);
  }
  return value;
}
