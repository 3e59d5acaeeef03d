// The real Pub/Sub fake of scripts/services.sh (Google's pstest), read back by real
// subscriptions with message ordering on. (The TCP proxy that cuts a client off is
// @outbox/test-support/tcp-proxy.)
import { readFileSync } from "node:fs";
import { PubSub, v1 } from "@google-cloud/pubsub";
import type { ReceivedMessage } from "@outbox/conformance";
import { OutboxHeader } from "@outbox/core";
import { services } from "@outbox/test-support/services";
import { waitFor } from "@outbox/test-support/wait";

export const emulatorHost = process.env.OUTBOX_PUBSUB_EMULATOR_HOST ?? "127.0.0.1:8085";
export const projectId = "outbox-test";

/**
 * A client of the fake server (or of `endpoint`, e.g. a proxy in front of it). The project id and the
 * universe domain given, the client never asks Google's metadata server for either.
 */
export function newPubSub(endpoint = emulatorHost): PubSub {
  return new PubSub({ projectId, apiEndpoint: endpoint, emulatorMode: true, universeDomain: "googleapis.com" });
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
 * consumer running and returns everything delivered so far, first delivery per message id of the
 * current subscription (its own redeliveries are not the publisher's duplicates), in delivery order.
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

  /**
   * Creates the topic and its subscription (again, after the in-memory fake was restarted). A
   * restarted fake numbers its message ids from "m0" again, so ids seen before say nothing about
   * the new ones: redeliveries are recognised per server (per subscription) only.
   */
  async recreate(): Promise<void> {
    await this.#stopListening();
    this.#seen.clear();
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
  async until(
    done: (delivered: readonly Delivered[]) => boolean,
    timeoutMs: number,
    what = `deliveries on ${this.topic}`,
  ): Promise<Delivered[]> {
    this.#listen();
    await waitFor(() => done(this.delivered), timeoutMs, what, 25);
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
