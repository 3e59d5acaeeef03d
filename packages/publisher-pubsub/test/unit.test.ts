// The publisher's own logic against a scripted client that behaves like @google-cloud/pubsub's
// Topic with message ordering: a failed message pauses its ordering key, and the client refuses
// (PublishError) every later message of that key until resumePublishing(key).
import { makeEntry } from "@outbox/conformance";
import { type OutboxError, OutboxErrorCode, type PublishOutcome } from "@outbox/core";
import { describe, expect, it } from "vitest";
import {
  createPubSubPublisher,
  GrpcStatus,
  type PubSubClientLike,
  type PubSubMessage,
  type PubSubPublisherOptions,
  type PubSubTopicLike,
} from "../src/index.js";

const statuses = (outcomes: PublishOutcome[]) => outcomes.map((outcome) => outcome.status);
const errorOf = (outcome: PublishOutcome | undefined) => (outcome as { error: OutboxError }).error;
const grpcError = (code: number) => Object.assign(new Error(`${code} scripted`), { code });
const idOf = (message: PubSubMessage) => message.attributes["outbox-id"] as string;

class PublishError extends Error {
  readonly code: unknown;
  constructor(
    readonly orderingKey: string,
    readonly error: Error & { code?: unknown },
  ) {
    super(`Unable to publish for key "${orderingKey}". Reason: ${error.message}`);
    this.code = error.code;
  }
}

type Respond = (message: PubSubMessage) => Promise<void>;

class ScriptedTopic implements PubSubTopicLike {
  /** Messages the "service" accepted, in order. */
  readonly accepted: string[] = [];
  /** Every message handed to publishMessage, in order. */
  readonly handed: string[] = [];
  readonly paused = new Map<string, Error>();
  readonly resumed: string[] = [];

  constructor(
    readonly name: string,
    public respond: Respond,
  ) {}

  publishMessage(message: PubSubMessage): Promise<string> {
    this.handed.push(idOf(message));
    const key = message.orderingKey;
    const pausedBy = key ? this.paused.get(key) : undefined;
    if (key && pausedBy) return Promise.reject(new PublishError(key, pausedBy));
    return this.respond(message).then(
      () => {
        this.accepted.push(idOf(message));
        return `m${this.accepted.length}`;
      },
      (error: Error) => {
        if (key) this.paused.set(key, error);
        throw error;
      },
    );
  }

  resumePublishing(orderingKey: string): void {
    this.resumed.push(orderingKey);
    this.paused.delete(orderingKey);
  }

  async flush(): Promise<void> {}
}

function scripted(respond: Respond = async () => {}, options: Omit<PubSubPublisherOptions, "pubsub"> = {}) {
  const topics = new Map<string, ScriptedTopic>();
  const pubsub: PubSubClientLike = {
    topic(name) {
      let topic = topics.get(name);
      if (!topic) {
        topic = new ScriptedTopic(name, respond);
        topics.set(name, topic);
      }
      return topic;
    },
  };
  const publisher = createPubSubPublisher({ pubsub, ...options });
  return { publisher, topic: (name = "t") => pubsub.topic(name) as ScriptedTopic };
}

function deferred() {
  let resolve!: () => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe("run contract", () => {
  it("a1 published, a2 refused before sending, a3 held back and never handed over, b1 published", async () => {
    const { publisher, topic } = scripted(async () => {}, { maxMessageBytes: 1_000 });
    const [a1, a2, a3, b1] = [
      makeEntry({ topic: "t", key: "a" }),
      makeEntry({ topic: "t", key: "a", payload: new Uint8Array(2_000) }),
      makeEntry({ topic: "t", key: "a" }),
      makeEntry({ topic: "t", key: "b" }),
    ];
    const outcomes = await publisher.publish([a1, a2, a3, b1]);
    expect(statuses(outcomes)).toEqual(["published", "permanent", "transient", "published"]);
    expect(errorOf(outcomes[1]).details.type).toBe("INVALID_ARGUMENT");
    expect(errorOf(outcomes[2]).details.reason).toBe("held-back");
    expect(topic().handed).toEqual([a1.id, b1.id]);
  });

  it("a failed request fails its key's run: the first entry gets the error, the rest are held back; other keys publish", async () => {
    const unavailable = grpcError(GrpcStatus.UNAVAILABLE);
    const { publisher, topic } = scripted(async (m) => {
      if (m.orderingKey === "a") throw unavailable; // one request for a1..a3: one error object
    });
    const entries = [
      makeEntry({ topic: "t", key: "a" }),
      makeEntry({ topic: "t", key: "b" }),
      makeEntry({ topic: "t", key: "a" }),
      makeEntry({ topic: "t", key: null }),
      makeEntry({ topic: "t", key: "a" }),
    ];
    const outcomes = await publisher.publish(entries);
    expect(statuses(outcomes)).toEqual(["transient", "published", "transient", "published", "transient"]);
    expect(errorOf(outcomes[0]).details.type).toBe("UNAVAILABLE");
    expect(errorOf(outcomes[2]).details.reason).toBe("held-back");
    expect(errorOf(outcomes[4]).details.reason).toBe("held-back");
    // The client paused "a"; resumed before publish() returned.
    expect(topic().resumed).toEqual(["a"]);
    expect(topic().paused.size).toBe(0);
  });

  it("the paused key is resumed, so the next call publishes it (without resume the client refuses it)", async () => {
    let down = true;
    const { publisher, topic } = scripted(async () => {
      if (down) throw grpcError(GrpcStatus.UNAVAILABLE);
    });
    const a1 = makeEntry({ topic: "t", key: "a" });
    expect(statuses(await publisher.publish([a1]))).toEqual(["transient"]);
    down = false;
    expect(statuses(await publisher.publish([a1]))).toEqual(["published"]);
    // The model: a paused key stays refused until resumed.
    topic().paused.set("a", grpcError(GrpcStatus.NOT_FOUND));
    const refused = await publisher.publish([a1]);
    expect(statuses(refused)).toEqual(["transient"]);
    expect(errorOf(refused[0]).details.type).toBe("ORDERING_KEY_PAUSED");
    expect(statuses(await publisher.publish([a1]))).toEqual(["published"]);
  });

  it("a permanent refusal (NOT_FOUND) of a key's request: first permanent, the rest held back, other topics unaffected", async () => {
    const { publisher, topic } = scripted(async (m) => {
      if (m.attributes["outbox-topic"] === undefined && idOf(m) && missing.has(idOf(m))) throw notFound;
    });
    const notFound = grpcError(GrpcStatus.NOT_FOUND);
    const entries = [
      makeEntry({ topic: "gone", key: "a" }),
      makeEntry({ topic: "gone", key: "a" }),
      makeEntry({ topic: "t", key: "a2" }),
    ];
    const missing = new Set([entries[0]?.id, entries[1]?.id]);
    const outcomes = await publisher.publish(entries);
    expect(statuses(outcomes)).toEqual(["permanent", "transient", "published"]);
    expect(errorOf(outcomes[0]).details).toMatchObject({ type: "NOT_FOUND", topic: "gone" });
    expect(topic("gone").resumed).toEqual(["a"]);
  });
});

describe("isolation of an INVALID_ARGUMENT request", () => {
  it("keyless messages of one refused request are sent again one at a time: only the culprit fails", async () => {
    const refused = grpcError(GrpcStatus.INVALID_ARGUMENT);
    let firstRequest = true;
    const entries = [0, 1, 2, 3].map(() => makeEntry({ topic: "t", key: null }));
    const culprit = entries[2]?.id;
    const { publisher, topic } = scripted(async (m) => {
      if (firstRequest) {
        await Promise.resolve();
        firstRequest = false;
      }
      // The first request held all four: the same error object for each.
      if (topic().handed.length <= 4 || idOf(m) === culprit) throw refused;
    });
    const outcomes = await publisher.publish(entries);
    expect(statuses(outcomes)).toEqual(["published", "published", "permanent", "published"]);
    expect(topic().accepted.sort()).toEqual([entries[0]?.id, entries[1]?.id, entries[3]?.id].sort());
  });

  it("a key's run is re-sent in order up to the culprit; the rest of the run is held back", async () => {
    const refused = grpcError(GrpcStatus.INVALID_ARGUMENT);
    const entries = [0, 1, 2].map(() => makeEntry({ topic: "t", key: "a" }));
    const { publisher, topic } = scripted(async (m) => {
      if (topic().handed.length <= 3 || idOf(m) === entries[1]?.id) throw refused;
    });
    const outcomes = await publisher.publish(entries);
    expect(statuses(outcomes)).toEqual(["published", "permanent", "transient"]);
    expect(errorOf(outcomes[2]).details.reason).toBe("held-back");
    expect(topic().accepted).toEqual([entries[0]?.id]);
    expect(topic().handed.slice(3)).toEqual([entries[0]?.id, entries[1]?.id]);
    expect(topic().paused.size).toBe(0);
  });

  it("a lone refused message is permanent without a second attempt", async () => {
    const { publisher, topic } = scripted(async () => {
      throw grpcError(GrpcStatus.INVALID_ARGUMENT);
    });
    const outcomes = await publisher.publish([makeEntry({ topic: "t", key: "a" })]);
    expect(statuses(outcomes)).toEqual(["permanent"]);
    expect(topic().handed).toHaveLength(1);
  });
});

describe("deadline and abort", () => {
  it("an abort mid-flight: confirmed entries stay published, the rest are transient; a late failure resumes its key", async () => {
    const slow = deferred();
    const { publisher, topic } = scripted(async (m) => {
      if (m.orderingKey === "slow") await slow.promise;
    });
    const controller = new AbortController();
    const call = publisher.publish(
      [makeEntry({ topic: "t", key: "fast" }), makeEntry({ topic: "t", key: "slow" }), makeEntry({ topic: "t" })],
      { signal: controller.signal },
    );
    await new Promise((resolve) => setTimeout(resolve, 20));
    controller.abort(new Error("lease ends"));
    const outcomes = await call;
    expect(statuses(outcomes)).toEqual(["published", "transient", "published"]);
    expect(errorOf(outcomes[1]).details.type).toBe("TIMEOUT");
    slow.reject(grpcError(GrpcStatus.UNAVAILABLE));
    await new Promise((resolve) => setTimeout(resolve, 0));
    expect(topic().paused.size).toBe(0);
    expect(topic().resumed).toEqual(["slow"]);
  });

  it("timeoutMs bounds a call whose requests never answer", async () => {
    const { publisher } = scripted(() => new Promise<void>(() => {}), { timeoutMs: 50 });
    const started = Date.now();
    const outcomes = await publisher.publish([makeEntry({ topic: "t", key: "a" }), makeEntry({ topic: "t" })]);
    expect(statuses(outcomes)).toEqual(["transient", "transient"]);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("an already-aborted signal sends nothing", async () => {
    const { publisher, topic } = scripted();
    const controller = new AbortController();
    controller.abort();
    const outcomes = await publisher.publish([makeEntry({ topic: "t" })], { signal: controller.signal });
    expect(statuses(outcomes)).toEqual(["transient"]);
    expect(topic().handed).toEqual([]);
  });
});

describe("messages", () => {
  it("attributes: headers plus outbox metadata; the original topic when mapped; byte-exact data view", async () => {
    const seen: PubSubMessage[] = [];
    const { publisher } = scripted(
      async (m) => {
        seen.push(m);
      },
      { topic: (entry) => `mapped-${entry.topic}` },
    );
    const payload = new Uint8Array([0, 255, 1, 254]);
    const entry = makeEntry({ topic: "orders", key: "k", headers: { "x-a": "ü" }, payload });
    expect(statuses(await publisher.publish([entry]))).toEqual(["published"]);
    expect(seen[0]?.attributes).toEqual({
      "x-a": "ü",
      "outbox-id": entry.id,
      "outbox-idempotency-key": entry.idempotencyKey,
      "outbox-topic": "orders",
    });
    expect(seen[0]?.orderingKey).toBe("k");
    expect([...(seen[0]?.data ?? [])]).toEqual([0, 255, 1, 254]);
  });

  it.each([
    ["an attribute value over 1024 bytes", { headers: { big: "x".repeat(1025) } }],
    ["an attribute key over 256 bytes", { headers: { ["k".repeat(257)]: "v" } }],
    ["the reserved goog prefix", { headers: { "goog-x": "v" } }],
    ["more than 100 attributes", { headers: Object.fromEntries(Array.from({ length: 99 }, (_, i) => [`h${i}`, "v"])) }],
    ["an ordering key over 1024 bytes", { key: "k".repeat(1025) }],
  ])("%s fails permanently before sending", async (_, fields) => {
    const { publisher, topic } = scripted();
    const outcomes = await publisher.publish([makeEntry({ topic: "t", ...fields }), makeEntry({ topic: "t" })]);
    expect(statuses(outcomes)).toEqual(["permanent", "published"]);
    expect(errorOf(outcomes[0]).details.type).toBe("INVALID_ARGUMENT");
    expect(topic().handed).toHaveLength(1);
  });

  it("a failing topic mapping is permanent for that entry only", async () => {
    const { publisher } = scripted(async () => {}, {
      topic: (entry) => {
        if (entry.key === "bad") throw new Error("no route");
        return entry.key === "empty" ? "" : "t";
      },
    });
    const outcomes = await publisher.publish([
      makeEntry({ topic: "x", key: "bad" }),
      makeEntry({ topic: "x", key: "empty" }),
      makeEntry({ topic: "x", key: "ok" }),
    ]);
    expect(statuses(outcomes)).toEqual(["permanent", "permanent", "published"]);
    expect(errorOf(outcomes[0]).details.type).toBe("UNROUTABLE");
  });

  it("PERMISSION_DENIED and UNAUTHENTICATED are transient", async () => {
    const { publisher } = scripted(async (m) => {
      throw grpcError(m.orderingKey === "a" ? GrpcStatus.PERMISSION_DENIED : GrpcStatus.UNAUTHENTICATED);
    });
    const outcomes = await publisher.publish([makeEntry({ topic: "t", key: "a" }), makeEntry({ topic: "t" })]);
    expect(statuses(outcomes)).toEqual(["transient", "transient"]);
  });

  it("classifyError overrides the default", async () => {
    const { publisher } = scripted(
      async () => {
        throw grpcError(GrpcStatus.FAILED_PRECONDITION);
      },
      { classifyError: () => ({ kind: "permanent", scope: "topic", type: "POLICY" }) },
    );
    expect(statuses(await publisher.publish([makeEntry({ topic: "t" })]))).toEqual(["permanent"]);
  });
});

describe("lifecycle", () => {
  it("close waits for calls in flight; publish afterwards fails with OUTBOX_CLOSED", async () => {
    const gate = deferred();
    const { publisher } = scripted(() => gate.promise);
    const call = publisher.publish([makeEntry({ topic: "t" })]);
    const closing = publisher.close();
    gate.resolve();
    expect(statuses(await call)).toEqual(["published"]);
    await closing;
    const error = await publisher.publish([makeEntry({ topic: "t" })]).catch((caught: unknown) => caught);
    expect((error as OutboxError).code).toBe(OutboxErrorCode.Closed);
  });

  it("refuses unusable options", () => {
    expect(() => createPubSubPublisher({} as never)).toThrow(/OUTBOX_INVALID_OPTIONS/);
    const pubsub = { topic: () => ({}) as never };
    expect(() => createPubSubPublisher({ pubsub, timeoutMs: 0 })).toThrow(/OUTBOX_INVALID_OPTIONS/);
    expect(() => createPubSubPublisher({ pubsub, topic: "x" as never })).toThrow(/OUTBOX_INVALID_OPTIONS/);
  });
});

describe("the client's retry budget", () => {
  function optionsFor(timeoutMs?: number) {
    let given: unknown;
    const pubsub: PubSubClientLike = {
      topic(name, options) {
        given = options;
        return new ScriptedTopic(name, async () => {});
      },
    };
    const publisher = createPubSubPublisher({ pubsub, ...(timeoutMs === undefined ? {} : { timeoutMs }) });
    return publisher.publish([makeEntry({ topic: "t", key: "a" })]).then(() => {
      const retry = (given as { gaxOpts: { retry: { backoffSettings: Record<string, number> } } }).gaxOpts.retry;
      return retry.backoffSettings;
    });
  }

  it("gives each attempt at most 5 s of timeoutMs, so a request stuck on a half-open connection is sent again", async () => {
    const backoff = await optionsFor();
    expect(backoff.totalTimeoutMillis).toBe(20_000);
    expect(backoff.maxRpcTimeoutMillis).toBe(5_000);
    expect(backoff.maxRetryDelayMillis).toBeLessThanOrEqual(1_000);
    const short = await optionsFor(2_000);
    expect([short.initialRpcTimeoutMillis, short.maxRpcTimeoutMillis, short.totalTimeoutMillis]).toEqual([
      2_000, 2_000, 2_000,
    ]);
  });
});
