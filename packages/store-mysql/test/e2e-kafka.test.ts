// End to end on real servers: MariaDB store -> OutboxRelay -> @outbox/publisher-kafka -> Apache
// Kafka -> a kafkajs consumer. Mid-way the relay's MariaDB connections are killed.
import { OutboxHeader, OutboxRelay } from "@outbox/core";
import { createKafkaPublisher, ensureTopics } from "@outbox/publisher-kafka";
import { Kafka, logLevel } from "kafkajs";
import { expect, it } from "vitest";
import { createMySqlStore, migrate } from "../src/index.js";
import { createPool, freshTable, killConnections, waitFor } from "./helpers.js";

const ENTRIES = 5_000;
const KEYS = 50;
const BATCH = 100;
const brokers = (process.env.OUTBOX_KAFKA_BROKERS ?? "127.0.0.1:9092").split(",");

it(`delivers ${ENTRIES} entries over ${KEYS} keys from MariaDB to Kafka in per-key order, through KILL CONNECTION`, async () => {
  const table = freshTable("e2e");
  const admin = createPool({ connectionLimit: 2 });
  const pool = createPool({ connectionLimit: 4 });
  const kafka = new Kafka({ clientId: "outbox-mysql-e2e", brokers, logLevel: logLevel.NOTHING });
  const kafkaAdmin = kafka.admin();
  await kafkaAdmin.connect();
  const topic = `outbox-mysql-e2e-${table}`;
  const store = createMySqlStore({ pool, table });
  const publisher = createKafkaPublisher({ kafka });
  const relay = new OutboxRelay({ store, publisher, batchSize: BATCH, pollMs: 50, leaseMs: 5_000 });
  const relayErrors: unknown[] = [];
  relay.on("error", ({ error }) => relayErrors.push(error));
  const consumer = kafka.consumer({ groupId: `outbox-mysql-e2e-${table}`, maxWaitTimeInMs: 100 });
  const received: Array<{ partition: number; offset: bigint; key: string; seq: number; idem: string }> = [];
  try {
    await migrate(admin, { table });
    await ensureTopics(kafkaAdmin, [topic], { partitions: 3 });
    for (let start = 0; start < ENTRIES; start += 1_000) {
      await store.transaction((tx) =>
        store.enqueue(
          tx,
          Array.from({ length: 1_000 }, (_, i) => {
            const n = start + i;
            return {
              topic,
              key: `key-${n % KEYS}`,
              payload: JSON.stringify({ n }),
              headers: { "x-seq": String(Math.floor(n / KEYS)) },
              idempotencyKey: `e2e-${n}`,
            };
          }),
        ),
      );
    }
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        received.push({
          partition,
          offset: BigInt(message.offset),
          key: String(message.key),
          seq: Number(message.headers?.["x-seq"]?.toString()),
          idem: String(message.headers?.[OutboxHeader.IdempotencyKey]?.toString()),
        });
      },
    });
    relay.start();
    await waitFor(() => relay.metrics().published >= ENTRIES / 2, 60_000, "half published");
    const killed = await killConnections(admin, [...pool.threadIds]);
    await waitFor(
      async () => {
        const stats = await store.stats();
        return stats.pending === 0;
      },
      120_000,
      "the outbox to drain",
    );
    const distinct = () => new Set(received.map((r) => r.idem)).size;
    await waitFor(() => distinct() === ENTRIES, 60_000, "every entry at the consumer");
    const lastSeq = new Map<string, number>();
    const seen = new Set<string>();
    const violations: string[] = [];
    for (const r of [...received].sort((a, b) => a.partition - b.partition || (a.offset < b.offset ? -1 : 1))) {
      if (seen.has(r.idem)) continue;
      seen.add(r.idem);
      const previous = lastSeq.get(r.key) ?? -1;
      if (r.seq !== previous + 1) violations.push(`${r.key}: seq ${r.seq} after ${previous}`);
      lastSeq.set(r.key, r.seq);
    }
    const duplicates = received.length - seen.size;
    console.log(
      `[e2e mysql->kafka] received ${received.length}, distinct ${seen.size}, duplicates ${duplicates}, ` +
        `connections killed ${killed}, relay errors ${relayErrors.length}`,
    );
    expect(violations).toEqual([]);
    expect(killed).toBeGreaterThan(0);
    expect(duplicates).toBeLessThanOrEqual(2 * BATCH);
  } finally {
    await relay.stop();
    await consumer.disconnect();
    await publisher.close();
    await store.close();
    await kafkaAdmin.deleteTopics({ topics: [topic] }).catch(() => undefined);
    await kafkaAdmin.disconnect();
    await admin.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\``);
    await admin.end();
    await pool.end();
  }
}, 300_000);
