import type { ManualClock } from "@outbox/core";
import {
  emptyConsumerStats,
  type HandleResult,
  type InboxConsumerStats,
  type InboxMessage,
  type InboxOptions,
  type InboxStore,
} from "@outbox/inbox";
import { expect } from "vitest";
import { type Check, registerSuite, type SkipReasons } from "./suite.js";
import { bytesEqual, uniqueName } from "./util.js";

export interface InboxStoreHarness<Tx> {
  /** A store created with its own fresh namespace (table, schema...). */
  readonly store: InboxStore<Tx>;
  /** The clock the checks hand to `createInbox` (time of recorded keys). */
  readonly clock: ManualClock;
  /**
   * Writes the business effect `name` inside `tx`, the handler's transaction (a row in an effects table of the
   * harness; for an in-memory store, a write applied at commit).
   */
  effect(tx: Tx, name: string): Promise<void>;
  /** How many committed effects are named `name`. */
  countEffects(name: string): Promise<number>;
  /**
   * Optional: a second, independent store instance on the same namespace (another consumer process: its own
   * connections, nothing shared in memory), closed by `teardown`. Concurrent deliveries race across both.
   */
  peer?(): Promise<InboxStore<Tx>>;
  /** Drops the namespace and closes clients. */
  teardown(): Promise<void>;
}

export interface InboxStoreConformanceOptions<Tx> {
  name: string;
  /** Builds a store on a fresh namespace; the checks drive time with the given manual clock. */
  create(clock: ManualClock): Promise<InboxStoreHarness<Tx>>;
  skip?: SkipReasons<InboxStoreCheckId>;
  /** Time per check, harness setup included. Default 60 s. */
  timeoutMs?: number;
}

type Harness = InboxStoreHarness<unknown>;

async function inboxOf(h: Harness, options: Partial<InboxOptions<unknown>> = {}, store = h.store) {
  const { createInbox } = await import("@outbox/inbox");
  return createInbox({ store, clock: h.clock, consumer: "kit", onError: () => undefined, ...options });
}

function message(id: string, extra: Partial<InboxMessage> = {}): InboxMessage {
  return { id, payload: `payload of ${id}`, headers: { "x-kit": id }, ...extra };
}

/** Resolves after `ms` of real time (lets a concurrent delivery reach the store). */
const pause = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => null,
    (error: unknown) => error,
  );
}

/** What `stats(consumer)` answers for a consumer that recorded nothing. */
const noStats = emptyConsumerStats;

export const inboxStoreChecks = {
  "handle-once": {
    title: "a message is handled once: its redelivery is a duplicate and runs no handler",
    async run(h) {
      const inbox = await inboxOf(h);
      const id = uniqueName("m");
      let calls = 0;
      const handler = async (tx: unknown) => {
        calls += 1;
        await h.effect(tx, id);
        return "done";
      };
      const first = await inbox.handle(message(id), handler);
      expect(first, "the first delivery must run the handler and report handled").toMatchObject({
        status: "handled",
        messageId: id,
        result: "done",
      });
      const second = await inbox.handle(message(id), handler);
      expect(second.status, "a redelivery of a handled message must be reported as a duplicate").toBe("duplicate");
      expect(calls, "a duplicate must not run the handler").toBe(1);
      expect(await h.countEffects(id), "exactly one effect must be committed").toBe(1);
    },
  },
  "dedupe-key": {
    title: "the idempotency key is the dedupe key (the id when there is none), per consumer",
    async run(h) {
      const inbox = await inboxOf(h);
      const idem = uniqueName("idem");
      const handler = (name: string) => async (tx: unknown) => h.effect(tx, name);
      expect((await inbox.handle(message("a-1", { idempotencyKey: idem }), handler(idem))).status).toBe("handled");
      expect(
        (await inbox.handle(message("a-2", { idempotencyKey: idem }), handler(idem))).status,
        "two messages with one idempotency key (different ids) must be handled once",
      ).toBe("duplicate");
      const plain = uniqueName("plain");
      expect((await inbox.handle(message(plain), handler(plain))).status).toBe("handled");
      expect(
        (await inbox.handle(message(plain), handler(plain))).status,
        "without an idempotency key, the message id must be the dedupe key",
      ).toBe("duplicate");
      const other = await inboxOf(h, { consumer: "kit-other" });
      expect(
        (await other.handle(message("a-1", { idempotencyKey: idem }), handler(idem))).status,
        "keys are per consumer: another consumer name must handle the message again",
      ).toBe("handled");
      expect(await h.countEffects(idem), "one effect per consumer").toBe(2);
    },
  },
  "concurrent-deliveries": {
    title: "the same message delivered to two consumers at once commits exactly one handler effect",
    async run(h) {
      const peerStore = h.peer ? await h.peer() : h.store;
      const inboxes = [await inboxOf(h), await inboxOf(h, {}, peerStore)];
      for (let round = 0; round < 5; round++) {
        const id = uniqueName(`race${round}`);
        let entered = 0;
        let release!: () => void;
        const gate = new Promise<void>((resolve) => {
          release = resolve;
        });
        let timer: ReturnType<typeof setTimeout> | undefined;
        // Each handler writes its effect and waits: until both are in (a broken store), or until the other
        // delivery had time to reach the store and block on the key (a correct one).
        const handler = async (tx: unknown) => {
          await h.effect(tx, id);
          entered += 1;
          if (entered >= 2) release();
          else timer = setTimeout(release, 150);
          await gate;
        };
        const results = await Promise.allSettled(inboxes.map((inbox) => inbox.handle(message(id), handler)));
        clearTimeout(timer);
        const statuses = results.map((r) => (r.status === "fulfilled" ? r.value.status : `rejected: ${r.reason}`));
        expect(
          statuses.filter((s) => s === "handled"),
          `exactly one of two concurrent deliveries must be handled, the other a duplicate (got ${statuses.join(", ")})`,
        ).toHaveLength(1);
        expect(
          statuses.filter((s) => s === "duplicate"),
          "the other delivery must be reported as a duplicate",
        ).toEqual(["duplicate"]);
        expect(await h.countEffects(id), "two concurrent deliveries must commit exactly one effect").toBe(1);
      }
    },
  },
  "rollback-leaves-no-key": {
    title: "a failing handler rolls back its effect and the key; the error surfaces; the redelivery runs again",
    async run(h) {
      // A store without transactions (declared `transactions: false`) cannot undo the handler's writes: only the
      // key and the redelivery are checked there.
      const transactional = h.store.capabilities.transactions;
      const inbox = await inboxOf(h, { maxAttempts: 10 });
      const id = uniqueName("fail");
      const boom = new Error("handler failed on purpose");
      const error = await rejection(
        inbox.handle(message(id), async (tx) => {
          await h.effect(tx, id);
          throw boom;
        }),
      );
      expect(error, "handle must reject with the handler's own error (the broker redelivers)").toBe(boom);
      if (transactional) expect(await h.countEffects(id), "a rolled-back handler must leave no effect").toBe(0);
      const again = await inbox.handle(message(id), (tx) => h.effect(tx, id));
      expect(again.status, "a rolled-back handler must leave no key: the redelivery must run the handler").toBe(
        "handled",
      );
      if (transactional) expect(await h.countEffects(id)).toBe(1);
    },
  },
  retention: {
    title: "purge never drops a key younger than the window, and drops older ones",
    async run(h) {
      const windowMs = 60_000;
      const inbox = await inboxOf(h, { retentionMs: windowMs });
      const id = uniqueName("kept");
      await inbox.handle(message(id), (tx) => h.effect(tx, id));
      h.clock.advance(windowMs - 1);
      const young = uniqueName("young");
      await inbox.handle(message(young), (tx) => h.effect(tx, young));
      await inbox.purge();
      expect(
        (await inbox.handle(message(id), (tx) => h.effect(tx, id))).status,
        "a key younger than the retention window must survive purge (its redelivery is a duplicate)",
      ).toBe("duplicate");
      h.clock.advance(2);
      expect(await inbox.purge(), "purge must report the keys it dropped").toBeGreaterThanOrEqual(1);
      expect(
        (await inbox.handle(message(young), (tx) => h.effect(tx, young))).status,
        "a key recorded one window ago minus 1 ms must still be kept",
      ).toBe("duplicate");
      expect(
        (await inbox.handle(message(id), (tx) => h.effect(tx, id))).status,
        "a key older than the window must be purged (the duplicate window is the retention)",
      ).toBe("handled");
    },
  },
  "dead-letters": {
    title: "after maxAttempts failures the message is a dead letter (listed with its error); requeue runs it again",
    async run(h) {
      const inbox = await inboxOf(h, { maxAttempts: 3 });
      const id = uniqueName("dead");
      const payload = new Uint8Array([0, 1, 2, 255]);
      const input = message(id, { key: "k", topic: "orders", payload, headers: { "x-kit": "dead" } });
      let calls = 0;
      const failing = async () => {
        calls += 1;
        throw new Error(`handler failure ${calls}`);
      };
      for (let attempt = 1; attempt <= 2; attempt++) {
        expect(await rejection(inbox.handle(input, failing)), `attempt ${attempt} of 3 must rethrow`).toBeInstanceOf(
          Error,
        );
      }
      const third: HandleResult<unknown> = await inbox.handle(input, failing);
      expect(third.status, "the maxAttempts-th failure must move the message to the dead letters").toBe("dead");
      const dead = await inbox.listDead();
      expect(
        dead.map((d) => d.messageId),
        "listDead must list the dead message",
      ).toEqual([id]);
      const [letter] = dead;
      expect(letter?.attempts, "a dead letter must carry its attempt count").toBe(3);
      expect(letter?.error, "a dead letter must carry the handler's last error").toContain("handler failure 3");
      expect(letter?.message.key).toBe("k");
      expect(letter?.message.topic).toBe("orders");
      expect(letter?.message.headers, "a dead letter must keep the message's headers").toEqual({ "x-kit": "dead" });
      const stored = letter?.message.payload;
      expect(
        stored instanceof Uint8Array && bytesEqual(stored, payload),
        "a dead letter must keep the payload bytes",
      ).toBe(true);
      expect((await inbox.handle(input, failing)).status, "a dead message's redelivery must report dead").toBe("dead");
      expect(calls, "a dead message's redelivery must not run the handler").toBe(3);

      expect(await inbox.requeueDead([id, "not-dead"]), "requeueDead must report how many moved").toBe(1);
      expect(await inbox.listDead(), "a requeued message must leave the dead letters").toEqual([]);
      const retried = await inbox.handle(input, failing).catch((error: unknown) => error);
      expect(retried, "a requeued message must start again with a fresh attempt count").toBeInstanceOf(Error);
      expect(calls).toBe(4);
      const handled = await inbox.handle(input, (tx) => h.effect(tx, id));
      expect(handled.status, "a requeued message must be handled on its next delivery").toBe("handled");
      expect(await h.countEffects(id)).toBe(1);

      const dropped = uniqueName("drop");
      const once = await inboxOf(h, { maxAttempts: 1 });
      expect((await once.handle(message(dropped), failing)).status, "maxAttempts 1 dead-letters at once").toBe("dead");
      expect(await once.dropDead([dropped]), "dropDead must report how many it discarded").toBe(1);
      expect(await once.listDead()).toEqual([]);
      expect(
        (await once.handle(message(dropped), (tx) => h.effect(tx, dropped))).status,
        "a dropped dead letter counts as handled: its redelivery is a duplicate",
      ).toBe("duplicate");
    },
  },
  "dead-letter-pages": {
    title: "listDead pages by message id with limit and after",
    async run(h) {
      const inbox = await inboxOf(h, { maxAttempts: 1 });
      const prefix = uniqueName("page");
      const ids = [3, 1, 4, 2, 5].map((n) => `${prefix}-${n}`);
      for (const id of ids) await inbox.handle(message(id), () => Promise.reject(new Error("no")));
      const first = await inbox.listDead({ limit: 2 });
      const rest = await inbox.listDead({ after: first.at(-1)?.messageId ?? "" });
      expect(
        [...first, ...rest].map((d) => d.messageId),
        "listDead must return dead letters ordered by message id, limit and after paging on",
      ).toEqual([...ids].sort());
      expect(first).toHaveLength(2);
    },
  },
  stats: {
    title: "stats counts each consumer's processed keys, dead letters and failing messages, with their times",
    async run(h) {
      const consumer = uniqueName("stats");
      const other = `${consumer}-other`;
      expect(await h.store.stats(consumer), "a consumer that recorded nothing has zeros and no times").toEqual([
        noStats(consumer),
      ]);
      const inbox = await inboxOf(h, { consumer, maxAttempts: 2 });
      const failing = () => Promise.reject(new Error("stats: handler failure"));
      const start = h.clock.now();
      for (const n of [1, 2, 3]) {
        const id = `${consumer}-ok-${n}`;
        expect((await inbox.handle(message(id), (tx) => h.effect(tx, id))).status).toBe("handled");
        h.clock.advance(1_000);
      }
      const failingId = `${consumer}-failing`;
      expect(await rejection(inbox.handle(message(failingId), failing)), "one failure of two").toBeInstanceOf(Error);
      const deadId = `${consumer}-dead`;
      await rejection(inbox.handle(message(deadId), failing));
      h.clock.advance(500);
      expect((await inbox.handle(message(deadId), failing)).status).toBe("dead");
      const others = await inboxOf(h, { consumer: other });
      expect((await others.handle(message(`${consumer}-ok-1`), async () => undefined)).status).toBe("handled");

      const mine: InboxConsumerStats = {
        consumer,
        processed: 3,
        dead: 1,
        failing: 1,
        oldestProcessedAt: new Date(start),
        newestProcessedAt: new Date(start + 2_000),
        oldestDeadAt: new Date(start + 3_500),
      };
      expect(
        await h.store.stats(consumer),
        "stats(consumer) must count that consumer's processed keys, dead letters and failing messages only",
      ).toEqual([mine]);
      const theirs = { ...noStats(other), processed: 1, oldestProcessedAt: new Date(start + 3_500) };
      const all = await h.store.stats();
      expect(
        all.filter((stats) => stats.consumer === consumer || stats.consumer === other),
        "stats() must give every consumer's numbers, the same as stats(consumer)",
      ).toEqual([mine, { ...theirs, newestProcessedAt: theirs.oldestProcessedAt }]);
      const names = all.map((stats) => stats.consumer);
      expect(names, "stats() must order consumers by name").toEqual([...names].sort());

      expect((await inbox.handle(message(failingId), (tx) => h.effect(tx, failingId))).status).toBe("handled");
      expect(await inbox.dropDead([deadId])).toBe(1);
      const [settled] = await h.store.stats(consumer);
      expect(
        settled,
        "a failing message handled at last, and a dropped dead letter, count as processed (and not failing or dead)",
      ).toMatchObject({ processed: 5, dead: 0, failing: 0, oldestDeadAt: null, oldestProcessedAt: new Date(start) });

      await h.store.purge({ olderThan: new Date(start + 1) });
      expect(
        (await h.store.stats(consumer))[0],
        "a purged key must leave the count, and the oldest time move to the oldest key left",
      ).toMatchObject({ processed: 4, oldestProcessedAt: new Date(start + 1_000) });
      expect(
        await rejection(h.store.stats("")),
        "stats with an empty consumer name must fail with OUTBOX_INVALID_OPTIONS",
      ).toMatchObject({ code: "OUTBOX_INVALID_OPTIONS" });
    },
  },
  "key-order": {
    title: "messages of one key are handled one at a time, in call order",
    async run(h) {
      const inbox = await inboxOf(h);
      const key = uniqueName("key");
      const log: string[] = [];
      let active = 0;
      let overlap = false;
      const calls = Array.from({ length: 6 }, (_, i) =>
        inbox.handle(message(`${key}-${i}`, { key }), async (tx) => {
          active += 1;
          if (active > 1) overlap = true;
          await pause(i % 2 === 0 ? 15 : 1);
          await h.effect(tx, key);
          log.push(String(i));
          active -= 1;
          if (i === 2) throw new Error("a failure must not break the key's order");
        }),
      );
      await Promise.allSettled(calls);
      expect(overlap, "two messages of one key must never be handled at the same time").toBe(false);
      expect(log, "a key's messages must be handled in call order").toEqual(["0", "1", "2", "3", "4", "5"]);
      // Without transactions (`transactions: false`) the failed handler's write stays: nothing to check there.
      if (h.store.capabilities.transactions) {
        expect(await h.countEffects(key), "the failed message's effect must be rolled back").toBe(5);
      }
    },
  },
} satisfies Record<string, Check<Harness>>;

export type InboxStoreCheckId = keyof typeof inboxStoreChecks;

/** The in-memory reference store as a harness (effects are applied at commit). */
export async function memoryInboxStoreHarness(clock: ManualClock): Promise<InboxStoreHarness<unknown>> {
  const { MemoryInboxStore, MemoryInboxTransaction } = await import("@outbox/inbox");
  const store = new MemoryInboxStore();
  const effects = new Map<string, number>();
  return {
    store: store as InboxStore<unknown>,
    clock,
    async effect(tx, name) {
      if (!(tx instanceof MemoryInboxTransaction)) throw new Error("not a MemoryInboxTransaction");
      tx.onCommit(() => effects.set(name, (effects.get(name) ?? 0) + 1));
    },
    countEffects: async (name) => effects.get(name) ?? 0,
    teardown: () => store.close(),
  };
}

/** The store's own methods, bound, with some replaced: for fault-injecting wrappers. */
export function wrapInboxStore<Tx>(inner: InboxStore<Tx>, overrides: Partial<InboxStore<Tx>>): InboxStore<Tx> {
  return {
    capabilities: inner.capabilities,
    transaction: (work) => inner.transaction(work),
    record: (tx, record) => inner.record(tx, record),
    recordFailure: (failure) => inner.recordFailure(failure),
    deadLetter: (item) => inner.deadLetter(item),
    listDead: (consumer, options) => inner.listDead(consumer, options),
    requeueDead: (consumer, ids) => inner.requeueDead(consumer, ids),
    dropDead: (consumer, ids) => inner.dropDead(consumer, ids),
    purge: (request) => inner.purge(request),
    stats: (consumer) => inner.stats(consumer),
    close: () => inner.close(),
    ...overrides,
  };
}

/** Registers the inbox store conformance suite. Call it at the top level of a vitest test file. */
export function describeInboxStoreConformance<Tx>(options: InboxStoreConformanceOptions<Tx>): void {
  registerSuite<Harness, InboxStoreCheckId>("inbox store conformance", inboxStoreChecks, {
    name: options.name,
    create: async () => {
      const { ManualClock } = await import("@outbox/core");
      return (await options.create(new ManualClock())) as Harness;
    },
    dispose: (h) => h.teardown(),
    skip: options.skip,
    timeoutMs: options.timeoutMs ?? 60_000,
  });
}
