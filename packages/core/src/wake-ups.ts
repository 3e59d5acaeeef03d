import { OutboxError, OutboxErrorCode } from "./errors.js";

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
}
