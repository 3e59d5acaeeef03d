import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { promisify } from "node:util";
import { uniqueName } from "@outbox/conformance";
import { OutboxHeader } from "@outbox/core";
import { kafkaBrokers, services } from "@outbox/test-support/services";
import { sleep } from "@outbox/test-support/wait";
import { type Admin, type IHeaders, Kafka, type KafkaConfig, logLevel, Partitioners } from "kafkajs";

const run = promisify(execFile);

export const brokers = kafkaBrokers;

export function newKafka(config: Partial<KafkaConfig> = {}): Kafka {
  return new Kafka({ clientId: "outbox-test", brokers, logLevel: logLevel.NOTHING, ...config });
}

export const plainPartitioner = Partitioners.DefaultPartitioner;

export function uniqueTopic(prefix = "outbox-kafka"): string {
  return uniqueName(prefix);
}

/** Creates a topic (3 partitions unless said otherwise) and waits for its leaders. */
export async function createTopic(
  admin: Admin,
  options: { name?: string; partitions?: number; config?: Record<string, string> } = {},
): Promise<string> {
  const topic = options.name ?? uniqueTopic();
  await admin.createTopics({
    waitForLeaders: true,
    topics: [
      {
        topic,
        numPartitions: options.partitions ?? 3,
        replicationFactor: 1,
        configEntries: Object.entries(options.config ?? {}).map(([name, value]) => ({ name, value })),
      },
    ],
  });
  return topic;
}

export interface Received {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  readonly key: string | null;
  readonly payload: Uint8Array;
  readonly headers: Record<string, string>;
  readonly idempotencyKey: string;
}

function headerText(headers: IHeaders | undefined): Record<string, string> {
  const result: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers ?? {})) {
    const single = Array.isArray(value) ? value[value.length - 1] : value;
    if (single === undefined) continue;
    result[name] = typeof single === "string" ? single : single.toString("utf8");
  }
  return result;
}

/**
 * Reads a topic with a real kafkajs consumer (fresh group, from the beginning) until `until`
 * says it has enough, or the deadline passes. Returns what it read, in partition/offset order
 * per partition as delivered.
 */
export async function consume(
  kafka: Kafka,
  topic: string,
  until: (received: readonly Received[]) => boolean,
  timeoutMs: number,
): Promise<Received[]> {
  const consumer = kafka.consumer({ groupId: `outbox-test-${globalThis.crypto.randomUUID()}`, maxWaitTimeInMs: 100 });
  const received: Received[] = [];
  let done!: () => void;
  const finished = new Promise<void>((resolve) => {
    done = resolve;
  });
  const timer = setTimeout(() => done(), timeoutMs);
  try {
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ topic: from, partition, message }) => {
        const headers = headerText(message.headers);
        received.push({
          topic: from,
          partition,
          offset: message.offset,
          key: message.key === null ? null : message.key.toString("utf8"),
          payload: message.value === null ? new Uint8Array(0) : new Uint8Array(message.value),
          headers,
          idempotencyKey: headers[OutboxHeader.IdempotencyKey] ?? "",
        });
        if (until(received)) done();
      },
    });
    if (until(received)) done();
    await finished;
  } finally {
    clearTimeout(timer);
    await consumer.disconnect();
  }
  return received;
}

/** Reads `count` messages, or what arrived within `timeoutMs`. */
export function receive(kafka: Kafka, topic: string, count: number, timeoutMs: number): Promise<Received[]> {
  return consume(kafka, topic, (received) => received.length >= count, timeoutMs);
}

/** Reads the whole topic, up to the high watermarks of the moment it is called. */
export async function readTopic(kafka: Kafka, admin: Admin, topic: string, timeoutMs: number): Promise<Received[]> {
  const offsets = await admin.fetchTopicOffsets(topic);
  const target = new Map(offsets.map((o) => [o.partition, BigInt(o.high)]));
  const total = [...target.values()].reduce((sum, high) => sum + high, 0n);
  const received = await consume(kafka, topic, (received) => BigInt(received.length) >= total, timeoutMs);
  if (BigInt(received.length) < total) {
    throw new Error(`read ${received.length} of ${total} records of ${topic} within ${timeoutMs} ms`);
  }
  return received;
}

// ------------------------------------------------------------------------------------------------
// Kafka's own CLI consumer, from the broker's jars: an independent client.

const libs = `${process.env.OUTBOX_CACHE ?? `${process.env.HOME ?? "/root"}/.cache/outbox`}/kafka-3.9.1/libs`;

export interface ConsoleRecord {
  readonly partition: number;
  readonly key: string | null;
  readonly value: string;
  readonly headers: Record<string, string>;
}

/**
 * Reads `count` records with org.apache.kafka.tools.consumer.ConsoleConsumer. Fields are split
 * with control characters that the test data never contains; values print as raw bytes (UTF-8).
 */
export async function consoleConsume(topic: string, count: number, timeoutMs = 30_000): Promise<ConsoleRecord[]> {
  if (!existsSync(libs)) throw new Error(`Kafka jars not found in ${libs}: run scripts/services.sh start kafka`);
  const FIELD = "\u0001";
  const RECORD = "\u0002\n";
  const { stdout } = await run(
    "java",
    [
      "-XX:TieredStopAtLevel=1",
      "-XX:+UseSerialGC",
      "-cp",
      `${libs}/*`,
      "org.apache.kafka.tools.consumer.ConsoleConsumer",
      "--bootstrap-server",
      brokers[0] as string,
      "--topic",
      topic,
      "--from-beginning",
      "--max-messages",
      String(count),
      "--timeout-ms",
      String(timeoutMs),
      "--property",
      "print.partition=true",
      "--property",
      "print.key=true",
      "--property",
      "print.headers=true",
      "--property",
      "print.value=true",
      "--property",
      `key.separator=${FIELD}`,
      "--property",
      `line.separator=${RECORD}`,
      "--property",
      "headers.separator=\u0003",
      "--property",
      "null.literal=\u0005NULL",
    ],
    { encoding: "utf8", maxBuffer: 64 * 1024 * 1024, timeout: timeoutMs + 30_000 },
  );
  return stdout
    .split(RECORD)
    .filter((line) => line.length > 0)
    .map((line) => {
      // DefaultMessageFormatter order: partition, headers, key, value.
      const [partition, headers, key, value] = line.split(FIELD) as [string, string, string, string];
      const headerMap: Record<string, string> = {};
      if (headers !== "NO_HEADERS") {
        for (const pair of headers.split("\u0003")) {
          // The name/value separator is always ":" (header names here contain none).
          const at = pair.indexOf(":");
          headerMap[pair.slice(0, at)] = pair.slice(at + 1);
        }
      }
      return {
        partition: Number(partition.replace(/^Partition:/, "")),
        key: key === "\u0005NULL" ? null : key,
        value,
        headers: headerMap,
      };
    });
}

// ------------------------------------------------------------------------------------------------
// Faults

/**
 * Cuts every connection between this process and the broker, server side (`ss -K` closes the
 * broker's end of each socket whose peer is one of our local ports), like a broker that drops
 * its clients. Needs root and a kernel with CONFIG_INET_DIAG_DESTROY.
 */
export async function dropConnections(): Promise<number> {
  const port = (brokers[0] as string).split(":")[1] as string;
  const { stdout } = await run("ss", ["-tnpH", "state", "established", `dport = :${port}`]);
  const ours = stdout
    .split("\n")
    .filter((line) => line.includes(`pid=${process.pid},`))
    .map((line) => /:(\d+)\s+\S+:\d+\s/.exec(line)?.[1])
    .filter((local): local is string => local !== undefined);
  if (ours.length === 0) return 0;
  const filter = ours.map((local) => `dport = :${local}`).join(" or ");
  await run("ss", ["-tnK", "state", "established", `( sport = :${port} ) and ( ${filter} )`]);
  return ours.length;
}

const state = process.env.OUTBOX_STATE ?? "/tmp/outbox-services";

function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.split(") ")[1]?.[0] !== "Z";
  } catch {
    return false;
  }
}

/**
 * Crashes the broker started by scripts/services.sh (SIGKILL by default) and starts it again
 * through the script on the SAME log dir (`start kafka --keep-data`), so what was written
 * survives. Returns the milliseconds the broker was unreachable for.
 */
export async function restartBrokerKeepingData(signal: "SIGTERM" | "SIGKILL" = "SIGKILL"): Promise<number> {
  const pid = Number(readFileSync(`${state}/kafka.pid`, "utf8").trim());
  const downAt = Date.now();
  process.kill(pid, signal);
  for (let i = 0; processAlive(pid); i++) {
    if (i > 600) throw new Error(`broker pid ${pid} did not exit`);
    await sleep(100);
  }
  await services("start", "kafka", "--keep-data");
  return Date.now() - downAt;
}

/** Kafka's Produce request (api key 0), read from a request frame: int32 size, then int16 api key. */
const isProduceRequest = (chunk: unknown): boolean =>
  Buffer.isBuffer(chunk) && chunk.length >= 6 && chunk.readInt16BE(4) === 0;

/**
 * A kafkajs `socketFactory` that can fail a publish inside the client, and silence the broker:
 * - `dropProduce(times)`: the next Produce requests the client writes are not sent and their
 *   connection is destroyed (a connection lost mid-publish), `times` times, to outlast kafkajs' own
 *   retries;
 * - `loseProduceAnswers(times)`: the next Produce requests are sent, the broker appends their
 *   records, but the connection is destroyed when the answer arrives, before kafkajs reads it (a
 *   lost response: the producer's sequence numbers no longer match the broker's), `times` times;
 * - `muteNextProduce()`: after the next Produce request, nothing more the broker sends on that
 *   connection reaches kafkajs (a broker that hangs) until `unmute()` delivers it, late. Resolves
 *   once that request was written.
 * Everything else (metadata, InitProducerId...) goes through.
 */
export function faultySockets(): {
  socketFactory: NonNullable<KafkaConfig["socketFactory"]>;
  dropProduce(times: number): void;
  loseProduceAnswers(times: number): void;
  muteNextProduce(): Promise<void>;
  unmute(): void;
} {
  let drops = 0;
  let losses = 0;
  let muteNext: (() => void) | null = null;
  const unmutes = new Set<() => void>();
  return {
    socketFactory: ({ host, port, onConnect }) => {
      const socket = connect({ host, port }, onConnect);
      socket.setKeepAlive(true, 60_000);
      /** What happens to what the broker sends next on this socket. */
      let fate: "lose" | "mute" | null = null;
      const held: Buffer[] = [];
      // kafkajs registers its "data" listener right after the factory returns: wrap it.
      const on = socket.on.bind(socket) as (event: string, listener: (...args: unknown[]) => void) => Socket;
      socket.on = ((event: string, listener: (...args: unknown[]) => void) => {
        if (event !== "data") return on(event, listener);
        const unmute = () => {
          if (fate !== "mute") return;
          fate = null;
          for (const chunk of held.splice(0)) listener(chunk);
        };
        unmutes.add(unmute);
        socket.once("close", () => unmutes.delete(unmute));
        return on("data", (chunk: unknown) => {
          if (fate === "lose") socket.destroy(new Error("connection reset before the Produce answer was read"));
          else if (fate === "mute") held.push(chunk as Buffer);
          else listener(chunk);
        });
      }) as typeof socket.on;
      const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
      socket.write = ((...args: unknown[]) => {
        if (isProduceRequest(args[0])) {
          if (drops > 0) {
            drops -= 1;
            socket.destroy(new Error("connection reset while a Produce request was in flight"));
            return false;
          }
          if (losses > 0) {
            losses -= 1;
            fate = "lose";
          } else if (muteNext) {
            fate = "mute";
            const sent = muteNext;
            muteNext = null;
            queueMicrotask(sent);
          }
        }
        return write(...args);
      }) as typeof socket.write;
      return socket;
    },
    dropProduce(times) {
      drops = times;
    },
    loseProduceAnswers(times) {
      losses = times;
    },
    muteNextProduce() {
      return new Promise<void>((resolve) => {
        muteNext = resolve;
      });
    },
    unmute() {
      muteNext = null;
      for (const unmute of unmutes) unmute();
    },
  };
}
