import {
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxPublisher,
  type PublishOutcome,
} from "@outbox/core";
import { expect } from "vitest";
import { type Check, registerSuite, type SkipReasons } from "./suite.js";
import { awkwardPayloads, bytesEqual, keyOrderViolations, uniqueName } from "./util.js";

/** A message as a real consumer of the broker read it back. */
export interface ReceivedMessage {
  readonly topic: string;
  readonly key: string | null;
  readonly payload: Uint8Array;
  /** The entry's own headers (adapter metadata headers may be included too). */
  readonly headers: Readonly<Record<string, string>>;
  readonly idempotencyKey: string;
}

export interface PublisherHarness {
  readonly publisher: OutboxPublisher;
  /** A fresh destination on the broker (created when the broker needs that). */
  topic(): Promise<string>;
  /**
   * Reads `topic` from the beginning with a real consumer until `count` messages arrived, or
   * returns what arrived when `timeoutMs` passes (the checks also use it to prove "no more").
   */
  receive(topic: string, count: number, timeoutMs: number): Promise<ReceivedMessage[]>;
  /** Makes an entry for `topic` that the broker will refuse for good (oversize, unroutable, wrong type...). */
  permanentFailure?(topic: string): Promise<Pick<OutboxEntry, "topic" | "payload" | "key">>;
  /** Cuts the publisher's broker connection (kill it server-side or restart the broker). */
  dropConnection?(): Promise<void>;
  teardown(): Promise<void>;
}

export interface PublisherConformanceOptions {
  name: string;
  create(): Promise<PublisherHarness>;
  skip?: SkipReasons<PublisherCheckId>;
  timeoutMs?: number;
  /** Largest payload in the round-trip check. Default 512 KiB. */
  largePayloadBytes?: number;
}

let nextId = 1;

/** Builds an entry as a store would hand it to a publisher. */
export function makeEntry(fields: Partial<OutboxEntry> & Pick<OutboxEntry, "topic">): OutboxEntry {
  const id = String(nextId++);
  return {
    id,
    key: null,
    payload: new TextEncoder().encode(`payload-${id}`),
    headers: {},
    idempotencyKey: `idem-${id}-${globalThis.crypto.randomUUID()}`,
    createdAt: new Date(),
    availableAt: new Date(),
    attempts: 1,
    lastError: null,
    ...fields,
  };
}

const statuses = (outcomes: PublishOutcome[]) => outcomes.map((outcome) => outcome.status);

type Context = PublisherHarness & { largePayloadBytes: number };

export const publisherChecks = {
  "round-trip": {
    title: "the consumer receives exactly the bytes, headers, key and idempotency key",
    async run(h) {
      const topic = await h.topic();
      const headers = { "content-type": "application/octet-stream", "x-unicode": "日本語 🚀", empty: "" };
      const entries = awkwardPayloads(h.largePayloadBytes).map((p, i) =>
        makeEntry({ topic, key: `key-${i}`, payload: p.bytes, headers }),
      );
      const keyless = makeEntry({ topic, key: null });
      const outcomes = await h.publisher.publish([...entries, keyless]);
      expect(statuses(outcomes)).toEqual([...entries, keyless].map(() => "published"));
      const received = await h.receive(topic, entries.length + 1, 30_000);
      expect(received).toHaveLength(entries.length + 1);
      for (const entry of [...entries, keyless]) {
        const match = received.find((m) => m.idempotencyKey === entry.idempotencyKey);
        expect(match, `entry ${entry.id} not received`).toBeDefined();
        const message = match as ReceivedMessage;
        expect(message.topic).toBe(topic);
        expect(message.key).toBe(entry.key);
        expect(bytesEqual(message.payload, entry.payload), `payload of ${entry.id} altered`).toBe(true);
        for (const [name, value] of Object.entries(entry.headers)) expect(message.headers[name]).toBe(value);
      }
    },
  },
  "key-order": {
    title: "entries of a key arrive in publish order across batches",
    async run(h) {
      const topic = await h.topic();
      const keys = ["k1", "k2", "k3", "k4", "k5"];
      let seq = 0;
      for (let batch = 0; batch < 10; batch++) {
        // The relay never puts two entries of one key into a batch; mirror that.
        const entries = keys.map((key) => makeEntry({ topic, key, headers: { "x-seq": String(seq++) } }));
        const outcomes = await h.publisher.publish(entries);
        expect(statuses(outcomes).every((status) => status === "published")).toBe(true);
      }
      const received = await h.receive(topic, seq, 30_000);
      expect(received).toHaveLength(seq);
      const order = received.map((m) => ({ key: m.key, seq: Number(m.headers["x-seq"]) }));
      expect(keyOrderViolations(order)).toEqual([]);
    },
  },
  "per-entry-failure": {
    title: "a permanently failing entry is reported alone; its neighbours are published",
    requires: (h) => (h.permanentFailure ? null : "harness provides no permanentFailure()"),
    async run(h) {
      const topic = await h.topic();
      const badFields = await (h.permanentFailure as NonNullable<PublisherHarness["permanentFailure"]>)(topic);
      const before = makeEntry({ topic, key: "a" });
      const bad = makeEntry({ ...badFields });
      const after = makeEntry({ topic, key: "b" });
      const outcomes = await h.publisher.publish([before, bad, after]);
      expect(statuses(outcomes)).toEqual(["published", "permanent", "published"]);
      const received = await h.receive(topic, 2, 30_000);
      expect(received.map((m) => m.idempotencyKey).sort()).toEqual(
        [before.idempotencyKey, after.idempotencyKey].sort(),
      );
    },
  },
  "key-runs": {
    title: "a run of one key arrives in order; after a failed entry, the rest of its key's run is held back",
    requires: (h) => (h.permanentFailure ? null : "harness provides no permanentFailure()"),
    async run(h) {
      const topic = await h.topic();
      const run = Array.from({ length: 5 }, (_, i) =>
        makeEntry({ topic, key: "run", headers: { "x-seq": String(i) } }),
      );
      expect(statuses(await h.publisher.publish(run)), "a run of one key must be published whole").toEqual(
        run.map(() => "published"),
      );
      const badFields = await (h.permanentFailure as NonNullable<PublisherHarness["permanentFailure"]>)(topic);
      const a1 = makeEntry({ topic, key: "a" });
      const a2 = makeEntry({ ...badFields, key: "a" });
      const a3 = makeEntry({ topic, key: "a" });
      const b1 = makeEntry({ topic, key: "b" });
      const b2 = makeEntry({ topic, key: "b" });
      const outcomes = statuses(await h.publisher.publish([a1, b1, a2, b2, a3]));
      expect(outcomes.slice(0, 4), "outcomes must be one per entry, in input order").toEqual([
        "published",
        "published",
        "permanent",
        "published",
      ]);
      expect(outcomes[4], "an entry after a failed entry of its key in the same call must not be published").not.toBe(
        "published",
      );
      const received = await h.receive(topic, run.length + 3, 30_000);
      const ids = received.map((m) => m.idempotencyKey);
      expect(ids, "a held-back entry must never reach the broker").not.toContain(a3.idempotencyKey);
      expect(ids.filter((id) => run.some((e) => e.idempotencyKey === id))).toEqual(run.map((e) => e.idempotencyKey));
      expect(ids.filter((id) => id === b1.idempotencyKey || id === b2.idempotencyKey)).toEqual([
        b1.idempotencyKey,
        b2.idempotencyKey,
      ]);
    },
  },
  reconnect: {
    title: "after the broker connection drops, publishing recovers without a new publisher",
    requires: (h) => (h.dropConnection ? null : "harness provides no dropConnection()"),
    async run(h) {
      const topic = await h.topic();
      expect(statuses(await h.publisher.publish([makeEntry({ topic })]))).toEqual(["published"]);
      await (h.dropConnection as NonNullable<PublisherHarness["dropConnection"]>)();
      const entry = makeEntry({ topic, key: "after-drop" });
      let outcome: PublishOutcome | undefined;
      // Transient failures while reconnecting are allowed; the relay would retry them too.
      for (let attempt = 0; attempt < 30; attempt++) {
        outcome = (await h.publisher.publish([entry]))[0];
        if (outcome?.status === "published") break;
        expect(outcome?.status).toBe("transient");
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      expect(outcome?.status).toBe("published");
      const received = await h.receive(topic, 2, 30_000);
      expect(received.map((m) => m.idempotencyKey)).toContain(entry.idempotencyKey);
    },
  },
  "aborted-signal": {
    title: "with an already-aborted signal nothing is sent and every entry is reported transient",
    async run(h) {
      const topic = await h.topic();
      const controller = new AbortController();
      controller.abort(new Error("the lease is about to end"));
      const outcomes = await h.publisher.publish([makeEntry({ topic }), makeEntry({ topic, key: "k" })], {
        signal: controller.signal,
      });
      expect(statuses(outcomes)).toEqual(["transient", "transient"]);
      expect(await h.receive(topic, 1, 3_000)).toEqual([]);
    },
  },
  "empty-batch": {
    title: "publishing an empty batch returns no outcomes",
    async run(h) {
      expect(await h.publisher.publish([])).toEqual([]);
    },
  },
  closed: {
    title: "after close, publish fails with OUTBOX_CLOSED",
    requires: (h) => (h.publisher.close ? null : "publisher has no close()"),
    async run(h) {
      const topic = await h.topic();
      await h.publisher.close?.();
      const error = await h.publisher.publish([makeEntry({ topic })]).then(
        () => null,
        (caught: unknown) => caught,
      );
      expect(OutboxError.is(error, OutboxErrorCode.Closed)).toBe(true);
    },
  },
} satisfies Record<string, Check<Context>>;

export type PublisherCheckId = keyof typeof publisherChecks;

/** Registers the publisher conformance suite against a real broker and a real consumer. */
export function describePublisherConformance(options: PublisherConformanceOptions): void {
  registerSuite<Context, PublisherCheckId>("publisher conformance", publisherChecks, {
    name: options.name,
    create: async () =>
      Object.assign(await options.create(), { largePayloadBytes: options.largePayloadBytes ?? 512 * 1024 }),
    dispose: (h) => h.teardown(),
    skip: options.skip,
    timeoutMs: options.timeoutMs ?? 60_000,
  });
}

export { uniqueName };
