import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

/** Connection settings of scripts/services.sh's servers (vitest loads scripts/services.env). */
export const pgUrl = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
export const redisUrl = process.env.OUTBOX_REDIS_URL ?? "redis://127.0.0.1:6379";
export const kafkaBrokers = (process.env.OUTBOX_KAFKA_BROKERS ?? "127.0.0.1:9092").split(",");
export const mysqlUrl = process.env.OUTBOX_MYSQL_URL ?? "mysql://outbox:outbox@127.0.0.1:3306/outbox_test";
export const amqpUrl = process.env.OUTBOX_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";
export const etcdHosts = (process.env.OUTBOX_ETCD_HOSTS ?? "127.0.0.1:2379").split(",");
/** `host:port` of Google's Pub/Sub fake. */
export const pubsubHost = process.env.OUTBOX_PUBSUB_EMULATOR_HOST ?? "127.0.0.1:8085";
/** FerretDB 1.24 on PostgreSQL (MongoDB wire protocol; scripts/services.sh). */
export const mongoUrl = process.env.OUTBOX_MONGODB_URL ?? "mongodb://127.0.0.1:27017";
/** mongo-java-server: a second MongoDB-wire server, in memory (scripts/services.sh). */
export const mongoJavaUrl = process.env.OUTBOX_MONGO_JAVA_URL ?? "mongodb://127.0.0.1:27018";

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
