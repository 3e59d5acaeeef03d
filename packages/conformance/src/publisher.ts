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
  /**
   * Optional: fields of an entry for `topic` the broker fails *for now* (a full queue that rejects
   * publishes, a partition without a leader...): the publisher must report it `transient`. Without
   * it, `key-runs-transient` is skipped.
   */
  transientFailure?(topic: string): Promise<Pick<OutboxEntry, "topic" | "payload" | "key">>;
  /**
   * Optional: arms a failure *inside the broker client*: the next publish request this publisher
   * sends fails after it left the publisher (the harness cuts the connection it travels on before
   * the broker answers, e.g. a `TcpProxy` that resets on the next write, or the broker rejects
   * it). Later requests go through (the client reconnects). Without it, `broker-failure` is skipped.
   */
  failNextPublish?(): Promise<void>;
  /**
   * Optional: conditions of the broker that pass (memory full, the publisher's exchange missing until an
   * operator creates it, a quota, a producer out of step with the broker...), by name. Each sets its
   * condition up for `topic` and returns the fields of an entry the broker fails while it lasts, and
   * `restore()`, which ends it. Without it, `transient-conditions` is skipped.
   */
  readonly transientConditions?: Readonly<Record<string, (topic: string) => Promise<TransientCondition>>>;
  /**
   * Optional: the broker stops answering this publisher (a broker that hangs, a half-open connection):
   * from the next publish request on, nothing comes back until `release()`. Without it,
   * `abort-while-stalled` is skipped.
   */
  stallBroker?(): Promise<BrokerStall>;
  /**
   * Optional: a destination that does not exist yet (the broker refuses what is sent to it), and
   * `create()`, which creates it as an operator would (then `receive` reads it). Without it,
   * `key-recovers-after-refusal` is skipped.
   */
  missingTopic?(): Promise<{ readonly topic: string; create(): Promise<void> }>;
  /** Closes the publisher and everything the harness opened (consumers, admin clients, topics). */
  teardown(): Promise<void>;
}

/** A condition of the broker that passes (see `PublisherHarness.transientConditions`). */
export interface TransientCondition {
  /** Fields of an entry the broker fails while the condition lasts (a key of its own is best). */
  readonly entry: Pick<OutboxEntry, "topic" | "payload" | "key">;
  /** Ends the condition. The check calls it once, right after the publish under the condition. */
  restore(): Promise<void>;
}

/** A broker that does not answer (see `PublisherHarness.stallBroker`). */
export interface BrokerStall {
  /** Resolves once a publish request went out into the silence. */
  readonly sent: Promise<void>;
  /**
   * Ends the stall; resolves once the broker client has settled every request sent during it: the
   * broker's answers came through late, or the client gave up on them (a harness may keep the broker
   * silent until the client's own retries ran out, so that those requests fail for good).
   */
  release(): Promise<void>;
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

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** `work`'s value, or undefined when it takes longer than `ms`. */
async function within<T>(work: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** How long a publish may take to settle after its signal aborted. */
const abortSettleMs = 5_000;

/** Where each entry first arrived (index in `received`), by idempotency key. */
function firstArrivals(received: readonly ReceivedMessage[]): Map<string, number> {
  const first = new Map<string, number>();
  received.forEach((message, i) => {
    if (!first.has(message.idempotencyKey)) first.set(message.idempotencyKey, i);
  });
  return first;
}

/**
 * Reads `topic` until every entry of `expected` arrived (or `timeoutMs` passed): the destination may
 * also hold duplicates (a request written before its answer was lost), so a count is not enough.
 */
async function receiveAll(h: Context, topic: string, expected: readonly OutboxEntry[], timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  const missing = (received: readonly ReceivedMessage[]) =>
    expected.some((entry) => !received.some((m) => m.idempotencyKey === entry.idempotencyKey));
  let received = await h.receive(topic, expected.length, timeoutMs);
  while (missing(received) && Date.now() < deadline) {
    received = await h.receive(topic, received.length + 1, Math.max(0, deadline - Date.now()));
  }
  return received;
}

/** Publishes `entries` again, as the relay retries them, until all are published or ~15 s passed; returns what is left. */
async function retryUntilPublished(h: Context, entries: OutboxEntry[], why: string): Promise<OutboxEntry[]> {
  let pending = entries;
  for (let attempt = 0; attempt < 30 && pending.length > 0; attempt++) {
    const retried = statuses(await h.publisher.publish(pending));
    expect(retried, why).not.toContain("permanent");
    pending = pending.filter((_, i) => retried[i] !== "published");
    if (pending.length > 0) await delay(500);
  }
  return pending;
}

/**
 * The run contract for permanent failures, on key `key` (`run` for the whole run): a run goes whole
 * and in order; after a refused entry, the rest of its key's run in that call is held back.
 */
async function keyRunsPermanent(h: Context, keys: { run: string; failing: string }): Promise<void> {
  const topic = await h.topic();
  const run = Array.from({ length: 5 }, (_, i) => makeEntry({ topic, key: keys.run, headers: { "x-seq": String(i) } }));
  expect(statuses(await h.publisher.publish(run)), "a run of one key must be published whole").toEqual(
    run.map(() => "published"),
  );
  const badFields = await (h.permanentFailure as NonNullable<PublisherHarness["permanentFailure"]>)(topic);
  const a1 = makeEntry({ topic, key: keys.failing });
  const a2 = makeEntry({ ...badFields, key: keys.failing });
  const a3 = makeEntry({ topic, key: keys.failing });
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
}

/** The run contract for transient failures, on key `key`. */
async function keyRunsTransient(h: Context, key: string): Promise<void> {
  const topic = await h.topic();
  const badFields = await (h.transientFailure as NonNullable<PublisherHarness["transientFailure"]>)(topic);
  const a1 = makeEntry({ topic, key, headers: { "x-seq": "1" } });
  const a2 = makeEntry({ ...badFields, key, headers: { "x-seq": "2" } });
  const a3 = makeEntry({ topic, key, headers: { "x-seq": "3" } });
  const b1 = makeEntry({ topic, key: "b" });
  const b2 = makeEntry({ topic, key: "b" });
  const outcomes = await h.publisher.publish([a1, b1, a2, b2, a3]);
  expect(statuses(outcomes), "outcomes must be one per entry, in input order").toEqual([
    "published",
    "published",
    "transient",
    "published",
    "transient",
  ]);
  const received = await h.receive(topic, 3, 30_000);
  const ids = received.map((m) => m.idempotencyKey);
  expect(
    ids,
    "after a transiently failed entry of a key, no later entry of that key in the same call may reach the broker " +
      "(it would overtake the failed one when the relay retries it): report it heldBack()",
  ).not.toContain(a3.idempotencyKey);
  expect(
    ids.filter((id) => id === b1.idempotencyKey || id === b2.idempotencyKey),
    "another key's run in the same call must arrive whole and in order",
  ).toEqual([b1.idempotencyKey, b2.idempotencyKey]);
}

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
    run: (h) => keyRunsPermanent(h, { run: "run", failing: "a" }),
  },
  "key-runs-transient": {
    title: "after a transiently failed entry, the rest of its key's run in that call is held back too",
    requires: (h) => (h.transientFailure ? null : "harness provides no transientFailure()"),
    run: (h) => keyRunsTransient(h, "a"),
  },
  "broker-failure": {
    title: "a publish failing inside the broker client is transient, keeps the run contract, and the key recovers",
    requires: (h) => (h.failNextPublish ? null : "harness provides no failNextPublish()"),
    async run(h) {
      const topic = await h.topic();
      const warmUp = makeEntry({ topic, key: "warm-up" });
      expect(statuses(await h.publisher.publish([warmUp])), "publishing must work before the failure").toEqual([
        "published",
      ]);
      const run = Array.from({ length: 6 }, (_, i) =>
        makeEntry({ topic, key: "cut", headers: { "x-seq": String(i) } }),
      );
      const other = makeEntry({ topic, key: "other", headers: { "x-seq": "0" } });
      await (h.failNextPublish as NonNullable<PublisherHarness["failNextPublish"]>)();
      const outcomes = await h.publisher.publish([...run.slice(0, 3), other, ...run.slice(3)]);
      expect(outcomes, "publish must return exactly one outcome per entry").toHaveLength(run.length + 1);
      for (const outcome of outcomes) {
        expect(
          outcome.status,
          "a publish that failed inside the broker client (a closed channel, a lost connection) is transient, never " +
            "permanent: it is not the entry's fault",
        ).not.toBe("permanent");
      }
      const runOutcomes = statuses([...outcomes.slice(0, 3), ...outcomes.slice(4)]);
      expect(
        statuses(outcomes),
        "failNextPublish() must make this publish fail inside the client (at least one entry not published): the " +
          "harness's failure never reached it, or the client absorbed it (fail its retries too)",
      ).not.toEqual(outcomes.map(() => "published"));
      const firstFailed = runOutcomes.indexOf("transient");
      if (firstFailed >= 0) {
        expect(
          runOutcomes.slice(firstFailed),
          "after a failed entry of a key, the rest of its run in that call must not be reported published",
        ).toEqual(runOutcomes.slice(firstFailed).map(() => "transient"));
      }
      // Retry what failed, in order, as the relay would, until the key recovers. The relay's next batch
      // may hold more of the key than the failed one: a batch that differs from the lost one is refused
      // by a broker whose producer sequence numbers are now out of step with the publisher's.
      const more = makeEntry({ topic, key: "cut", headers: { "x-seq": String(run.length) } });
      let pending = [...run.filter((_, i) => runOutcomes[i] !== "published"), more];
      if (outcomes[3]?.status !== "published") pending = [other, ...pending];
      pending = await retryUntilPublished(
        h,
        pending,
        "failures while the client recovers are transient, never permanent",
      );
      expect(
        pending.map((e) => e.id),
        "after a failure inside the client, the same key must publish again within 15 s (a broker-side ordering key " +
          "paused by the failed send must be resumed, an idempotent producer whose request may have been written " +
          "must get a new producer id)",
      ).toEqual([]);
      const firstSeen = firstArrivals(await receiveAll(h, topic, [warmUp, other, ...run, more]));
      for (const entry of [warmUp, other, ...run, more]) {
        expect(firstSeen.has(entry.idempotencyKey), `entry ${entry.id} must reach the consumer after recovery`).toBe(
          true,
        );
      }
      const arrival = [...run, more].map((e) => firstSeen.get(e.idempotencyKey) as number);
      expect(
        arrival,
        "the key's entries must first arrive in publish order: nothing of a key may reach the broker after an " +
          "earlier entry of it failed in the same call",
      ).toEqual([...arrival].sort((a, b) => a - b));
    },
  },
  "empty-key-runs": {
    title:
      'the empty-string key "" is a key like any other: its run goes whole, in order, and stops at its first failure',
    requires: (h) =>
      h.permanentFailure || h.transientFailure
        ? null
        : "harness provides neither permanentFailure() nor transientFailure()",
    async run(h) {
      const topic = await h.topic();
      const probe = makeEntry({ topic, key: "" });
      const [first] = await h.publisher.publish([probe, makeEntry({ topic, key: "" })]);
      if (first?.status === "permanent" && OutboxError.is(first.error, OutboxErrorCode.InvalidEntry)) {
        // A broker that cannot carry "" (Pub/Sub reads an empty ordering key as none) refuses such entries.
        expect(
          await h.receive(topic, 1, 3_000),
          'an entry refused for its "" key (OUTBOX_INVALID_ENTRY) must not reach the broker, nor the rest of its run',
        ).toEqual([]);
        return;
      }
      expect(
        first?.status,
        'an entry with the key "" must be published, or refused as permanent with OUTBOX_INVALID_ENTRY',
      ).toBe("published");
      // "" is not null: a publisher that tests the key's truthiness sends a "" run as keyless entries.
      if (h.permanentFailure) await keyRunsPermanent(h, { run: "", failing: "" });
      if (h.transientFailure) await keyRunsTransient(h, "");
    },
  },
  "transient-conditions": {
    title: "conditions of the broker that pass are transient, never permanent; once one passes, the key publishes",
    requires: (h) =>
      Object.keys(h.transientConditions ?? {}).length > 0 ? null : "harness declares no transientConditions",
    async run(h) {
      for (const [name, condition] of Object.entries(h.transientConditions ?? {})) {
        const topic = await h.topic();
        const { entry, restore } = await condition(topic);
        const key = entry.key ?? "condition";
        const run = [1, 2].map((seq) => makeEntry({ ...entry, key, headers: { "x-seq": String(seq) } }));
        const keyless = makeEntry({ ...entry, key: null });
        let outcomes: PublishOutcome[];
        try {
          outcomes = await h.publisher.publish([...run, keyless]);
        } finally {
          await restore();
        }
        expect(
          statuses(outcomes.slice(0, 2)),
          `${name}: a condition of the broker that passes must be reported transient, never permanent (a permanent ` +
            "outcome dead-letters the entry, and every entry of the backlog while it lasts)",
        ).toEqual(["transient", "transient"]);
        expect(outcomes[2]?.status, `${name}: a condition that passes is never permanent (keyless entry)`).not.toBe(
          "permanent",
        );
        const all = [...run, keyless];
        const left = await retryUntilPublished(
          h,
          all.filter((_, i) => outcomes[i]?.status !== "published"),
          `${name}: retries after the condition passed must never be permanent`,
        );
        expect(
          left.map((e) => e.id),
          `${name}: once the condition passed, the same entries must publish again within 15 s`,
        ).toEqual([]);
        const firstSeen = firstArrivals(await receiveAll(h, entry.topic, all));
        const arrival = run.map((e) => firstSeen.get(e.idempotencyKey) ?? -1);
        expect(arrival, `${name}: every entry published after the condition must reach the consumer`).not.toContain(-1);
        expect(arrival, `${name}: the key's entries must first arrive in publish order`).toEqual(
          [...arrival].sort((a, b) => a - b),
        );
      }
    },
  },
  "abort-while-stalled": {
    title:
      "a publish whose signal aborts while the broker does not answer settles at once, all transient; the key publishes next",
    requires: (h) => (h.stallBroker ? null : "harness provides no stallBroker()"),
    async run(h) {
      const topic = await h.topic();
      const warmUp = makeEntry({ topic, key: "stall" });
      expect(statuses(await h.publisher.publish([warmUp])), "publishing must work before the stall").toEqual([
        "published",
      ]);
      const stalled = [1, 2].map((seq) => makeEntry({ topic, key: "stall", headers: { "x-seq": String(seq) } }));
      const other = makeEntry({ topic, key: "other" });
      const stall = await (h.stallBroker as NonNullable<PublisherHarness["stallBroker"]>)();
      let outcomes: PublishOutcome[] | undefined;
      try {
        const controller = new AbortController();
        const publishing = h.publisher.publish([stalled[0] as OutboxEntry, other, stalled[1] as OutboxEntry], {
          signal: controller.signal,
        });
        await Promise.race([stall.sent, publishing]);
        // The lease is about to end while the broker says nothing: the relay needs its outcomes now.
        controller.abort(new Error("the lease is about to end"));
        outcomes = await within(publishing, abortSettleMs);
      } finally {
        await stall.release();
      }
      expect(
        outcomes && statuses(outcomes),
        `publish must settle within ${abortSettleMs / 1000} s of its signal aborting, even while the broker does not ` +
          "answer (stop waiting on abort, not only at the publisher's own timeout), and report every entry transient: " +
          "nothing was confirmed, nothing was refused",
      ).toEqual(["transient", "transient", "transient"]);
      const more = makeEntry({ topic, key: "stall", headers: { "x-seq": "3" } });
      const next = [...stalled, more, other];
      expect(
        statuses(await h.publisher.publish(next)),
        "after a publish cut short by its signal, the next publish of the same keys must succeed at once (a key the " +
          "broker client paused when the abandoned request failed must be resumed; an idempotent producer whose " +
          "abandoned request may have been written must get a new producer id)",
      ).toEqual(next.map(() => "published"));
      const firstSeen = firstArrivals(await receiveAll(h, topic, [warmUp, ...next]));
      const arrival = [warmUp, ...stalled, more].map((e) => firstSeen.get(e.idempotencyKey) ?? -1);
      expect(arrival, "every entry published after the stall must reach the consumer").not.toContain(-1);
      expect(arrival, "the key's entries must first arrive in publish order").toEqual(
        [...arrival].sort((a, b) => a - b),
      );
    },
  },
  "key-recovers-after-refusal": {
    title:
      "after the broker refused a key's entries (no such destination yet), the key publishes at once when it exists",
    requires: (h) => (h.missingTopic ? null : "harness provides no missingTopic()"),
    async run(h) {
      const { topic, create } = await (h.missingTopic as NonNullable<PublisherHarness["missingTopic"]>)();
      const run = [1, 2].map((seq) => makeEntry({ topic, key: "late", headers: { "x-seq": String(seq) } }));
      const refused = statuses(await h.publisher.publish(run));
      expect(refused, "an entry for a destination that does not exist cannot be reported published").not.toContain(
        "published",
      );
      await create();
      expect(
        statuses(await h.publisher.publish(run)),
        "once the destination exists, the next publish of the key must succeed at once: a key the broker client " +
          "paused after the refusal must be resumed by the call that saw it fail",
      ).toEqual(["published", "published"]);
      const firstSeen = firstArrivals(await receiveAll(h, topic, run));
      const arrival = run.map((e) => firstSeen.get(e.idempotencyKey) ?? -1);
      expect(arrival, "the key's entries must reach the consumer").not.toContain(-1);
      expect(arrival, "the key's entries must first arrive in publish order").toEqual(
        [...arrival].sort((a, b) => a - b),
      );
    },
  },
  "round-trip-edges": {
    title:
      "edge values (empty-string key, unicode key, NUL in header values, empty and binary payloads) arrive exactly",
    async run(h) {
      const topic = await h.topic();
      const entries = [
        makeEntry({ topic, key: "", payload: new TextEncoder().encode("empty key") }),
        makeEntry({ topic, key: "ключ-日本-🔑", payload: new TextEncoder().encode("unicode key") }),
        makeEntry({ topic, key: "nul", headers: { "x-nul": "a\u0000b", "x-tail-nul": "\u0000" } }),
        makeEntry({ topic, key: "empty", payload: new Uint8Array(0), headers: { "x-unicode": "日本語 🚀" } }),
        makeEntry({ topic, key: "binary", payload: new Uint8Array([0, 255, 0, 1, 0xc3, 0x28]) }),
      ];
      const outcomes = await h.publisher.publish(entries);
      expect(outcomes, "publish must return exactly one outcome per entry").toHaveLength(entries.length);
      const sent = entries.filter((_entry, i) => {
        const outcome = outcomes[i] as PublishOutcome;
        if (outcome.status === "published") return true;
        expect(
          outcome.status === "permanent" && OutboxError.is(outcome.error) ? outcome.error.code : outcome,
          `an entry the broker cannot carry exactly (entry ${i}) must be published or refused as permanent with ` +
            "an OutboxError OUTBOX_INVALID_ENTRY, never altered",
        ).toBe(OutboxErrorCode.InvalidEntry);
        return false;
      });
      const received = await h.receive(topic, sent.length, 30_000);
      for (const entry of entries) {
        const match = received.find((m) => m.idempotencyKey === entry.idempotencyKey);
        if (!sent.includes(entry)) {
          expect(match, "a refused entry must not reach the broker").toBeUndefined();
          continue;
        }
        expect(match, `the consumer must receive entry ${entry.id}`).toBeDefined();
        const message = match as ReceivedMessage;
        expect(message.key, `the key must arrive exactly (${JSON.stringify(entry.key)}: "" is not null)`).toBe(
          entry.key,
        );
        expect(
          bytesEqual(message.payload, entry.payload),
          `the payload bytes must arrive unchanged (entry ${entry.id})`,
        ).toBe(true);
        for (const [name, value] of Object.entries(entry.headers)) {
          expect(message.headers[name], `header "${name}" must arrive unchanged (NUL and unicode included)`).toBe(
            value,
          );
        }
      }
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
