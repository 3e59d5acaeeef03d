import { redact, redactText } from "./redact.js";

export interface OutputStream {
  write(text: string): unknown;
  readonly isTTY?: boolean;
  readonly columns?: number;
}

/** Everything a command touches outside itself, so tests can run commands in-process. */
export interface CliIO {
  stdout: OutputStream;
  stderr: OutputStream;
  env: Record<string, string | undefined>;
  cwd: string;
  now: () => number;
  /** Calls `listener` on SIGTERM/SIGINT; returns a function that stops listening. */
  onSignal: (listener: (signal: NodeJS.Signals) => void) => () => void;
  /**
   * Sends process warnings (`process.emitWarning`, Node's own) to `listener` instead of Node's
   * default stderr printer, so a JSON log stays JSON; returns a function that restores it.
   */
  onWarning: (listener: (warning: Error) => void) => () => void;
}

export function processIO(): CliIO {
  return {
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
    cwd: process.cwd(),
    now: Date.now,
    onSignal(listener) {
      const signals: NodeJS.Signals[] = ["SIGTERM", "SIGINT"];
      for (const signal of signals) process.on(signal, listener);
      return () => {
        for (const signal of signals) process.off(signal, listener);
      };
    },
    onWarning(listener) {
      // Node prints warnings through a 'warning' listener of its own (onWarning); set it aside.
      const printers = process.listeners("warning");
      for (const printer of printers) process.off("warning", printer);
      process.on("warning", listener);
      return () => {
        process.off("warning", listener);
        for (const printer of printers) process.on("warning", printer);
      };
    },
  };
}

/** JSON for scripts: bigints as text, dates as ISO strings, strings redacted. */
export function writeJson(stream: OutputStream, value: unknown): void {
  stream.write(`${JSON.stringify(redact(value))}\n`);
}

/** A plain text table, columns padded; cells are redacted and cut at `max` characters. */
export function writeTable(
  stream: OutputStream,
  headers: readonly string[],
  rows: ReadonlyArray<readonly string[]>,
  max = 60,
): void {
  const cut = (text: string) => {
    const clean = redactText(text).replaceAll(/\s+/g, " ");
    return clean.length > max ? `${clean.slice(0, max - 1)}…` : clean;
  };
  const cells = [headers, ...rows].map((row) => row.map(cut));
  const widths = headers.map((_, column) => Math.max(...cells.map((row) => row[column]?.length ?? 0)));
  for (const row of cells) {
    stream.write(
      `${row
        .map((cell, column) => cell.padEnd(widths[column] ?? 0))
        .join("  ")
        .trimEnd()}\n`,
    );
  }
}

export function formatAge(ms: number | null): string {
  if (ms === null) return "-";
  const seconds = Math.max(0, ms / 1000);
  if (seconds < 1) return `${Math.round(ms)}ms`;
  if (seconds < 120) return `${seconds.toFixed(1)}s`;
  if (seconds < 7_200) return `${(seconds / 60).toFixed(1)}m`;
  if (seconds < 172_800) return `${(seconds / 3600).toFixed(1)}h`;
  return `${(seconds / 86_400).toFixed(1)}d`;
}

/** 512 B, 1.5 KiB, 16.0 MiB, 2.1 GiB. */
export function formatBytes(bytes: number): string {
  const units = ["KiB", "MiB", "GiB", "TiB"];
  if (bytes < 1024) return `${Math.round(bytes)} B`;
  let value = bytes;
  let unit = "B";
  for (const next of units) {
    if (value < 1024) break;
    value /= 1024;
    unit = next;
  }
  return `${value.toFixed(1)} ${unit}`;
}
