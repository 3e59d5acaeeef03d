import type { OutboxEntry, OutboxPublisher, OutboxRelay, PublishOptions, StoreStats } from "@outbox/core";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/** Every metric name the relay exports (besides prom-client's default process_* and nodejs_* metrics). */
export const metricNames = {
  published: "outbox_published_total",
  retried: "outbox_retried_total",
  deadLettered: "outbox_dead_lettered_total",
  claimed: "outbox_claimed_total",
  errors: "outbox_relay_errors_total",
  publishDuration: "outbox_publish_duration_seconds",
  deliveryLatency: "outbox_delivery_latency_seconds",
  backlog: "outbox_backlog_entries",
  lag: "outbox_lag_seconds",
  captureLag: "outbox_capture_lag_bytes",
  captureRetained: "outbox_capture_retained_bytes",
  storeUp: "outbox_store_up",
  leader: "outbox_leader",
  fenceToken: "outbox_fence_token",
  consecutiveFailures: "outbox_relay_consecutive_failures",
  ready: "outbox_ready",
} as const;

export interface BacklogSnapshot {
  readonly stats: StoreStats | null;
  /** Whether the last stats() call succeeded. */
  readonly ok: boolean;
}

export interface RelayMetricsOptions {
  backlog: () => BacklogSnapshot;
  fence: () => { lock: string; token: bigint } | null;
  ready: () => boolean;
  now?: () => number;
  defaultMetrics?: boolean;
}

/** The relay's Prometheus registry: counters from relay events, gauges read at scrape time. */
export class RelayMetrics {
  readonly registry = new Registry();
  readonly #publishDuration: Histogram<"outcome">;
  readonly #deliveryLatency: Histogram;
  readonly #published: Counter;
  readonly #retried: Counter;
  readonly #deadLettered: Counter<"reason">;
  readonly #errors: Counter<"phase">;
  readonly #now: () => number;
  #relay: OutboxRelay | null = null;

  constructor(options: RelayMetricsOptions) {
    const registers = [this.registry];
    const now = options.now ?? Date.now;
    this.#now = now;
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    this.#published = new Counter({
      name: metricNames.published,
      help: "Entries acked after the broker confirmed them.",
      registers,
    });
    this.#retried = new Counter({
      name: metricNames.retried,
      help: "Entries scheduled for another attempt after a transient failure.",
      registers,
    });
    this.#deadLettered = new Counter({
      name: metricNames.deadLettered,
      help: "Entries moved to the dead letters (reason: permanent, attempts-exhausted).",
      labelNames: ["reason"],
      registers,
    });
    this.#errors = new Counter({
      name: metricNames.errors,
      help: "Errors the relay reported, by phase (lock, claim, publish, settle, wake-up, stop, listener).",
      labelNames: ["phase"],
      registers,
    });
    let claimedSeen = 0;
    const relayMetrics = () => this.#relay?.metrics();
    new Counter({
      name: metricNames.claimed,
      help: "Entries claimed from the store (a claim counts an attempt).",
      registers,
      collect() {
        const claimed = relayMetrics()?.claimed ?? 0;
        if (claimed > claimedSeen) this.inc(claimed - claimedSeen);
        claimedSeen = claimed;
      },
    });
    this.#publishDuration = new Histogram({
      name: metricNames.publishDuration,
      help: "Duration of one publisher.publish() call (one batch to the broker), by outcome (ok: resolved, error: threw).",
      labelNames: ["outcome"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.#deliveryLatency = new Histogram({
      name: metricNames.deliveryLatency,
      help: "From an entry becoming available (its availableAt, normally its commit) to its ack.",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600],
      registers,
    });
    new Gauge({
      name: metricNames.backlog,
      help: "Entries in the store by state (pending includes in_flight), from the last stats poll.",
      labelNames: ["state"],
      registers,
      collect() {
        const { stats } = options.backlog();
        if (!stats) return;
        this.set({ state: "pending" }, stats.pending);
        this.set({ state: "in_flight" }, stats.inFlight);
        this.set({ state: "dead" }, stats.dead);
      },
    });
    new Gauge({
      name: metricNames.lag,
      help: "Age of the oldest pending entry (0 when none), from the last stats poll.",
      registers,
      collect() {
        const { stats } = options.backlog();
        if (!stats) return;
        this.set(stats.oldestPendingAt ? Math.max(0, (now() - stats.oldestPendingAt.getTime()) / 1000) : 0);
      },
    });
    // Log-capture stores only; labelled by source so a polling store leaves the series absent.
    new Gauge({
      name: metricNames.captureLag,
      help: "Log-capture stores: log bytes written since the position the store last confirmed (its slot's lag), by source.",
      labelNames: ["source", "state"],
      registers,
      collect() {
        this.reset();
        const capture = options.backlog().stats?.capture;
        if (capture?.lagBytes != null) this.set({ source: capture.source, state: capture.state }, capture.lagBytes);
      },
    });
    new Gauge({
      name: metricNames.captureRetained,
      help: "Log-capture stores: log bytes the database keeps on disk for the store's slot, by source.",
      labelNames: ["source", "state"],
      registers,
      collect() {
        this.reset();
        const capture = options.backlog().stats?.capture;
        if (capture?.retainedBytes != null)
          this.set({ source: capture.source, state: capture.state }, capture.retainedBytes);
      },
    });
    new Gauge({
      name: metricNames.storeUp,
      help: "1 when the last stats poll of the store succeeded.",
      registers,
      collect() {
        this.set(options.backlog().ok ? 1 : 0);
      },
    });
    new Gauge({
      name: metricNames.leader,
      help: "1 when this relay may drain (leader, or no leader election configured).",
      registers,
      collect() {
        this.set(relayMetrics()?.leader ? 1 : 0);
      },
    });
    // Labelled by lock: prom-client writes an unlabelled gauge as 0 even after reset(), and 0
    // would read as a token. With a label and no value set, the series is absent.
    new Gauge({
      name: metricNames.fenceToken,
      help: "The fencing token of this relay's current leadership, by lock (absent when not leading or without election).",
      labelNames: ["lock"],
      registers,
      collect() {
        this.reset();
        const fence = options.fence();
        if (fence) this.set({ lock: fence.lock }, Number(fence.token));
      },
    });
    new Gauge({
      name: metricNames.consecutiveFailures,
      help: "Claim cycles failed in a row (0 when the last one succeeded).",
      registers,
      collect() {
        this.set(relayMetrics()?.consecutiveFailures ?? 0);
      },
    });
    new Gauge({
      name: metricNames.ready,
      help: "1 when /readyz answers 200.",
      registers,
      collect() {
        this.set(options.ready() ? 1 : 0);
      },
    });
  }

  /** Counts the relay's events from now on (published, retried, dead-lettered). */
  attach(relay: OutboxRelay): void {
    this.#relay = relay;
    relay.on("published", ({ entries }) => {
      this.#published.inc(entries.length);
      const at = this.#now();
      for (const entry of entries) this.#deliveryLatency.observe(Math.max(0, at - startOf(entry)) / 1000);
    });
    relay.on("retried", () => this.#retried.inc());
    relay.on("deadLettered", ({ reason }) => this.#deadLettered.inc({ reason }));
  }

  /** Counts an error event (the relay's own `error` events). */
  error(phase: string): void {
    this.#errors.inc({ phase });
  }

  /** A publisher that times each publish() call into outbox_publish_duration_seconds. */
  timePublisher(publisher: OutboxPublisher): OutboxPublisher {
    const histogram = this.#publishDuration;
    return {
      capabilities: publisher.capabilities,
      async publish(entries: readonly OutboxEntry[], options?: PublishOptions) {
        const end = histogram.startTimer();
        try {
          const outcomes = await publisher.publish(entries, options);
          end({ outcome: "ok" });
          return outcomes;
        } catch (error) {
          end({ outcome: "error" });
          throw error;
        }
      },
      close: publisher.close ? () => publisher.close?.() ?? Promise.resolve() : undefined,
    };
  }

  metrics(): Promise<string> {
    return this.registry.metrics();
  }
}

function startOf(entry: OutboxEntry): number {
  return Math.max(entry.createdAt.getTime(), entry.availableAt.getTime());
}
