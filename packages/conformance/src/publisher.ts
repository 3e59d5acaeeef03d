import {
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  OutboxHeader,
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
  /**
   * Every header the consumer sees: the entry's own headers plus the outbox metadata headers
   * `outbox-id` and `outbox-idempotency-key` (`OutboxHeader`, what `headersWithMetadata()` adds).
   */
  readonly headers: Readonly<Record<string, string>>;
  /** The idempotency key as the consumer reads it (from `outbox-idempotency-key`, or the broker's field for it). */
  readonly idempotencyKey: string;
  /**
   * The outbox entry id, for brokers that carry the metadata in dedicated fields instead of
   * headers (e.g. Redis Streams fields named `outbox-id`): read when `headers["outbox-id"]` is absent.
   */
  readonly id?: string;
}

export interface PublisherHarness {
  /** The publisher under test, connected to the real broker. */
  readonly publisher: OutboxPublisher;
  /** A fresh destination on the broker (created when the broker needs that), used by one check only. */
  topic(): Promise<string>;
  /**
   * Reads `topic` from the beginning with a real consumer and returns everything on it, in
   * delivery order: as soon as at least `count` messages arrived, or what arrived when
   * `timeoutMs` passes (the checks also use it to prove "no more"). Called several times per
   * topic: every call returns everything from the beginning again, duplicates included.
   */
  receive(topic: string, count: number, timeoutMs: number): Promise<ReceivedMessage[]>;
  /** Makes an entry for `topic` that the broker will refuse for good (oversize, unroutable, wrong type...). */
  permanentFailure?(topic: string): Promise<Pick<OutboxEntry, "topic" | "payload" | "key">>;
  /**
   * Cuts this publisher's own broker connection (kill it server-side, cut a proxy). Must not
   * restart a server that other tests use: the kit never asks a harness to restart one.
   */
  dropConnection?(): Promise<void>;
  /** Closes the publisher and everything the harness opened (consumers, admin clients, topics). */
  teardown(): Promise<void>;
}

export interface PublisherConformanceOptions {
  name: string;
  create(): Promise<PublisherHarness>;
  skip?: SkipReasons<PublisherCheckId>;
  /** Time per check, harness setup included. Default 60 s; a check past it fails, named. */
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
      expect(statuses(outcomes), "every entry the broker accepts must be reported published").toEqual(
        [...entries, keyless].map(() => "published"),
      );
      const received = await h.receive(topic, entries.length + 1, 30_000);
      expect(received, "the consumer must receive every published entry exactly once").toHaveLength(entries.length + 1);
      for (const entry of [...entries, keyless]) {
        const match = received.find((m) => m.idempotencyKey === entry.idempotencyKey);
        expect(match, `the consumer must receive entry ${entry.id} under its idempotency key`).toBeDefined();
        const message = match as ReceivedMessage;
        expect(message.topic, "the message must arrive on the entry's topic").toBe(topic);
        expect(message.key, "the message must carry the entry's key (null for none)").toBe(entry.key);
        expect(
          bytesEqual(message.payload, entry.payload),
          `the payload bytes must arrive unchanged (entry ${entry.id})`,
        ).toBe(true);
        for (const [name, value] of Object.entries(entry.headers)) {
          expect(message.headers[name], `header "${name}" must arrive unchanged`).toBe(value);
        }
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
        expect(statuses(outcomes), "every entry the broker accepts must be reported published").toEqual(
          entries.map(() => "published"),
        );
      }
      const received = await h.receive(topic, seq, 30_000);
      expect(received, "the consumer must receive every published entry").toHaveLength(seq);
      const order = received.map((m) => ({ key: m.key, seq: Number(m.headers["x-seq"]) }));
      expect(keyOrderViolations(order), "entries of one key must arrive in publish order across batches").toEqual([]);
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
      expect(
        statuses(outcomes),
        "a permanently refused entry must be reported permanent, alone: its neighbours must be published",
      ).toEqual(["published", "permanent", "published"]);
      const received = await h.receive(topic, 2, 30_000);
      expect(
        received.map((m) => m.idempotencyKey).sort(),
        "the neighbours of a refused entry must reach the consumer",
      ).toEqual([before.idempotencyKey, after.idempotencyKey].sort());
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
      expect(
        ids.filter((id) => run.some((e) => e.idempotencyKey === id)),
        "a run of one key must arrive whole and in order",
      ).toEqual(run.map((e) => e.idempotencyKey));
      expect(
        ids.filter((id) => id === b1.idempotencyKey || id === b2.idempotencyKey),
        "another key's run in the same call must arrive whole and in order",
      ).toEqual([b1.idempotencyKey, b2.idempotencyKey]);
    },
  },
  "outcome-order": {
    title: "outcomes come back one per entry, in input order, for a batch with an asymmetric mix of outcomes",
    requires: (h) => (h.permanentFailure ? null : "harness provides no permanentFailure()"),
    async run(h) {
      const topic = await h.topic();
      const badFields = await (h.permanentFailure as NonNullable<PublisherHarness["permanentFailure"]>)(topic);
      // Refused at positions 0 and 3 of 7: reversing or sorting the outcomes changes the pattern.
      const pattern = ["permanent", "published", "published", "permanent", "published", "published", "published"];
      const entries = pattern.map((expected, i) =>
        expected === "permanent" ? makeEntry({ ...badFields, key: `bad-${i}` }) : makeEntry({ topic, key: `ok-${i}` }),
      );
      const outcomes = await h.publisher.publish(entries);
      expect(outcomes, "publish must return exactly one outcome per entry").toHaveLength(entries.length);
      expect(statuses(outcomes), "outcomes must be in input order: outcome i belongs to entry i").toEqual(pattern);
      const good = entries.filter((_, i) => pattern[i] === "published");
      const received = await h.receive(topic, good.length, 30_000);
      expect(
        received.map((m) => m.idempotencyKey).sort(),
        "the entries reported published must be the ones the consumer receives",
      ).toEqual(good.map((e) => e.idempotencyKey).sort());
    },
  },
  "metadata-headers": {
    title: "the consumer sees the outbox metadata: outbox-id and outbox-idempotency-key",
    async run(h) {
      const topic = await h.topic();
      const entries = [
        makeEntry({ topic, key: "meta", headers: { "x-own": "kept" } }),
        makeEntry({ topic, key: null, idempotencyKey: `custom-${globalThis.crypto.randomUUID()}` }),
      ];
      expect(statuses(await h.publisher.publish(entries)), "both entries must be published").toEqual([
        "published",
        "published",
      ]);
      const received = await h.receive(topic, entries.length, 30_000);
      for (const entry of entries) {
        const message = received.find(
          (m) => (m.headers[OutboxHeader.IdempotencyKey] ?? m.idempotencyKey) === entry.idempotencyKey,
        );
        expect(
          message,
          `the consumer must find the idempotency key under "${OutboxHeader.IdempotencyKey}" (use headersWithMetadata())`,
        ).toBeDefined();
        const { headers, id } = message as ReceivedMessage;
        expect(
          headers[OutboxHeader.Id] ?? id,
          `the consumer must find the entry id under "${OutboxHeader.Id}" (use headersWithMetadata())`,
        ).toBe(entry.id);
        for (const [name, value] of Object.entries(entry.headers)) {
          expect(headers[name], `the entry's own header "${name}" must arrive next to the metadata`).toBe(value);
        }
      }
    },
  },
  "abort-mid-publish": {
    title: "a signal aborted while publishing: each entry is published (and received) or transient, never permanent",
    async run(h) {
      const topic = await h.topic();
      const entries = Array.from({ length: 20 }, (_, i) => makeEntry({ topic, key: `abort-${i}` }));
      const controller = new AbortController();
      const publishing = h.publisher.publish(entries, { signal: controller.signal });
      // The lease is about to end while the batch is with the broker: a timeout, not the entries' fault.
      controller.abort(new Error("the lease is about to end"));
      const outcomes = await publishing;
      expect(outcomes, "publish must return exactly one outcome per entry").toHaveLength(entries.length);
      for (const outcome of outcomes) {
        expect(
          outcome.status,
          "a publish cut short by its signal (a timeout, a lost connection) must report transient, never permanent: " +
            "classify only the broker's final refusals as permanent",
        ).not.toBe("permanent");
      }
      const confirmed = entries.filter((_, i) => outcomes[i]?.status === "published");
      if (confirmed.length > 0) {
        const received = (await h.receive(topic, confirmed.length, 30_000)).map((m) => m.idempotencyKey);
        for (const entry of confirmed) {
          expect(received, "an entry reported published must have reached the broker").toContain(entry.idempotencyKey);
        }
      }
    },
  },
  reconnect: {
    title: "after the broker connection drops, publishing recovers without a new publisher",
    requires: (h) => (h.dropConnection ? null : "harness provides no dropConnection()"),
    async run(h) {
      const topic = await h.topic();
      expect(
        statuses(await h.publisher.publish([makeEntry({ topic })])),
        "publishing must work before the drop",
      ).toEqual(["published"]);
      await (h.dropConnection as NonNullable<PublisherHarness["dropConnection"]>)();
      const entry = makeEntry({ topic, key: "after-drop" });
      let outcome: PublishOutcome | undefined;
      // Transient failures while reconnecting are allowed; the relay would retry them too.
      for (let attempt = 0; attempt < 30; attempt++) {
        outcome = (await h.publisher.publish([entry]))[0];
        if (outcome?.status === "published") break;
        expect(outcome?.status, "a lost connection is a transient failure, never a permanent one").toBe("transient");
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      expect(outcome?.status, "after a dropped connection the publisher must reconnect by itself within 15 s").toBe(
        "published",
      );
      const received = await h.receive(topic, 2, 30_000);
      expect(
        received.map((m) => m.idempotencyKey),
        "an entry published after the reconnect must reach the consumer",
      ).toContain(entry.idempotencyKey);
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
      expect(
        statuses(outcomes),
        "with an already-aborted signal every entry must be reported transient (the lease is ending, not the entry's fault)",
      ).toEqual(["transient", "transient"]);
      expect(await h.receive(topic, 1, 3_000), "with an already-aborted signal nothing may be sent").toEqual([]);
    },
  },
  "empty-batch": {
    title: "publishing an empty batch returns no outcomes",
    async run(h) {
      expect(await h.publisher.publish([]), "an empty batch must return an empty outcome list").toEqual([]);
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
      expect(OutboxError.is(error, OutboxErrorCode.Closed), "publish after close must fail with OUTBOX_CLOSED").toBe(
        true,
      );
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
