import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

/** Connection settings of scripts/services.sh's servers (vitest loads scripts/services.env). */
export const pgUrl = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
export const redisUrl = process.env.OUTBOX_REDIS_URL ?? "redis://127.0.0.1:6379";
export const kafkaBrokers = (process.env.OUTBOX_KAFKA_BROKERS ?? "127.0.0.1:9092").split(",");

const servicesScript = fileURLToPath(new URL("../../../scripts/services.sh", import.meta.url));

/** Runs `bash scripts/services.sh <args>`, e.g. `services("restart", "redis")`. */
export async function services(...args: string[]): Promise<void> {
  try {
    await promisify(execFile)("bash", [servicesScript, ...args], { timeout: 180_000 });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? "";
    throw new Error(`services.sh ${args.join(" ")} failed: ${stderr}`, { cause: error });
  }
}
