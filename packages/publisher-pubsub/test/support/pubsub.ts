// The real Pub/Sub fake of scripts/services.sh (Google's pstest), read back by real
// subscriptions with message ordering on, and a TCP proxy to cut a client off.
import { readFileSync } from "node:fs";
import { createServer, type Server, Socket } from "node:net";
import { PubSub, v1 } from "@google-cloud/pubsub";
import type { ReceivedMessage } from "@outbox/conformance";
import { OutboxHeader } from "@outbox/core";
import { services } from "@outbox/test-support/services";
import { waitFor } from "@outbox/test-support/wait";

export const emulatorHost = process.env.OUTBOX_PUBSUB_EMULATOR_HOST ?? "127.0.0.1:8085";
export const projectId = "outbox-test";
const [emulatorAddress, emulatorPortText] = emulatorHost.split(":") as [string, string];
const emulatorPort = Number(emulatorPortText);

/** A client of the fake server (or of `endpoint`, e.g. a proxy in front of it). */
export function newPubSub(endpoint = emulatorHost): PubSub {
  return new PubSub({ projectId, apiEndpoint: endpoint, emulatorMode: true });
}

export function uniqueTopic(prefix = "outbox-test"): string {
  return `${prefix}-${globalThis.crypto.randomUUID().slice(0, 12)}`;
}

/** A message as the subscription delivered it, with Pub/Sub's own fields. */
export interface Delivered extends ReceivedMessage {
  readonly messageId: string;
  readonly orderingKey: string;
  readonly deliveryAttempt: number;
}

interface PulledMessage {
  ackId?: string | null;
  deliveryAttempt?: number | null;
  message?: {
    data?: Uint8Array | string | null;
    attributes?: Record<string, string> | null;
    messageId?: string | null;
    orderingKey?: string | null;
  } | null;
}

function toDelivered(topic: string, pulled: PulledMessage): Delivered {
  const message = pulled.message ?? {};
  const headers = { ...message.attributes };
  const data = message.data ?? new Uint8Array(0);
  return {
    topic,
    key: message.orderingKey ? message.orderingKey : null,
    payload: typeof data === "string" ? new Uint8Array(Buffer.from(data, "base64")) : new Uint8Array(data),
    headers,
    idempotencyKey: headers[OutboxHeader.IdempotencyKey] ?? "",
    messageId: message.messageId ?? "",
    orderingKey: message.orderingKey ?? "",
    deliveryAttempt: pulled.deliveryAttempt ?? 0,
  };
}

/**
 * A topic with one subscription (message ordering on), created before anything is published to
 * it (Pub/Sub delivers only what was published after a subscription exists). `receive` keeps a
 * consumer running and returns everything delivered so far, first delivery per message id (the
 * subscription's own redeliveries are not the publisher's duplicates), in delivery order.
 *
 * The consumer is a synchronous Pull loop (pull, record, acknowledge): with ordering on, each
 * pull returns at most the next message of every key. (The fake's streaming pull hands over
 * about one message per 10 ms tick and stream, too slow for the large tests.)
 */
export class TopicReader {
  readonly delivered: Delivered[] = [];
  readonly #seen = new Set<string>();
  readonly errors: unknown[] = [];
  #loop: Promise<void> | null = null;
  #running = false;
  /** Its own client per consumer: after a server restart, a fresh channel (no reconnect backoff). */
  #client: InstanceType<typeof v1.SubscriberClient> | null = null;

  private constructor(
    readonly pubsub: PubSub,
    readonly topic: string,
  ) {}

  static async create(pubsub: PubSub, topic = uniqueTopic()): Promise<TopicReader> {
    const reader = new TopicReader(pubsub, topic);
    await reader.recreate();
    return reader;
  }

  get subscriptionName(): string {
    return `${this.topic}-sub`;
  }

  /** Creates the topic and its subscription (again, after the in-memory fake was restarted). */
  async recreate(): Promise<void> {
    await this.#stopListening();
    await this.pubsub.createTopic(this.topic);
    await this.pubsub.createSubscription(this.topic, this.subscriptionName, { enableMessageOrdering: true });
  }

  /** Waits until `count` messages arrived or `timeoutMs` passed; returns all delivered so far. */
  async receive(count: number, timeoutMs: number): Promise<Delivered[]> {
    this.#listen();
    const deadline = Date.now() + timeoutMs;
    while (this.delivered.length < count && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    return [...this.delivered];
  }

  /** Waits until `done(delivered)` holds; returns everything delivered so far. */
  async until(done: (delivered: readonly Delivered[]) => boolean, timeoutMs: number): Promise<Delivered[]> {
    this.#listen();
    await waitFor(() => done(this.delivered), timeoutMs, `deliveries on ${this.topic}`, 25);
    return [...this.delivered];
  }

  async close(): Promise<void> {
    await this.#stopListening();
  }

  #listen(): void {
    if (this.#loop) return;
    const client = new v1.SubscriberClient({ ...this.pubsub.options } as ConstructorParameters<
      typeof v1.SubscriberClient
    >[0]);
    this.#client = client;
    this.#running = true;
    const subscription = `projects/${projectId}/subscriptions/${this.subscriptionName}`;
    this.#loop = (async () => {
      while (this.#running) {
        try {
          const [response] = await client.pull({ subscription, maxMessages: 1_000 }, { timeout: 5_000 });
          const received = (response.receivedMessages ?? []) as PulledMessage[];
          for (const pulled of received) {
            const delivered = toDelivered(this.topic, pulled);
            if (this.#seen.has(delivered.messageId)) continue;
            this.#seen.add(delivered.messageId);
            this.delivered.push(delivered);
          }
          const ackIds = received.map((pulled) => pulled.ackId).filter((id): id is string => Boolean(id));
          if (ackIds.length > 0) await client.acknowledge({ subscription, ackIds });
        } catch (error) {
          this.errors.push(error);
          if (this.#running) await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
    })();
  }

  async #stopListening(): Promise<void> {
    this.#running = false;
    const loop = this.#loop;
    const client = this.#client;
    this.#loop = null;
    this.#client = null;
    await loop;
    await client?.close().catch(() => undefined);
  }
}

const stateDir = process.env.OUTBOX_STATE ?? "/tmp/outbox-services";

/** Answers a gRPC call (the fake is up). */
async function answers(pubsub: PubSub): Promise<boolean> {
  await pubsub.getTopics({ gaxOpts: { timeout: 1_000, retry: null } } as never);
  return true;
}

/** SIGKILLs the fake server (scripts/services.sh's pid file) and waits until it is gone. */
export async function killServer(): Promise<void> {
  const pid = Number(readFileSync(`${stateDir}/pubsub.pid`, "utf8").trim());
  process.kill(pid, "SIGKILL");
  await waitFor(
    () => {
      try {
        process.kill(pid, 0);
        return false;
      } catch {
        return true;
      }
    },
    10_000,
    "the killed Pub/Sub fake to exit",
  );
}

/**
 * Starts the fake server again with scripts/services.sh and waits until it answers. It keeps
 * nothing in memory: topics and subscriptions must be created again.
 */
export async function startServer(): Promise<void> {
  await services("start", "pubsub");
  const probe = newPubSub();
  try {
    await waitFor(() => answers(probe), 30_000, "the Pub/Sub fake to answer");
  } finally {
    await probe.close();
  }
}

/**
 * A TCP proxy in front of the fake server, to cut a client off without touching the server:
 * `cut()` resets every connection and refuses new ones until `restore()`; `blackhole()` keeps
 * connections open but forwards nothing either way (a partition) until `restore()`.
 */
export class TcpProxy {
  readonly #server: Server;
  readonly #pairs = new Set<[Socket, Socket]>();
  #refusing = false;
  #holding = false;
  port = 0;

  private constructor() {
    this.#server = createServer((inbound) => this.#accept(inbound));
  }

  static async start(): Promise<TcpProxy> {
    const proxy = new TcpProxy();
    await new Promise<void>((resolve) => proxy.#server.listen(0, "127.0.0.1", resolve));
    const address = proxy.#server.address();
    proxy.port = typeof address === "object" && address ? address.port : 0;
    return proxy;
  }

  get endpoint(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** How many connections are open through the proxy. */
  get connections(): number {
    return this.#pairs.size;
  }

  cut(): number {
    this.#refusing = true;
    const dropped = this.#pairs.size;
    for (const [inbound, outbound] of this.#pairs) {
      inbound.destroy();
      outbound.destroy();
    }
    this.#pairs.clear();
    return dropped;
  }

  blackhole(): void {
    this.#holding = true;
    for (const [inbound, outbound] of this.#pairs) {
      inbound.unpipe(outbound);
      outbound.unpipe(inbound);
      inbound.pause();
      outbound.pause();
    }
  }

  /** Lets traffic through again; blackholed connections are reset (as after a real partition). */
  restore(): void {
    if (this.#holding) this.cut();
    this.#refusing = false;
    this.#holding = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(inbound: Socket): void {
    if (this.#refusing) {
      inbound.destroy();
      return;
    }
    if (this.#holding) {
      inbound.pause();
      this.#pairs.add([inbound, new Socket()]);
      return;
    }
    const outbound = new Socket();
    const pair: [Socket, Socket] = [inbound, outbound];
    this.#pairs.add(pair);
    const drop = () => {
      inbound.destroy();
      outbound.destroy();
      this.#pairs.delete(pair);
    };
    inbound.on("error", drop).on("close", drop);
    outbound.on("error", drop).on("close", drop);
    outbound.connect(emulatorPort, emulatorAddress, () => {
      inbound.pipe(outbound);
      outbound.pipe(inbound);
    });
  }
}
