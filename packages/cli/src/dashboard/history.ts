import type { OutboxStore, StoreStats } from "@outbox/core";
import { redactText } from "../redact.js";
import { probeRelay, type RelayProbe } from "../relay-probe.js";

/** One sample of the backlog, as the chart draws it. */
export interface Sample {
  /** Unix time, seconds. */
  readonly t: number;
  readonly pending: number;
  readonly inFlight: number;
  readonly dead: number;
  /** Age of the oldest pending entry, seconds (0 when nothing is pending). */
  readonly lagSeconds: number;
  /** Entries the probed relays published per second since the previous sample; null without relays. */
  readonly publishedPerSecond: number | null;
}

/** A fixed-size ring buffer: the newest `capacity` items, oldest first. */
export class RingBuffer<T> {
  readonly capacity: number;
  readonly #items: Array<T | undefined>;
  #next = 0;
  #size = 0;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError("capacity must be a positive integer");
    this.capacity = capacity;
    this.#items = new Array<T | undefined>(capacity);
  }

  push(item: T): void {
    this.#items[this.#next] = item;
    this.#next = (this.#next + 1) % this.capacity;
    this.#size = Math.min(this.#size + 1, this.capacity);
  }

  toArray(): T[] {
    const start = (this.#next - this.#size + this.capacity) % this.capacity;
    const out: T[] = [];
    for (let index = 0; index < this.#size; index++) out.push(this.#items[(start + index) % this.capacity] as T);
    return out;
  }

  get size(): number {
    return this.#size;
  }
}

export interface SamplerOptions {
  readonly store: () => Promise<OutboxStore<never>>;
  readonly intervalMs: number;
  readonly capacity: number;
  readonly relays: readonly string[];
  readonly now: () => number;
}

/**
 * Reads the store's stats() every `intervalMs` into a ring buffer (the chart's last minutes),
 * whether or not a browser is watching. A read that fails keeps the last error (redacted).
 */
export class Sampler {
  readonly history: RingBuffer<Sample>;
  lastError: string | null = null;
  /** What the relays said at the last sample (their /readyz), in the order given. */
  relays: RelayProbe[] = [];
  readonly #options: SamplerOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<{ sample: Sample; stats: StoreStats }> | undefined;
  /** The last reading, with the store generation it was read in (see `changed`). */
  #latest: { sample: Sample; stats: StoreStats; generation: number } | undefined;
  #generation = 0;
  #lastRecordedAt = -Infinity;
  #lastPublished: { at: number; count: number } | null = null;

  constructor(options: SamplerOptions) {
    this.#options = options;
    this.history = new RingBuffer<Sample>(options.capacity);
  }

  start(): void {
    if (this.#timer) return;
    const tick = () => void this.sample().catch(() => undefined);
    tick();
    this.#timer = setInterval(tick, this.#options.intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /**
   * Fresh stats from the store, recorded in the history unless a sample was recorded less than
   * half an interval ago (pages polling do not crowd the chart); concurrent calls share one read.
   * Rejects when the store does.
   */
  sample(): Promise<{ sample: Sample; stats: StoreStats }> {
    this.#running ??= this.#read().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  /**
   * The last reading while it is younger than `maxAgeMs` and nothing changed the store through this dashboard since
   * it began, else a fresh one. stats() is the read that grows with the backlog (it counts in-flight entries and finds
   * the oldest pending one): pages polling share the sampler's readings, so any number of open pages costs the store
   * one stats() per interval.
   */
  recent(maxAgeMs: number): Promise<{ sample: Sample; stats: StoreStats }> {
    const latest = this.#latest;
    const fresh =
      latest && latest.generation === this.#generation && this.#options.now() - latest.sample.t * 1000 < maxAgeMs;
    return fresh ? Promise.resolve(latest) : this.sample();
  }

  /** The store changed through this dashboard (a requeue or a drop): the next `recent()` reads it again. */
  changed(): void {
    this.#generation += 1;
  }

  async #read(): Promise<{ sample: Sample; stats: StoreStats }> {
    const { now, relays } = this.#options;
    const generation = this.#generation;
    try {
      const read = async () => (await this.#options.store()).stats();
      const [stats, probes] = await Promise.all([read(), Promise.all(relays.map((url) => probeRelay(url, 2_000)))]);
      this.relays = probes;
      const counters = probes.flatMap((probe) => probe.published ?? []);
      // The sum of the counters of the relays that answered (null when none did).
      const published = counters.length === 0 ? null : counters.reduce((sum, n) => sum + n, 0);
      const at = now();
      let publishedPerSecond: number | null = null;
      if (published !== null) {
        const previous = this.#lastPublished;
        // A relay restart resets its counter: no rate for that interval.
        if (previous && published >= previous.count && at > previous.at) {
          publishedPerSecond = ((published - previous.count) * 1000) / (at - previous.at);
        }
        this.#lastPublished = { at, count: published };
      }
      const sample: Sample = {
        t: at / 1000,
        pending: stats.pending,
        inFlight: stats.inFlight,
        dead: stats.dead,
        lagSeconds: stats.oldestPendingAt ? Math.max(0, at - stats.oldestPendingAt.getTime()) / 1000 : 0,
        publishedPerSecond,
      };
      if (at - this.#lastRecordedAt >= this.#options.intervalMs / 2) {
        this.history.push(sample);
        this.#lastRecordedAt = at;
      }
      this.lastError = null;
      this.#latest = { sample, stats, generation };
      return { sample, stats };
    } catch (error) {
      this.lastError = redactText(error instanceof Error ? error.message : String(error));
      throw error;
    }
  }
}
