import type { InboxStore } from "@outbox/inbox";
import { type CliIO, writeJson } from "../io.js";
import { purgeInSlices } from "./purge.js";

export interface InboxPurgeOptions {
  olderThanMs: number;
  batchSize: number;
  /** Time slices the range is purged in (the progress bar's resolution). */
  steps: number;
  progress: boolean;
  json: boolean;
}

export interface InboxPurgeReport {
  readonly deleted: number;
  readonly olderThan: Date;
  readonly from: Date;
  readonly steps: number;
  readonly durationMs: number;
}

/**
 * `outbox inbox purge`: deletes the processed keys recorded before now - olderThan, of every consumer (the store's
 * `purge`, as `inbox.purge()` does), and stale attempt counters; dead letters stay. Walked in time slices like
 * `outbox purge`, for its progress bar.
 */
export async function inboxPurge(
  store: InboxStore<unknown>,
  options: InboxPurgeOptions,
  io: CliIO,
): Promise<InboxPurgeReport> {
  const started = io.now();
  const cutoff = new Date(started - options.olderThanMs);
  // The oldest key's time would take a read of every consumer's keys (stats()): the walk starts one retention
  // period before the cutoff instead, and its first slice takes every older key.
  const from = cutoff.getTime() - Math.max(options.olderThanMs, 3_600_000);
  const deleted = await purgeInSlices(
    { label: "inbox purge", before: "recorded before", from, cutoff, steps: options.steps, rows: null },
    (olderThan) => store.purge({ olderThan, batchSize: options.batchSize }),
    options,
    io,
  );
  const report: InboxPurgeReport = {
    deleted,
    olderThan: cutoff,
    from: new Date(from),
    steps: options.steps,
    durationMs: io.now() - started,
  };
  if (options.json) writeJson(io.stdout, report);
  else
    io.stdout.write(
      `purged ${deleted} processed keys (every consumer) recorded before ${cutoff.toISOString()} in ${report.durationMs} ms\n`,
    );
  return report;
}
