import { type Clock, systemClock } from "./clock.js";
import { OutboxError, OutboxErrorCode } from "./errors.js";

export interface LockBackendCapabilities {
  /** Fencing tokens keep increasing across a restart of the backend. */
  readonly tokensSurviveRestart: boolean;
  /**
   * The lock does not expire on its own while the holder's session lives (PostgreSQL advisory
   * locks); `ttlMs` then only paces health checks.
   */
  readonly sessionBound?: boolean;
}

/**
 * A distributed lock service (the seed's DLockBackend).
 * - `tryAcquire` is atomic. It returns a fencing token, strictly greater than every token
 *   handed out before for this name, or null when someone else holds the lock.
 * - `renew` and `release` succeed only for the current holder (compare-and-extend,
 *   compare-and-delete).
 * Errors mean "could not tell": callers treat them as "not held".
 */
export interface LockBackend {
  readonly capabilities: LockBackendCapabilities;
  tryAcquire(name: string, holder: string, ttlMs: number): Promise<bigint | null>;
  renew(name: string, holder: string, ttlMs: number): Promise<boolean>;
  release(name: string, holder: string): Promise<boolean>;
  close?(): Promise<void>;
}

/**
 * The argument rules every lock backend enforces, in one place: a non-empty name and holder, and
 * (for tryAcquire and renew) a positive, finite TTL. Anything else is OUTBOX_INVALID_OPTIONS.
 */
export function checkLockCall(name: unknown, holder: unknown, ttlMs?: unknown): void {
  if (typeof name !== "string" || name.length === 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, "lock name must be a non-empty string");
  }
  if (typeof holder !== "string" || holder.length === 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, "lock holder must be a non-empty string");
  }
  if (ttlMs !== undefined && (typeof ttlMs !== "number" || !Number.isFinite(ttlMs) || ttlMs <= 0)) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `ttlMs must be a positive number, got ${String(ttlMs)}`);
  }
}

export interface LockGrant {
  readonly name: string;
  readonly token: bigint;
}

export interface DistributedLockOptions {
  name: string;
  /** Default 10 s. Renewal runs every ttl/3. */
  ttlMs?: number;
  /**
   * How long before the server-side expiry we stop considering ourselves the holder when
   * renewals fail. Covers clock drift and the request's own latency. Default ttl/5.
   */
  safetyMarginMs?: number;
  holder?: string;
  clock?: Clock;
  onLost?: (grant: LockGrant, reason: unknown) => void;
  onError?: (error: unknown) => void;
}

export function randomId(): string {
  return globalThis.crypto.randomUUID();
}

/**
 * Holds a lock on a backend: acquires it, renews it at ttl/3, and reports its loss promptly.
 *
 * Validity is tracked locally: a grant counts only until `start + ttl - safetyMargin`, where
 * `start` is when the last successful acquire/renew request was *sent*. So a holder cut off
 * from the backend stops acting before the server could hand the lock to someone else.
 */
export class DistributedLock {
  readonly name: string;
  readonly holder: string;
  readonly ttlMs: number;
  readonly #backend: LockBackend;
  readonly #clock: Clock;
  readonly #marginMs: number;
  readonly #options: DistributedLockOptions;
  #grant: LockGrant | null = null;
  #acquiring: Promise<LockGrant | null> | null = null;
  #validUntil = 0;
  #renewal: AbortController | null = null;
  #closed = false;

  constructor(backend: LockBackend, options: DistributedLockOptions) {
    if (!options.name) throw new OutboxError(OutboxErrorCode.InvalidOptions, "lock name must be non-empty");
    this.ttlMs = options.ttlMs ?? 10_000;
    if (!(this.ttlMs >= 3)) throw new OutboxError(OutboxErrorCode.InvalidOptions, "lock ttlMs must be >= 3");
    this.#marginMs = options.safetyMarginMs ?? Math.floor(this.ttlMs / 5);
    if (this.#marginMs >= this.ttlMs) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "safetyMarginMs must be below ttlMs");
    }
    this.name = options.name;
    this.holder = options.holder ?? randomId();
    this.#backend = backend;
    this.#clock = options.clock ?? systemClock;
    this.#options = options;
  }

  /** The current grant, or null when not held or no longer safely held. */
  get grant(): LockGrant | null {
    if (this.#grant && this.#clock.now() >= this.#validUntil) {
      this.#lose(new OutboxError(OutboxErrorCode.LockNotHeld, `lock "${this.name}" validity lapsed without renewal`));
    }
    return this.#grant;
  }

  /** Tries once. Returns the grant (existing or new) or null. Backend errors mean null. */
  async tryAcquire(): Promise<LockGrant | null> {
    if (this.#closed) throw new OutboxError(OutboxErrorCode.Closed, `lock "${this.name}" is closed`);
    const current = this.grant;
    if (current) return current;
    // Callers that ask at the same time share one attempt: one token, one renewal timer.
    this.#acquiring ??= this.#acquire().finally(() => {
      this.#acquiring = null;
    });
    return this.#acquiring;
  }

  async #acquire(): Promise<LockGrant | null> {
    const sentAt = this.#clock.now();
    let token: bigint | null;
    try {
      token = await this.#backend.tryAcquire(this.name, this.holder, this.ttlMs);
    } catch (error) {
      this.#options.onError?.(
        new OutboxError(OutboxErrorCode.LockUnavailable, "lock backend unreachable", { cause: error }),
      );
      return null;
    }
    if (token === null) return null;
    this.#grant = { name: this.name, token };
    this.#validUntil = sentAt + this.ttlMs - this.#marginMs;
    this.#stopRenewing();
    this.#renewal = new AbortController();
    void this.#renewUntilAborted(this.#renewal.signal);
    return this.#grant;
  }

  /** Releases the lock if held. Never throws. */
  async release(): Promise<void> {
    // Not awaiting an in-flight renewal: a renew that lands after the release fails its
    // compare-and-extend, and waiting on an unreachable backend would stall shutdown.
    this.#stopRenewing();
    const held = this.#grant;
    this.#grant = null;
    if (!held) return;
    try {
      await this.#backend.release(this.name, this.holder);
    } catch (error) {
      // The lock will expire by itself; nothing else to do.
      this.#options.onError?.(error);
    }
  }

  async close(): Promise<void> {
    await this.release();
    this.#closed = true;
  }

  #stopRenewing(): void {
    this.#renewal?.abort();
    this.#renewal = null;
  }

  async #renewUntilAborted(signal: AbortSignal): Promise<void> {
    const interval = Math.max(1, Math.floor(this.ttlMs / 3));
    let nextRenewalAt = this.#clock.now() + interval;
    while (!signal.aborted) {
      // Wake at the next renewal or at the validity deadline, whichever is first, so a loss is
      // reported when it happens rather than when somebody next reads `grant`.
      await this.#clock.sleep(Math.min(nextRenewalAt, this.#validUntil) - this.#clock.now(), signal);
      if (signal.aborted || !this.grant) return;
      if (this.#clock.now() < nextRenewalAt) continue;
      nextRenewalAt = this.#clock.now() + interval;
      const sentAt = this.#clock.now();
      const outcome = await this.#renewWithin(this.#validUntil - sentAt, signal);
      if (signal.aborted) return;
      if (outcome === "renewed") {
        this.#validUntil = sentAt + this.ttlMs - this.#marginMs;
      } else if (outcome === "refused") {
        this.#lose(new OutboxError(OutboxErrorCode.LockNotHeld, `lock "${this.name}" was taken over or expired`));
        return;
      }
      // "failed" or "timed-out": keep trying until the validity lapses.
    }
  }

  /** One renewal, raced against the remaining validity: a hung backend must not outlive the grant. */
  async #renewWithin(
    remainingMs: number,
    signal: AbortSignal,
  ): Promise<"renewed" | "refused" | "failed" | "timed-out"> {
    const deadline = new AbortController();
    const stop = () => deadline.abort();
    signal.addEventListener("abort", stop, { once: true });
    try {
      return await Promise.race([
        this.#backend.renew(this.name, this.holder, this.ttlMs).then(
          (renewed) => (renewed ? "renewed" : "refused"),
          (error: unknown) => {
            this.#options.onError?.(
              new OutboxError(OutboxErrorCode.LockUnavailable, "lock renewal failed", { cause: error }),
            );
            return "failed" as const;
          },
        ),
        this.#clock.sleep(remainingMs, deadline.signal).then(() => "timed-out" as const),
      ]);
    } finally {
      deadline.abort();
      signal.removeEventListener("abort", stop);
    }
  }

  #lose(reason: unknown): void {
    const lost = this.#grant;
    if (!lost) return;
    this.#grant = null;
    this.#stopRenewing();
    this.#options.onLost?.(lost, reason);
  }
}
