/**
 * Time as the relay, the stores and the lock see it. Injected everywhere so tests run on a
 * manual clock instead of racing real time.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Resolves after `ms`, or early (without throwing) when `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  sleep(ms, signal) {
    return new Promise((resolve) => {
      if (signal?.aborted || ms <= 0) return resolve();
      const onAbort = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      }, ms);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  },
};

type Sleeper = { wakeAt: number; resolve: () => void };

/** A clock that only moves when told to. For tests and simulations. */
export class ManualClock implements Clock {
  #now: number;
  #sleepers = new Set<Sleeper>();
  #sleepWatchers: Array<{ count: number; resolve: () => void }> = [];

  constructor(start = Date.UTC(2030, 0, 1)) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    // Like the system clock: nothing to wait for.
    if (signal?.aborted || ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const sleeper: Sleeper = {
        wakeAt: this.#now + ms,
        resolve: () => {
          this.#sleepers.delete(sleeper);
          signal?.removeEventListener("abort", sleeper.resolve);
          resolve();
        },
      };
      this.#sleepers.add(sleeper);
      signal?.addEventListener("abort", sleeper.resolve, { once: true });
      this.#notifyWatchers();
    });
  }

  /** Moves time forward and wakes every sleeper whose time has come. */
  advance(ms: number): void {
    this.#now += ms;
    for (const sleeper of [...this.#sleepers]) {
      if (sleeper.wakeAt <= this.#now) sleeper.resolve();
    }
  }

  /** Number of pending sleep() calls. */
  get sleeping(): number {
    return this.#sleepers.size;
  }

  /** Resolves once at least `count` sleep() calls are pending: "the relay is idle now". */
  whenSleeping(count = 1): Promise<void> {
    if (this.#sleepers.size >= count) return Promise.resolve();
    return new Promise((resolve) => {
      this.#sleepWatchers.push({ count, resolve });
    });
  }

  #notifyWatchers(): void {
    const ready = this.#sleepWatchers.filter((watcher) => this.#sleepers.size >= watcher.count);
    this.#sleepWatchers = this.#sleepWatchers.filter((watcher) => this.#sleepers.size < watcher.count);
    for (const watcher of ready) watcher.resolve();
  }
}
