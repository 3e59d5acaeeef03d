import { describe, expect, it, vi } from "vitest";
// The reference adapters by path: @outbox/memory depends on @outbox/core, so core takes no dependency on it back.
import { MemoryLockBackend, MemoryPublisher, MemoryStore } from "../../memory/src/index.js";
import {
  ManualClock,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  type OutboxPublisher,
  OutboxRelay,
  type OutboxRelayOptions,
  type OutboxStore,
  permanentFailure,
  published,
  type RelayEvents,
  transientFailure,
} from "../src/index.js";

function setup(overrides: Partial<OutboxRelayOptions> = {}) {
  const clock = new ManualClock();
  const store = new MemoryStore({ clock });
  const publisher = new MemoryPublisher();
  const relay = new OutboxRelay({ store, publisher, clock, random: () => 0, ...overrides });
  const events: Array<{ type: keyof RelayEvents; payload: unknown }> = [];
  for (const type of ["published", "retried", "deadLettered", "leadershipGained", "leadershipLost", "error"] as const) {
    relay.on(type, (payload) => events.push({ type, payload }));
  }
  const enqueue = (messages: OutboxMessage[]) => store.transaction((tx) => store.enqueue(tx, messages));
  return { clock, store, publisher, relay, events, enqueue };
}

/** Resolves once the relay has published `count` entries in all. */
function publishedCount(relay: OutboxRelay, count: number): Promise<void> {
  let seen = 0;
  return new Promise((resolve) => {
    relay.on("published", ({ entries }) => {
      seen += entries.length;
      if (seen >= count) resolve();
    });
  });
}

const msgs = (n: number, key: (i: number) => string | null = () => null): OutboxMessage[] =>
  Array.from({ length: n }, (_, i) => ({ topic: "t", key: key(i), payload: `m${i}` }));

/** The memory store behind the store contract, with some of its methods replaced. */
function storeOver(inner: MemoryStore, overrides: Partial<OutboxStore<never>>): OutboxStore<never> {
  return {
    capabilities: inner.capabilities,
    enqueue: () => Promise.reject(new Error("not used: enqueue on the inner store")),
    claim: (request) => inner.claim(request),
    ack: (ids, context) => inner.ack(ids, context),
    retry: (items, context) => inner.retry(items, context),
    deadLetter: (items, context) => inner.deadLetter(items, context),
    release: (ids, context) => inner.release(ids, context),
    releaseClaimer: (context) => inner.releaseClaimer(context),
    listDead: (options) => inner.listDead(options),
    requeueDead: (ids) => inner.requeueDead(ids),
    purge: (request) => inner.purge(request),
    stats: () => inner.stats(),
    close: () => inner.close(),
    ...overrides,
  };
}

/** A store whose claim fails while `failing` is set, counting claims. */
function flakyStore(inner: MemoryStore) {
  const state = { failing: true, claims: 0 };
  const store = storeOver(inner, {
    capabilities: { wakeUps: false, transactions: true },
    claim: async (request) => {
      state.claims += 1;
      if (state.failing) throw new OutboxError(OutboxErrorCode.StoreUnavailable, "db down");
      return inner.claim(request);
    },
  });
  return { store, state };
}

describe("OutboxRelay cycle", () => {
  it("publishes a batch and acks it, emitting events and counting", async () => {
    const { relay, publisher, store, events, enqueue } = setup({ batchSize: 3 });
    await enqueue(msgs(5));
    expect(await relay.runOnce()).toBe(3);
    expect(await relay.drain()).toBe(2);
    expect(publisher.messages.map((m) => new TextDecoder().decode(m.payload))).toEqual(["m0", "m1", "m2", "m3", "m4"]);
    expect((await store.stats()).pending).toBe(0);
    expect(events.filter((e) => e.type === "published")).toHaveLength(2);
    expect(relay.metrics()).toMatchObject({ claimed: 5, published: 5, retried: 0, deadLettered: 0, errors: 0 });
  });

  it("a retry never waits longer than the entry has: claims lost to takeovers do not push a young entry minutes out", async () => {
    const { clock, store, relay, events, enqueue } = setup({
      publisher: { publish: async (entries) => entries.map(() => transientFailure(new Error("broker down"))) },
      retry: { maxAttempts: 20, baseDelayMs: 1_000, maxDelayMs: 300_000, jitter: 0 },
    });
    await enqueue(msgs(1));
    // Six leaders claimed it and vanished: each lease ran out unanswered, 1 s apart.
    for (let n = 0; n < 6; n++) {
      expect(await store.claim({ claimer: `gone-${n}`, limit: 1, leaseMs: 1_000 })).toHaveLength(1);
      clock.advance(1_000);
    }
    await relay.runOnce();
    const [retried] = events.filter((e) => e.type === "retried").map((e) => e.payload as RelayEvents["retried"]);
    // Attempt 7 alone would wait 64 s; the entry is 6 s old.
    expect(retried?.availableAt.getTime()).toBe(clock.now() + 6_000);
  });

  it("retries a transient failure with exponential backoff, then dead-letters after maxAttempts", async () => {
    const { clock, store, relay, events, enqueue } = setup({
      publisher: { publish: async (entries) => entries.map(() => transientFailure(new Error("broker down"))) },
      retry: { maxAttempts: 3, baseDelayMs: 1_000, maxDelayMs: 10_000, jitter: 0 },
    });
    await enqueue(msgs(1));
    await relay.runOnce();
    const retried = events.filter((e) => e.type === "retried").map((e) => e.payload as RelayEvents["retried"]);
    expect(retried[0]?.availableAt.getTime()).toBe(clock.now() + 1_000);
    clock.advance(999);
    expect(await relay.runOnce()).toBe(0);
    clock.advance(1);
    expect(await relay.runOnce()).toBe(1);
    clock.advance(2_000);
    expect(await relay.runOnce()).toBe(1);
    const dead = events.filter((e) => e.type === "deadLettered").map((e) => e.payload as RelayEvents["deadLettered"]);
    expect(dead).toHaveLength(1);
    expect(dead[0]?.reason).toBe("attempts-exhausted");
    const [letter] = await store.listDead();
    expect(letter?.attempts).toBe(3);
    expect(letter?.lastError).toContain("broker down");
  });

  it("dead-letters a permanent failure at once and publishes its neighbours", async () => {
    const { store, relay, enqueue } = setup({
      publisher: {
        publish: async (entries) =>
          entries.map((e) =>
            e.payload[1] === "1".charCodeAt(0) ? permanentFailure(new Error("unroutable")) : published(),
          ),
      },
    });
    await enqueue(msgs(3));
    await relay.runOnce();
    expect((await store.listDead()).map((e) => e.id)).toEqual(["2"]);
    expect((await store.stats()).pending).toBe(0);
  });

  it("treats a throwing publisher and a wrong outcome count as transient failures of the batch", async () => {
    const bad: OutboxPublisher[] = [
      {
        publish: async () => {
          throw new Error("socket closed");
        },
      },
      { publish: async () => [published()] },
    ];
    for (const publisher of bad) {
      const { relay, store, events, enqueue } = setup({ publisher });
      await enqueue(msgs(2));
      await relay.runOnce();
      expect(events.filter((e) => e.type === "retried")).toHaveLength(2);
      expect((await store.stats()).pending).toBe(2);
    }
    const { relay, events, enqueue } = setup({ publisher: bad[1] });
    await enqueue(msgs(2));
    await relay.runOnce();
    const error = events.find((e) => e.type === "error")?.payload as RelayEvents["error"];
    expect(OutboxError.is(error.error, OutboxErrorCode.PublisherContract)).toBe(true);
  });

  it("sets aside an entry claimed more than maxAttempts times without an outcome (poison guard)", async () => {
    const { clock, store, relay, publisher, enqueue } = setup({ retry: { maxAttempts: 2 }, leaseMs: 1_000 });
    await enqueue(msgs(1));
    // Two claimers crash after claiming: leases expire unsettled.
    await store.claim({ claimer: "crashed-1", limit: 1, leaseMs: 1_000 });
    clock.advance(1_000);
    await store.claim({ claimer: "crashed-2", limit: 1, leaseMs: 1_000 });
    clock.advance(1_000);
    await relay.runOnce();
    expect(publisher.messages).toHaveLength(0);
    expect(await store.listDead()).toHaveLength(1);
  });

  it("holds back only the failing key", async () => {
    const publisher = new MemoryPublisher({
      outcome: (entry: OutboxEntry) =>
        new TextDecoder().decode(entry.payload) === "b1" && entry.attempts < 3 ? transientFailure("x") : published(),
    });
    const { clock, relay, enqueue } = setup({ publisher, retry: { baseDelayMs: 1_000, jitter: 0 } });
    await enqueue([
      { topic: "t", key: "bad", payload: "b1" },
      { topic: "t", key: "good", payload: "g1" },
      { topic: "t", key: "bad", payload: "b2" },
      { topic: "t", key: "good", payload: "g2" },
    ]);
    await relay.drain();
    await relay.drain();
    const decoded = () => publisher.messages.map((m) => new TextDecoder().decode(m.payload));
    expect(decoded()).toEqual(["g1", "g2"]);
    // b1 fails on attempts 1 and 2, succeeds on 3; b2 waits behind it the whole time.
    for (let i = 0; i < 3; i++) {
      clock.advance(10_000);
      await relay.drain();
    }
    expect(decoded()).toEqual(["g1", "g2", "b1", "b2"]);
  });
});

describe("OutboxRelay loop", () => {
  it("doubles the wait after consecutive store failures, up to 8x the poll", async () => {
    const clock = new ManualClock();
    const inner = new MemoryStore({ clock });
    const { store, state } = flakyStore(inner);
    const relay = new OutboxRelay({ store, publisher: new MemoryPublisher(), clock, pollMs: 100 });
    const errors: unknown[] = [];
    relay.on("error", ({ error }) => errors.push(error));
    relay.start();
    const waits: number[] = [];
    for (let failure = 1; failure <= 5; failure++) {
      await clock.whenSleeping();
      const claims = state.claims;
      let waited = 0;
      while (state.claims === claims) {
        clock.advance(100);
        waited += 100;
        await new Promise((resolve) => setImmediate(resolve));
      }
      waits.push(waited);
    }
    expect(waits).toEqual([200, 400, 800, 800, 800]);
    expect(errors.every((e) => OutboxError.is(e, OutboxErrorCode.StoreUnavailable))).toBe(true);
    state.failing = false;
    await inner.transaction((tx) => inner.enqueue(tx, msgs(1)));
    const done = new Promise((resolve) => relay.on("published", resolve));
    clock.advance(800);
    await done;
    await relay.stop();
    expect(relay.metrics().consecutiveFailures).toBe(0);
    await relay.stop();
  });

  it("a store wake-up cuts the poll wait", async () => {
    const { relay, clock, enqueue } = setup({ pollMs: 60_000 });
    relay.start();
    await clock.whenSleeping();
    const publishedEvent = new Promise<RelayEvents["published"]>((resolve) => relay.on("published", resolve));
    await enqueue(msgs(1));
    const { entries } = await publishedEvent;
    expect(entries).toHaveLength(1);
    await relay.stop();
  });

  it("keeps going when listeners throw", async () => {
    const { relay, clock, enqueue, publisher } = setup({ pollMs: 10 });
    relay.on("published", () => {
      throw new Error("listener bug");
    });
    const errors: RelayEvents["error"][] = [];
    relay.on("error", (e) => errors.push(e));
    await enqueue(msgs(2));
    const allPublished = publishedCount(relay, 3);
    relay.start();
    await clock.whenSleeping();
    await enqueue(msgs(1));
    clock.advance(10);
    await allPublished;
    expect(publisher.messages).toHaveLength(3);
    expect(errors.some((e) => e.phase === "listener")).toBe(true);
    await relay.stop();
  });

  it("stop() stops claiming and is idempotent", async () => {
    const { relay, clock, enqueue, publisher } = setup({ pollMs: 10 });
    relay.start();
    await clock.whenSleeping();
    await relay.stop();
    await relay.stop();
    expect(relay.running).toBe(false);
    await enqueue(msgs(1));
    clock.advance(1_000);
    await new Promise((resolve) => setImmediate(resolve));
    expect(publisher.messages).toHaveLength(0);
  });

  it("stop() past the drain timeout releases a claim that was still running: nothing stays leased", async () => {
    const clock = new ManualClock();
    const inner = new MemoryStore({ clock });
    let claimCalled!: () => void;
    const claiming = new Promise<void>((resolve) => {
      claimCalled = resolve;
    });
    let answerClaim!: () => void;
    const answer = new Promise<void>((resolve) => {
      answerClaim = resolve;
    });
    // A claim the database answers only after the relay was told to stop.
    const store: OutboxStore<never> = Object.assign(Object.create(inner) as MemoryStore, {
      capabilities: { wakeUps: false, transactions: true },
      claim: async (request: Parameters<MemoryStore["claim"]>[0]) => {
        claimCalled();
        await answer;
        return inner.claim(request);
      },
      ack: inner.ack.bind(inner),
      release: inner.release.bind(inner),
      stats: inner.stats.bind(inner),
    });
    const publisher = new MemoryPublisher();
    const relay = new OutboxRelay({ store, publisher, clock, drainTimeoutMs: 1_000 });
    const errors: unknown[] = [];
    relay.on("error", ({ error }) => errors.push(error));
    await inner.transaction((tx) =>
      inner.enqueue(
        tx,
        msgs(5, (i) => `k${i % 2}`),
      ),
    );
    relay.start();
    await claiming;
    const stopped = relay.stop();
    await clock.whenSleeping();
    clock.advance(1_000);
    await clock.whenSleeping();
    answerClaim();
    await stopped;
    expect(errors.map((error) => (OutboxError.is(error) ? error.code : String(error)))).toEqual([
      OutboxErrorCode.DrainTimeout,
    ]);
    expect(publisher.messages).toHaveLength(0);
    expect(await inner.stats()).toMatchObject({ pending: 5, inFlight: 0 });
    const again = await inner.claim({ claimer: "next", limit: 10, leaseMs: 1_000 });
    expect(
      again.map((entry) => entry.attempts),
      "a release does not count the attempt",
    ).toEqual([1, 1, 1, 1, 1]);
  });

  it("stop() past the drain timeout aborts a hanging publish and releases its entries", async () => {
    const clock = new ManualClock();
    const store = new MemoryStore({ clock });
    let publishing!: () => void;
    const started = new Promise<void>((resolve) => {
      publishing = resolve;
    });
    // A broker that never confirms: only the signal ends the call.
    const hanging: OutboxPublisher = {
      publish: (entries, options) =>
        new Promise((resolve) => {
          publishing();
          const signal = options?.signal;
          signal?.addEventListener("abort", () => resolve(entries.map(() => transientFailure(signal.reason))));
        }),
      close: async () => undefined,
    };
    const relay = new OutboxRelay({ store, publisher: hanging, clock, drainTimeoutMs: 1_000 });
    relay.on("error", () => undefined);
    await store.transaction((tx) =>
      store.enqueue(
        tx,
        msgs(3, () => "k"),
      ),
    );
    const enqueuedAt = clock.now();
    relay.start();
    await started;
    const stopped = relay.stop();
    await clock.whenSleeping();
    clock.advance(1_000);
    await stopped;
    expect(await store.stats()).toMatchObject({ pending: 3, inFlight: 0 });
    const again = await store.claim({ claimer: "next", limit: 10, leaseMs: 1_000 });
    expect(
      again.map((entry) => [entry.attempts, entry.availableAt.getTime()]),
      "released, not retried: no attempt counted, no retry delay",
    ).toEqual([
      [1, enqueuedAt],
      [1, enqueuedAt],
      [1, enqueuedAt],
    ]);
  });

  it("rejects bad options with OUTBOX_INVALID_OPTIONS", () => {
    const store = new MemoryStore();
    const publisher = new MemoryPublisher();
    for (const bad of [{ pollMs: 0 }, { batchSize: -1 }, { leaseMs: Number.NaN }, { retry: { maxAttempts: 0 } }]) {
      expect(() => new OutboxRelay({ store, publisher, ...bad })).toThrowError(
        expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }) as unknown as Error,
      );
    }
  });
});

describe("OutboxRelay settles the store could not answer", () => {
  /** A store whose ack fails with OUTBOX_STORE_UNAVAILABLE `failures` times (a reply lost to a reset). */
  function lostAcks(failures: number) {
    const clock = new ManualClock();
    const inner = new MemoryStore({ clock });
    const state = { ackTimes: [] as number[], failures };
    const store = storeOver(inner, {
      ack: async (ids, context) => {
        state.ackTimes.push(clock.now());
        if (state.failures-- > 0) throw new OutboxError(OutboxErrorCode.StoreUnavailable, "connection reset");
        await inner.ack(ids, context);
      },
    });
    const errors: unknown[] = [];
    const relay = new OutboxRelay({ store, publisher: new MemoryPublisher(), clock, leaseMs: 1_000 });
    relay.on("error", ({ error }) => errors.push(error));
    return { clock, inner, relay, state, errors };
  }

  /** Moves the clock on in 50 ms steps until the cycle has ended. */
  async function finish(clock: ManualClock, cycle: Promise<number>): Promise<void> {
    let ended = false;
    const end = () => {
      ended = true;
    };
    cycle.then(end, end);
    while (!ended) {
      clock.advance(50);
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  const gaps = (times: number[]) => times.slice(1).map((time, index) => time - (times[index] as number));

  it("sends an ack again after a lost reply, so the entry does not wait out its lease", async () => {
    const { clock, inner, relay, state, errors } = lostAcks(2);
    await inner.transaction((tx) =>
      inner.enqueue(
        tx,
        msgs(1, () => "k"),
      ),
    );
    const cycle = relay.runOnce();
    await finish(clock, cycle);
    await expect(cycle).resolves.toBe(1);
    expect(gaps(state.ackTimes)).toEqual([100, 200]);
    expect((await inner.stats()).pending).toBe(0);
    expect(errors).toHaveLength(2);
    expect(errors.every((error) => OutboxError.is(error, OutboxErrorCode.StoreUnavailable))).toBe(true);
  });

  it("gives up when the lease would end first: the entry is replayed after it", async () => {
    const { clock, inner, relay, state } = lostAcks(Number.POSITIVE_INFINITY);
    await inner.transaction((tx) =>
      inner.enqueue(
        tx,
        msgs(1, () => "k"),
      ),
    );
    const cycle = relay.runOnce();
    await finish(clock, cycle);
    await expect(cycle).rejects.toMatchObject({ code: OutboxErrorCode.StoreUnavailable });
    // 100 + 200 + 400 ms of waits; the next (800 ms) would pass the 1 s lease.
    expect(gaps(state.ackTimes)).toEqual([100, 200, 400]);
    expect((await inner.stats()).inFlight).toBe(1);
  });
});

describe("OutboxRelay claims the store could not answer", () => {
  it("gives back a claim whose reply was lost before claiming again: its entries go out at once", async () => {
    const clock = new ManualClock();
    const inner = new MemoryStore({ clock });
    const claimers: string[] = [];
    const released: string[] = [];
    let loseReply = true;
    const store = storeOver(inner, {
      claim: async (request) => {
        claimers.push(request.claimer);
        const entries = await inner.claim(request);
        if (!loseReply) return entries;
        loseReply = false;
        // Committed, then the connection reset before the reply arrived.
        throw new OutboxError(OutboxErrorCode.StoreUnavailable, "connection reset");
      },
      releaseClaimer: async (context) => {
        released.push(context.claimer);
        return inner.releaseClaimer(context);
      },
    });
    const publisher = new MemoryPublisher();
    const relay = new OutboxRelay({ store, publisher, clock, id: "r" });
    await inner.transaction((tx) =>
      inner.enqueue(
        tx,
        msgs(2, () => "k"),
      ),
    );
    await expect(relay.runOnce()).rejects.toMatchObject({ code: OutboxErrorCode.StoreUnavailable });
    expect((await inner.stats()).inFlight).toBe(2);
    // No time passes: without the give-back, both entries would wait out the 30 s lease.
    await expect(relay.runOnce()).resolves.toBe(2);
    expect(claimers).toEqual(["r#1", "r#2"]);
    expect(released).toEqual(["r#1"]);
    expect(publisher.messages).toHaveLength(2);
    expect((await inner.stats()).pending).toBe(0);
    // Given back once: a later claim has nothing left to give back.
    await relay.runOnce();
    expect(released).toEqual(["r#1"]);
  });
});

describe("OutboxRelay leadership", () => {
  it("only the lock holder drains; the fence reaches the store; stop() hands over", async () => {
    const clock = new ManualClock();
    const store = new MemoryStore({ clock });
    const backend = new MemoryLockBackend({ clock });
    const publisher = new MemoryPublisher();
    const leader = { backend, name: "relay", ttlMs: 3_000 };
    const a = new OutboxRelay({ store, publisher, clock, leader, id: "a" });
    const b = new OutboxRelay({ store, publisher, clock, leader, id: "b" });
    const gained: string[] = [];
    const lost: unknown[] = [];
    a.on("leadershipLost", ({ reason }) => lost.push(reason));
    a.on("leadershipGained", () => gained.push("a"));
    b.on("leadershipGained", () => gained.push("b"));
    await store.transaction((tx) => store.enqueue(tx, msgs(4)));
    expect(await a.runOnce()).toBe(4);
    await store.transaction((tx) => store.enqueue(tx, msgs(2)));
    expect(await b.runOnce()).toBe(0);
    expect(a.metrics().leader).toBe(true);
    expect(b.metrics().leader).toBe(false);
    a.start();
    await a.stop();
    await store.transaction((tx) => store.enqueue(tx, msgs(3)));
    expect(await b.runOnce()).toBe(3);
    expect(gained).toEqual(["a", "b"]);
    expect(lost).toEqual(["stopped"]);
    // a's token (1) is now stale at the store.
    await expect(
      store.claim({ claimer: "a", limit: 1, leaseMs: 1, fence: { lock: "relay", token: 1n } }),
    ).rejects.toThrowError(expect.objectContaining({ code: OutboxErrorCode.Fenced }) as unknown as Error);
  });

  it("an unreachable lock backend means not leading once the validity lapses", async () => {
    const clock = new ManualClock();
    const store = new MemoryStore({ clock });
    const backend = new MemoryLockBackend({ clock });
    const relay = new OutboxRelay({
      store,
      publisher: new MemoryPublisher(),
      clock,
      leader: { backend, ttlMs: 3_000, safetyMarginMs: 600 },
    });
    const lost: unknown[] = [];
    relay.on("leadershipLost", ({ reason }) => lost.push(reason));
    relay.on("error", () => {});
    await store.transaction((tx) => store.enqueue(tx, msgs(1)));
    expect(await relay.runOnce()).toBe(1);
    backend.setReachable(false);
    clock.advance(2_399);
    expect(relay.metrics().leader).toBe(true);
    clock.advance(1);
    expect(relay.metrics().leader).toBe(false);
    expect(lost).toHaveLength(1);
    await store.transaction((tx) => store.enqueue(tx, msgs(1)));
    expect(await relay.runOnce()).toBe(0);
    backend.setReachable(true);
    clock.advance(1_000);
    expect(await relay.runOnce()).toBe(1);
  });
});

describe("OutboxRelay leader whose store keeps failing", () => {
  function leaders() {
    const clock = new ManualClock();
    const inner = new MemoryStore({ clock });
    const backend = new MemoryLockBackend({ clock });
    const leader = { backend, name: "relay", ttlMs: 3_000 };
    const flaky = flakyStore(inner);
    const a = new OutboxRelay({ store: flaky.store, publisher: new MemoryPublisher(), clock, leader, id: "a" });
    const lost: unknown[] = [];
    a.on("leadershipLost", ({ reason }) => lost.push(reason));
    a.on("error", () => {});
    return { clock, inner, leader, flaky, a, lost };
  }
  const storeDown = expect.objectContaining({ code: OutboxErrorCode.StoreUnavailable }) as unknown as Error;
  /** Moves time in steps the lock's renewals (every TTL/3) keep up with, so that only the store fails. */
  async function pass(clock: ManualClock, ms: number): Promise<void> {
    for (let left = ms; left > 0; left -= 500) {
      clock.advance(Math.min(500, left));
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  it("steps down once its claims have failed for 3 TTLs in a row, and a standby with a working store takes over", async () => {
    const { clock, inner, leader, a, lost } = leaders();
    const publisher = new MemoryPublisher();
    const b = new OutboxRelay({ store: inner, publisher, clock, leader, id: "b" });
    await inner.transaction((tx) => inner.enqueue(tx, msgs(2)));
    await expect(a.runOnce()).rejects.toThrowError(storeDown);
    expect(a.metrics().leader).toBe(true);
    expect(await b.runOnce()).toBe(0);
    await pass(clock, 8_999);
    await expect(a.runOnce()).rejects.toThrowError(storeDown);
    expect(a.metrics().leader).toBe(true);
    expect(await b.runOnce()).toBe(0);
    await pass(clock, 1);
    await expect(a.runOnce()).rejects.toThrowError(storeDown);
    expect(a.metrics().leader).toBe(false);
    expect(lost).toHaveLength(1);
    expect(OutboxError.is(lost[0], OutboxErrorCode.StoreUnavailable)).toBe(true);
    expect(await b.runOnce()).toBe(2);
    expect(publisher.messages).toHaveLength(2);
  });

  it("leaves the lock alone for one TTL after stepping down, then leads again; a claim that succeeds ends the run of failures", async () => {
    const { clock, inner, flaky, a, lost } = leaders();
    await inner.transaction((tx) => inner.enqueue(tx, msgs(1)));
    await expect(a.runOnce()).rejects.toThrowError(storeDown);
    await pass(clock, 5_000);
    // A success in between: the next failure starts a new run, so 9 s after the first is not enough.
    flaky.state.failing = false;
    expect(await a.runOnce()).toBe(1);
    flaky.state.failing = true;
    await pass(clock, 4_000);
    await expect(a.runOnce()).rejects.toThrowError(storeDown);
    await pass(clock, 8_999);
    await expect(a.runOnce()).rejects.toThrowError(storeDown);
    expect(lost).toHaveLength(0);
    await pass(clock, 1);
    await expect(a.runOnce()).rejects.toThrowError(storeDown);
    expect(lost).toHaveLength(1);
    const claims = flaky.state.claims;
    await pass(clock, 2_999);
    expect(await a.runOnce()).toBe(0);
    expect(flaky.state.claims).toBe(claims);
    await pass(clock, 1);
    flaky.state.failing = false;
    await inner.transaction((tx) => inner.enqueue(tx, msgs(1)));
    expect(await a.runOnce()).toBe(1);
    expect(a.metrics().leader).toBe(true);
  });

  it("rejects a stepDownAfterMs that is not a positive number", () => {
    const clock = new ManualClock();
    const backend = new MemoryLockBackend({ clock });
    expect(
      () =>
        new OutboxRelay({
          store: new MemoryStore({ clock }),
          publisher: new MemoryPublisher(),
          clock,
          leader: { backend, stepDownAfterMs: 0 },
        }),
    ).toThrowError(expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }) as unknown as Error);
  });
});

describe("OutboxRelay fenced by the store", () => {
  it("steps down and reports the loss when the store rejects its token", async () => {
    const clock = new ManualClock();
    const store = new MemoryStore({ clock });
    const backend = new MemoryLockBackend({ clock });
    const relay = new OutboxRelay({ store, publisher: new MemoryPublisher(), clock, leader: { backend, name: "l" } });
    const lost: unknown[] = [];
    relay.on("leadershipLost", ({ reason }) => lost.push(reason));
    await store.transaction((tx) => store.enqueue(tx, msgs(1)));
    expect(await relay.runOnce()).toBe(1);
    // Someone with a newer token reached the store (e.g. after a lock-store failover).
    await store.claim({ claimer: "other", limit: 0, leaseMs: 1, fence: { lock: "l", token: 99n } });
    await store.transaction((tx) => store.enqueue(tx, msgs(1)));
    await expect(relay.runOnce()).rejects.toThrowError(
      expect.objectContaining({ code: OutboxErrorCode.Fenced }) as unknown as Error,
    );
    expect(lost).toHaveLength(1);
    expect(OutboxError.is(lost[0], OutboxErrorCode.Fenced)).toBe(true);
    expect(relay.metrics().leader).toBe(false);
  });
});

describe("OutboxRelay publish deadline", () => {
  it("aborts the publisher's signal shortly before the lease ends", async () => {
    let signal: AbortSignal | undefined;
    let entered!: () => void;
    const inPublish = new Promise<void>((resolve) => {
      entered = resolve;
    });
    const { relay, clock, enqueue, events } = setup({
      leaseMs: 10_000,
      publisher: {
        publish: (entries, options) =>
          new Promise((resolve) => {
            signal = options?.signal;
            entered();
            // A broker that never answers; the publisher gives up when the signal aborts.
            options?.signal?.addEventListener("abort", () =>
              resolve(entries.map(() => transientFailure(options.signal?.reason))),
            );
          }),
      },
    });
    await enqueue(msgs(1));
    const cycle = relay.runOnce();
    await inPublish;
    clock.advance(7_999);
    expect(signal?.aborted).toBe(false);
    clock.advance(1); // lease 10 s minus a fifth of it
    await cycle;
    expect(signal?.aborted).toBe(true);
    const retried = events.find((e) => e.type === "retried")?.payload as RelayEvents["retried"];
    expect(OutboxError.is(retried.error, OutboxErrorCode.PublishFailed)).toBe(true);
  });
});

describe("OutboxRelay hot keys", () => {
  it("drains a hot key one claim after another, not one entry per poll", async () => {
    const { relay, clock, enqueue, publisher } = setup({ pollMs: 60_000 });
    await enqueue(msgs(5, () => "hot"));
    const start = clock.now();
    const allPublished = publishedCount(relay, 5);
    relay.start();
    // Without the immediate re-claim this would wait a 60 s poll per entry: the clock never moves here.
    await allPublished;
    expect(publisher.messages).toHaveLength(5);
    expect(clock.now()).toBe(start);
    await relay.stop();
  });

  it("drain() follows a key's successors too", async () => {
    const { relay, enqueue, publisher } = setup();
    await enqueue(msgs(4, () => "hot"));
    expect(await relay.drain()).toBe(4);
    expect(publisher.messages).toHaveLength(4);
  });
});

describe("OutboxRelay key runs", () => {
  it("acks a run's published prefix, retries its failure and releases the rest without counting an attempt", async () => {
    const publisher = new MemoryPublisher({
      outcome: (entry: OutboxEntry) =>
        new TextDecoder().decode(entry.payload) === "m1" && entry.attempts === 1
          ? transientFailure("broker hiccup")
          : published(),
    });
    const { clock, store, relay, enqueue } = setup({ publisher, retry: { baseDelayMs: 1_000, jitter: 0 } });
    await enqueue(msgs(4, () => "k"));
    expect(await relay.runOnce()).toBe(4);
    expect(publisher.messages.map((m) => new TextDecoder().decode(m.payload))).toEqual(["m0"]);
    expect(await store.claim({ claimer: "probe", limit: 10, leaseMs: 1 })).toEqual([]);
    clock.advance(1_000);
    const again = await store.claim({ claimer: "probe", limit: 10, leaseMs: 1 });
    expect(again.map((e) => new TextDecoder().decode(e.payload))).toEqual(["m1", "m2", "m3"]);
    // m1 was attempted once and claimed again now; m2 and m3 were never attempted before.
    expect(again.map((e) => e.attempts)).toEqual([2, 1, 1]);
  });

  it("reports a publisher that publishes past a failure of its key, and acks what reached the broker", async () => {
    const publisher: OutboxPublisher = {
      publish: async (entries) => entries.map((_, i) => (i === 0 ? transientFailure("x") : published())),
    };
    const { store, relay, enqueue, events } = setup({ publisher });
    await enqueue(msgs(2, () => "k"));
    await relay.runOnce();
    const errors = events.filter((e) => e.type === "error").map((e) => (e.payload as RelayEvents["error"]).error);
    expect(errors.some((error) => OutboxError.is(error, OutboxErrorCode.PublisherContract))).toBe(true);
    expect((await store.stats()).pending).toBe(1);
  });
});

describe("OutboxRelay pipelining", () => {
  it("keeps at most maxInFlightBatches batches with the publisher, claiming the next while one publishes", async () => {
    let active = 0;
    let most = 0;
    const gates: Array<() => void> = [];
    const publisher: OutboxPublisher = {
      publish: async (entries) => {
        active += 1;
        most = Math.max(most, active);
        await new Promise<void>((resolve) => gates.push(resolve));
        active -= 1;
        return entries.map(() => published());
      },
    };
    const { relay, enqueue } = setup({ publisher, batchSize: 2, maxInFlightBatches: 2, pollMs: 60_000 });
    await enqueue(msgs(8));
    const done = publishedCount(relay, 8);
    relay.start();
    for (let released = 0; released < 4; released++) {
      await vi.waitFor(() => expect(gates.length).toBeGreaterThan(0));
      expect(active).toBeLessThanOrEqual(2);
      gates.shift()?.();
    }
    await done;
    expect(most).toBe(2);
    await relay.stop();
  });

  it.each([
    2, 4,
  ])("claims two at a time while claims come back full (maxInFlightBatches %i)", async (maxInFlightBatches) => {
    const clock = new ManualClock();
    const inner = new MemoryStore({ clock });
    let claims = 0;
    let finished = false;
    let claiming = 0;
    let mostClaiming = 0;
    const gates: Array<() => void> = [];
    const claim = async (request: Parameters<MemoryStore["claim"]>[0]) => {
      claiming += 1;
      mostClaiming = Math.max(mostClaiming, claiming);
      // The first claim answers at once (a full batch); later ones wait to be let through.
      if (claims++ > 0 && !finished) await new Promise<void>((resolve) => gates.push(resolve));
      claiming -= 1;
      return inner.claim(request);
    };
    const store = new Proxy(inner, {
      get: (target, property) => {
        if (property === "claim") return claim;
        const value = Reflect.get(target, property);
        return typeof value === "function" ? value.bind(target) : value;
      },
    }) as OutboxStore<never>;
    const relay = new OutboxRelay({
      store,
      publisher: new MemoryPublisher(),
      clock,
      batchSize: 2,
      maxInFlightBatches,
      pollMs: 60_000,
    });
    await inner.transaction((tx) =>
      inner.enqueue(
        tx,
        msgs(12, (i) => `k${i}`),
      ),
    );
    const done = publishedCount(relay, 12);
    relay.start();
    await vi.waitFor(() => expect(gates.length).toBe(2));
    for (let tick = 0; tick < 20; tick++) await new Promise((resolve) => setImmediate(resolve));
    // Never a third claim at once, however many batches may be in flight.
    expect(claiming).toBe(2);
    void done.then(() => {
      finished = true;
    });
    while (!finished) {
      gates.shift()?.();
      await new Promise((resolve) => setImmediate(resolve));
    }
    for (const open of gates.splice(0)) open();
    expect(mostClaiming).toBe(2);
    await relay.stop();
  });

  it("rejects a maxInFlightBatches that is not positive", () => {
    expect(() => setup({ maxInFlightBatches: 0 })).toThrowError(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
  });
});
