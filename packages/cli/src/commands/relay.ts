import { OutboxError, OutboxErrorCode, OutboxRelay, type OutboxRelayOptions, type StoreStats } from "@outbox/core";
import { ExitCode } from "../errors.js";
import type { CliIO } from "../io.js";
import type { Logger } from "../log.js";
import { type BacklogSnapshot, RelayMetrics } from "../metrics.js";
import type { Runtime } from "../runtime.js";
import { ProbeServer } from "../server.js";

export interface RelayCommandOptions {
  port: number;
  host: string;
  statsIntervalMs: number;
  /** /readyz fails when the oldest pending entry is older than this. */
  readyMaxLagMs?: number;
  defaultMetrics: boolean;
  /** Flags that override the config's `relay` settings. */
  overrides: Partial<
    Pick<OutboxRelayOptions, "batchSize" | "pollMs" | "maxInFlightBatches" | "leaseMs" | "drainTimeoutMs" | "id">
  >;
}

/**
 * `outbox relay`: runs the relay until SIGTERM/SIGINT, then stops claiming, waits for the
 * in-flight batches to be published and settled, closes everything and returns 0 (1 when the
 * drain timed out or a second signal forced the exit).
 */
export async function runRelay(
  runtime: Runtime,
  options: RelayCommandOptions,
  io: CliIO,
  logger: Logger,
): Promise<number> {
  const store = await runtime.store();
  const publisher = await runtime.publisher();
  const lock = await runtime.lock();
  const settings = runtime.config.relay ?? {};
  const { leader: leaderSettings, ...relaySettings } = settings;

  let backlog: BacklogSnapshot = { stats: null, ok: false };
  let fence: { lock: string; token: bigint } | null = null;
  let draining = false;
  let drainTimedOut = false;
  let relay: OutboxRelay | null = null;

  const lagMs = (stats: StoreStats | null) =>
    stats?.oldestPendingAt ? Math.max(0, io.now() - stats.oldestPendingAt.getTime()) : 0;
  const readiness = () => {
    const reasons: string[] = [];
    if (draining) reasons.push("draining");
    if (!relay?.running && !draining) reasons.push("relay not running");
    if (!backlog.ok) reasons.push(backlog.stats ? "store stats failing" : "store not reached yet");
    if (options.readyMaxLagMs !== undefined && lagMs(backlog.stats) > options.readyMaxLagMs)
      reasons.push("lag above --ready-max-lag");
    return reasons;
  };

  const metrics = new RelayMetrics({
    backlog: () => backlog,
    fence: () => fence,
    ready: () => readiness().length === 0,
    now: io.now,
    defaultMetrics: options.defaultMetrics,
  });

  relay = new OutboxRelay({
    ...relaySettings,
    ...Object.fromEntries(Object.entries(options.overrides).filter(([, value]) => value !== undefined)),
    store,
    publisher: metrics.timePublisher(publisher),
    leader: lock ? { backend: lock, ...leaderSettings } : undefined,
  });
  const running = relay;
  metrics.attach(running);
  const log = logger;

  running.on("published", ({ entries }) => {
    if (!log.enabled("debug")) return;
    log.debug("published", { count: entries.length, firstId: entries[0]?.id, lastId: entries.at(-1)?.id });
  });
  running.on("retried", ({ entry, error, availableAt }) =>
    log.warn("entry will be retried", {
      entryId: entry.id,
      topic: entry.topic,
      key: entry.key,
      attempts: entry.attempts,
      availableAt,
      error,
    }),
  );
  running.on("deadLettered", ({ entry, error, reason }) =>
    log.error("entry dead-lettered", {
      entryId: entry.id,
      topic: entry.topic,
      key: entry.key,
      attempts: entry.attempts,
      reason,
      error,
    }),
  );
  running.on("leadershipGained", ({ grant }) => {
    fence = { lock: grant.name, token: grant.token };
    log.info("leadership gained", { lock: grant.name, fenceToken: grant.token });
  });
  running.on("leadershipLost", ({ grant, reason }) => {
    fence = null;
    log.warn("leadership lost", {
      lock: grant.name,
      fenceToken: grant.token,
      reason: reason === "stopped" ? "stopped" : reason,
    });
  });
  running.on("error", ({ error, phase }) => {
    metrics.error(phase);
    if (OutboxError.is(error, OutboxErrorCode.DrainTimeout)) drainTimedOut = true;
    log.error("relay error", { phase, error });
  });

  // Backlog figures for /readyz and the gauges: polled, so a scrape never waits on the store.
  const poller = new AbortController();
  const pollStats = async () => {
    while (!poller.signal.aborted) {
      try {
        const stats = await running.backlog();
        if (!backlog.ok && backlog.stats) log.info("store stats reachable again");
        backlog = { stats, ok: true };
      } catch (error) {
        if (backlog.ok || !backlog.stats) log.warn("store stats failed", { error });
        backlog = { stats: backlog.stats, ok: false };
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, options.statsIntervalMs);
        poller.signal.addEventListener("abort", () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  };

  const server = new ProbeServer({
    healthz: () => ({
      ok: !draining && running.running,
      body: { status: !draining && running.running ? "ok" : "stopping", relayId: running.id },
    }),
    readyz: () => {
      const reasons = readiness();
      const stats = backlog.stats;
      const relayMetrics = running.metrics();
      return {
        ok: reasons.length === 0,
        body: {
          ready: reasons.length === 0,
          reasons,
          relayId: running.id,
          leader: relayMetrics.leader,
          leaderElection: lock !== undefined,
          fence: fence ? { lock: fence.lock, token: fence.token.toString() } : null,
          lagSeconds: lagMs(stats) / 1000,
          pending: stats?.pending ?? null,
          inFlight: stats?.inFlight ?? null,
          dead: stats?.dead ?? null,
          oldestPendingAt: stats?.oldestPendingAt?.toISOString() ?? null,
          published: relayMetrics.published,
          lastPublishedAt: relayMetrics.lastPublishedAt?.toISOString() ?? null,
          consecutiveFailures: relayMetrics.consecutiveFailures,
        },
      };
    },
    metrics: async () => ({ contentType: metrics.registry.contentType, body: await metrics.metrics() }),
  });

  let address: { port: number; address: string };
  try {
    address = await server.listen(options.port, options.host);
  } catch (error) {
    log.error("cannot listen for probes", { host: options.host, port: options.port, error });
    await runtime.close();
    return ExitCode.Failure;
  }

  let resolveSignal!: (signal: NodeJS.Signals) => void;
  const signalled = new Promise<NodeJS.Signals>((resolve) => {
    resolveSignal = resolve;
  });
  let forced!: () => void;
  const forcedExit = new Promise<"forced">((resolve) => {
    forced = () => resolve("forced");
  });
  const stopListening = io.onSignal((signal) => {
    if (!draining) {
      draining = true;
      resolveSignal(signal);
    } else {
      log.error("second signal: exiting without finishing the drain", { signal });
      forced();
    }
  });

  const polling = pollStats();
  running.start();
  log.info("relay started", {
    relayId: running.id,
    config: runtime.source.kind === "file" ? runtime.source.path : "environment",
    host: address.address,
    port: address.port,
    leaderElection: lock !== undefined,
    batchSize: options.overrides.batchSize ?? relaySettings.batchSize ?? 32,
    maxInFlightBatches: options.overrides.maxInFlightBatches ?? relaySettings.maxInFlightBatches ?? 2,
  });

  const signal = await signalled;
  log.info("draining", { signal, inFlight: backlog.stats?.inFlight ?? null });
  const outcome = await Promise.race([running.stop().then(() => "stopped" as const), forcedExit]);
  stopListening();
  if (outcome === "forced") return ExitCode.Failure;
  poller.abort();
  await polling;
  await runtime.close();
  await server.close();
  const final = running.metrics();
  log.info("stopped", {
    drained: !drainTimedOut,
    published: final.published,
    retried: final.retried,
    deadLettered: final.deadLettered,
    errors: final.errors,
  });
  return drainTimedOut ? ExitCode.Failure : ExitCode.Ok;
}
