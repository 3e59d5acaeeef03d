import type { OutboxStore } from "@outbox/core";
import cliProgress from "cli-progress";
import type { PurgeEstimate } from "../config.js";
import { type CliIO, writeJson } from "../io.js";

export interface PurgeOptions {
  olderThanMs: number;
  batchSize: number;
  /** Time slices the range is purged in (the progress bar's resolution). */
  steps: number;
  progress: boolean;
  json: boolean;
  estimate?: (olderThan: Date) => Promise<PurgeEstimate>;
}

export interface PurgeReport {
  readonly deleted: number;
  readonly olderThan: Date;
  readonly from: Date;
  readonly steps: number;
  readonly estimatedRows: number | null;
  readonly durationMs: number;
}

/**
 * `outbox purge`: deletes published and dead entries settled before now - olderThan (pending
 * entries never go). The store's `purge` already works in bounded batches; the CLI walks the time
 * range from the oldest settled entry to the cutoff in `steps` slices, one `purge` per slice, so
 * it can report progress: in rows when the config gives a `purgeEstimate`, else in time.
 */
export async function purge(store: OutboxStore<never>, options: PurgeOptions, io: CliIO): Promise<PurgeReport> {
  const started = io.now();
  const cutoff = new Date(started - options.olderThanMs);
  let estimate: PurgeEstimate | null = null;
  if (options.estimate) {
    try {
      estimate = await options.estimate(cutoff);
    } catch (error) {
      // With --json, stderr carries only the error document.
      if (!options.json)
        io.stderr.write(
          `purge: the estimate failed, showing progress in time only (${error instanceof Error ? error.message : String(error)})\n`,
        );
    }
  }
  let from: number;
  if (estimate) {
    from = estimate.oldest ? Math.min(estimate.oldest.getTime(), cutoff.getTime()) : cutoff.getTime();
  } else {
    // Without an estimate the oldest settle time is unknown: start one retention period before
    // the cutoff (or at the oldest dead entry, when older). The first slice takes all older rows.
    const [oldestDead] = await store.listDead({ limit: 1 });
    from = Math.min(
      cutoff.getTime() - Math.max(options.olderThanMs, 3_600_000),
      oldestDead?.createdAt.getTime() ?? Infinity,
    );
  }
  const span = cutoff.getTime() - from;
  const steps = span <= 0 || estimate?.rows === 0 ? 1 : options.steps;
  const deleted = await purgeInSlices(
    { label: "purge", before: "settled before", from, cutoff, steps, rows: estimate === null ? null : estimate.rows },
    (olderThan) => store.purge({ olderThan, batchSize: options.batchSize }),
    options,
    io,
  );

  const report: PurgeReport = {
    deleted,
    olderThan: cutoff,
    from: new Date(from),
    steps,
    estimatedRows: estimate?.rows ?? null,
    durationMs: io.now() - started,
  };
  if (options.json) writeJson(io.stdout, report);
  else io.stdout.write(`purged ${deleted} entries settled before ${cutoff.toISOString()} in ${report.durationMs} ms\n`);
  return report;
}

/** A purge walked in time slices: from `from` to `cutoff` (ms and a Date), `steps` of them. */
export interface PurgeSlices {
  /** The bar's name: "purge", "inbox purge". */
  readonly label: string;
  /** What the slice's time bounds: "settled before", "recorded before". */
  readonly before: string;
  readonly from: number;
  readonly cutoff: Date;
  readonly steps: number;
  /** Rows expected in all: the bar counts rows. Null: it counts time slices. */
  readonly rows: number | null;
}

/**
 * Runs `purgeBefore` once per slice end (the last one the cutoff), drawing a progress bar on a terminal (stderr;
 * never with --json or --no-progress). Returns the rows deleted.
 */
export async function purgeInSlices(
  slices: PurgeSlices,
  purgeBefore: (olderThan: Date) => Promise<number>,
  options: { progress: boolean; json: boolean },
  io: CliIO,
): Promise<number> {
  const { label, before, from, cutoff, steps } = slices;
  const span = cutoff.getTime() - from;
  const rowsMode = slices.rows !== null;
  const bar =
    options.progress && !options.json && io.stderr.isTTY
      ? new cliProgress.SingleBar(
          {
            stream: io.stderr as NodeJS.WritableStream,
            format: rowsMode
              ? `${label} |{bar}| {percentage}% | {value}/{total} rows | ETA {eta_formatted} | ${before} {slice}`
              : `${label} |{bar}| {percentage}% of the time range | {deleted} rows | ${before} {slice}`,
            hideCursor: true,
            clearOnComplete: false,
            etaBuffer: 20,
          },
          cliProgress.Presets.shades_classic,
        )
      : null;
  const total = rowsMode ? Math.max(slices.rows ?? 0, 1) : steps;
  bar?.start(total, 0, { deleted: 0, slice: new Date(from).toISOString() });

  let deleted = 0;
  let barTotal = total;
  for (let step = 1; step <= steps; step++) {
    const sliceEnd = step === steps ? cutoff : new Date(from + Math.round((span * step) / steps));
    deleted += await purgeBefore(sliceEnd);
    if (bar) {
      if (rowsMode && deleted > barTotal) {
        barTotal = deleted;
        bar.setTotal(barTotal);
      }
      bar.update(rowsMode ? (step === steps ? barTotal : deleted) : step, { deleted, slice: sliceEnd.toISOString() });
    }
  }
  bar?.stop();
  return deleted;
}
