import { type RetryPolicy, resolveRetryPolicy, retryDelayMs } from "./backoff.js";
import { type Clock, systemClock } from "./clock.js";
import type { OutboxEntry } from "./entry.js";
import { describeError, OutboxError, OutboxErrorCode } from "./errors.js";
import { TypedEmitter } from "./events.js";
import { DistributedLock, type LockBackend, type LockGrant, randomId } from "./lock.js";
import { startPublishSpan } from "./otel.js";
import { KeyFailures, type OutboxPublisher, type PublishOutcome, transientFailure } from "./publisher.js";
import type { DeadLetterItem, Fence, OutboxStore, RetryItem, SettleContext, StoreStats, Unsubscribe } from "./store.js";

export type RelayPhase = "lock" | "claim" | "publish" | "settle" | "wake-up" | "stop" | "listener";

export interface RelayEvents {
  published: { readonly entries: readonly OutboxEntry[] };
  retried: { readonly entry: OutboxEntry; readonly error: unknown; readonly availableAt: Date };
  deadLettered: {
    readonly entry: OutboxEntry;
    readonly error: unknown;
    readonly reason: "permanent" | "attempts-exhausted";
  };
  leadershipGained: { readonly grant: LockGrant };
  leadershipLost: { readonly grant: LockGrant; readonly reason: unknown };
  error: { readonly error: unknown; readonly phase: RelayPhase };
}

export interface RelayMetrics {
  readonly claimed: number;
  readonly published: number;
  readonly retried: number;
  readonly deadLettered: number;
  readonly errors: number;
  readonly cycles: number;
  readonly consecutiveFailures: number;
  readonly leader: boolean;
  readonly lastPublishedAt: Date | null;
}

export interface LeaderOptions {
  backend: LockBackend;
  /** Lock name; also the fence name the store checks. Default "outbox-relay". */
  name?: string;
  /** Default 10 s. */
  ttlMs?: number;
  safetyMarginMs?: number;
  /**
   * A leader whose claims have failed this long in a row (the first failure at least this long
   * ago, none succeeded since) gives the lock up and leaves it to the other replicas for one TTL:
   * a replica that cannot reach the store while the others can (a wedged database client, a
   * partition of its own) must not hold the outbox. Default 3 x ttlMs.
   */
  stepDownAfterMs?: number;
}

export interface OutboxRelayOptions {
  store: OutboxStore<never>;
  publisher: OutboxPublisher;
  /** Wait between polls when idle. Default 500 ms. */
  pollMs?: number;
  /** Entries claimed per cycle. Default 32. */
  batchSize?: number;
  /**
   * Batches being published and settled at once: the relay claims the next batch while earlier
   * ones are still with the broker (their keys never overlap, so per-key order holds). Default 2.
   */
  maxInFlightBatches?: number;
  /**
   * How long claimed entries stay invisible to other relays. Must exceed the slowest
   * publish; an expired lease means the entry may be published twice. Default 30 s.
   */
  leaseMs?: number;
  /** Leader election: only the lock holder drains; its fencing token travels to the store. */
  leader?: LeaderOptions;
  retry?: Partial<RetryPolicy>;
  /** stop() waits this long for the in-flight batch. Default 10 s. */
  drainTimeoutMs?: number;
  /**
   * Identifies this relay's claims: each claim is made as `<id>#<n>` (its own claimer), so the
   * entries of a claim whose reply was lost can be given back by that name. Default: a random UUID.
   */
  id?: string;
  clock?: Clock;
  /** Source of randomness for retry jitter. */
  random?: () => number;
}

/** How long stop() waits, after the drain timeout, for the store to take back what is unsettled. */
const releaseGraceMs = 5_000;

function positive(value: number, name: string): number {
  if (!Number.isFinite(value) || value <= 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive number, got ${value}`);
  }
  return value;
}

/** A settle the store failed to answer is sent again after this, doubling up to the max. */
const settleRetryFirstMs = 100;
const settleRetryMaxMs = 2_000;

const ids = (entries: readonly OutboxEntry[]) => entries.map((entry) => entry.id);
const items = <T>(settled: ReadonlyArray<{ item: T }>) => settled.map((each) => each.item);

interface ClaimedBatch {
  entries: OutboxEntry[];
  context: SettleContext;
  /** The clock's time when the lease ends (counted from before the claim was sent). */
  leaseEndsAt: number;
}

/**
 * Moves committed outbox entries to a broker: claim a batch, publish it, ack what the broker
 * confirmed. At-least-once: an entry is acked only after its publish succeeded, so a crash in
 * between replays it and consumers dedupe on `idempotencyKey`.
 *
 * The relay never throws from its loop: store, publisher and lock errors become "error" events
 * and the loop carries on with backoff.
 */
export class OutboxRelay {
  readonly id: string;
  readonly #store: OutboxStore<never>;
  readonly #publisher: OutboxPublisher;
  readonly #clock: Clock;
  readonly #pollMs: number;
  readonly #batchSize: number;
  readonly #maxInFlight: number;
  readonly #leaseMs: number;
  readonly #drainTimeoutMs: number;
  readonly #retry: RetryPolicy;
  readonly #random: () => number;
  readonly #lock: DistributedLock | null;
  readonly #events: TypedEmitter<RelayEvents>;

  #running = false;
  #loop: Promise<void> | null = null;
  /** Deliveries (publish + settle) the background loop has started and not finished. */
  readonly #inFlight = new Set<Promise<void>>();
  #cycleChain: Promise<unknown> = Promise.resolve();
  #wake = new AbortController();
  /** Aborted when stop() stops waiting: publishes in flight end, and what is unsettled is released. */
  #halt = new AbortController();
  #wokenEarly = false;
  #unsubscribe: Unsubscribe | null = null;
  #leader = false;
  readonly #stepDownAfterMs: number;
  /** When the current run of failed claims began; null while claims succeed. */
  #failingSince: number | null = null;
  /** After stepping down, the lock is left to the other replicas until then. */
  #acquireNotBefore = 0;
  /**
   * The last delivery settled keyed entries, so their successors may be claimable right now: a
   * hot key then drains run after run instead of one run per poll interval.
   */
  #keysUnblocked = false;
  /** The last claim came back full: more is waiting, so claims may overlap (see #run). */
  #claimsFull = false;
  /** Claims running now. */
  #claiming = 0;
  #claimCount = 0;
  /** Claims that failed without an answer: they may have leased entries (see releaseClaimer). */
  #unanswered: Array<{ claimer: string; leaseEndsAt: number }> = [];
  /** Where the claim path is (lock or claim), so a failure is reported with the right phase. */
  #phase: RelayPhase = "claim";
  #metrics = {
    claimed: 0,
    published: 0,
    retried: 0,
    deadLettered: 0,
    errors: 0,
    cycles: 0,
    consecutiveFailures: 0,
    lastPublishedAt: null as Date | null,
  };

  constructor(options: OutboxRelayOptions) {
    if (!options?.store || !options.publisher) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "OutboxRelay needs a store and a publisher");
    }
    this.id = options.id ?? randomId();
    this.#store = options.store;
    this.#publisher = options.publisher;
    this.#clock = options.clock ?? systemClock;
    this.#pollMs = positive(options.pollMs ?? 500, "pollMs");
    this.#batchSize = positive(options.batchSize ?? 32, "batchSize");
    this.#maxInFlight = positive(options.maxInFlightBatches ?? 2, "maxInFlightBatches");
    this.#leaseMs = positive(options.leaseMs ?? 30_000, "leaseMs");
    this.#drainTimeoutMs = positive(options.drainTimeoutMs ?? 10_000, "drainTimeoutMs");
    this.#retry = resolveRetryPolicy(options.retry);
    this.#random = options.random ?? Math.random;
    this.#events = new TypedEmitter<RelayEvents>((error) => this.#report(error, "listener"));
    this.#lock = options.leader
      ? new DistributedLock(options.leader.backend, {
          name: options.leader.name ?? "outbox-relay",
          ttlMs: options.leader.ttlMs,
          safetyMarginMs: options.leader.safetyMarginMs,
          holder: this.id,
          clock: this.#clock,
          onLost: (grant, reason) => {
            this.#leader = false;
            this.#events.emit("leadershipLost", { grant, reason });
          },
          onError: (error) => this.#report(error, "lock"),
        })
      : null;
    this.#stepDownAfterMs = positive(
      options.leader?.stepDownAfterMs ?? 3 * (this.#lock?.ttlMs ?? 10_000),
      "leader.stepDownAfterMs",
    );
  }

  on<K extends keyof RelayEvents>(event: K, listener: (payload: RelayEvents[K]) => void): () => void {
    return this.#events.on(event, listener);
  }

  get running(): boolean {
    return this.#running;
  }

  metrics(): RelayMetrics {
    return { ...this.#metrics, leader: this.#lock ? this.#lock.grant !== null : true };
  }

  /** Backlog figures straight from the store: pending count and the age of the oldest entry. */
  backlog(): Promise<StoreStats> {
    return this.#store.stats();
  }

  /** Starts the background loop. Idempotent. */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#wake = new AbortController();
    this.#halt = new AbortController();
    if (this.#store.capabilities.wakeUps && this.#store.subscribe) {
      this.#store
        .subscribe(() => this.#wakeUp())
        .then(
          (unsubscribe) => {
            if (this.#running) this.#unsubscribe = unsubscribe;
            else void unsubscribe();
          },
          (error) => this.#report(error, "wake-up"),
        );
    }
    this.#loop = this.#run();
  }

  /**
   * Stops claiming and waits (up to drainTimeoutMs) for the batches in flight, claims included, to
   * be published and settled. Past that it reports OUTBOX_DRAIN_TIMEOUT, stops the publishes
   * still running and releases every entry not yet settled (a claim that returns later is
   * released at once), waiting up to 5 s more for the store, so no lease outlives the relay.
   * Then it releases the leader lock. Does not close the store or the publisher: they belong to
   * the caller.
   */
  async stop(): Promise<void> {
    if (!this.#running && !this.#loop) return;
    this.#running = false;
    this.#wake.abort();
    const loop = this.#loop;
    this.#loop = null;
    if (loop && !(await this.#settlesWithin(loop, this.#drainTimeoutMs))) {
      const error = new OutboxError(
        OutboxErrorCode.DrainTimeout,
        `in-flight batches not settled within ${this.#drainTimeoutMs} ms: releasing them`,
      );
      this.#report(error, "stop");
      this.#halt.abort(error);
      await this.#settlesWithin(loop, releaseGraceMs);
    }
    const unsubscribe = this.#unsubscribe;
    this.#unsubscribe = null;
    await unsubscribe?.().catch((error: unknown) => this.#report(error, "stop"));
    await this.#stepDown("stopped");
  }

  /** Releases the lock; listeners hear of it when this relay was leading. */
  async #stepDown(reason: unknown, grant = this.#lock?.grant ?? null): Promise<void> {
    await this.#lock?.release();
    if (grant && this.#leader) this.#events.emit("leadershipLost", { grant, reason });
    this.#leader = false;
  }

  async #settlesWithin(work: Promise<void>, ms: number): Promise<boolean> {
    const timeout = new AbortController();
    const finished = await Promise.race([
      work.then(() => true),
      this.#clock.sleep(ms, timeout.signal).then(() => false),
    ]);
    timeout.abort();
    return finished;
  }

  /**
   * Runs one claim -> publish -> settle cycle now and returns how many entries it claimed.
   * Returns 0 without claiming when a leader lock is configured and not held.
   * Throws when the store fails; use it for cron-style draining and in tests.
   */
  runOnce(): Promise<number> {
    const cycle = this.#cycleChain.then(async () => {
      const batch = await this.#claimBatch();
      if (batch) await this.#deliver(batch);
      return batch?.entries.length ?? 0;
    });
    this.#cycleChain = cycle.catch(() => undefined);
    return cycle;
  }

  /** Runs cycles until nothing more is claimable right now. Returns the total claimed. */
  async drain(): Promise<number> {
    let total = 0;
    for (;;) {
      const claimed = await this.runOnce();
      total += claimed;
      if (claimed < this.#batchSize && !this.#keysUnblocked) return total;
    }
  }

  /**
   * The background loop: claims while fewer than maxInFlightBatches deliveries run, so the next
   * batch is claimed while earlier ones are with the broker.
   */
  async #run(): Promise<void> {
    while (this.#running) {
      if (this.#inFlight.size >= this.#maxInFlight) {
        await Promise.race(this.#inFlight);
        continue;
      }
      // While claims come back full (a backlog), the next claim starts without waiting for the
      // one before: the store claims in parallel (two claims of one claimer never share a key).
      // Two at most: a third claim at once only contends with the others in the database
      // (measured: slower than one at a time on 2 cores). Only with the fence at hand, so that
      // concurrent claims never race for the lock.
      if (this.#claimsFull && (this.#lock === null || this.#lock.grant !== null)) {
        if (this.#claiming >= 2) await Promise.race(this.#inFlight);
        else this.#track(this.#claimAndDeliver());
        continue;
      }
      const batch = await this.#claimReported();
      if (batch) this.#track(this.#deliver(batch));
      let delay = this.#claimsFull || this.#keysUnblocked ? 0 : this.#pollMs;
      // 2x, 4x, then 8x the poll interval while the store keeps failing.
      if (batch === undefined) delay = this.#pollMs * Math.min(8, 2 ** this.#metrics.consecutiveFailures);
      if (!this.#running) break;
      await this.#wait(delay);
    }
    await Promise.allSettled(this.#inFlight);
  }

  /** A claim started while others run (see #run), then its delivery. */
  async #claimAndDeliver(): Promise<void> {
    const batch = await this.#claimReported();
    if (batch) await this.#deliver(batch);
  }

  /**
   * A background claim: an answer resets the failure count, and a full batch means a backlog. A
   * failure is counted and reported, and comes back as undefined.
   */
  async #claimReported(): Promise<ClaimedBatch | null | undefined> {
    try {
      const batch = await this.#claimBatch();
      this.#metrics.consecutiveFailures = 0;
      this.#claimsFull = batch !== null && batch.entries.length >= this.#batchSize;
      return batch;
    } catch (error) {
      this.#claimsFull = false;
      this.#metrics.consecutiveFailures += 1;
      this.#report(error, this.#phase);
      return undefined;
    }
  }

  /** Keeps a delivery in the in-flight set until it ends; its failure is reported, not thrown. */
  #track(delivery: Promise<void>): void {
    const tracked: Promise<void> = delivery
      .catch((error: unknown) => this.#report(error, "settle"))
      .finally(() => {
        this.#inFlight.delete(tracked);
        // A finished delivery frees a slot and may have unblocked keys: claim again now.
        if (this.#keysUnblocked) this.#wakeUp();
      });
    this.#inFlight.add(tracked);
  }

  async #wait(ms: number): Promise<void> {
    // Woken since the last wait: claim again at once.
    const woken = this.#wokenEarly;
    this.#wokenEarly = false;
    if (woken || ms === 0) return;
    if (this.#wake.signal.aborted) this.#wake = new AbortController();
    await this.#clock.sleep(ms, this.#wake.signal);
    this.#wokenEarly = false;
  }

  #wakeUp(): void {
    this.#wokenEarly = true;
    this.#wake.abort();
  }

  async #currentFence(): Promise<Fence | undefined | null> {
    if (!this.#lock) return undefined;
    const grant =
      this.#lock.grant ?? (this.#clock.now() < this.#acquireNotBefore ? null : await this.#lock.tryAcquire());
    if (!grant) {
      this.#leader = false;
      return null;
    }
    if (!this.#leader) {
      this.#leader = true;
      this.#events.emit("leadershipGained", { grant });
    }
    return { lock: grant.name, token: grant.token };
  }

  #stillLeading(fence: Fence | undefined): boolean {
    return fence === undefined || this.#lock?.grant?.token === fence.token;
  }

  /** Whether leadership was lost since the batch was claimed (reported as LockNotHeld). */
  #deposed(context: SettleContext, before: string): boolean {
    if (this.#stillLeading(context.fence)) return false;
    this.#report(new OutboxError(OutboxErrorCode.LockNotHeld, `leadership lost before ${before}`), "lock");
    return true;
  }

  /** Claims one batch; null when a leader lock is configured and not held. */
  async #claimBatch(): Promise<ClaimedBatch | null> {
    this.#claiming += 1;
    try {
      const batch = await this.#claimOnce();
      this.#failingSince = null;
      return batch;
    } catch (error) {
      await this.#stepDownIfFailing(error);
      throw error;
    } finally {
      this.#claiming -= 1;
    }
  }

  /** See `LeaderOptions.stepDownAfterMs`. A fenced claim has stepped down already (#settle). */
  async #stepDownIfFailing(error: unknown): Promise<void> {
    if (!this.#lock || OutboxError.is(error, OutboxErrorCode.Fenced)) return;
    const now = this.#clock.now();
    this.#failingSince ??= now;
    const failingMs = now - this.#failingSince;
    const grant = this.#lock.grant;
    if (failingMs < this.#stepDownAfterMs || grant === null) return;
    this.#failingSince = null;
    this.#acquireNotBefore = now + this.#lock.ttlMs;
    const reason = new OutboxError(
      OutboxErrorCode.StoreUnavailable,
      `claims failed for ${failingMs} ms: stepping down, the lock is left to the other replicas for ${this.#lock.ttlMs} ms`,
      { cause: error },
    );
    await this.#stepDown(reason, grant);
  }

  async #claimOnce(): Promise<ClaimedBatch | null> {
    this.#metrics.cycles += 1;
    this.#keysUnblocked = false;
    this.#phase = "lock";
    const fence = await this.#currentFence();
    if (fence === null) return null;
    this.#phase = "claim";
    await this.#releaseUnanswered(fence);
    this.#claimCount += 1;
    const claimer = `${this.id}#${this.#claimCount}`;
    const leaseEndsAt = this.#clock.now() + this.#leaseMs;
    let entries: OutboxEntry[];
    try {
      entries = await this.#settle(() =>
        this.#store.claim({ claimer, limit: this.#batchSize, leaseMs: this.#leaseMs, fence }),
      );
    } catch (error) {
      if (OutboxError.is(error, OutboxErrorCode.StoreUnavailable)) this.#unanswered.push({ claimer, leaseEndsAt });
      throw error;
    }
    this.#metrics.claimed += entries.length;
    return entries.length > 0 ? { entries, context: { claimer, fence }, leaseEndsAt } : null;
  }

  /**
   * A claim the store failed to answer may have committed (a connection reset after the commit,
   * before the reply): its entries would wait out their lease, and their keys with them. Each is
   * given back by its claimer name before the next claim, until its lease has ended anyway.
   * Stores without `releaseClaimer` leave them to the lease.
   */
  async #releaseUnanswered(fence: Fence | undefined): Promise<void> {
    const releaseClaimer = this.#store.releaseClaimer?.bind(this.#store);
    if (!releaseClaimer || this.#unanswered.length === 0) return;
    const now = this.#clock.now();
    const pending = this.#unanswered.splice(0).filter((claim) => claim.leaseEndsAt > now);
    for (const [index, claim] of pending.entries()) {
      try {
        await this.#settle(() => releaseClaimer({ claimer: claim.claimer, fence }));
      } catch (error) {
        // Fenced: a newer leader takes these leases over anyway. Otherwise try again next time.
        if (!OutboxError.is(error, OutboxErrorCode.Fenced)) this.#unanswered.push(...pending.slice(index));
        throw error;
      }
    }
  }

  async #deliver(batch: ClaimedBatch): Promise<void> {
    const { entries, context } = batch;
    if (this.#halt.signal.aborted) {
      // Claimed after stop() stopped waiting: give it back untouched.
      const settlement = new RunSettlement();
      settlement.released.push(...entries);
      await this.#settleAll(settlement, batch);
      return;
    }
    // Deposed between claim and publish: publish nothing. The next leader's newer token takes
    // these leases over at once.
    if (this.#deposed(context, "publishing")) return;
    // Poison guard: an entry claimed more often than allowed without ever being settled (the
    // relay crashed while publishing it, again and again) is set aside unpublished; the rest of
    // its key's run is not handed to the publisher.
    const exhausted = (entry: OutboxEntry) => entry.attempts > this.#retry.maxAttempts;
    const setAside = new KeyFailures();
    const toPublish: OutboxEntry[] = [];
    for (const entry of entries) {
      if (setAside.blocked(entry)) continue;
      if (exhausted(entry)) setAside.fail(entry);
      else toPublish.push(entry);
    }
    const results = toPublish.length > 0 ? await this.#publish(toPublish) : [];
    const outcomes = new Map(toPublish.map((entry, index) => [entry, results[index] as PublishOutcome]));

    // Settle each key's run in order: ack the published prefix, settle the first failure, and
    // release the rest of the run without counting an attempt.
    const settlement = new RunSettlement();
    for (const entry of entries) {
      const outcome = outcomes.get(entry);
      if (settlement.failed.blocked(entry)) {
        if (outcome?.status === "published") {
          // The publisher broke the run contract; the entry is on the broker, so ack it.
          this.#report(
            new OutboxError(
              OutboxErrorCode.PublisherContract,
              `entry ${entry.id} was published after an earlier entry of key ${JSON.stringify(entry.key)} failed in the same call`,
            ),
            "publish",
          );
          settlement.acked.push(entry);
        } else {
          settlement.released.push(entry);
        }
      } else if (outcome === undefined) {
        const error = new OutboxError(
          OutboxErrorCode.PublishFailed,
          `claimed ${entry.attempts} times without an outcome (max ${this.#retry.maxAttempts})`,
        );
        settlement.deadLetter(entry, error, "attempts-exhausted");
      } else if (outcome.status === "published") {
        settlement.acked.push(entry);
      } else if (this.#halt.signal.aborted) {
        // The relay is stopping: no attempt counted, no retry delay; another relay takes it now.
        settlement.giveBack(entry);
      } else if (outcome.status === "permanent") {
        settlement.deadLetter(entry, outcome.error, "permanent");
      } else if (entry.attempts >= this.#retry.maxAttempts) {
        settlement.deadLetter(entry, outcome.error, "attempts-exhausted");
      } else {
        const now = this.#clock.now();
        const waitedMs = now - entry.createdAt.getTime();
        const availableAt = new Date(now + retryDelayMs(this.#retry, entry.attempts, this.#random, waitedMs));
        settlement.retry(entry, outcome.error, availableAt);
      }
    }
    await this.#settleAll(settlement, batch);
  }

  async #settleAll(settlement: RunSettlement, batch: ClaimedBatch): Promise<void> {
    const { context } = batch;
    // Deposed while publishing: no ack. The next leader republishes (a bounded duplicate);
    // the store's fence check would reject the ack anyway.
    if (this.#deposed(context, "acking")) return;
    const { acked, retries, dead, released } = settlement;
    if (acked.length > 0) {
      await this.#settleWithin(batch, () => this.#store.ack(ids(acked), context));
      this.#metrics.published += acked.length;
      this.#metrics.lastPublishedAt = new Date(this.#clock.now());
      this.#events.emit("published", { entries: acked });
    }
    if (retries.length > 0) {
      await this.#settleWithin(batch, () => this.#store.retry(items(retries), context));
      this.#metrics.retried += retries.length;
      for (const { entry, error, item } of retries) {
        this.#events.emit("retried", { entry, error, availableAt: item.availableAt });
      }
    }
    if (dead.length > 0) {
      await this.#settleWithin(batch, () => this.#store.deadLetter(items(dead), context));
      this.#metrics.deadLettered += dead.length;
      for (const { entry, error, reason } of dead) this.#events.emit("deadLettered", { entry, error, reason });
    }
    if (released.length > 0) await this.#settleWithin(batch, () => this.#store.release(ids(released), context));
    const settled = [...acked, ...dead.map((letter) => letter.entry), ...released];
    if (settled.some((entry) => entry.key !== null)) this.#keysUnblocked = true;
  }

  async #publish(batch: OutboxEntry[]): Promise<PublishOutcome[]> {
    const spans = batch.map((entry) => startPublishSpan(entry));
    // Past the lease another relay may claim these entries: tell the publisher to stop waiting a
    // little before that (a fifth of the lease, at most 5 s), so duplicates stay rare.
    const lease = new AbortController();
    const finished = new AbortController();
    void this.#clock.sleep(this.#leaseMs - Math.min(this.#leaseMs / 5, 5_000), finished.signal).then(() => {
      if (!finished.signal.aborted) {
        lease.abort(new OutboxError(OutboxErrorCode.PublishFailed, "the batch's lease is about to end"));
      }
    });
    let outcomes: PublishOutcome[];
    try {
      outcomes = await this.#publisher.publish(batch, { signal: AbortSignal.any([lease.signal, this.#halt.signal]) });
      if (!Array.isArray(outcomes) || outcomes.length !== batch.length) {
        throw new OutboxError(
          OutboxErrorCode.PublisherContract,
          `publisher returned ${Array.isArray(outcomes) ? outcomes.length : typeof outcomes} outcomes for ${batch.length} entries`,
        );
      }
    } catch (error) {
      this.#report(error, "publish");
      outcomes = batch.map(() => transientFailure(error));
    } finally {
      finished.abort();
    }
    outcomes.forEach((outcome, index) => {
      spans[index]?.end(outcome.status === "published" ? undefined : outcome.error);
    });
    return outcomes;
  }

  /**
   * A settle the store could not answer (connection lost, statement timeout) is sent again until
   * the batch's lease ends: ack, retry, dead-letter and release are idempotent, and a reply lost
   * to a reset connection must not hold the batch's keys for the rest of the lease. Other
   * failures, a stop, a lost leadership or the lease's end propagate (the entries are replayed
   * after the lease).
   */
  async #settleWithin(batch: ClaimedBatch, operation: () => Promise<void>): Promise<void> {
    let waitMs = settleRetryFirstMs;
    for (;;) {
      try {
        return await this.#settle(operation);
      } catch (error) {
        const hopeless =
          !OutboxError.is(error, OutboxErrorCode.StoreUnavailable) ||
          this.#halt.signal.aborted ||
          !this.#stillLeading(batch.context.fence) ||
          this.#clock.now() + waitMs >= batch.leaseEndsAt;
        if (hopeless) throw error;
        this.#report(error, "settle");
        await this.#clock.sleep(waitMs, this.#halt.signal);
        waitMs = Math.min(waitMs * 2, settleRetryMaxMs);
      }
    }
  }

  /**
   * Store failures propagate. A fenced call means a newer leader exists: step down at once.
   */
  async #settle<T>(operation: () => Promise<T>): Promise<T> {
    try {
      return await operation();
    } catch (error) {
      if (OutboxError.is(error, OutboxErrorCode.Fenced)) await this.#stepDown(error);
      throw error;
    }
  }

  #report(error: unknown, phase: RelayPhase): void {
    this.#metrics.errors += 1;
    if (this.#events.listenerCount("error") > 0) {
      this.#events.emit("error", { error, phase });
    } else {
      // Never silent: without a listener, errors still reach the operator's logs.
      console.error(`[outbox relay ${this.id}] ${phase}:`, error);
    }
  }
}

/**
 * How one claimed batch settles. Once an entry of a key failed (or was set aside), the rest of
 * that key's run is held back and released without counting an attempt.
 */
class RunSettlement {
  readonly acked: OutboxEntry[] = [];
  readonly released: OutboxEntry[] = [];
  readonly retries: Array<{ entry: OutboxEntry; item: RetryItem; error: unknown }> = [];
  readonly dead: Array<RelayEvents["deadLettered"] & { item: DeadLetterItem }> = [];
  /** Keys whose run already failed in this batch. */
  readonly failed = new KeyFailures();

  deadLetter(entry: OutboxEntry, error: unknown, reason: RelayEvents["deadLettered"]["reason"]): void {
    this.dead.push({ entry, error, reason, item: { id: entry.id, error: describeError(error) } });
    this.failed.fail(entry);
  }

  giveBack(entry: OutboxEntry): void {
    this.released.push(entry);
    this.failed.fail(entry);
  }

  retry(entry: OutboxEntry, error: unknown, availableAt: Date): void {
    this.retries.push({ entry, error, item: { id: entry.id, error: describeError(error), availableAt } });
    this.failed.fail(entry);
  }
}
