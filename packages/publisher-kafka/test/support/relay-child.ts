// A relay in its own process, for the E2E test: the parent SIGKILLs it like a crashed pod.
// Env: OUTBOX_PG_URL, OUTBOX_KAFKA_BROKERS, E2E_TABLE, E2E_BATCH, E2E_IN_FLIGHT, E2E_POLL_MS, E2E_LEASE_MS;
// optional E2E_RELAY_ID, E2E_PUBLISH_DELAY_MS, and a Redis leader lock: E2E_LOCK_REDIS_URL,
// E2E_LOCK_NAME, E2E_LOCK_TTL_MS.
// Reports {published: n} / {error: text} over IPC; on "stop" stops gracefully and exits 0.
import { describeError, type LeaderOptions, type OutboxPublisher, OutboxRelay } from "@outbox/core";
import { createRedisLockBackend } from "@outbox/lock-redis";
import { createPostgresStore } from "@outbox/store-postgres";
import { Redis } from "ioredis";
import { Kafka, logLevel } from "kafkajs";
import pg from "pg";
import { createKafkaPublisher } from "../../src/index.js";

const send = (message: unknown) => process.send?.(message);

const pool = new pg.Pool({ connectionString: process.env.OUTBOX_PG_URL, max: 4 });
const store = createPostgresStore({ pool, table: process.env.E2E_TABLE, listen: false, notifyChannel: false });
const kafka = new Kafka({
  clientId: `e2e-relay-${process.pid}`,
  brokers: (process.env.OUTBOX_KAFKA_BROKERS ?? "127.0.0.1:9092").split(","),
  logLevel: logLevel.NOTHING,
});
const kafkaPublisher = createKafkaPublisher(
  { kafka },
  { timeoutMs: Number(process.env.E2E_PUBLISH_TIMEOUT_MS ?? 8_000) },
);
const publishDelayMs = Number(process.env.E2E_PUBLISH_DELAY_MS ?? 0);
// A slow broker keeps claimed batches in flight most of the time (for the takeover test).
const publisher: OutboxPublisher = {
  publish: async (entries, options) => {
    if (publishDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, publishDelayMs));
    return kafkaPublisher.publish(entries, options);
  },
  close: () => kafkaPublisher.close(),
};
const lockRedis = process.env.E2E_LOCK_REDIS_URL
  ? new Redis(process.env.E2E_LOCK_REDIS_URL, { maxRetriesPerRequest: 1, enableOfflineQueue: false })
  : null;
lockRedis?.on("error", () => undefined);
const leader: LeaderOptions | undefined = lockRedis
  ? {
      backend: createRedisLockBackend({ client: lockRedis }),
      name: process.env.E2E_LOCK_NAME ?? "e2e",
      ttlMs: Number(process.env.E2E_LOCK_TTL_MS ?? 3_000),
    }
  : undefined;
const relay = new OutboxRelay({
  ...(process.env.E2E_RELAY_ID ? { id: process.env.E2E_RELAY_ID } : {}),
  ...(leader ? { leader } : {}),
  store,
  publisher,
  batchSize: Number(process.env.E2E_BATCH ?? 100),
  maxInFlightBatches: Number(process.env.E2E_IN_FLIGHT ?? 2),
  pollMs: Number(process.env.E2E_POLL_MS ?? 50),
  leaseMs: Number(process.env.E2E_LEASE_MS ?? 10_000),
  retry: { baseDelayMs: 200, maxDelayMs: 2_000, maxAttempts: 100 },
});
relay.on("published", ({ entries }) => send({ published: entries.length }));
relay.on("retried", () => send({ retried: 1 }));
relay.on("deadLettered", ({ entry, error }) => send({ dead: entry.id, error: describeError(error) }));
relay.on("error", ({ error, phase }) => send({ error: `${phase}: ${describeError(error)}` }));
relay.on("leadershipGained", ({ grant }) => send({ leader: String(grant.token) }));

process.on("message", async (message) => {
  if (message !== "stop") return;
  await relay.stop();
  await publisher.close?.();
  await store.close();
  lockRedis?.disconnect();
  await pool.end();
  send({ stopped: relay.metrics() });
  process.exit(0);
});

relay.start();
send({ started: process.pid });
