import {
  type LockBackend,
  ManualClock,
  MemoryLockBackend,
  MemoryPublisher,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  type OutboxPublisher,
  OutboxRelay,
  type OutboxRelayOptions,
  type OutboxStore,
  published,
  transientFailure,
} from "@outbox/core";
import { expect } from "vitest";
import type { StoreHarness } from "./store.js";
import { type Check, registerSuite, type SkipReasons } from "./suite.js";
import { deferred, keyOrderViolations, seededRandom, uniqueName, wrapStore } from "./util.js";

/** What the relay checks drive: any relay-shaped object (the real one, or a deliberately broken one). */
export interface RelayUnderTest {
  runOnce(): Promise<number>;
}

export type RelayFactory = (options: OutboxRelayOptions) => RelayUnderTest;

export interface RealTimeLockBackend {
  readonly backend: LockBackend;
  expire(name: string): Promise<void>;
}

export interface RelayConformanceOptions<Tx> {
  name: string;
  /** The store under test, on a fresh namespace, driven by `clock`. */
  createStore(clock: ManualClock): Promise<StoreHarness<Tx>>;
  /**
   * A lock backend for the leader checks. Default: the in-memory one on the same clock. A backend
   * whose TTLs run on real time also returns `expire(name)`, which ends a holding at once (e.g. DEL
   * the key): the checks call it where they let the lock's TTL pass on the manual clock.
   */
  createLockBackend?(clock: ManualClock): Promise<LockBackend | RealTimeLockBackend>;
  /** Default: `new OutboxRelay(options)`. */
  createRelay?: RelayFactory;
  skip?: SkipReasons<RelayCheckId>;
  timeoutMs?: number;
}

interface Context {
  harness: StoreHarness<unknown>;
  clock: ManualClock;
  lockBackend: LockBackend;
  /** Ends a holding whose TTL the manual clock says has passed; a no-op for clock-driven backends. */
  expireLock(name: string): Promise<void>;
  createRelay: RelayFactory;
}

const seqHeader = "x-relay-seq";

function messages(count: number, keys: number, topic = "relay"): OutboxMessage[] {
  return Array.from({ length: count }, (_, i) => ({
    topic,
    key: keys > 0 ? `key-${i % keys}` : null,
    payload: `entry-${i}`,
    headers: { [seqHeader]: String(i) },
  }));
}

async function fill(c: Context, batch: OutboxMessage[]): Promise<void> {
  await c.harness.transaction((tx) => c.harness.store.enqueue(tx, batch));
}

/** A publisher that "dies" with its relay: after kill(), nothing it is handed is published. */
class Killable {
  dead = false;
  constructor(readonly tag: string) {}
  kill(): never {
    this.dead = true;
    throw new Error(`relay ${this.tag} was killed`);
  }
  guard(): void {
    if (this.dead) throw new Error(`relay ${this.tag} is dead`);
  }
}

/** Wraps a store so that every call from a dead relay fails, and a hook can kill it mid-flight. */
function killableStore(
  store: OutboxStore<never>,
  life: Killable,
  hooks: { beforeAck?: () => void } = {},
): OutboxStore<never> {
  const guarded =
    <A extends unknown[], R>(call: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      life.guard();
      return call(...args);
    };
  return wrapStore(store, {
    claim: guarded((r) => store.claim(r)),
    ack: guarded(async (ids, c) => {
      hooks.beforeAck?.();
      return store.ack(ids, c);
    }),
    retry: guarded((items, c) => store.retry(items, c)),
    deadLetter: guarded((items, c) => store.deadLetter(items, c)),
    release: guarded((ids, c) => store.release(ids, c)),
  });
}

function killablePublisher(
  inner: OutboxPublisher,
  life: Killable,
  hooks: { beforePublish?: () => void } = {},
): OutboxPublisher {
  return {
    async publish(entries) {
      life.guard();
      hooks.beforePublish?.();
      return inner.publish(entries);
    },
  };
}

const seqOf = (m: { headers: Readonly<Record<string, string>> }): number => Number(m.headers[seqHeader]);

function firstOccurrences(broker: MemoryPublisher): Array<{ key: string | null; seq: number }> {
  const seen = new Set<number>();
  const firsts: Array<{ key: string | null; seq: number }> = [];
  for (const m of broker.messages) {
    const seq = seqOf(m);
    if (seen.has(seq)) continue;
    seen.add(seq);
    firsts.push({ key: m.key, seq });
  }
  return firsts;
}

function deliveredSeqs(broker: MemoryPublisher): Set<number> {
  return new Set(broker.messages.map(seqOf));
}

const base = (c: Context, publisher: OutboxPublisher, store = c.harness.store as OutboxStore<never>) => ({
  store,
  publisher,
  clock: c.clock,
  batchSize: 10,
  leaseMs: 30_000,
  retry: { maxAttempts: 1_000, baseDelayMs: 100, maxDelayMs: 2_000 },
});

export const relayChecks = {
  "at-least-once-flaky-publisher": {
    title: "every entry is published despite a publisher failing at random, per-key order kept",
    async run(c) {
      await fill(c, messages(150, 10));
      const random = seededRandom(42);
      const broker = new MemoryPublisher({
        outcome: () => (random() < 0.3 ? transientFailure(new Error("broker hiccup")) : published()),
      });
      const relay = c.createRelay({ ...base(c, broker), random });
      for (let i = 0; i < 2_000 && deliveredSeqs(broker).size < 150; i++) {
        await relay.runOnce();
        c.clock.advance(250);
      }
      expect(deliveredSeqs(broker).size).toBe(150);
      expect(keyOrderViolations(firstOccurrences(broker))).toEqual([]);
      expect((await c.harness.store.stats()).pending).toBe(0);
    },
  },
  "crash-during-publish": {
    title: "a relay killed while publishing loses nothing: the next relay publishes its batch",
    async run(c) {
      await fill(c, messages(30, 3));
      const broker = new MemoryPublisher();
      const life = new Killable("A");
      const store = killableStore(c.harness.store as OutboxStore<never>, life);
      const relayA = c.createRelay(
        base(c, killablePublisher(broker, life, { beforePublish: () => life.kill() }), store),
      );
      await relayA.runOnce().catch(() => 0);
      expect(life.dead).toBe(true);
      c.clock.advance(30_001);
      const relayB = c.createRelay(base(c, broker));
      for (let i = 0; i < 20; i++) await relayB.runOnce();
      expect(deliveredSeqs(broker).size).toBe(30);
      expect(keyOrderViolations(firstOccurrences(broker))).toEqual([]);
    },
  },
  "crash-between-publish-and-ack": {
    title: "a relay killed after publishing, before acking: nothing lost, duplicates bounded by its batch",
    async run(c) {
      await fill(c, messages(30, 3));
      const broker = new MemoryPublisher();
      const life = new Killable("A");
      const store = killableStore(c.harness.store as OutboxStore<never>, life, { beforeAck: () => life.kill() });
      const relayA = c.createRelay(base(c, killablePublisher(broker, life), store));
      await relayA.runOnce().catch(() => 0);
      expect(life.dead).toBe(true);
      const publishedByA = broker.messages.length;
      c.clock.advance(30_001);
      const relayB = c.createRelay(base(c, broker));
      for (let i = 0; i < 20; i++) await relayB.runOnce();
      expect(deliveredSeqs(broker).size).toBe(30);
      const duplicates = broker.messages.length - 30;
      expect(duplicates).toBeLessThanOrEqual(publishedByA);
      expect(keyOrderViolations(firstOccurrences(broker))).toEqual([]);
    },
  },
  "key-order-concurrent-relays": {
    title: "three relays draining one outbox concurrently keep per-key order",
    async run(c) {
      await fill(c, messages(120, 6));
      const random = seededRandom(7);
      const broker = new MemoryPublisher({
        outcome: () => (random() < 0.2 ? transientFailure(new Error("flaky")) : published()),
      });
      const relays = [1, 2, 3].map(() => c.createRelay({ ...base(c, broker), batchSize: 4, random }));
      for (let i = 0; i < 1_000 && deliveredSeqs(broker).size < 120; i++) {
        await Promise.all(relays.map((relay) => relay.runOnce()));
        c.clock.advance(500);
      }
      expect(deliveredSeqs(broker).size).toBe(120);
      expect(keyOrderViolations(firstOccurrences(broker))).toEqual([]);
    },
  },
  "permanent-failure-isolated": {
    title: "a permanently failing entry is dead-lettered alone and does not block other keys",
    async run(c) {
      await fill(c, messages(20, 4));
      const broker = new MemoryPublisher({
        outcome: (entry: OutboxEntry) =>
          seqOf(entry) === 5 ? { status: "permanent", error: new Error("unroutable") } : published(),
      });
      const relay = c.createRelay(base(c, broker));
      for (let i = 0; i < 20; i++) await relay.runOnce();
      expect([...deliveredSeqs(broker)].sort((a, b) => a - b)).toEqual(
        Array.from({ length: 20 }, (_, i) => i).filter((i) => i !== 5),
      );
      const dead = await c.harness.store.listDead();
      expect(dead.map((e) => seqOf(e))).toEqual([5]);
    },
  },
  "deposed-leader-cannot-ack": {
    title: "a deposed leader neither acks nor claims; the store rejects its stale token",
    async run(c) {
      await fill(c, messages(5, 0));
      const name = uniqueName("leader");
      const leader = { backend: c.lockBackend, name, ttlMs: 3_000 };
      const { promise: stalled, resolve: stall } = deferred();
      const { promise: isPublishing, resolve: publishing } = deferred();
      const broker = new MemoryPublisher();
      let claimedByA: OutboxEntry[] = [];
      const fencesOfA: bigint[] = [];
      // Relay A stalls mid-publish (think GC pause, SIGSTOP) past its lock TTL.
      const slow: OutboxPublisher = {
        async publish(entries) {
          claimedByA = [...entries];
          publishing();
          await stalled;
          return broker.publish(entries);
        },
      };
      const store = c.harness.store as OutboxStore<never>;
      const recordingStore = wrapStore(store, {
        claim: (request) => {
          if (request.fence) fencesOfA.push(request.fence.token);
          return store.claim(request);
        },
      });
      const relayA = c.createRelay({ ...base(c, slow, recordingStore), leader });
      const runA = relayA.runOnce();
      await isPublishing;
      c.clock.advance(3_001);
      await c.expireLock(name);
      const relayB = c.createRelay({ ...base(c, broker), leader });
      // B takes over, but A's entries are still leased: B sees nothing yet.
      expect(await relayB.runOnce()).toBe(0);
      stall();
      await runA.catch(() => 0);
      // A published (the broker has its entries) but must not have acked them.
      expect(broker.messages).toHaveLength(claimedByA.length);
      expect((await c.harness.store.stats()).pending).toBe(5);
      // After the lease, B republishes them: a bounded duplicate, nothing lost.
      c.clock.advance(30_001);
      await relayB.runOnce();
      expect((await c.harness.store.stats()).pending).toBe(5 - claimedByA.length);
      expect(broker.messages).toHaveLength(claimedByA.length * 2);
      // The store itself refuses A's old token.
      const error = await c.harness.store
        .ack(
          claimedByA.map((e) => e.id),
          { claimer: "A", fence: { lock: name, token: fencesOfA[0] as bigint } },
        )
        .then(
          () => null,
          (caught: unknown) => caught,
        );
      expect(OutboxError.is(error, OutboxErrorCode.Fenced)).toBe(true);
    },
  },
  "stop-drains": {
    title: "stop() finishes the in-flight batch, then claims nothing more",
    async run(c) {
      await fill(c, messages(25, 0));
      const broker = new MemoryPublisher();
      const { promise: publishing, resolve: inPublish } = deferred();
      const { promise: mayFinish, resolve: finish } = deferred();
      let calls = 0;
      const gated: OutboxPublisher = {
        async publish(entries) {
          calls += 1;
          inPublish();
          await mayFinish;
          return broker.publish(entries);
        },
      };
      const relay = new OutboxRelay({ ...base(c, gated), pollMs: 1_000 });
      relay.start();
      await publishing;
      const stopping = relay.stop();
      finish();
      await stopping;
      expect(calls).toBe(1);
      expect(broker.messages).toHaveLength(10);
      expect((await c.harness.store.stats()).pending).toBe(15);
      expect((await c.harness.store.stats()).inFlight).toBe(0);
    },
  },
} satisfies Record<string, Check<Context>>;

export type RelayCheckId = keyof typeof relayChecks;

/** The real relay, with its (expected) error reports collected instead of logged. */
function quietRelay(options: OutboxRelayOptions): RelayUnderTest {
  const relay = new OutboxRelay(options);
  relay.on("error", () => {});
  return relay;
}

/** Registers the relay conformance suite: the relay loop over the given store (and lock backend). */
export function describeRelayConformance<Tx>(options: RelayConformanceOptions<Tx>): void {
  registerSuite<Context, RelayCheckId>("relay conformance", relayChecks, {
    name: options.name,
    create: async () => {
      const clock = new ManualClock();
      const harness = (await options.createStore(clock)) as StoreHarness<unknown>;
      const created = options.createLockBackend
        ? await options.createLockBackend(clock)
        : new MemoryLockBackend({ clock });
      const realTime = "expire" in created ? created : null;
      return {
        harness,
        clock,
        lockBackend: realTime ? realTime.backend : (created as LockBackend),
        expireLock: async (name: string) => {
          await realTime?.expire(name);
        },
        createRelay: options.createRelay ?? quietRelay,
      };
    },
    dispose: async (c) => {
      await c.lockBackend.close?.();
      await c.harness.teardown();
    },
    skip: options.skip,
    timeoutMs: options.timeoutMs ?? 120_000,
  });
}
