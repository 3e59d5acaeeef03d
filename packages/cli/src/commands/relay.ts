import { OutboxError, OutboxErrorCode, OutboxRelay, type OutboxRelayOptions } from "@outbox/core";
import { classifyError, ExitCode } from "../errors.js";
import type { CliIO } from "../io.js";
import type { Logger } from "../log.js";
import { type BacklogSnapshot, RelayMetrics } from "../metrics.js";
import { notReadyReasons, PublishHealth, readyzBody } from "../readiness.js";
import type { Runtime } from "../runtime.js";
import { ProbeServer } from "../server.js";
import { logRelayEvents } from "./relay-events.js";

export interface RelayCommandOptions {
  port: number;
  host: string;
  statsIntervalMs: number;
  /** /readyz fails when the oldest pending entry is older than this (undefined: never). */
  readyMaxLagMs?: number;
  /** /readyz fails after this many failed publish attempts (or claim cycles) in a row (undefined: never). */
  readyMaxFailures?: number;
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

  const publishHealth = new PublishHealth(io.now);
  const readiness = () =>
    notReadyReasons({
      draining,
      running: relay?.running === true,
      backlog,
      claimFailures: relay?.metrics().consecutiveFailures ?? 0,
      publish: publishHealth,
      now: io.now(),
      maxLagMs: options.readyMaxLagMs,
      maxFailures: options.readyMaxFailures,
    });

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
    publisher: publishHealth.wrap(metrics.timePublisher(publisher)),
    leader: lock ? { backend: lock, ...leaderSettings } : undefined,
  });
  const running = relay;
  metrics.attach(running);
  const log = logger;

  logRelayEvents(running, log, {
    onLeadership: (grant) => {
      fence = grant ? { lock: grant.name, token: grant.token } : null;
    },
    onError: (error, phase) => {
      metrics.error(phase);
      if (OutboxError.is(error, OutboxErrorCode.DrainTimeout)) drainTimedOut = true;
    },
  });

  // Readiness changes are logged as they are noticed (at each stats poll), with the reasons.
  let lastReadiness: string | undefined;
  const logReadiness = () => {
    if (draining) return;
    const reasons = readiness();
    const codes = reasons.map((reason) => reason.code).join(",");
    if (codes === lastReadiness) return;
    lastReadiness = codes;
    if (reasons.length === 0) log.info("ready");
    else log.warn("not ready", { reasons });
  };

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
      logReadiness();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, options.statsIntervalMs);
        poller.signal.addEventListener("abort", () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  };

  // A configuration problem (the table missing, a URL the driver rejects) ends the start with
  // exit 2 and a hint, instead of a relay that retries it forever; an outage does not.
  try {
    backlog = { stats: await store.stats(), ok: true };
  } catch (error) {
    const classified = classifyError(error, runtime.origin(), "relay");
    if (classified !== error) throw classified;
    log.warn("store stats failed", { error });
  }

  const server = new ProbeServer({
    healthz: () => ({
      ok: !draining && running.running,
      body: { status: !draining && running.running ? "ok" : "stopping", relayId: running.id },
    }),
    readyz: () => {
      const reasons = readiness();
      return {
        ok: reasons.length === 0,
        body: readyzBody({
          reasons,
          maxLagMs: options.readyMaxLagMs,
          maxFailures: options.readyMaxFailures,
          relayId: running.id,
          relay: running.metrics(),
          leaderElection: lock !== undefined,
          fence,
          stats: backlog.stats,
          now: io.now(),
          publish: publishHealth,
        }),
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

  const stopWarnings = io.onWarning((warning) => log.warn("process warning", warningFields(warning)));
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
  if (outcome === "forced") {
    stopWarnings();
    return ExitCode.Failure;
  }
  poller.abort();
  await polling;
  await runtime.close();
  await server.close();
  stopWarnings();
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

/**
 * A process warning as log fields. kafkajs 2.2.4 sets a negative timeout on every connection
 * (its RequestQueue computes `throttledUntil - Date.now()` with `throttledUntil` still -1, its
 * "never throttled" value; tulios/kafkajs#1751), which Node 24 reports as a
 * TimeoutNegativeWarning once per process: harmless (Node uses 1 ms), and said so.
 */
export function warningFields(warning: Error): Record<string, unknown> {
  const fields: Record<string, unknown> = {
    warning: { name: warning.name, message: warning.message, code: (warning as { code?: unknown }).code },
  };
  if (warning.name === "TimeoutNegativeWarning" && /kafkajs/.test(warning.stack ?? "")) {
    fields.note = "kafkajs schedules a timer with a negative delay (tulios/kafkajs#1751); harmless";
  }
  return fields;
}
