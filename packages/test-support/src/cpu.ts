// CPU time spent by the processes a benchmark drives (this Node process, PostgreSQL's backends,
// the Kafka JVM, ...), so a bench can print CPU per entry next to its rate and say which
// process bounds it on the machine at hand. Linux only (/proc); elsewhere the readings are null.
import { readdirSync, readFileSync } from "node:fs";

/** Linux reports process CPU in clock ticks of 1/100 s (USER_HZ) on every common build. */
const microsPerTick = 10_000;

/** CPU time in µs used so far by all live processes whose command name is one of `names`. */
export function processCpuMicros(names: readonly string[]): Map<string, number> | null {
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((entry) => /^\d+$/.test(entry));
  } catch {
    return null;
  }
  const totals = new Map(names.map((name) => [name, 0]));
  for (const pid of pids) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    } catch {
      continue; // exited meanwhile
    }
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ")".
    const close = stat.lastIndexOf(")");
    const comm = stat.slice(stat.indexOf("(") + 1, close);
    if (!totals.has(comm)) continue;
    const fields = stat.slice(close + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]); // utime + stime
    totals.set(comm, (totals.get(comm) ?? 0) + ticks * microsPerTick);
  }
  return totals;
}

export interface CpuUse {
  /** This Node process, all threads. */
  node: number;
  /** Per process name; empty where /proc is missing. */
  others: Map<string, number>;
}

/** Starts a reading; the returned function gives the CPU µs spent since, per process. */
export function measureCpu(names: readonly string[]): () => CpuUse {
  const node0 = process.cpuUsage();
  const others0 = processCpuMicros(names);
  return () => {
    const node = process.cpuUsage(node0);
    const others1 = processCpuMicros(names);
    const others = new Map<string, number>();
    if (others0 && others1)
      for (const name of names) others.set(name, (others1.get(name) ?? 0) - (others0.get(name) ?? 0));
    return { node: node.user + node.system, others };
  };
}
