import {
  type Fence,
  heldBack,
  KeyFailures,
  type LockBackend,
  ManualClock,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  type OutboxPublisher,
  OutboxRelay,
  type OutboxRelayOptions,
  type OutboxStore,
  type PublishOutcome,
  permanentFailure,
  transientFailure,
} from "@outbox/core";
import { MemoryLockBackend, MemoryPublisher } from "@outbox/memory";
import { expect } from "vitest";
import type { PublisherHarness } from "./publisher.js";
import type { StoreHarness } from "./store.js";
import { type Check, registerSuite, type SkipReasons } from "./suite.js";
import { deferred, keyOrderViolations, seededRandom, uniqueName, wrapStore } from "./util.js";

/** What the relay checks drive: any relay-shaped object (the real one, or a deliberately broken one). */
export interface RelayUnderTest {
  /** One claim -> publish -> settle cycle; resolves with how many entries it claimed. */
  runOnce(): Promise<number>;
  /** Starts the background loop (`stop-drains` needs it, with `stop`). */
  start?(): void;
  /** Stops claiming and resolves once the in-flight batches are published and settled. */
  stop?(): Promise<void>;
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
  /**
   * The publisher under test with a real consumer (the publisher suite's harness). Default: the
   * in-memory reference publisher. Failures are injected in front of it by the checks.
   */
  createPublisher?(): Promise<PublisherHarness>;
  /** Builds every relay the checks run. Default: `new OutboxRelay(options)` with its errors silenced. */
  createRelay?: RelayFactory;
  skip?: SkipReasons<RelayCheckId>;
  /** Time per check, harness setup included. Default 120 s; a check past it fails, named. */
  timeoutMs?: number;
}

export interface RelayCheckContext {
  harness: StoreHarness<unknown>;
  clock: ManualClock;
  lockBackend: LockBackend;
  /** Ends a holding whose TTL the manual clock says has passed; a no-op for clock-driven backends. */
  expireLock(name: string): Promise<void>;
  createRelay: RelayFactory;
  broker: Broker;
  /** Releases what the broker harness holds. */
  closeBroker(): Promise<void>;
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

async function fill(c: RelayCheckContext, batch: OutboxMessage[]): Promise<void> {
  await c.harness.transaction((tx) => c.harness.store.enqueue(tx, batch));
}

/** A publisher that "dies" with its relay: after kill(), nothing it is handed is published. */
class Killable {
  dead = false;
  readonly tag: string;
  constructor(tag: string) {
    this.tag = tag;
  }
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

/** What a consumer of the broker received, in order. */
interface Delivered {
  readonly key: string | null;
  readonly headers: Readonly<Record<string, string>>;
}

/**
 * The broker the relay publishes to: the adapter's real publisher with a real consumer, or the
 * in-memory reference. Failures are injected in front of it, so any publisher can be used.
 */
interface Broker {
  readonly publisher: OutboxPublisher;
  readonly topic: string;
  /** Everything delivered to `topic` so far; waits until at least `atLeast` arrived. */
  received(atLeast: number): Promise<Delivered[]>;
}

function firstOccurrences(delivered: readonly Delivered[]): Array<{ key: string | null; seq: number }> {
  const seen = new Set<number>();
  const firsts: Array<{ key: string | null; seq: number }> = [];
  for (const m of delivered) {
    const seq = seqOf(m);
    if (seen.has(seq)) continue;
    seen.add(seq);
    firsts.push({ key: m.key, seq });
  }
  return firsts;
}

const distinctSeqs = (delivered: readonly Delivered[]): Set<number> => new Set(delivered.map(seqOf));

/**
 * Decides some entries' fate before they reach the broker; the rest go to `inner`. Honours the
 * run contract: after a decided failure, the rest of that key's run is held back.
 */
function deciding(inner: OutboxPublisher, decide: (entry: OutboxEntry) => PublishOutcome | null): OutboxPublisher {
  return {
    async publish(entries, options) {
      const failed = new KeyFailures();
      const decided = entries.map((entry) => {
        if (failed.blocked(entry)) return heldBack(entry);
        const outcome = decide(entry);
        if (outcome && outcome.status !== "published") failed.fail(entry);
        return outcome;
      });
      const toSend = entries.filter((_, i) => decided[i] === null);
      const sent = toSend.length > 0 ? await inner.publish(toSend, options) : [];
      let next = 0;
      return decided.map((outcome) => outcome ?? (sent[next++] as PublishOutcome));
    },
  };
}

/** Runs cycles of `relays`, advancing the clock between them, until the outbox is empty. */
async function drainAll(
  c: RelayCheckContext,
  relays: RelayUnderTest[],
  stepMs: number,
  maxRounds = 2_000,
): Promise<void> {
  for (let round = 0; round < maxRounds && (await c.harness.store.stats()).pending > 0; round++) {
    await Promise.all(relays.map((relay) => relay.runOnce()));
    c.clock.advance(stepMs);
  }
  expect((await c.harness.store.stats()).pending, `the relays must drain the outbox within ${maxRounds} cycles`).toBe(
    0,
  );
}

const base = (c: RelayCheckContext, publisher: OutboxPublisher, store = c.harness.store as OutboxStore<never>) => ({
  store,
  publisher,
  clock: c.clock,
  batchSize: 10,
  leaseMs: 30_000,
  retry: { maxAttempts: 1_000, baseDelayMs: 100, maxDelayMs: 2_000 },
});

/** The relay factory's relays can run in the background (`start`/`stop`); a reason to skip otherwise. */
function needsStartStop(c: RelayCheckContext): string | null {
  const probe = c.createRelay(base(c, c.broker.publisher));
  return typeof probe.start === "function" && typeof probe.stop === "function"
    ? null
    : "the relay factory's relays have no start()/stop()";
}

/**
 * Counts the store calls a relay has running and has made, so a check can wait until the relay
 * has nothing more to do ("quiet") without sleeping real time.
 */
function busyStore(store: OutboxStore<never>): { store: OutboxStore<never>; pending(): number; calls(): number } {
  let pending = 0;
  let calls = 0;
  const tracked =
    <A extends unknown[], R>(call: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      pending += 1;
      calls += 1;
      try {
        return await call(...args);
      } finally {
        pending -= 1;
      }
    };
  const releaseClaimer = store.releaseClaimer?.bind(store);
  return {
    store: wrapStore(store, {
      claim: tracked((request) => store.claim(request)),
      ack: tracked((ids, context) => store.ack(ids, context)),
      retry: tracked((items, context) => store.retry(items, context)),
      deadLetter: tracked((items, context) => store.deadLetter(items, context)),
      release: tracked((ids, context) => store.release(ids, context)),
      ...(releaseClaimer ? { releaseClaimer: tracked(releaseClaimer) } : {}),
    }),
    pending: () => pending,
    calls: () => calls,
  };
}

const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Waits (in event-loop turns, not real time) until no store call runs and `activity` stopped
 * changing for a while; gives up after many turns (a relay that never stops is then judged as is).
 */
async function quiet(pending: () => number, activity: () => number): Promise<void> {
  let last = -1;
  let still = 0;
  for (let turns = 0; turns < 20_000 && still < 50; turns++) {
    await turn();
    const now = activity();
    if (now === last && pending() === 0) still += 1;
    else {
      still = 0;
      last = now;
    }
  }
}

/** How often the relay handed each entry (by sequence number) to its publisher. */
function handedCounts(): { counts: Map<number, number>; count(entries: readonly OutboxEntry[]): void } {
  const counts = new Map<number, number>();
  return {
    counts,
    count(entries) {
      for (const e of entries) counts.set(seqOf(e), (counts.get(seqOf(e)) ?? 0) + 1);
    },
  };
}

/** The poison-guard checks' small retry policy: a handful of claims, not 1000. */
const smallMaxAttempts = 3;

/**
 * Lets the relay crash `rounds` times while publishing `seq` (killed before the broker answers,
 * nothing settled), each crash followed by the lease running out. Returns how many times the
 * entry reached a publisher; stops early once `stop()` says so.
 */
async function crashWhilePublishing(
  c: RelayCheckContext,
  seq: number,
  rounds: number,
  handed: ReturnType<typeof handedCounts>,
  stop: () => Promise<boolean> = async () => false,
): Promise<void> {
  for (let round = 0; round < rounds && !(await stop()); round++) {
    const life = new Killable(`crash-${round}`);
    const store = killableStore(c.harness.store as OutboxStore<never>, life);
    const crashing: OutboxPublisher = {
      async publish(entries, options) {
        handed.count(entries);
        if (entries.some((e) => seqOf(e) === seq)) life.kill();
        return c.broker.publisher.publish(entries, options);
      },
    };
    const relay = c.createRelay({
      ...base(c, killablePublisher(crashing, life), store),
      retry: { ...base(c, crashing).retry, maxAttempts: smallMaxAttempts },
    });
    await relay.runOnce().catch(() => 0);
    c.clock.advance(30_001);
  }
}

const isDead = async (c: RelayCheckContext, seq: number): Promise<boolean> =>
  (await c.harness.store.listDead({ limit: 1_000 })).some((e) => seqOf(e) === seq);

/**
 * A publisher whose broker never answers: each call ends only when its signal aborts (or the check
 * gives up), with transient failures.
 */
function stallingPublisher(): {
  publisher: OutboxPublisher;
  /** Resolves when the first call arrives. */
  handed: Promise<void>;
  signals: Array<AbortSignal | undefined>;
  /** Whether the first call has returned. */
  returned(): boolean;
  giveUp(): void;
} {
  const { promise: handed, resolve: handOver } = deferred();
  const { promise: givenUp, resolve: giveUp } = deferred();
  const signals: Array<AbortSignal | undefined> = [];
  let returned = false;
  return {
    handed,
    signals,
    returned: () => returned,
    giveUp,
    publisher: {
      async publish(entries, options) {
        const signal = options?.signal;
        const first = signals.length === 0;
        signals.push(signal);
        handOver();
        const aborted = new Promise<void>((resolve) => {
          // Without a signal nothing but the check can end the call.
          if (signal?.aborted) resolve();
          else signal?.addEventListener("abort", () => resolve(), { once: true });
        });
        await Promise.race([aborted, givenUp]);
        if (first) returned = true;
        return entries.map(() => transientFailure(new Error("no answer from the broker")));
      },
    },
  };
}

export const relayChecks = {
  "at-least-once-flaky-publisher": {
    title: "every entry is published despite a publisher failing at random, per-key order kept",
    async run(c) {
      await fill(c, messages(150, 10, c.broker.topic));
      const random = seededRandom(42);
      const flaky = deciding(c.broker.publisher, () =>
        random() < 0.3 ? transientFailure(new Error("broker hiccup")) : null,
      );
      await drainAll(c, [c.createRelay({ ...base(c, flaky), random })], 250);
      const delivered = await c.broker.received(150);
      expect(distinctSeqs(delivered).size, "every entry must reach the broker despite transient failures").toBe(150);
      expect(
        keyOrderViolations(firstOccurrences(delivered)),
        "an entry must never reach the broker before an earlier entry of its key",
      ).toEqual([]);
    },
  },
  "crash-during-publish": {
    title: "a relay killed while publishing loses nothing: the next relay publishes its batch",
    async run(c) {
      await fill(c, messages(30, 3, c.broker.topic));
      const life = new Killable("A");
      const store = killableStore(c.harness.store as OutboxStore<never>, life);
      const relayA = c.createRelay(
        base(c, killablePublisher(c.broker.publisher, life, { beforePublish: () => life.kill() }), store),
      );
      await relayA.runOnce().catch(() => 0);
      expect(life.dead, "the relay must claim and publish in runOnce()").toBe(true);
      c.clock.advance(30_001);
      await drainAll(c, [c.createRelay(base(c, c.broker.publisher))], 100);
      const delivered = await c.broker.received(30);
      expect(
        distinctSeqs(delivered).size,
        "a relay killed while publishing must lose nothing: ack only after the broker confirmed",
      ).toBe(30);
      expect(
        keyOrderViolations(firstOccurrences(delivered)),
        "an entry must never reach the broker before an earlier entry of its key",
      ).toEqual([]);
    },
  },
  "crash-between-publish-and-ack": {
    title: "a relay killed after publishing, before acking: nothing lost, duplicates bounded by its batch",
    async run(c) {
      await fill(c, messages(30, 3, c.broker.topic));
      const life = new Killable("A");
      const store = killableStore(c.harness.store as OutboxStore<never>, life, { beforeAck: () => life.kill() });
      let publishedByA = 0;
      const counting: OutboxPublisher = {
        async publish(entries, options) {
          const outcomes = await c.broker.publisher.publish(entries, options);
          publishedByA += outcomes.filter((outcome) => outcome.status === "published").length;
          return outcomes;
        },
      };
      const relayA = c.createRelay(base(c, killablePublisher(counting, life), store));
      await relayA.runOnce().catch(() => 0);
      expect(life.dead, "the relay must ack what it published in runOnce()").toBe(true);
      expect(publishedByA, "the relay must publish before acking").toBeGreaterThan(0);
      c.clock.advance(30_001);
      await drainAll(c, [c.createRelay(base(c, c.broker.publisher))], 100);
      const delivered = await c.broker.received(30 + publishedByA);
      expect(distinctSeqs(delivered).size, "a relay killed before acking must lose nothing").toBe(30);
      expect(
        delivered.length - 30,
        "duplicates after a crash before ack must be bounded by the killed relay's in-flight batch",
      ).toBeLessThanOrEqual(publishedByA);
      expect(
        keyOrderViolations(firstOccurrences(delivered)),
        "an entry must never reach the broker before an earlier entry of its key",
      ).toEqual([]);
    },
  },
  "key-order-concurrent-relays": {
    title: "three relays draining one outbox concurrently keep per-key order",
    async run(c) {
      await fill(c, messages(120, 6, c.broker.topic));
      const random = seededRandom(7);
      const flaky = deciding(c.broker.publisher, () => (random() < 0.2 ? transientFailure(new Error("flaky")) : null));
      const relays = [1, 2, 3].map(() => c.createRelay({ ...base(c, flaky), batchSize: 4, random }));
      await drainAll(c, relays, 500);
      const delivered = await c.broker.received(120);
      expect(distinctSeqs(delivered).size, "concurrent relays together must publish every entry").toBe(120);
      expect(
        keyOrderViolations(firstOccurrences(delivered)),
        "with concurrent relays an entry must never reach the broker before an earlier entry of its key",
      ).toEqual([]);
    },
  },
  "permanent-failure-isolated": {
    title: "a permanently failing entry is dead-lettered alone and does not block other keys",
    async run(c) {
      await fill(c, messages(20, 4, c.broker.topic));
      const refusing = deciding(c.broker.publisher, (entry) =>
        seqOf(entry) === 5 ? permanentFailure(new Error("unroutable")) : null,
      );
      await drainAll(c, [c.createRelay(base(c, refusing))], 100);
      const delivered = await c.broker.received(19);
      expect(
        [...distinctSeqs(delivered)].sort((a, b) => a - b),
        "a permanent failure must not block other entries, nor later entries of other keys",
      ).toEqual(Array.from({ length: 20 }, (_, i) => i).filter((i) => i !== 5));
      const dead = await c.harness.store.listDead();
      expect(
        dead.map((e) => seqOf(e)),
        "a permanently failing entry must be dead-lettered, alone",
      ).toEqual([5]);
    },
  },
  "deposed-leader-cannot-ack": {
    title: "a new leader takes a deposed leader's entries over at once; the store rejects the stale token",
    async run(c) {
      await fill(c, messages(5, 0, c.broker.topic));
      const name = uniqueName("leader");
      const leader = { backend: c.lockBackend, name, ttlMs: 3_000 };
      const { promise: stalled, resolve: stall } = deferred();
      const { promise: isPublishing, resolve: publishing } = deferred();
      let claimedByA: OutboxEntry[] = [];
      const fencesOfA: bigint[] = [];
      // Relay A stalls mid-publish (think GC pause, SIGSTOP) past its lock TTL.
      const slow: OutboxPublisher = {
        async publish(entries, options) {
          claimedByA = [...entries];
          publishing();
          await stalled;
          return c.broker.publisher.publish(entries, options);
        },
      };
      const store = c.harness.store as OutboxStore<never>;
      const unfencedByA: string[] = [];
      const fenceOf = (operation: string, fence: Fence | undefined) => {
        if (fence) fencesOfA.push(fence.token);
        else unfencedByA.push(operation);
      };
      const recordingStore = wrapStore(store, {
        claim: (request) => {
          fenceOf("claim", request.fence);
          return store.claim(request);
        },
        ack: (ids, context) => {
          fenceOf("ack", context.fence);
          return store.ack(ids, context);
        },
        retry: (items, context) => {
          fenceOf("retry", context.fence);
          return store.retry(items, context);
        },
        deadLetter: (items, context) => {
          fenceOf("deadLetter", context.fence);
          return store.deadLetter(items, context);
        },
        release: (ids, context) => {
          fenceOf("release", context.fence);
          return store.release(ids, context);
        },
      });
      const relayA = c.createRelay({ ...base(c, slow, recordingStore), leader });
      const runA = relayA.runOnce();
      await isPublishing;
      c.clock.advance(3_001);
      await c.expireLock(name);
      const relayB = c.createRelay({ ...base(c, c.broker.publisher), leader });
      expect(
        await relayB.runOnce(),
        "a new leader must take over the deposed leader's leased entries at once, not after their lease",
      ).toBe(5);
      expect((await c.harness.store.stats()).pending, "the new leader must publish and ack what it took over").toBe(0);
      stall();
      await runA.catch(() => 0);
      expect(claimedByA, "the first leader must claim and publish in runOnce()").toHaveLength(5);
      expect(unfencedByA, "a leader must send its fencing token with every claim and settle").toEqual([]);
      // A may have published after waking (a bounded duplicate), but nothing of A's is acked
      // or lost, and the store itself refuses A's old token.
      const delivered = await c.broker.received(5);
      expect(distinctSeqs(delivered).size, "nothing may be lost across a leader change").toBe(5);
      expect(
        delivered.length,
        "duplicates across a leader change are bounded by the deposed leader's batch",
      ).toBeLessThanOrEqual(10);
      const error = await c.harness.store
        .ack(
          claimedByA.map((e) => e.id),
          { claimer: "A", fence: { lock: name, token: fencesOfA[0] as bigint } },
        )
        .then(
          () => null,
          (caught: unknown) => caught,
        );
      expect(OutboxError.is(error, OutboxErrorCode.Fenced), "the store must refuse the deposed leader's token").toBe(
        true,
      );

      // Phase 2: A is deposed between its own leadership check and its ack reaching the store.
      // Re-checking leadership before acking cannot close that window; only the fence on the ack can.
      await fill(
        c,
        messages(3, 0, c.broker.topic).map((m, i) => ({ ...m, headers: { [seqHeader]: String(100 + i) } })),
      );
      const name2 = uniqueName("leader");
      const leader2 = { backend: c.lockBackend, name: name2, ttlMs: 3_000 };
      let forwardedAck: "accepted" | "fenced" | "other error" | null = null;
      let deposed = false;
      const deposingStore = wrapStore(store, {
        ack: async (ids, context) => {
          if (!deposed) {
            deposed = true;
            c.clock.advance(3_001);
            await c.expireLock(name2);
            const relayD = c.createRelay({ ...base(c, c.broker.publisher), leader: leader2 });
            await relayD.runOnce();
            try {
              await store.ack(ids, context);
              forwardedAck = "accepted";
            } catch (caught) {
              forwardedAck = OutboxError.is(caught, OutboxErrorCode.Fenced) ? "fenced" : "other error";
              throw caught;
            }
            return;
          }
          return store.ack(ids, context);
        },
      });
      const relayC = c.createRelay({ ...base(c, c.broker.publisher, deposingStore), leader: leader2 });
      await relayC.runOnce().catch(() => 0);
      expect(deposed, "a leader that published must ack (phase 2: the leader was deposed during its ack)").toBe(true);
      expect(
        forwardedAck,
        "an ack that reaches the store after its leader was deposed must be refused (OUTBOX_FENCED): send the " +
          "fencing token with every ack; re-checking leadership before acking leaves a window",
      ).toBe("fenced");
      expect((await c.harness.store.stats()).pending, "the new leader must have published and acked everything").toBe(
        0,
      );
    },
  },
  "stop-drains": {
    title: "stop() waits for the in-flight batches to be published and settled, then claims nothing more",
    requires: needsStartStop,
    async run(c) {
      await fill(c, messages(25, 0, c.broker.topic));
      const { promise: publishing, resolve: inPublish } = deferred();
      const { promise: mayFinish, resolve: finish } = deferred();
      let handedOver = 0;
      let calls = 0;
      const gated: OutboxPublisher = {
        async publish(entries, options) {
          calls += 1;
          handedOver += entries.length;
          inPublish();
          await mayFinish;
          return c.broker.publisher.publish(entries, options);
        },
      };
      const relay = c.createRelay({ ...base(c, gated), pollMs: 1_000 });
      const start = relay.start as () => void;
      const stop = relay.stop as () => Promise<void>;
      start.call(relay);
      await publishing;
      let stopped = false;
      const stopping = stop.call(relay).then(() => {
        stopped = true;
      });
      // Let everything that is ready run: stop() must still be waiting for the gated batch.
      for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
      expect(stopped, "stop() must wait for the batch being published; it returned while it was in flight").toBe(false);
      finish();
      await stopping;
      const callsAtStop = calls;
      const stats = await c.harness.store.stats();
      expect(stats.inFlight, "after stop() no entry may stay leased: the in-flight batches are settled").toBe(0);
      expect(handedOver, "the relay must have claimed at least one batch").toBeGreaterThanOrEqual(10);
      expect(stats.pending, "stop() must ack what the in-flight batches published, and claim nothing more").toBe(
        25 - handedOver,
      );
      expect(await c.broker.received(handedOver), "the in-flight batches must reach the broker").toHaveLength(
        handedOver,
      );
      c.clock.advance(10_000);
      for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
      expect(calls, "after stop() the relay must not publish again").toBe(callsAtStop);
      expect((await c.harness.store.stats()).pending, "after stop() the relay must not claim again").toBe(
        25 - handedOver,
      );
    },
  },
  "max-in-flight": {
    title: "at most maxInFlightBatches claimed batches are in flight at once; the rest waits in the outbox",
    requires: needsStartStop,
    async run(c) {
      const maxInFlightBatches = 2;
      const batchSize = 3;
      await fill(c, messages(40, 40, c.broker.topic));
      const busy = busyStore(c.harness.store as OutboxStore<never>);
      const { promise: gate, resolve: open } = deferred();
      let publishing = 0;
      let peak = 0;
      let publishes = 0;
      const gated: OutboxPublisher = {
        async publish(entries, options) {
          publishes += 1;
          publishing += 1;
          peak = Math.max(peak, publishing);
          try {
            await gate;
            return await c.broker.publisher.publish(entries, options);
          } finally {
            publishing -= 1;
          }
        },
      };
      const relay = c.createRelay({
        ...base(c, gated, busy.store),
        batchSize,
        maxInFlightBatches,
        pollMs: 1_000,
      });
      (relay.start as () => void).call(relay);
      const activity = () => busy.calls() + publishes;
      try {
        await quiet(busy.pending, activity);
        // Polls (and wake-ups) come and go: none of them may add a batch while the slots are full.
        for (let i = 0; i < 3; i++) {
          c.clock.advance(1_000);
          await quiet(busy.pending, activity);
        }
        expect(publishes, "the started relay must claim and publish batches").toBeGreaterThan(0);
        expect(
          peak,
          `at most maxInFlightBatches (${maxInFlightBatches}) batches may be with the publisher at once`,
        ).toBeLessThanOrEqual(maxInFlightBatches);
        expect(
          (await c.harness.store.stats()).inFlight,
          `at most maxInFlightBatches (${maxInFlightBatches}) claims of batchSize (${batchSize}) may be leased at ` +
            "once: the next claim waits for a slot (a claim is in flight from its request until its batch is settled)",
        ).toBeLessThanOrEqual(maxInFlightBatches * batchSize);
      } finally {
        open();
        await (relay.stop as () => Promise<void>).call(relay);
      }
      expect((await c.harness.store.stats()).inFlight, "after stop() no entry may stay leased").toBe(0);
    },
  },
  "failed-run-released": {
    title: "the rest of a failed key's run is released (no attempt counted, claimable at once), not retried",
    async run(c) {
      // key a: a0 fails transiently; key c: c0 fails for good; key b publishes whole.
      const order = ["a", "b", "c", "a", "b", "c", "a"];
      await fill(
        c,
        order.map((key, i) => ({
          topic: c.broker.topic,
          key: `run-${key}`,
          payload: `entry-${i}`,
          headers: { [seqHeader]: String(i) },
        })),
      );
      const [a0, b0, c0, a1, b1, c1, a2] = [0, 1, 2, 3, 4, 5, 6];
      const failing = deciding(c.broker.publisher, (entry) =>
        seqOf(entry) === a0
          ? transientFailure(new Error("broker busy"))
          : seqOf(entry) === c0
            ? permanentFailure(new Error("unroutable"))
            : null,
      );
      const store = c.harness.store as OutboxStore<never>;
      const seqs = new Map<string, number>();
      const retried: number[] = [];
      const dead: number[] = [];
      const recording = wrapStore(store, {
        claim: async (request) => {
          const entries = await store.claim(request);
          for (const e of entries) seqs.set(e.id, seqOf(e));
          return entries;
        },
        retry: (items, context) => {
          retried.push(...items.map((item) => seqs.get(item.id) ?? -1));
          return store.retry(items, context);
        },
        deadLetter: (items, context) => {
          dead.push(...items.map((item) => seqs.get(item.id) ?? -1));
          return store.deadLetter(items, context);
        },
      });
      expect(await c.createRelay(base(c, failing, recording)).runOnce(), "one cycle claims all seven entries").toBe(7);
      const sorted = (list: number[]) => [...list].sort((x, y) => x - y);
      expect(
        sorted(retried),
        "only the transiently failed head of its run is retried, not the rest of the run",
      ).toEqual([a0]);
      expect(sorted(dead), "only the permanently failed entry is dead-lettered, not the rest of its run").toEqual([c0]);
      // Past the head's retry delay: the held-back entries must be pending, unleased, attempts uncounted.
      c.clock.advance(2_001);
      const probe = await store.claim({ claimer: uniqueName("probe"), limit: 100, leaseMs: 1_000 });
      for (const seq of [a1, a2, c1]) {
        const entry = probe.find((e) => seqOf(e) === seq);
        expect(
          entry,
          `entry ${seq}, held back behind its key's failed head, must be released: claimable at once, not retried ` +
            "with a delay, dead-lettered or left leased",
        ).toBeDefined();
        expect(
          entry?.attempts,
          `entry ${seq}, held back behind its key's failed head, must be released without counting an attempt`,
        ).toBe(1);
        expect(entry?.lastError ?? null, `entry ${seq} never failed: it must carry no lastError`).toBeNull();
      }
      expect(
        probe.some((e) => seqOf(e) === b0 || seqOf(e) === b1),
        "the run of a key without a failure is published and acked whole",
      ).toBe(false);
    },
  },
  "poison-guard": {
    title: `an entry claimed maxAttempts times without an outcome (${smallMaxAttempts} here) is dead-lettered unpublished by the next claim`,
    async run(c) {
      await fill(c, [{ topic: c.broker.topic, key: "poison", payload: "p0", headers: { [seqHeader]: "0" } }]);
      const handed = handedCounts();
      // The relay dies while publishing the entry, again and again: it never gets an outcome.
      await crashWhilePublishing(c, 0, smallMaxAttempts + 3, handed, () => isDead(c, 0));
      expect(
        handed.counts.get(0) ?? 0,
        `with retry.maxAttempts ${smallMaxAttempts}, an entry whose publishes never end (the relay crashes) must be ` +
          `handed to the publisher exactly ${smallMaxAttempts} times: the claim after that dead-letters it unpublished`,
      ).toBe(smallMaxAttempts);
      expect(
        await isDead(c, 0),
        `the claim after ${smallMaxAttempts} claims without an outcome must dead-letter the entry (poison guard)`,
      ).toBe(true);

      // The same bound for an entry that keeps failing transiently: maxAttempts publishes, then dead.
      await fill(c, [{ topic: c.broker.topic, key: "flaky", payload: "r0", headers: { [seqHeader]: "1" } }]);
      const tries = handedCounts();
      const refusing = deciding(c.broker.publisher, (entry) => {
        tries.count([entry]);
        return transientFailure(new Error("always busy"));
      });
      const relay = c.createRelay({
        ...base(c, refusing),
        retry: { ...base(c, refusing).retry, maxAttempts: smallMaxAttempts },
      });
      for (let round = 0; round < smallMaxAttempts + 3 && !(await isDead(c, 1)); round++) {
        await relay.runOnce();
        c.clock.advance(2_001);
      }
      expect(
        tries.counts.get(1) ?? 0,
        `with retry.maxAttempts ${smallMaxAttempts}, an entry failing transiently is published ${smallMaxAttempts} times, then dead-lettered`,
      ).toBe(smallMaxAttempts);
      expect(await isDead(c, 1), "an entry out of attempts must be dead-lettered").toBe(true);
    },
  },
  "exhausted-head-holds-run": {
    title: "a key's head set aside by the poison guard holds back the rest of its run in that cycle",
    async run(c) {
      await fill(c, [{ topic: c.broker.topic, key: "poison", payload: "p0", headers: { [seqHeader]: "0" } }]);
      const handed = handedCounts();
      await crashWhilePublishing(c, 0, smallMaxAttempts, handed);
      expect(handed.counts.get(0) ?? 0, "the relay must hand the entry to its publisher on every claim").toBe(
        smallMaxAttempts,
      );
      // Its successors arrive; the next claim returns the exhausted head with them.
      await fill(
        c,
        [1, 2].map((seq) => ({
          topic: c.broker.topic,
          key: "poison",
          payload: `p${seq}`,
          headers: { [seqHeader]: String(seq) },
        })),
      );
      const calls: number[][] = [];
      const recording: OutboxPublisher = {
        async publish(entries, options) {
          calls.push(entries.map(seqOf));
          return c.broker.publisher.publish(entries, options);
        },
      };
      const store = c.harness.store as OutboxStore<never>;
      const claims: Array<Array<{ seq: number; attempts: number }>> = [];
      const recordingStore = wrapStore(store, {
        claim: async (request) => {
          const entries = await store.claim(request);
          claims.push(entries.map((e) => ({ seq: seqOf(e), attempts: e.attempts })));
          return entries;
        },
      });
      const relay = c.createRelay({
        ...base(c, recording, recordingStore),
        retry: { ...base(c, recording).retry, maxAttempts: smallMaxAttempts },
      });
      await relay.runOnce();
      expect(
        claims[0]?.map((e) => e.seq),
        "the claim must return the exhausted head with its run",
      ).toEqual([0, 1, 2]);
      expect(await isDead(c, 0), "the exhausted head must be dead-lettered").toBe(true);
      expect(
        calls.flat(),
        "in the cycle that sets an exhausted head aside, the rest of its key's run must not be handed to the " +
          "publisher (if the dead-letter fails, the head is replayed after them)",
      ).toEqual([]);
      await drainAll(c, [relay], 100);
      const firsts = firstOccurrences(await c.broker.received(2)).filter((m) => m.key === "poison");
      expect(
        firsts.map((m) => m.seq),
        "the held-back run is published next, in order, and the dead head never",
      ).toEqual([1, 2]);
      const next = claims.find((claim, i) => i > 0 && claim.some((e) => e.seq === 1));
      expect(
        next?.find((e) => e.seq === 1)?.attempts,
        "the run held back behind an exhausted head is released without counting an attempt",
      ).toBe(1);
    },
  },
  "abort-before-lease-end": {
    title: "the publish's signal is aborted before the batch's lease ends, not after",
    async run(c) {
      const leaseMs = 10_000;
      await fill(c, messages(3, 3, c.broker.topic));
      const { promise: handed, resolve: handOver } = deferred();
      const { promise: giveUp, resolve: stopWaiting } = deferred();
      let signal: AbortSignal | undefined;
      let startedAt = 0;
      let calls = 0;
      const hanging: OutboxPublisher = {
        async publish(entries, options) {
          calls += 1;
          if (calls > 1) return c.broker.publisher.publish(entries, options);
          signal = options?.signal;
          startedAt = c.clock.now();
          handOver();
          const aborted = new Promise<void>((resolve) => {
            if (!signal || signal.aborted) resolve();
            else signal.addEventListener("abort", () => resolve(), { once: true });
          });
          // The broker never answers: only the signal (or the check giving up) ends the wait.
          await Promise.race([aborted, giveUp]);
          return entries.map(() => transientFailure(new Error("no answer from the broker")));
        },
      };
      const relay = c.createRelay({ ...base(c, hanging), leaseMs });
      const cycle = relay.runOnce();
      let abortedAt: number | null = null;
      try {
        await handed;
        expect(signal, "the relay must pass a signal to publish(), to stop it before the lease ends").toBeDefined();
        expect(signal?.aborted, "the signal must not be aborted when the publish starts").toBe(false);
        const leaseEndsAt = startedAt + leaseMs;
        // Time runs up to the last millisecond of the lease; the signal must have fired by then.
        for (const step of [...Array.from({ length: 19 }, () => leaseMs / 20), leaseMs / 20 - 1]) {
          c.clock.advance(step);
          for (let i = 0; i < 20; i++) await turn();
          if (signal?.aborted && abortedAt === null) abortedAt = c.clock.now();
        }
        expect(
          abortedAt,
          `the publish must be aborted before the lease ends (${leaseMs} ms after the claim): past it another relay ` +
            "claims the batch and publishes it again",
        ).not.toBeNull();
        expect(abortedAt as number).toBeLessThan(leaseEndsAt);
      } finally {
        stopWaiting();
        await cycle.catch(() => 0);
      }
      c.clock.advance(2_001);
      await drainAll(c, [c.createRelay(base(c, c.broker.publisher))], 2_001);
      expect(distinctSeqs(await c.broker.received(3)).size, "the aborted batch is published later").toBe(3);
    },
  },
  "last-attempt-dead-letters": {
    title:
      "the transient failure of an entry's maxAttempts-th publish dead-letters it in that cycle, not a retry later",
    async run(c) {
      // maxAttempts 1: the first failure is the last; 3: two retries, then dead.
      for (const [seq, maxAttempts] of [
        [10, 1],
        [11, 3],
      ] as const) {
        await fill(c, [
          { topic: c.broker.topic, key: `last-${seq}`, payload: "x", headers: { [seqHeader]: String(seq) } },
        ]);
        const tries = handedCounts();
        const refusing = deciding(c.broker.publisher, (entry) => {
          tries.count([entry]);
          return transientFailure(new Error("always busy"));
        });
        const relay = c.createRelay({ ...base(c, refusing), retry: { ...base(c, refusing).retry, maxAttempts } });
        for (let cycle = 1; cycle <= maxAttempts; cycle++) {
          expect(
            await isDead(c, seq),
            `with retry.maxAttempts ${maxAttempts}, an entry is published ${maxAttempts} times before it is ` +
              `dead-lettered (it was dead before publish ${cycle})`,
          ).toBe(false);
          await relay.runOnce();
          // Past the longest retry delay (maxDelayMs 2 s).
          c.clock.advance(2_001);
        }
        expect(tries.counts.get(seq) ?? 0, `every cycle up to ${maxAttempts} publishes the entry once`).toBe(
          maxAttempts,
        );
        expect(
          await isDead(c, seq),
          `with retry.maxAttempts ${maxAttempts}, the cycle of the entry's last publish (${maxAttempts} of ` +
            `${maxAttempts}) that fails transiently must dead-letter it, not schedule one more retry for the ` +
            "poison guard to catch",
        ).toBe(true);
      }
    },
  },
  "claim-reply-lost": {
    title: "entries leased by a claim whose reply was lost (STORE_UNAVAILABLE) are given back before the next claim",
    requires: (c) =>
      c.harness.store.releaseClaimer
        ? null
        : "the store has no releaseClaimer(): a lost claim's entries wait out their lease",
    async run(c) {
      await fill(c, messages(6, 3, c.broker.topic));
      const store = c.harness.store as OutboxStore<never>;
      let leasedByLostClaim = 0;
      const losing = wrapStore(store, {
        claim: async (request) => {
          const entries = await store.claim(request);
          if (leasedByLostClaim > 0) return entries;
          // The claim committed; its reply is lost to a reset connection.
          leasedByLostClaim = entries.length;
          throw new OutboxError(OutboxErrorCode.StoreUnavailable, "connection reset before the claim's reply");
        },
      });
      const relay = c.createRelay(base(c, c.broker.publisher, losing));
      await relay.runOnce().catch(() => 0);
      expect(leasedByLostClaim, "the lost claim must have leased the entries").toBe(6);
      // Same instant: the lease has not run out, so only a give-back makes them claimable.
      expect(
        await relay.runOnce(),
        "before its next claim the relay must give back what a claim without an answer leased (releaseClaimer with " +
          "that claim's claimer), so the entries and their keys do not wait out the lease",
      ).toBe(6);
      expect((await c.harness.store.stats()).pending, "the given-back entries are published and acked").toBe(0);
      expect(distinctSeqs(await c.broker.received(6)).size).toBe(6);
    },
  },
  "deposed-before-publish": {
    title: "a relay that lost its lock between claiming a batch and publishing it publishes nothing of that batch",
    async run(c) {
      await fill(c, messages(5, 0, c.broker.topic));
      const name = uniqueName("leader");
      const leader = { backend: c.lockBackend, name, ttlMs: 3_000 };
      const store = c.harness.store as OutboxStore<never>;
      let claimedByA = 0;
      // A's lock lapses while its claim is on the way back (think a GC pause).
      const deposing = wrapStore(store, {
        claim: async (request) => {
          const entries = await store.claim(request);
          claimedByA += entries.length;
          c.clock.advance(3_001);
          await c.expireLock(name);
          return entries;
        },
      });
      const handedToA = handedCounts();
      const recording: OutboxPublisher = {
        async publish(entries, options) {
          handedToA.count(entries);
          return c.broker.publisher.publish(entries, options);
        },
      };
      await c
        .createRelay({ ...base(c, recording, deposing), leader })
        .runOnce()
        .catch(() => 0);
      expect(claimedByA, "the leader must claim in runOnce()").toBe(5);
      expect(
        [...handedToA.counts.keys()],
        "a relay whose lock lapsed after its claim must re-check leadership before publishing and publish nothing: " +
          "the next leader takes the batch over at once, so each publish would be a duplicate",
      ).toEqual([]);
      const relayB = c.createRelay({ ...base(c, c.broker.publisher), leader });
      expect(await relayB.runOnce(), "the next leader takes the deposed leader's batch over at once").toBe(5);
      const delivered = await c.broker.received(5);
      expect(distinctSeqs(delivered).size, "nothing may be lost across a leader change").toBe(5);
      expect(delivered.length, "the deposed leader published nothing, so there is no duplicate").toBe(5);
    },
  },
  "deposed-before-ack": {
    title: "a relay that lost its lock while publishing sends no ack for that batch; the next leader republishes it",
    async run(c) {
      await fill(c, messages(5, 0, c.broker.topic));
      const name = uniqueName("leader");
      const leader = { backend: c.lockBackend, name, ttlMs: 3_000 };
      const store = c.harness.store as OutboxStore<never>;
      let publishedByA = 0;
      // A's lock lapses while the broker confirms its batch; no newer token has reached the store yet.
      const deposing: OutboxPublisher = {
        async publish(entries, options) {
          const outcomes = await c.broker.publisher.publish(entries, options);
          publishedByA += outcomes.filter((outcome) => outcome.status === "published").length;
          c.clock.advance(3_001);
          await c.expireLock(name);
          return outcomes;
        },
      };
      let acksByA = 0;
      const recording = wrapStore(store, {
        ack: (ids, context) => {
          acksByA += 1;
          return store.ack(ids, context);
        },
      });
      await c
        .createRelay({ ...base(c, deposing, recording), leader })
        .runOnce()
        .catch(() => 0);
      expect(publishedByA, "the leader must claim and publish in runOnce()").toBe(5);
      expect(
        acksByA,
        "a relay whose lock lapsed while it published must re-check leadership before acking and send no ack: the " +
          "store's fence refuses it only once a newer token reached the store",
      ).toBe(0);
      const relayB = c.createRelay({ ...base(c, c.broker.publisher), leader });
      expect(await relayB.runOnce(), "the next leader takes the unacked batch over at once").toBe(5);
      expect((await c.harness.store.stats()).pending, "the next leader publishes and acks it").toBe(0);
      expect(distinctSeqs(await c.broker.received(5)).size, "nothing may be lost across a leader change").toBe(5);
    },
  },
  "settle-retry-within-lease": {
    title: "an ack the store failed to answer (STORE_UNAVAILABLE) is sent again, but never past the batch's lease",
    async run(c) {
      const leaseMs = 10_000;
      await fill(c, messages(3, 3, c.broker.topic));
      const store = c.harness.store as OutboxStore<never>;
      let claimedAt: number | null = null;
      const ackedAt: number[] = [];
      const { promise: firstAck, resolve: acked } = deferred();
      const unanswered = wrapStore(store, {
        claim: (request) => {
          claimedAt ??= c.clock.now();
          return store.claim(request);
        },
        ack: async () => {
          ackedAt.push(c.clock.now());
          acked();
          throw new OutboxError(OutboxErrorCode.StoreUnavailable, "the ack's reply was lost");
        },
      });
      const relay = c.createRelay({ ...base(c, c.broker.publisher, unanswered), leaseMs });
      let ended = false;
      const cycle = relay.runOnce().then(
        () => {
          ended = true;
        },
        () => {
          ended = true;
        },
      );
      // The broker may be real: only once the first ack failed does time move, 100 ms a step, to twice the lease.
      await Promise.race([firstAck, cycle]);
      for (let step = 0; step < (2 * leaseMs) / 100 && !ended; step++) {
        for (let i = 0; i < 10; i++) await turn();
        c.clock.advance(100);
      }
      expect(claimedAt, "the relay must claim in runOnce()").not.toBeNull();
      const leaseEndsAt = (claimedAt as unknown as number) + leaseMs;
      expect(
        ackedAt.length,
        "an ack the store failed to answer must be sent again while the lease lasts",
      ).toBeGreaterThan(1);
      expect(
        ackedAt.filter((at) => at >= leaseEndsAt).map((at) => at - (claimedAt as unknown as number)),
        `an ack must not be sent again at or after the batch's lease end (${leaseMs} ms after the claim): another ` +
          "relay may have claimed the entries by then; give up and let them be replayed",
      ).toEqual([]);
      expect(ended, "runOnce() must give up on the ack by the lease's end").toBe(true);
      c.clock.advance(leaseMs);
      await drainAll(c, [c.createRelay(base(c, c.broker.publisher))], 100);
      expect(distinctSeqs(await c.broker.received(3)).size, "the unacked batch is replayed after its lease").toBe(3);
    },
  },
  "stop-aborts-publish": {
    title: "stop() aborts a publish still running once drainTimeoutMs has passed, not only at the lease's end",
    requires: needsStartStop,
    async run(c) {
      const drainTimeoutMs = 1_000;
      await fill(c, messages(4, 2, c.broker.topic));
      const stalled = stallingPublisher();
      const relay = c.createRelay({ ...base(c, stalled.publisher), leaseMs: 60_000, pollMs: 1_000, drainTimeoutMs });
      (relay.start as () => void).call(relay);
      let stopped = false;
      try {
        await stalled.handed;
        const signal = stalled.signals[0];
        expect(signal, "the relay must pass a signal to publish()").toBeDefined();
        const stopping = (relay.stop as () => Promise<void>).call(relay).then(() => {
          stopped = true;
        });
        c.clock.advance(drainTimeoutMs);
        for (let i = 0; i < 20; i++) await turn();
        expect(
          signal?.aborted,
          `drainTimeoutMs (${drainTimeoutMs} ms) after stop(), the publish still running must be aborted (its ` +
            "signal), so the batch is given back now rather than when the lease runs out",
        ).toBe(true);
        for (let step = 0; step < 20 && !stopped; step++) {
          c.clock.advance(1_000);
          for (let i = 0; i < 20; i++) await turn();
        }
        await stopping;
      } finally {
        stalled.giveUp();
        // A relay that never aborted: let its stop() end too.
        for (let step = 0; step < 70 && !stopped; step++) {
          c.clock.advance(1_000);
          for (let i = 0; i < 20; i++) await turn();
        }
      }
    },
  },
  "stop-gives-back": {
    title: "a publish that failed because the relay is stopping is released (no attempt, no delay), not retried",
    requires: needsStartStop,
    async run(c) {
      const leaseMs = 30_000;
      await fill(c, messages(4, 2, c.broker.topic));
      const busy = busyStore(c.harness.store as OutboxStore<never>);
      const stalled = stallingPublisher();
      const relay = c.createRelay({
        ...base(c, stalled.publisher, busy.store),
        leaseMs,
        pollMs: 1_000,
        drainTimeoutMs: 1_000,
      });
      (relay.start as () => void).call(relay);
      let stopped = false;
      try {
        await stalled.handed;
        void (relay.stop as () => Promise<void>).call(relay).then(() => {
          stopped = true;
        });
        // Until stop() is done and the publish has failed (aborted by stop(), or by the lease at the latest).
        for (let ms = 0; ms < leaseMs - 1_000 && !(stopped && stalled.returned()); ms += 500) {
          c.clock.advance(500);
          for (let i = 0; i < 20; i++) await turn();
        }
        expect(stalled.returned(), "the publish must end once the relay is stopping").toBe(true);
      } finally {
        stalled.giveUp();
      }
      await quiet(busy.pending, busy.calls);
      expect((await c.harness.store.stats()).inFlight, "after stop() no entry may stay leased").toBe(0);
      // Same instant: only entries given back (not retried with a delay) are claimable.
      const probe = await c.harness.store.claim({ claimer: uniqueName("probe"), limit: 100, leaseMs: 1_000 });
      expect(
        probe.map(seqOf).sort((x, y) => x - y),
        "a batch whose publish failed because the relay is stopping must be released, claimable at once by another " +
          "relay, not retried with a delay",
      ).toEqual([0, 1, 2, 3]);
      for (const entry of probe) {
        expect(entry.attempts, `entry ${seqOf(entry)}: a give-back on stop counts no attempt`).toBe(1);
        expect(entry.lastError ?? null, `entry ${seqOf(entry)}: a give-back on stop records no error`).toBeNull();
      }
    },
  },
} satisfies Record<string, Check<RelayCheckContext>>;

export type RelayCheckId = keyof typeof relayChecks;

/** The real relay, with its (expected) error reports collected instead of logged. */
function quietRelay(options: OutboxRelayOptions): RelayUnderTest {
  const relay = new OutboxRelay(options);
  relay.on("error", () => {});
  return relay;
}

/** How long a read of a real broker waits for one more message (a duplicate) beyond what it has. */
const settleMs = 5_000;

async function createBroker(
  createPublisher: RelayConformanceOptions<unknown>["createPublisher"],
): Promise<{ broker: Broker; closeBroker(): Promise<void> }> {
  if (!createPublisher) {
    const memory = new MemoryPublisher();
    const topic = "relay";
    return {
      broker: { publisher: memory, topic, received: async () => memory.topic(topic) },
      closeBroker: () => memory.close(),
    };
  }
  const harness = await createPublisher();
  const topic = await harness.topic();
  return {
    broker: {
      publisher: harness.publisher,
      topic,
      // Read until `atLeast` arrived, then keep asking for one more until none comes: the checks
      // count duplicates, so they need everything the broker has, not just the first N.
      received: async (atLeast) => {
        let all = await harness.receive(topic, atLeast, 30_000);
        if (all.length < atLeast) return all;
        for (;;) {
          const more = await harness.receive(topic, all.length + 1, settleMs);
          if (more.length <= all.length) return all;
          all = more;
        }
      },
    },
    closeBroker: () => harness.teardown(),
  };
}

/**
 * Fresh context per check, and its disposal: what `describeRelayConformance` registers, for use
 * with `runChecks()` (e.g. to prove a broken relay fails).
 */
export function relayCheckContext<Tx>(options: Omit<RelayConformanceOptions<Tx>, "name" | "skip" | "timeoutMs">): {
  create(): Promise<RelayCheckContext>;
  dispose(context: RelayCheckContext): Promise<void>;
} {
  return {
    async create() {
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
        ...(await createBroker(options.createPublisher)),
      };
    },
    async dispose(c) {
      await c.lockBackend.close?.();
      await c.closeBroker();
      await c.harness.teardown();
    },
  };
}

/** Registers the relay conformance suite: the relay loop over the given store, publisher and lock backend. */
export function describeRelayConformance<Tx>(options: RelayConformanceOptions<Tx>): void {
  const { create, dispose } = relayCheckContext(options);
  registerSuite<RelayCheckContext, RelayCheckId>("relay conformance", relayChecks, {
    name: options.name,
    create,
    dispose,
    skip: options.skip,
    timeoutMs: options.timeoutMs ?? 120_000,
  });
}
