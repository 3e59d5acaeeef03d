// A relay in its own process, for the E2E test: the parent SIGKILLs it like a crashed pod.
// Env: OUTBOX_PG_URL, E2E_PUBSUB_ENDPOINT, E2E_TABLE, E2E_BATCH, E2E_POLL_MS, E2E_LEASE_MS.
// Reports {published: n} / {error: text} over IPC; on "stop" stops gracefully and exits 0.
import { PubSub } from "@google-cloud/pubsub";
import { describeError, OutboxRelay } from "@outbox/core";
import { createPostgresStore } from "@outbox/store-postgres";
import pg from "pg";
import { createPubSubPublisher } from "../../src/index.js";

const send = (message: unknown) => process.send?.(message);

const pool = new pg.Pool({ connectionString: process.env.OUTBOX_PG_URL, max: 4 });
const store = createPostgresStore({ pool, table: process.env.E2E_TABLE, listen: false, notifyChannel: false });
const pubsub = new PubSub({
  projectId: process.env.E2E_PROJECT_ID ?? "outbox-test",
  apiEndpoint: process.env.E2E_PUBSUB_ENDPOINT,
  emulatorMode: true,
  universeDomain: "googleapis.com",
});
const publisher = createPubSubPublisher({ pubsub, timeoutMs: Number(process.env.E2E_PUBLISH_TIMEOUT_MS ?? 8_000) });
const relay = new OutboxRelay({
  store,
  publisher,
  batchSize: Number(process.env.E2E_BATCH ?? 100),
  pollMs: Number(process.env.E2E_POLL_MS ?? 50),
  leaseMs: Number(process.env.E2E_LEASE_MS ?? 10_000),
  retry: { baseDelayMs: 200, maxDelayMs: 2_000, maxAttempts: 100 },
});
relay.on("published", ({ entries }) => send({ published: entries.length }));
relay.on("retried", () => send({ retried: 1 }));
relay.on("deadLettered", ({ entry, error }) => send({ dead: entry.id, error: describeError(error) }));
relay.on("error", ({ error, phase }) => send({ error: `${phase}: ${describeError(error)}` }));

process.on("message", async (message) => {
  if (message !== "stop") return;
  await relay.stop();
  await publisher.close();
  await pubsub.close();
  await store.close();
  await pool.end();
  send({ stopped: relay.metrics() });
  process.exit(0);
});

relay.start();
send({ started: process.pid });
