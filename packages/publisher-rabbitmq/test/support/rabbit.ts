import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { ReceivedMessage } from "@outbox/conformance";
import { services } from "@outbox/test-support/services";
import { waitFor } from "@outbox/test-support/wait";
import amqplib from "amqplib";
import { decodeMessage } from "../../src/index.js";
import type { AmqpConnectionLike } from "../../src/types.js";

const run = promisify(execFile);

/** A fresh name per test (the kit's uniqueName, without loading the kit in the bench). */
export const uniqueName = (prefix: string): string => `${prefix}-${globalThis.crypto.randomUUID().slice(0, 8)}`;

/** scripts/services.env (loaded by vitest.shared.ts) sets it; the default is the same server. */
export const amqpUrl = process.env.OUTBOX_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";

/** The direct exchange the tests publish to; each test binds its own quorum queue(s). */
export const TEST_EXCHANGE = "outbox.test";

/** A connection with an "error" listener (server-side closes are expected in these tests). */
export async function connect(): Promise<amqplib.ChannelModel> {
  const connection = await amqplib.connect(amqpUrl);
  connection.on("error", () => undefined);
  return connection;
}

/** amqplib's ChannelModel as the publisher's structural type (the @types declarations are looser). */
export const asConnection = (connection: amqplib.ChannelModel): AmqpConnectionLike =>
  connection as unknown as AmqpConnectionLike;

/** Runs `work` on a fresh channel of a fresh connection, then closes both. */
export async function withChannel<T>(work: (channel: amqplib.Channel) => Promise<T>): Promise<T> {
  const connection = await connect();
  try {
    const channel = await connection.createChannel();
    channel.on("error", () => undefined);
    return await work(channel);
  } finally {
    await connection.close().catch(() => undefined);
  }
}

export interface QueueOptions {
  exchange?: string;
  /** Extra queue arguments, e.g. `{ "x-max-length": 2, "x-overflow": "reject-publish" }`. */
  arguments?: Record<string, unknown>;
  type?: "quorum" | "classic";
}

/**
 * Declares the test exchange and a fresh durable queue (quorum by default) bound to it with the
 * queue's own name as routing key. Returns the name: entries with that topic land in it.
 */
export async function createQueue(options: QueueOptions = {}): Promise<string> {
  const exchange = options.exchange ?? TEST_EXCHANGE;
  const queue = uniqueName("outbox-rmq");
  await withChannel(async (channel) => {
    await channel.assertExchange(exchange, "direct", { durable: true });
    await channel.assertQueue(queue, {
      durable: true,
      arguments: { "x-queue-type": options.type ?? "quorum", ...options.arguments },
    });
    await channel.bindQueue(queue, exchange, queue);
  });
  return queue;
}

export function deleteQueue(queue: string): Promise<unknown> {
  return withChannel((channel) => channel.deleteQueue(queue)).catch(() => undefined);
}

export type Received = ReceivedMessage & { readonly id: string; readonly redelivered: boolean };

/**
 * A real consumer of test queues. It acks what it reads and keeps it, so that a queue can be
 * "read from the beginning" again (the kit's relay checks read a destination several times):
 * `receive` returns everything this reader ever got from the queue, in delivery order.
 */
export class QueueReader {
  readonly #seen = new Map<string, Received[]>();

  async receive(queue: string, count: number, timeoutMs: number): Promise<Received[]> {
    const seen = this.#seen.get(queue) ?? [];
    this.#seen.set(queue, seen);
    if (seen.length >= count) return [...seen];
    const connection = await connect();
    try {
      const channel = await connection.createChannel();
      channel.on("error", () => undefined);
      await channel.prefetch(1_000);
      let done!: () => void;
      const finished = new Promise<void>((resolve) => {
        done = resolve;
      });
      const timer = setTimeout(done, timeoutMs);
      const { consumerTag } = await channel.consume(queue, (message) => {
        if (!message) return done();
        const decoded = decodeMessage(message);
        seen.push({ ...decoded, redelivered: message.fields.redelivered });
        channel.ack(message);
        if (seen.length >= count) done();
      });
      await finished;
      clearTimeout(timer);
      // Cancel, then close the channel before the connection: amqplib multiplexes channels, and
      // a connection.close written while acks still sit in the channel's buffer overtakes them
      // (the broker would requeue what we read).
      await channel.cancel(consumerTag);
      await channel.close();
    } finally {
      await connection.close().catch(() => undefined);
    }
    return [...seen];
  }
}

// ------------------------------------------------------------------------------------------------
// Faults, through the broker's own tooling.

export async function rabbitmqctl(...args: string[]): Promise<string> {
  const { stdout } = await run("rabbitmqctl", ["-q", ...args], {
    env: { ...process.env, ERL_EPMD_ADDRESS: "127.0.0.1" },
    timeout: 60_000,
  });
  return stdout;
}

/** Closes every client connection server-side (CONNECTION_FORCED), like an operator or a failover would. */
export function closeAllConnections(reason = "outbox test fault"): Promise<string> {
  return rabbitmqctl("close_all_connections", reason);
}

/** The broker's current memory high watermark (a fraction of RAM). */
export async function memoryWatermark(): Promise<string> {
  const out = await rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().");
  return out.trim();
}

/** Sets the memory high watermark: a tiny value raises the memory alarm, which blocks publishers. */
export function setMemoryWatermark(value: string): Promise<string> {
  return rabbitmqctl("set_vm_memory_high_watermark", value);
}

/** Whether a memory alarm is in effect on the node. */
export async function memoryAlarmOn(): Promise<boolean> {
  const out = await rabbitmqctl("eval", "rabbit_alarm:get_alarms().");
  return out.includes("memory");
}

/** Stops the broker with scripts/services.sh, then starts it again (durable queues and persistent messages survive). */
export async function restartBroker(whileDown?: () => Promise<void>): Promise<void> {
  await services("stop", "rabbitmq");
  try {
    await whileDown?.();
  } finally {
    await services("start", "rabbitmq");
    await waitFor(async () => (await connect().then((c) => c.close().then(() => true))) === true, 60_000);
  }
}
