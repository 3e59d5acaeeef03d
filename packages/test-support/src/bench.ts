// What every benchmark prints its figures with: the host line, medians and percentiles.
import { execFileSync } from "node:child_process";
import { cpus, totalmem } from "node:os";

function cpuModel(): string {
  try {
    const out = execFileSync("lscpu", { encoding: "utf8" });
    return /Model name:\s*(.+)/.exec(out)?.[1]?.trim() ?? cpus()[0]?.model ?? "unknown";
  } catch {
    return cpus()[0]?.model ?? "unknown";
  }
}

/** "Machine: <cpu>, <n> cores, <m> GiB; Node <version>": every figure is quoted with it. */
export function machineLine(): string {
  return `Machine: ${cpuModel()}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB; Node ${process.version}`;
}

/** Nearest-rank p50, p99 and the maximum (NaN when there are no values). */
export function percentiles(values: readonly number[]): { p50: number; p99: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
  return { p50: at(0.5), p99: at(0.99), max: sorted.at(-1) ?? Number.NaN };
}

/** The middle value (the upper one of an even count). */
export function median(values: readonly number[]): number {
  return [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] as number;
}
