import { type WakeSource as CoreWakeSource, OutboxError, OutboxErrorCode } from "@outbox/core";

/**
 * A connection that can LISTEN: a connected pg `Client` fits. The store ends it when done.
 * (Structural, so this package has no runtime or type dependency on pg.)
 */
export interface ListenConnection {
  query(text: string): Promise<unknown>;
  on(event: "notification", listener: (message: { channel: string; payload?: string }) => void): unknown;
  on(event: "error", listener: (error: Error) => void): unknown;
  on(event: "end", listener: () => void): unknown;
  end(): Promise<void>;
}

/** PGlite's notification API. */
export interface PGliteListenApi {
  listen(channel: string, callback: (payload: string) => void): Promise<(() => Promise<void>) | unknown>;
}

/**
 * A running LISTEN (core's `WakeSource`): started on first subscriber, stopped on last unsubscribe
 * or close. Its `start()` resolves once the first LISTEN is in place or the first attempt failed
 * (then it retries).
 */
export type WakeSource = CoreWakeSource;

export interface WakeSourceHooks {
  onNotify(): void;
  onError(error: OutboxError): void;
}

/** The channel name, quoted for LISTEN (already validated: no double quotes inside). */
export function quoteChannel(channel: string): string {
  return `"${channel}"`;
}

export interface PgWakeSourceOptions {
  connect: () => Promise<ListenConnection>;
  channel: string;
  /** First reconnection delay; doubles up to maxBackoffMs. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** A `SELECT 1` on the listening connection this often catches half-open TCP connections. */
  healthCheckMs?: number;
}

/**
 * LISTEN on a dedicated pg connection, reconnected with backoff whenever it drops
 * (pg_terminate_backend, server restart, network). After a reconnection it fires one wake-up,
 * since notifications sent while it was away are lost.
 */
export class PgWakeSource implements WakeSource {
  readonly #options: Required<PgWakeSourceOptions>;
  readonly #hooks: WakeSourceHooks;
  #client: ListenConnection | null = null;
  #running = false;
  #failures = 0;
  #connectedOnce = false;
  #retryTimer: ReturnType<typeof setTimeout> | null = null;
  #healthTimer: ReturnType<typeof setInterval> | null = null;
  #generation = 0;

  constructor(options: PgWakeSourceOptions, hooks: WakeSourceHooks) {
    this.#options = { minBackoffMs: 100, maxBackoffMs: 5_000, healthCheckMs: 30_000, ...options };
    this.#hooks = hooks;
  }

  /** The listening connection, while there is one (tests use it to find the backend pid). */
  get connection(): ListenConnection | null {
    return this.#client;
  }

  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    await this.#open();
  }

  async stop(): Promise<void> {
    this.#running = false;
    this.#generation += 1;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    if (this.#healthTimer) clearInterval(this.#healthTimer);
    this.#retryTimer = null;
    this.#healthTimer = null;
    const client = this.#client;
    this.#client = null;
    if (client) await client.end().catch(() => undefined);
  }

  async #open(): Promise<void> {
    const generation = this.#generation;
    let client: ListenConnection | null = null;
    let lost = false;
    const onLost = (error: unknown) => {
      if (lost) return;
      lost = true;
      if (this.#client === client) this.#client = null;
      if (this.#healthTimer && this.#client === null) {
        clearInterval(this.#healthTimer);
        this.#healthTimer = null;
      }
      client?.end().catch(() => undefined);
      if (!this.#running || generation !== this.#generation) return;
      this.#hooks.onError(
        new OutboxError(OutboxErrorCode.StoreUnavailable, "the LISTEN connection was lost; reconnecting", {
          cause: error,
        }),
      );
      this.#scheduleReconnect();
    };
    try {
      client = await this.#options.connect();
      if (!this.#running || generation !== this.#generation) {
        await client.end().catch(() => undefined);
        return;
      }
      client.on("error", (error) => onLost(error));
      client.on("end", () => onLost(new Error("the LISTEN connection ended")));
      client.on("notification", (message) => {
        if (message.channel === this.#options.channel) this.#hooks.onNotify();
      });
      await client.query(`LISTEN ${quoteChannel(this.#options.channel)}`);
      if (lost) return;
      this.#client = client;
      this.#failures = 0;
      this.#startHealthCheck(client, onLost);
      // Whatever was committed while we were not listening went unannounced.
      if (this.#connectedOnce) this.#hooks.onNotify();
      this.#connectedOnce = true;
    } catch (error) {
      onLost(error);
    }
  }

  #scheduleReconnect(): void {
    if (this.#retryTimer || !this.#running) return;
    const base = Math.min(this.#options.maxBackoffMs, this.#options.minBackoffMs * 2 ** this.#failures);
    this.#failures += 1;
    const delay = base / 2 + Math.random() * (base / 2);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (this.#running) void this.#open();
    }, delay);
    this.#retryTimer.unref?.();
  }

  #startHealthCheck(client: ListenConnection, onLost: (error: unknown) => void): void {
    if (this.#healthTimer) clearInterval(this.#healthTimer);
    const every = this.#options.healthCheckMs;
    this.#healthTimer = setInterval(() => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`LISTEN connection health check timed out`)), every);
        timer.unref?.();
      });
      Promise.race([client.query("SELECT 1"), timeout]).then(
        () => clearTimeout(timer),
        (error: unknown) => {
          clearTimeout(timer);
          onLost(error);
        },
      );
    }, every);
    this.#healthTimer.unref?.();
  }
}

/** LISTEN through PGlite's own API (in-process: nothing to reconnect). */
export class PGliteWakeSource implements WakeSource {
  readonly #db: PGliteListenApi;
  readonly #channel: string;
  readonly #hooks: WakeSourceHooks;
  #unlisten: (() => Promise<void>) | null = null;

  constructor(db: PGliteListenApi, channel: string, hooks: WakeSourceHooks) {
    this.#db = db;
    this.#channel = channel;
    this.#hooks = hooks;
  }

  async start(): Promise<void> {
    if (this.#unlisten) return;
    try {
      const unlisten = await this.#db.listen(quoteChannel(this.#channel), () => this.#hooks.onNotify());
      this.#unlisten = typeof unlisten === "function" ? (unlisten as () => Promise<void>) : null;
    } catch (error) {
      this.#hooks.onError(new OutboxError(OutboxErrorCode.StoreUnavailable, "PGlite LISTEN failed", { cause: error }));
    }
  }

  async stop(): Promise<void> {
    const unlisten = this.#unlisten;
    this.#unlisten = null;
    await unlisten?.().catch(() => undefined);
  }
}
