import {
  type Clock,
  checkLockCall,
  type LockBackend,
  type LockBackendCapabilities,
  OutboxError,
  OutboxErrorCode,
  systemClock,
} from "@outbox/core";

interface Holding {
  holder: string;
  expiresAt: number;
}

/** The reference lock backend: TTL locks with a fencing counter that survives `restart()`. */
export class MemoryLockBackend implements LockBackend {
  readonly capabilities: LockBackendCapabilities = { tokensSurviveRestart: true };
  readonly #clock: Clock;
  #holdings = new Map<string, Holding>();
  #counters = new Map<string, bigint>();
  #reachable = true;
  #closed = false;

  constructor(options: { clock?: Clock } = {}) {
    this.#clock = options.clock ?? systemClock;
  }

  async tryAcquire(name: string, holder: string, ttlMs: number): Promise<bigint | null> {
    this.#check();
    checkLockCall(name, holder, ttlMs);
    const current = this.#live(name);
    if (current && current.holder !== holder) return null;
    const token = (this.#counters.get(name) ?? 0n) + 1n;
    this.#counters.set(name, token);
    this.#holdings.set(name, { holder, expiresAt: this.#clock.now() + ttlMs });
    return token;
  }

  async renew(name: string, holder: string, ttlMs: number): Promise<boolean> {
    this.#check();
    checkLockCall(name, holder, ttlMs);
    const current = this.#live(name);
    if (!current || current.holder !== holder) return false;
    current.expiresAt = this.#clock.now() + ttlMs;
    return true;
  }

  async release(name: string, holder: string): Promise<boolean> {
    this.#check();
    checkLockCall(name, holder);
    const current = this.#live(name);
    if (!current || current.holder !== holder) return false;
    this.#holdings.delete(name);
    return true;
  }

  /** Simulates a backend restart: every lock is gone, the fencing counters stay. */
  restart(): void {
    this.#holdings.clear();
  }

  /** Simulates a network partition from the backend: every call throws while false. */
  setReachable(reachable: boolean): void {
    this.#reachable = reachable;
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  #check(): void {
    if (this.#closed) throw new OutboxError(OutboxErrorCode.Closed, "the memory lock backend is closed");
    if (!this.#reachable) throw new OutboxError(OutboxErrorCode.LockUnavailable, "memory lock backend unreachable");
  }

  #live(name: string): Holding | undefined {
    const holding = this.#holdings.get(name);
    if (holding && holding.expiresAt <= this.#clock.now()) {
      this.#holdings.delete(name);
      return undefined;
    }
    return holding;
  }
}
