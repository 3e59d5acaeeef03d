// The publisher's own logic (waves, run contract, back-pressure, flow control, deadlines) on a
// scripted fake of amqplib's confirm channel. Real-broker behaviour is in publisher.test.ts.
import { EventEmitter } from "node:events";
import { makeEntry } from "@outbox/conformance";
import { type OutboxEntry, OutboxError, OutboxErrorCode, type PublishOutcome } from "@outbox/core";
import { describe, expect, it } from "vitest";
import { AmqpHeader, createRabbitMqPublisher } from "../src/index.js";
import type { AmqpConfirmChannelLike, AmqpConnectionLike, AmqpPublishOptions } from "../src/types.js";

interface Written {
  readonly routingKey: string;
  readonly options: AmqpPublishOptions;
  readonly id: string;
  readonly callback: (error: unknown) => void;
}

type Answer = "ack" | "nack" | "return" | "hold";

/** A confirm channel whose broker answers each message by `answer(written)`, asynchronously. */
class FakeChannel extends EventEmitter implements AmqpConfirmChannelLike {
  readonly written: Written[] = [];
  closed = false;
  /** publish() returns false (buffer full) for these write numbers (0-based). */
  readonly fullAt = new Set<number>();

  constructor(readonly answer: (written: Written) => Answer) {
    super();
  }

  publish(
    _exchange: string,
    routingKey: string,
    _content: Buffer,
    options: AmqpPublishOptions,
    callback: (err: unknown) => void,
  ): boolean {
    if (this.closed) throw new Error("Channel closed");
    const written: Written = { routingKey, options, id: String(options.headers?.[AmqpHeader.Id]), callback };
    const number = this.written.length;
    this.written.push(written);
    const answer = this.answer(written);
    if (answer !== "hold") {
      setImmediate(() => {
        if (this.closed) return;
        if (answer === "return") {
          this.emit("return", {
            fields: { replyCode: 312, replyText: "NO_ROUTE", exchange: "x", routingKey },
            properties: { headers: options.headers },
            content: Buffer.alloc(0),
          });
        }
        callback(answer === "nack" ? new Error("message nacked") : null);
      });
    }
    return !this.fullAt.has(number);
  }

  async checkExchange(): Promise<unknown> {
    return {};
  }

  /** The broker closes the channel: unconfirmed callbacks get "channel closed" (as amqplib does). */
  kill(error?: Error): void {
    if (this.closed) return;
    if (error) this.emit("error", error);
    this.closed = true;
    for (const written of this.written) written.callback(new Error("channel closed"));
    this.emit("close");
  }

  async close(): Promise<void> {
    this.kill();
  }
}

class FakeConnection extends EventEmitter implements AmqpConnectionLike {
  readonly channels: FakeChannel[] = [];
  closeCalls = 0;
  constructor(readonly answer: (written: Written) => Answer = () => "ack") {
    super();
  }
  async createConfirmChannel(): Promise<FakeChannel> {
    const channel = new FakeChannel(this.answer);
    this.channels.push(channel);
    return channel;
  }
  async close(): Promise<void> {
    this.closeCalls++;
  }
}

const statuses = (outcomes: PublishOutcome[]) => outcomes.map((outcome) => outcome.status);
const typeOf = (outcome: PublishOutcome | undefined) =>
  outcome && outcome.status !== "published" ? (outcome.error as OutboxError).details.type : undefined;
const reasonOf = (outcome: PublishOutcome | undefined) =>
  outcome && outcome.status !== "published" ? (outcome.error as OutboxError).details.reason : undefined;

function setup(answer?: (written: Written) => Answer, timeoutMs = 5_000) {
  const connection = new FakeConnection(answer);
  const publisher = createRabbitMqPublisher({ connection, exchange: "x", timeoutMs });
  return { connection, publisher, written: () => connection.channels.flatMap((c) => c.written) };
}

const entry = (key: string | null, topic = "t"): OutboxEntry => makeEntry({ topic, key });

describe("run contract in waves", () => {
  it("a1, a2 (returned), a3, b1: published, permanent, held back, published; a3 never written", async () => {
    const [a1, a2, a3, b1] = [entry("a"), entry("a", "nowhere"), entry("a"), entry("b")] as OutboxEntry[];
    const { publisher, written } = setup((w) => (w.routingKey === "nowhere" ? "return" : "ack"));
    const outcomes = await publisher.publish([a1, a2, a3, b1] as OutboxEntry[]);
    expect(statuses(outcomes)).toEqual(["published", "permanent", "transient", "published"]);
    expect(typeOf(outcomes[1])).toBe("UNROUTABLE");
    expect(reasonOf(outcomes[2])).toBe("held-back");
    expect(written().map((w) => w.id)).toEqual([a1?.id, b1?.id, a2?.id]);
  });

  it("a nack fails its entry transient and holds back the rest of its key only", async () => {
    const es = [entry("a"), entry("a"), entry("a"), entry("b"), entry("b"), entry(null)];
    const nacked = es[1]?.id;
    const { publisher, written } = setup((w) => (w.id === nacked ? "nack" : "ack"));
    const outcomes = await publisher.publish(es);
    expect(statuses(outcomes)).toEqual(["published", "transient", "transient", "published", "published", "published"]);
    expect(typeOf(outcomes[1])).toBe("NACKED");
    expect(reasonOf(outcomes[2])).toBe("held-back");
    expect(written().map((w) => w.id)).not.toContain(es[2]?.id);
  });

  it("writes wave i+1 only after every confirm of wave i", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const held: Written[] = [];
    const { publisher, written } = setup((w) => {
      if (written().length <= 2) {
        held.push(w);
        return "hold";
      }
      return "ack";
    });
    const es = [entry("a"), entry("b"), entry("a")];
    const running = publisher.publish(es);
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(written().map((w) => w.id)).toEqual([es[0]?.id, es[1]?.id]);
    void gate;
    for (const w of held) w.callback(null);
    release();
    expect(statuses(await running)).toEqual(["published", "published", "published"]);
    expect(written().map((w) => w.id)).toEqual(es.map((e) => e.id));
  });

  it("an entry that can never be encoded fails permanent and holds back its key", async () => {
    const { publisher, written } = setup();
    const bad = makeEntry({ topic: "t", key: "a", headers: { ["h".repeat(300)]: "v" } });
    const outcomes = await publisher.publish([bad, entry("a"), entry("b")]);
    expect(statuses(outcomes)).toEqual(["permanent", "transient", "published"]);
    expect(typeOf(outcomes[0])).toBe("HEADER_NAME_TOO_LONG");
    expect(written()).toHaveLength(1);
  });
});

describe("flow control and deadlines", () => {
  it("waits for 'drain' when the channel's write buffer is full", async () => {
    const { connection, publisher, written } = setup();
    await publisher.publish([entry(null)]);
    const channel = connection.channels[0] as FakeChannel;
    channel.fullAt.add(1);
    const running = publisher.publish([entry("a"), entry("b"), entry("c")]);
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(written()).toHaveLength(2);
    channel.emit("drain");
    expect(statuses(await running)).toEqual(["published", "published", "published"]);
    expect(written()).toHaveLength(4);
  });

  it("sends nothing while the broker blocks the connection, and resumes on unblocked", async () => {
    const { connection, publisher, written } = setup();
    connection.emit("blocked", "low on memory");
    const outcomes = await publisher.publish([entry("a"), entry(null)]);
    expect(statuses(outcomes)).toEqual(["transient", "transient"]);
    expect(typeOf(outcomes[0])).toBe("BLOCKED");
    expect(written()).toHaveLength(0);
    connection.emit("unblocked");
    expect(statuses(await publisher.publish([entry("a")]))).toEqual(["published"]);
  });

  it("returns at timeoutMs when confirms never come; confirmed entries stay published", async () => {
    const { publisher } = setup((w) => (w.routingKey === "slow" ? "hold" : "ack"), 200);
    const started = Date.now();
    const outcomes = await publisher.publish([entry("a"), entry("b", "slow"), entry("b")]);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(statuses(outcomes)).toEqual(["published", "transient", "transient"]);
    expect(typeOf(outcomes[1])).toBe("TIMEOUT");
    expect(reasonOf(outcomes[2])).toBe("held-back");
  });

  it("an abort mid-flight reports the unconfirmed transient at once", async () => {
    const { publisher } = setup((w) => (w.routingKey === "slow" ? "hold" : "ack"));
    const controller = new AbortController();
    const running = publisher.publish([entry("a"), entry("b", "slow")], { signal: controller.signal });
    await new Promise((resolve) => setTimeout(resolve, 30));
    controller.abort(new Error("lease ending"));
    const outcomes = await running;
    expect(statuses(outcomes)).toEqual(["published", "transient"]);
    expect(typeOf(outcomes[1])).toBe("ABORTED");
  });

  it("a channel closed under a wave fails its unconfirmed entries transient; the next publish opens a new one", async () => {
    const { connection, publisher } = setup((w) => (w.routingKey === "slow" ? "hold" : "ack"));
    const running = publisher.publish([entry("a", "slow"), entry("a"), entry("b")]);
    await new Promise((resolve) => setTimeout(resolve, 30));
    (connection.channels[0] as FakeChannel).kill(Object.assign(new Error("CONNECTION_FORCED"), { code: 320 }));
    const outcomes = await running;
    expect(statuses(outcomes)).toEqual(["transient", "transient", "published"]);
    expect(typeOf(outcomes[0])).toBe("CHANNEL_CLOSED");
    expect((outcomes[0] as { error: OutboxError }).error.details.replyCode).toBe(320);
    expect(statuses(await publisher.publish([entry("a")]))).toEqual(["published"]);
    expect(connection.channels).toHaveLength(2);
  });

  it("close() waits for the call in flight and never closes the caller's connection", async () => {
    const { connection, publisher } = setup();
    const running = publisher.publish([entry("a")]);
    await publisher.close();
    expect(statuses(await running)).toEqual(["published"]);
    expect(connection.closeCalls).toBe(0);
    expect((connection.channels[0] as FakeChannel).closed).toBe(true);
    const error = await publisher.publish([entry("a")]).catch((caught: unknown) => caught);
    expect(OutboxError.is(error, OutboxErrorCode.Closed)).toBe(true);
  });

  it("validates its options with OUTBOX_INVALID_OPTIONS", () => {
    const connection = new FakeConnection();
    const invalid = [
      {},
      { connection, url: "amqp://x", exchange: "" },
      { connection, exchange: 1 },
      { connection, exchange: "x", timeoutMs: 0 },
      { connection, exchange: "x", routingKey: "rk" },
    ];
    for (const options of invalid) {
      let caught: unknown;
      try {
        createRabbitMqPublisher(options as never);
      } catch (error) {
        caught = error;
      }
      expect(OutboxError.is(caught, OutboxErrorCode.InvalidOptions), JSON.stringify(Object.keys(options))).toBe(true);
    }
  });
});
