import { OutboxError, OutboxErrorCode } from "@outbox/core";
import { storeError } from "./errors.js";

/** The parts of a driver `ChangeStream` the wake source uses. */
export interface ChangeStreamLike {
  on(event: "change", listener: (change: unknown) => void): unknown;
  on(event: "error", listener: (error: unknown) => void): unknown;
  on(event: "close", listener: () => void): unknown;
  /** The driver emits it when a cursor of the stream starts (or resumes) at a position. */
  on(event: "resumeTokenChanged", listener: (token: unknown) => void): unknown;
  close(): Promise<void>;
}

export interface WakeSourceHooks {
  onWake(): void;
  onError(error: OutboxError): void;
}

export interface ChangeStreamWakeSourceOptions {
  /** Opens the change stream (e.g. `() => collection.watch(pipeline)`). */
  open: () => ChangeStreamLike;
  /** First reopening delay; doubles up to maxBackoffMs. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

/**
 * Wake-ups from a change stream on the entries collection. The driver resumes a stream across
 * transient errors itself; when the stream still dies (a non-resumable error, a server gone
 * for longer), it is reopened with backoff and fires one catch-up wake-up, since changes made
 * while it was away are not replayed (they are hints: polling stays the safety net).
 */
export class ChangeStreamWakeSource {
  readonly #open: () => ChangeStreamLike;
  readonly #hooks: WakeSourceHooks;
  readonly #minBackoffMs: number;
  readonly #maxBackoffMs: number;
  #stream: ChangeStreamLike | null = null;
  #running = false;
  #failures = 0;
  #openedOnce = false;
  #retryTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(options: ChangeStreamWakeSourceOptions, hooks: WakeSourceHooks) {
    this.#open = options.open;
    this.#hooks = hooks;
    this.#minBackoffMs = options.minBackoffMs ?? 100;
    this.#maxBackoffMs = options.maxBackoffMs ?? 5_000;
  }

  get running(): boolean {
    return this.#running;
  }

  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    this.#connect();
  }

  async stop(): Promise<void> {
    this.#running = false;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    const stream = this.#stream;
    this.#stream = null;
    await stream?.close().catch(() => undefined);
  }

  #connect(): void {
    if (!this.#running) return;
    let stream: ChangeStreamLike;
    try {
      stream = this.#open();
    } catch (error) {
      this.#failed(streamError(error));
      return;
    }
    this.#stream = stream;
    let done = false;
    const lost = (error: OutboxError) => {
      if (done) return;
      done = true;
      if (this.#stream === stream) this.#stream = null;
      void stream.close().catch(() => undefined);
      this.#failed(error);
    };
    stream.on("change", () => {
      this.#failures = 0;
      this.#hooks.onWake();
    });
    stream.on("error", (error) => lost(streamError(error)));
    // Also when the driver is about to resume it itself (its cursor's "close" is re-emitted):
    // reopening costs one aggregate, and the catch-up wake-up below covers the gap either way.
    stream.on("close", () => lost(new OutboxError(OutboxErrorCode.StoreUnavailable, "the change stream closed")));
    if (this.#openedOnce) {
      // Changes made while the stream was away are not replayed: look once now, and once more
      // when the stream has really started (its first resume token: the aggregate that opens it
      // may itself wait for the server), since changes in between are in no stream either.
      this.#hooks.onWake();
      let started = false;
      stream.on("resumeTokenChanged", () => {
        if (started || done) return;
        started = true;
        this.#hooks.onWake();
      });
    }
    this.#openedOnce = true;
  }

  #failed(error: OutboxError): void {
    if (!this.#running) return;
    this.#hooks.onError(error);
    const delay = Math.min(this.#maxBackoffMs, this.#minBackoffMs * 2 ** this.#failures);
    this.#failures += 1;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#connect();
    }, delay);
    this.#retryTimer.unref?.();
  }
}

function streamError(error: unknown): OutboxError {
  return storeError("change stream", error);
}
