import { OutboxRelay, type OutboxRelayOptions, type OutboxStore } from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import type { Queryable } from "@outbox/store-postgres";
import { machineLine, percentiles } from "@outbox/test-support/bench";
import type pg from "pg";

export { percentiles };

/** The machine, Node and the server's durability settings, as every figure must be quoted with them. */
export async function describeMachine(pool: pg.Pool): Promise<string> {
  const settings = await pool.query(
    "SELECT current_setting('fsync') AS fsync, current_setting('synchronous_commit') AS sc, version() AS version",
  );
  const { fsync, sc, version } = settings.rows[0] as { fsync: string; sc: string; version: string };
  return [
    machineLine(),
    `PostgreSQL: ${version.split(" on ")[0]}, fsync=${fsync}, synchronous_commit=${sc}`,
    ...(fsync === "on" ? [] : ["WARNING: fsync is off: these figures are not from a durable setup"]),
  ].join("\n");
}

export async function inTransaction(pool: pg.Pool, work: (tx: Queryable) => Promise<unknown>): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await work(client);
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}

/**
 * Commit -> publish latency of single-entry transactions enqueued at `rate` per second for
 * `seconds`, through a relay on `store` (closed at the end). Milliseconds.
 */
export async function commitToPublish(
  pool: pg.Pool,
  store: OutboxStore<Queryable>,
  options: {
    rate: number;
    seconds: number;
    payload: Uint8Array;
    warmUpMs: number;
    relay?: Partial<OutboxRelayOptions>;
  },
): Promise<{ p50: number; p99: number; max: number; n: number }> {
  const committedAt = new Map<string, number>();
  const latencies: number[] = [];
  const relay = new OutboxRelay({
    store: store as OutboxStore<never>,
    publisher: new MemoryPublisher(),
    ...options.relay,
  });
  relay.on("error", ({ error }) => console.error(error));
  relay.on("published", ({ entries }) => {
    const now = performance.now();
    for (const entry of entries) {
      const at = committedAt.get(entry.id);
      if (at !== undefined) latencies.push(now - at);
    }
  });
  relay.start();
  await new Promise((resolve) => setTimeout(resolve, options.warmUpMs));
  const total = options.rate * options.seconds;
  const start = performance.now();
  for (let i = 0; i < total; i++) {
    const wait = start + (i * 1000) / options.rate - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      const [id] = await store.enqueue(client, { topic: "latency", key: `k${i % 50}`, payload: options.payload });
      await client.query("COMMIT");
      committedAt.set(id as string, performance.now());
    } finally {
      client.release();
    }
  }
  const deadline = performance.now() + 10_000;
  while (latencies.length < total && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await relay.stop();
  await store.close();
  // A publish may land before the producer recorded its commit time: those are not measured.
  return { ...percentiles(latencies.filter((l) => l >= 0)), n: latencies.length };
}

/**
 * Seconds for a relay (in-memory publisher) to publish `count` entries: the clock stops at the
 * `published` event, which the relay emits once the store has recorded the ack.
 */
export async function relayDrain(
  store: OutboxStore<never>,
  count: number,
  options: Partial<OutboxRelayOptions> = {},
): Promise<number> {
  const relay = new OutboxRelay({ store, publisher: new MemoryPublisher(), ...options });
  relay.on("error", ({ error }) => console.error(error));
  const done = new Promise<void>((resolve) => {
    let published = 0;
    relay.on("published", ({ entries }) => {
      published += entries.length;
      if (published >= count) resolve();
    });
  });
  const start = performance.now();
  relay.start();
  await done;
  const seconds = (performance.now() - start) / 1000;
  await relay.stop();
  return seconds;
}
