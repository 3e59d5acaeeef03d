import { machineLine } from "@outbox/test-support/bench";
import type { MongoClient } from "mongodb";

export interface BenchServer {
  name: string;
  url: string;
}

/**
 * The MongoDB-wire servers of scripts/services.sh: FerretDB (PostgreSQL backend) and
 * mongo-java-server. OUTBOX_BENCH_SERVERS=ferretdb or =mongo-java runs one of them.
 */
export function benchServers(): BenchServer[] {
  const all: BenchServer[] = [
    { name: "ferretdb", url: process.env.OUTBOX_MONGODB_URL ?? "mongodb://127.0.0.1:27017" },
    { name: "mongo-java", url: process.env.OUTBOX_MONGO_JAVA_URL ?? "mongodb://127.0.0.1:27018" },
  ];
  const wanted = (process.env.OUTBOX_BENCH_SERVERS ?? "ferretdb,mongo-java").split(",").map((s) => s.trim());
  return all.filter((server) => wanted.includes(server.name));
}

export function machine(): string {
  return machineLine();
}

export async function describeServer(client: MongoClient): Promise<string> {
  const info = await client.db("admin").command({ buildInfo: 1 });
  if (info.ferretdbVersion) {
    const version = info.ferretdbVersion === "unknown" ? "1.24.2 (embedded)" : info.ferretdbVersion;
    // buildInfo does not name FerretDB's backend: scripts/services.sh starts it on PostgreSQL.
    return `FerretDB ${version}`;
  }
  return `MongoDB-wire server reporting version ${info.version}`;
}

/** The q-quantile (0..1) of `values`, nearest rank. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] as number;
}

export const median = (values: number[]): number => quantile(values, 0.5);
