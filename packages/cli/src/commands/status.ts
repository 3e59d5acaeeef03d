import type { CaptureStats, OutboxStore, StoreStats } from "@outbox/core";
import { type CliIO, formatAge, formatBytes, writeJson, writeTable } from "../io.js";
import { probeRelay, type RelayProbe } from "../relay-probe.js";

export interface StatusReport {
  readonly pending: number;
  readonly inFlight: number;
  readonly dead: number;
  readonly oldestPendingAt: Date | null;
  readonly lagSeconds: number;
  /** Log-capture stores only: where the slot stands. */
  readonly capture?: CaptureStats;
  readonly relays: RelayProbe[];
  /** The relay that says it leads (with its fence), when relays were probed. */
  readonly leader: { relayId: string | undefined; url: string; fence: RelayProbe["fence"] } | null;
}

export async function status(
  store: OutboxStore<never>,
  options: { relays: string[]; timeoutMs: number; json: boolean },
  io: CliIO,
): Promise<StatusReport> {
  const [stats, relays] = await Promise.all([
    store.stats() as Promise<StoreStats>,
    Promise.all(options.relays.map((url) => probeRelay(url, options.timeoutMs))),
  ]);
  const lagMs = stats.oldestPendingAt ? Math.max(0, io.now() - stats.oldestPendingAt.getTime()) : 0;
  const leading = relays.find((relay) => relay.reachable && relay.leader && relay.leaderElection);
  const report: StatusReport = {
    pending: stats.pending,
    inFlight: stats.inFlight,
    dead: stats.dead,
    oldestPendingAt: stats.oldestPendingAt,
    lagSeconds: lagMs / 1000,
    ...(stats.capture ? { capture: stats.capture } : {}),
    relays,
    leader: leading ? { relayId: leading.relayId, url: leading.url, fence: leading.fence ?? null } : null,
  };
  if (options.json) {
    writeJson(io.stdout, report);
    return report;
  }
  const out = io.stdout;
  out.write(`pending      ${stats.pending}\n`);
  out.write(`in flight    ${stats.inFlight}\n`);
  out.write(`dead         ${stats.dead}\n`);
  out.write(
    `oldest lag   ${stats.oldestPendingAt ? `${formatAge(lagMs)} (since ${stats.oldestPendingAt.toISOString()})` : "- (nothing pending)"}\n`,
  );
  if (stats.capture) out.write(`capture      ${describeCapture(stats.capture)}\n`);
  if (relays.length > 0) {
    out.write(
      `leader       ${leading ? `${leading.relayId ?? "?"} at ${leading.url}, fence ${leading.fence ? `${leading.fence.lock}#${leading.fence.token}` : "-"}` : "none of the probed relays leads"}\n\n`,
    );
    writeTable(
      out,
      ["RELAY URL", "ID", "READY", "LEADER", "FENCE"],
      relays.map((relay) =>
        relay.reachable
          ? [
              relay.url,
              relay.relayId ?? "-",
              relay.ready ? "yes" : "no",
              relay.leaderElection ? (relay.leader ? "yes" : "no") : "n/a (no election)",
              relay.fence ? `${relay.fence.lock}#${relay.fence.token}` : "-",
            ]
          : [relay.url, "-", "unreachable", "-", relay.error ?? "-"],
      ),
    );
  } else {
    out.write("leader       (pass --relay <url> to ask running relays who leads)\n");
  }
  return report;
}

/** `slot outbox_slot (reserved, active): 1.2 MiB behind, 16.0 MiB of WAL retained`. */
export function describeCapture(capture: CaptureStats): string {
  const where = `slot ${capture.source} (${capture.state}, ${capture.active ? "active" : "no consumer"})`;
  if (capture.lagBytes === null || capture.retainedBytes === null)
    return `${where}: entries committed since are in the table only; see docs/capture-modes.md`;
  return `${where}: ${formatBytes(capture.lagBytes)} behind, ${formatBytes(capture.retainedBytes)} of WAL retained`;
}
