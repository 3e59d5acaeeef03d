import { OutboxError, OutboxErrorCode } from "./errors.js";
import type { Unsubscribe } from "./store.js";

/**
 * Where a store hears of other processes' commits (LISTEN, a change stream). It runs while anyone
 * listens: started for the first subscriber, stopped after the last.
 */
export interface WakeSource {
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface WakeUpListenersOptions {
  /**
   * At most one round of calls per window, on its leading and trailing edge, so a burst of
   * commits folds into two. 0 calls the listeners on every wake-up. Default 0.
   */
  readonly debounceMs?: number;
  /** A listener that throws is reported here; the others are still called. */
  readonly onError: (error: OutboxError) => void;
}

/** A store's wake-up subscribers (`subscribe()`), and the one way stores notify them. */
export class WakeUpListeners {
  readonly #listeners = new Set<() => void>();
  #source: WakeSource | null = null;
  #started: Promise<void> | null = null;
  readonly #debounceMs: number;
  readonly #onError: (error: OutboxError) => void;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #pending = false;

  constructor(options: WakeUpListenersOptions) {
    this.#debounceMs = options.debounceMs ?? 0;
    this.#onError = options.onError;
  }

  get size(): number {
    return this.#listeners.size;
  }

  /** Adds a listener; the returned function removes it (once). */
  add(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /**
   * A store's `subscribe()`: adds the listener and starts `source` (if any) for the first one; the
   * returned function removes the listener (once) and stops the source after the last one left.
   * If the source fails to start, the listener is not kept and the error is thrown.
   */
  async subscribe(listener: () => void, source?: WakeSource | null): Promise<Unsubscribe> {
    const remove = this.add(listener);
    if (source) {
      this.#source = source;
      this.#started ??= source.start();
      try {
        await this.#started;
      } catch (error) {
        remove();
        this.#started = null;
        throw error;
      }
    }
    let subscribed = true;
    return async () => {
      if (!subscribed) return;
      subscribed = false;
      remove();
      if (this.#listeners.size === 0) await this.#stopSource();
    };
  }

  wake(): void {
    if (this.#listeners.size === 0) return;
    if (this.#timer) {
      this.#pending = true;
      return;
    }
    for (const listener of [...this.#listeners]) {
      try {
        listener();
      } catch (error) {
        this.#onError(new OutboxError(OutboxErrorCode.InvalidOptions, "a wake-up listener threw", { cause: error }));
      }
    }
    if (this.#debounceMs <= 0) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (this.#pending) {
        this.#pending = false;
        this.wake();
      }
    }, this.#debounceMs);
    (this.#timer as { unref?: () => void }).unref?.();
  }

  /** Drops every listener and a pending trailing call. */
  clear(): void {
    this.#listeners.clear();
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#pending = false;
  }

  /** A store's `close()`: drops every listener and stops the source. */
  async close(): Promise<void> {
    this.clear();
    await this.#stopSource();
  }

  async #stopSource(): Promise<void> {
    if (!this.#started) return;
    this.#started = null;
    await this.#source?.stop();
  }
}
