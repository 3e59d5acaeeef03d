// The README quick start (between the markers; a fresh schema here for isolation), run against the real server.
import { expect, it } from "vitest";
import { freshSchema, pgUrl } from "./helpers.js";

it("README quick start (pg)", async () => {
  const schema = freshSchema("readme");
  process.env.DATABASE_URL = pgUrl;
  // README:start
  const { MemoryPublisher, OutboxRelay } = await import("@outbox/core");
  const { createPostgresStore, migrate } = await import("@outbox/store-postgres");
  const { default: pg } = await import("pg");

  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
  await migrate(pool, { schema }); // idempotent: run it at startup or from your migrations
  const store = createPostgresStore({ pool, schema });

  // In your business transaction:
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    // ... your own writes on `client` ...
    await store.enqueue(client, { topic: "orders", key: "order-42", payload: JSON.stringify({ id: 42 }) });
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK");
    throw error;
  } finally {
    client.release();
  }

  // In the relay process:
  const publisher = new MemoryPublisher(); // e.g. createKafkaPublisher({ producer }) in production
  const relay = new OutboxRelay({ store, publisher });
  relay.on("error", ({ error, phase }) => console.error(phase, error));
  relay.start();
  // ... on shutdown:
  // await relay.stop(); await store.close(); await pool.end();
  // README:end
  try {
    const deadline = Date.now() + 5_000;
    while (publisher.messages.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(publisher.messages.map((m) => m.key)).toEqual(["order-42"]);
  } finally {
    await relay.stop();
    await store.close();
    await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    await pool.end();
  }
});
