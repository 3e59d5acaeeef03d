// The RabbitMQ publisher next to raw amqplib confirm-channel publishing (the ceiling): same data,
// same broker, same run. Every message goes to a fresh durable quorum queue (fsync'ed confirms).
//
//   pnpm --filter @outbox/publisher-rabbitmq bench      (server: scripts/services.sh start rabbitmq)
//   BENCH_ROWS=10000 BENCH_HOT_ROWS=2000 BENCH_REPS=3 BENCH_BATCH=100 pnpm bench
//
// raw streamed: per batch, every message written, then `waitForConfirms()` (one round trip).
// raw one-by-one: each message's confirm awaited before the next (what one hot key costs anyway).
// publisher: `publish(batch)` with the batch's keys spread over K distinct keys: K = batch size
// is one wave per batch, K = 10 is batch/10 waves, K = 1 (one hot key) is one wave per entry.
import { randomBytes } from "node:crypto";
import type { OutboxEntry } from "@outbox/core";
import { machineLine, median } from "@outbox/test-support/bench";
import amqplib from "amqplib";
import { createRabbitMqPublisher, encodeMessage } from "../src/index.js";

const ROWS = Number(process.env.BENCH_ROWS ?? 10_000);
const HOT_ROWS = Number(process.env.BENCH_HOT_ROWS ?? 2_000);
const REPS = Number(process.env.BENCH_REPS ?? 3);
const BATCH = Number(process.env.BENCH_BATCH ?? 100);
const PAYLOAD = 1_024;
const url = process.env.OUTBOX_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";
const EXCHANGE = "outbox.bench";

const payloads = Array.from({ length: 64 }, () => randomBytes(PAYLOAD));
const admin = await amqplib.connect(url);
const adminChannel = await admin.createChannel();
await adminChannel.assertExchange(EXCHANGE, "direct", { durable: true });

async function newQueue(): Promise<string> {
  const queue = `outbox-bench-${globalThis.crypto.randomUUID().slice(0, 8)}`;
  await adminChannel.assertQueue(queue, { durable: true, arguments: { "x-queue-type": "quorum" } });
  await adminChannel.bindQueue(queue, EXCHANGE, queue);
  return queue;
}

function entries(queue: string, rows: number, keys: number): OutboxEntry[] {
  const now = new Date();
  return Array.from({ length: rows }, (_, n) => ({
    id: String(n + 1),
    topic: queue,
    key: `key-${n % keys}`,
    payload: payloads[n % payloads.length] as Uint8Array,
    headers: {},
    idempotencyKey: `idem-${n + 1}`,
    createdAt: now,
    availableAt: now,
    attempts: 1,
    lastError: null,
  }));
}

async function timed(rows: number, run: (queue: string) => Promise<void>): Promise<number> {
  const queue = await newQueue();
  try {
    const started = performance.now();
    await run(queue);
    return rows / ((performance.now() - started) / 1_000);
  } finally {
    await adminChannel.deleteQueue(queue);
  }
}

/** Raw amqplib: the same messages (properties and headers as the publisher builds them). */
function raw(rows: number, streamed: boolean): Promise<number> {
  return timed(rows, async (queue) => {
    const connection = await amqplib.connect(url);
    const channel = await connection.createConfirmChannel();
    const limits = { maxMessageBytes: 134_217_728, maxPropertiesBytes: 65_536 };
    const all = entries(queue, rows, BATCH).map((entry) => encodeMessage(entry, queue, limits));
    try {
      for (let start = 0; start < rows; start += BATCH) {
        for (const message of all.slice(start, start + BATCH)) {
          if ("type" in message) throw new Error(message.message);
          if (streamed) {
            if (!channel.publish(EXCHANGE, message.routingKey, message.content, message.options)) {
              await new Promise((resolve) => channel.once("drain", resolve));
            }
          } else {
            await new Promise<void>((resolve, reject) =>
              channel.publish(EXCHANGE, message.routingKey, message.content, message.options, (error) =>
                error ? reject(error) : resolve(),
              ),
            );
          }
        }
        if (streamed) await channel.waitForConfirms();
      }
    } finally {
      await channel.close();
      await connection.close();
    }
  });
}

function publisher(rows: number, keys: number): Promise<number> {
  const p = createRabbitMqPublisher({ url, exchange: EXCHANGE });
  return timed(rows, async (queue) => {
    const all = entries(queue, rows, keys);
    await p.publish([all[0] as OutboxEntry]); // the first publish connects (timed too)
    for (let start = 1; start < rows; start += BATCH) {
      const outcomes = await p.publish(all.slice(start, start + BATCH));
      if (outcomes.some((o) => o.status !== "published")) throw new Error("not all published");
    }
  }).finally(() => p.close());
}

const modes: Array<[string, () => Promise<number>]> = [
  ["raw amqplib, streamed batch + waitForConfirms", () => raw(ROWS, true)],
  [`publisher, ${BATCH} distinct keys per batch (1 wave)`, () => publisher(ROWS, BATCH)],
  [`publisher, 10 keys per batch (${BATCH / 10} waves)`, () => publisher(ROWS, 10)],
  ["raw amqplib, one confirm awaited per message", () => raw(HOT_ROWS, false)],
  [`publisher, one hot key (${BATCH} waves per batch)`, () => publisher(HOT_ROWS, 1)],
];
console.log(
  `RabbitMQ publisher bench: ${ROWS} x ${PAYLOAD} B (hot key and one-by-one: ${HOT_ROWS}), batch ${BATCH}, quorum queue, ` +
    `median of ${REPS}; ${machineLine()}`,
);
const results = new Map<string, number[]>();
for (let rep = 0; rep < REPS; rep++) {
  for (const [name, run] of modes) {
    const list = results.get(name) ?? [];
    list.push(await run());
    results.set(name, list);
  }
}
const ceiling = median(results.get(modes[0]?.[0] as string) as number[]);
for (const [name] of modes) {
  const value = median(results.get(name) as number[]);
  console.log(
    `${name.padEnd(58)} ${Math.round(value).toString().padStart(7)} msg/s  ${(value / ceiling).toFixed(2)}x raw`,
  );
}
await adminChannel.close();
await admin.close();
