/**
 * Fault tests of the Redis leader lock with the real PostgreSQL store (its fencing check), real
 * Redis and real time (systemClock): a Redis restart while a relay leads, a relay frozen with
 * SIGSTOP past its TTL, and two/three relays on one outbox under leader faults.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { keyOrderViolations, uniqueName, wrapStore } from "@outbox/conformance";
import {
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  type OutboxPublisher,
  OutboxRelay,
  type OutboxStore,
  published,
} from "@outbox/core";
import { createRedisStreamPublisher, decodeStreamFields } from "@outbox/publisher-redis";
import { createPostgresStore, migrate, type PostgresStore, resolveNames } from "@outbox/store-postgres";
import { freshIdentifier, pgUrl } from "@outbox/test-support/postgres";
import { closeClients, failFast, newClient, RedisProxy, redisUrl, restartRedis } from "@outbox/test-support/redis";
import { sleep, waitFor } from "@outbox/test-support/wait";
import type { Redis, RedisOptions } from "ioredis";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRedisLockBackend } from "../src/index.js";
import type { ChildConfig } from "./fixtures/relay-child.js";

const ttlMs = 1_500;
const marginMs = Math.floor(ttlMs / 5); // DistributedLock's default
const renewEveryMs = Math.floor(ttlMs / 3);
const batchSize = 10;
const leaseMs = 3_000;
/** Fail fast while Redis is away, reconnect quickly once it is back. */
const relayClient: RedisOptions = { ...failFast, retryStrategy: (times) => Math.min(times * 20, 100) };

let pool: pg.Pool;
let admin: Redis;
const tables: string[] = [];

beforeAll(async () => {
  pool = new pg.Pool({ connectionString: pgUrl, max: 20 });
  // The test's own view of Redis: queues commands across restarts instead of failing them.
  admin = await newClient({ maxRetriesPerRequest: null, retryStrategy: () => 50 });
});

afterAll(async () => {
  for (const table of tables) {
    const names = resolveNames({ table });
    await pool.query(`DROP TABLE IF EXISTS ${names.qualifiedTable}, ${names.qualifiedFence}`);
  }
  await pool.end();
  await closeClients();
});

async function freshOutbox(): Promise<PostgresStore> {
  const table = freshIdentifier("fault");
  await migrate(pool, { table });
  tables.push(table);
  // Other suites may terminate idle PostgreSQL connections; the pool reconnects by itself.
  return createPostgresStore({ pool, table, listen: false, onError: () => {} });
}

const seqHeader = "x-seq";
const byHeader = "x-published-by";

function messages(from: number, count: number, keys: number): OutboxMessage[] {
  return Array.from({ length: count }, (_, i) => ({
    topic: "orders",
    key: `k${(from + i) % keys}`,
    payload: `entry-${from + i}`,
    headers: { [seqHeader]: String(from + i) },
  }));
}

const seqOf = (entry: { headers: Readonly<Record<string, string>> }) => Number(entry.headers[seqHeader]);

// ---------------------------------------------------------------- recording

interface StoreOp {
  relay: string;
  op: "claim" | "ack" | "retry" | "deadLetter" | "release";
  token: bigint | null;
  start: number;
  end: number | null;
  ok: boolean | null;
  code?: string;
  count: number;
}

/** Records every claim and settle of one relay, with its fencing token and timing. */
function recordingStore(
  inner: OutboxStore<never>,
  relay: string,
  ops: StoreOp[],
  hooks: { beforeAck?: (ids: readonly string[]) => Promise<void> } = {},
): OutboxStore<never> {
  async function record<T>(
    op: StoreOp["op"],
    token: bigint | undefined,
    count: number,
    run: () => Promise<T>,
    size?: (result: T) => number,
  ): Promise<T> {
    const entry: StoreOp = { relay, op, token: token ?? null, start: Date.now(), end: null, ok: null, count };
    ops.push(entry);
    try {
      const result = await run();
      Object.assign(entry, { end: Date.now(), ok: true, count: size ? size(result) : count });
      return result;
    } catch (error) {
      Object.assign(entry, { end: Date.now(), ok: false, code: OutboxError.is(error) ? error.code : String(error) });
      throw error;
    }
  }
  return wrapStore(inner, {
    claim: (request) =>
      record(
        "claim",
        request.fence?.token,
        0,
        () => inner.claim(request),
        (entries) => entries.length,
      ),
    ack: async (ids, context) => {
      await hooks.beforeAck?.(ids);
      return record("ack", context.fence?.token, ids.length, () => inner.ack(ids, context));
    },
    retry: (items, context) => record("retry", context.fence?.token, items.length, () => inner.retry(items, context)),
    deadLetter: (items, context) =>
      record("deadLetter", context.fence?.token, items.length, () => inner.deadLetter(items, context)),
    release: (ids, context) => record("release", context.fence?.token, ids.length, () => inner.release(ids, context)),
  });
}

interface Delivery {
  relay: string;
  seq: number;
  key: string | null;
  at: number;
}

interface RecordingPublisher extends OutboxPublisher {
  /** The next publish call hangs this long before the broker takes it (a GC pause, a slow broker). */
  stallNext(ms: number): void;
}

function recordingPublisher(relay: string, deliveries: Delivery[]): RecordingPublisher {
  let stallMs = 0;
  return {
    stallNext(ms) {
      stallMs = ms;
    },
    async publish(entries: readonly OutboxEntry[]) {
      if (stallMs > 0) {
        const ms = stallMs;
        stallMs = 0;
        await sleep(ms);
      }
      const at = Date.now();
      for (const entry of entries) deliveries.push({ relay, seq: seqOf(entry), key: entry.key, at });
      return entries.map(() => published());
    },
  };
}

/** Stamps each message with the relay that published it (a header the stream keeps). */
function stamped(relay: string, inner: OutboxPublisher): OutboxPublisher {
  return {
    publish: (entries) =>
      inner.publish(entries.map((entry) => ({ ...entry, headers: { ...entry.headers, [byHeader]: relay } }))),
  };
}

interface LeaderEvent {
  relay: string;
  type: "gained" | "lost";
  token: bigint;
  at: number;
}

interface RunningRelay {
  id: string;
  relay: OutboxRelay;
  publisher: OutboxPublisher;
  client: Redis;
  proxy: RedisProxy | null;
  events: LeaderEvent[];
}

async function startRelay(
  id: string,
  store: OutboxStore<never>,
  publisher: OutboxPublisher,
  lockName: string,
  leaderEvents: LeaderEvent[],
  options: { viaProxy?: boolean } = {},
): Promise<RunningRelay> {
  const proxy = options.viaProxy ? await RedisProxy.start() : null;
  const client = await newClient(relayClient, proxy ? proxy.url : redisUrl);
  const relay = new OutboxRelay({
    id,
    store,
    publisher,
    pollMs: 50,
    batchSize,
    leaseMs,
    leader: { backend: createRedisLockBackend({ client }), name: lockName, ttlMs },
  });
  const events: LeaderEvent[] = [];
  const push = (event: LeaderEvent) => {
    events.push(event);
    leaderEvents.push(event);
  };
  relay.on("leadershipGained", ({ grant }) => push({ relay: id, type: "gained", token: grant.token, at: Date.now() }));
  relay.on("leadershipLost", ({ grant }) => push({ relay: id, type: "lost", token: grant.token, at: Date.now() }));
  relay.on("error", () => {}); // lock and fence errors are the point of these tests
  relay.start();
  return { id, relay, publisher, client, proxy, events };
}

async function stopRelay(running: RunningRelay): Promise<void> {
  await running.relay.stop();
  running.client.disconnect();
  await running.proxy?.close();
}

// ---------------------------------------------------------------- checks

/** Once the store accepted token t, no operation with a lower token that started later may succeed. */
function fenceOrderViolations(ops: StoreOp[]): string[] {
  const accepted = ops.filter((op) => op.ok && op.token !== null && op.end !== null);
  const violations: string[] = [];
  for (const newer of accepted) {
    for (const older of accepted) {
      if ((older.token as bigint) < (newer.token as bigint) && older.start > (newer.end as number)) {
        violations.push(`${older.relay} ${older.op} with ${older.token} accepted after ${newer.token}`);
      }
    }
  }
  return violations;
}

/**
 * When each token's holder started store operations that the store accepted; the windows of
 * different tokens must not overlap. Starts, not ends: the lock decides when a relay may begin
 * an operation, and one that began in time but finishes late (a slow commit) is the store's
 * fencing check's business, asserted by `fenceOrderViolations`.
 */
function drainOverlaps(ops: StoreOp[]): string[] {
  const spans = new Map<bigint, { relay: string; start: number; end: number }>();
  for (const op of ops) {
    if (!op.ok || op.token === null) continue;
    const span = spans.get(op.token);
    if (!span) spans.set(op.token, { relay: op.relay, start: op.start, end: op.start });
    else Object.assign(span, { start: Math.min(span.start, op.start), end: Math.max(span.end, op.start) });
  }
  const sorted = [...spans.entries()].sort((a, b) => a[1].start - b[1].start);
  const overlaps: string[] = [];
  for (let i = 1; i < sorted.length; i++) {
    const [token, span] = sorted[i] as [bigint, { relay: string; start: number; end: number }];
    for (const [otherToken, other] of sorted.slice(0, i)) {
      if (span.start < other.end) {
        overlaps.push(
          `${span.relay}/${token} started ${other.end - span.start} ms before ${other.relay}/${otherToken}'s last start`,
        );
      }
    }
  }
  return overlaps;
}

function firstOccurrences(deliveries: Array<{ seq: number; key: string | null }>) {
  const seen = new Set<number>();
  return deliveries.filter((d) => !seen.has(d.seq) && seen.add(d.seq));
}

// ---------------------------------------------------------------- (a) Redis restart

describe("faults with the PostgreSQL store (real Redis, real time)", () => {
  it("(a) Redis restarted while A leads: B takes over with a higher token, A stops within one renewal interval, the store fences A's late ack", async () => {
    const store = await freshOutbox();
    const lockName = uniqueName("leader");
    await store.enqueue(pool, messages(0, 30, 30));
    const ops: StoreOp[] = [];
    const deliveries: Delivery[] = [];
    const leaderEvents: LeaderEvent[] = [];

    // A's first ack is held "on the wire" (a slow network) while Redis restarts.
    let heldIds: (ids: readonly string[]) => void = () => {};
    const ackIsHeld = new Promise<readonly string[]>((resolve) => {
      heldIds = resolve;
    });
    let letAckGo: () => void = () => {};
    const ackMayGo = new Promise<void>((resolve) => {
      letAckGo = resolve;
    });
    let held = false;
    const storeA = recordingStore(store as OutboxStore<never>, "A", ops, {
      async beforeAck(ids) {
        if (held) return;
        held = true;
        heldIds(ids);
        await ackMayGo;
      },
    });
    const a = await startRelay("A", storeA, recordingPublisher("A", deliveries), lockName, leaderEvents);
    let b: RunningRelay | undefined;
    try {
      const gainedA = await waitFor(() => a.events.find((e) => e.type === "gained"), 10_000, "A to lead");
      b = await startRelay(
        "B",
        recordingStore(store as OutboxStore<never>, "B", ops),
        recordingPublisher("B", deliveries),
        lockName,
        leaderEvents,
      );
      const heldBatch = await ackIsHeld;
      expect(heldBatch).toHaveLength(batchSize);
      expect(b.events).toEqual([]); // B could not take the lock while A held it

      const probe = uniqueName("probe");
      await admin.set(probe, "survives a restart?");
      const restartStarted = Date.now();
      await restartRedis();
      const backAt = Date.now();
      // No persistence: the lock key and the fencing counter are gone with everything else.
      expect(await admin.exists(probe)).toBe(0);

      const runningB = b;
      const gainedB = await waitFor(() => runningB.events.find((e) => e.type === "gained"), 10_000, "B to lead");
      // Monotonic across the restart although the counter was lost: the server-time floor.
      expect(gainedB.token > gainedA.token).toBe(true);

      const lostA = await waitFor(() => a.events.find((e) => e.type === "lost"), 10_000, "A to step down");
      // A steps down within one renewal interval of Redis answering again (plus reconnect and
      // round trip), and never later than its validity allows. The slack is for a loaded CI
      // machine's late timers; what keeps data safe is asserted exactly below (the fenced ack).
      const timerSlackMs = 1_000;
      expect(lostA.at - backAt).toBeLessThanOrEqual(renewEveryMs + timerSlackMs);
      expect(lostA.at).toBeLessThanOrEqual(restartStarted + ttlMs - marginMs + timerSlackMs);

      // B's token reaches the store; then A's ack, sent while A still led, finally arrives.
      await waitFor(
        () => ops.some((op) => op.relay === "B" && op.op === "claim" && op.ok && op.token === gainedB.token),
        10_000,
        "B's first fenced claim",
      );
      // (A's other in-flight batch may have been acked before the restart, legitimately.)
      const releasedAt = Date.now();
      letAckGo();
      const lateAck = await waitFor(
        () => ops.find((op) => op.relay === "A" && op.op === "ack" && op.ok !== null && op.start >= releasedAt),
        10_000,
        "A's late ack",
      );
      expect(lateAck.token).toBe(gainedA.token);
      expect(lateAck.ok).toBe(false);
      expect(lateAck.code).toBe(OutboxErrorCode.Fenced);

      // Nothing lost: B took A's unacked batch over with its newer token and republished it.
      await waitFor(
        async () => new Set(deliveries.map((d) => d.seq)).size === 30 && (await store.stats()).pending === 0,
        20_000,
        "every entry published and acked",
      );
      // At most A's batches in flight (the relay's default maxInFlightBatches, 2) are published twice.
      expect(deliveries.length - 30).toBeLessThanOrEqual(2 * batchSize);
      expect(keyOrderViolations(firstOccurrences(deliveries))).toEqual([]);
      expect(fenceOrderViolations(ops)).toEqual([]);
      // A never acked anything once B led.
      expect(ops.filter((op) => op.relay === "A" && op.ok && op.op !== "claim" && op.start > gainedB.at)).toEqual([]);
    } finally {
      letAckGo();
      await stopRelay(a);
      if (b) await stopRelay(b);
    }
  }, 60_000);

  // ---------------------------------------------------------------- (b) SIGSTOP

  describe("(b) a relay paused with SIGSTOP longer than the TTL does not publish or ack as leader after SIGCONT", () => {
    for (const pause of ["after-claim", "after-publish", "external"] as const) {
      const title =
        pause === "external"
          ? "SIGSTOP from the parent right after a publish, wherever the relay is then"
          : `SIGSTOP by the relay itself ${pause.replace("-", " ")} (exact point)`;
      it(title, async () => {
        const store = await freshOutbox();
        const lockName = uniqueName("leader");
        const stream = uniqueName("fault-stream");
        // 20 keys and batches of 10: B finds entries to claim while A's batch is leased.
        await store.enqueue(pool, messages(0, 40, 20));
        const child = spawnRelayChild({
          relayId: "A",
          pgUrl,
          table: store.names.table,
          redisUrl,
          stream,
          lockName,
          ttlMs,
          pollMs: 50,
          leaseMs,
          batchSize,
          stopAt: pause === "external" ? "none" : pause,
        });
        const ops: StoreOp[] = [];
        const leaderEvents: LeaderEvent[] = [];
        let b: RunningRelay | undefined;
        try {
          let stoppedAt: number;
          if (pause === "external") {
            await child.next((e) => e.type === "publish-end", 20_000);
            child.process.kill("SIGSTOP");
            stoppedAt = Date.now();
          } else {
            stoppedAt = (await child.next((e) => e.type === "stopping-self", 20_000)).at;
          }
          await waitFor(() => processState(child.process.pid as number) === "T", 5_000, "A to be stopped");
          const gainedA = child.events.filter((e) => e.type === "gained" && e.at <= stoppedAt).at(-1) as ChildEvent;
          const claimedByA = (child.events.filter((e) => e.type === "claim" && e.at <= stoppedAt).at(-1)?.ids ??
            []) as string[];

          // B takes over while A is frozen and drains with its newer token.
          b = await startRelay(
            "B",
            recordingStore(store as OutboxStore<never>, "B", ops),
            stamped("B", createRedisStreamPublisher({ client: admin, stream: () => stream })),
            lockName,
            leaderEvents,
          );
          const runningB = b;
          const gainedB = await waitFor(() => runningB.events.find((e) => e.type === "gained"), 10_000, "B to lead");
          expect(gainedB.token > BigInt(gainedA.token as string)).toBe(true);
          await waitFor(
            () => ops.some((op) => op.op === "claim" && op.ok && op.count > 0 && op.token === gainedB.token),
            10_000,
            "B to drain",
          );
          // The pause outlasts the TTL (B's takeover already implies the lease ran out on Redis).
          await waitFor(() => Date.now() - stoppedAt > ttlMs + 100, 5_000, "the pause to exceed the TTL");

          const resumedAt = Date.now();
          child.process.kill("SIGCONT");
          await child.next((e) => e.type === "lost" && e.at >= resumedAt, 10_000);
          // More work while A runs again: B must do all of it.
          await store.enqueue(pool, messages(40, 20, 20));
          const all = new Set(Array.from({ length: 60 }, (_, i) => i));
          await waitFor(
            async () => {
              const seqs = new Set((await readStream(stream)).map((m) => seqOf(m)));
              return [...all].every((seq) => seqs.has(seq)) && (await store.stats()).pending === 0;
            },
            30_000,
            "every entry published and acked",
          );
          await child.stop();

          // What A started after it was resumed: nothing as leader.
          const afterResume = child.events.filter((e) => e.at >= resumedAt);
          expect(afterResume.filter((e) => e.type === "publish-start")).toEqual([]);
          expect(afterResume.filter((e) => e.type === "ack-start")).toEqual([]);
          expect(afterResume.filter((e) => e.type === "claim-start" && e.token !== undefined)).toEqual([]);
          expect(afterResume.filter((e) => e.type === "gained")).toEqual([]);

          // The broker's view (stream ids are Redis' clock, this host's clock, millisecond
          // resolution): whatever A wrote from the pause on was already on its way before it.
          const inFlightAtStop = new Set(
            child.events
              .filter((e) => e.type === "publish-start" && e.at <= stoppedAt)
              .slice(-1)
              .flatMap((e) => e.ids as string[]),
          );
          const messagesByA = (await readStream(stream)).filter((m) => m.headers[byHeader] === "A");
          const lateByA = messagesByA.filter((m) => m.addedAt >= stoppedAt);
          expect(lateByA.filter((m) => !inFlightAtStop.has(m.id))).toEqual([]);
          if (pause === "after-claim") expect(messagesByA).toEqual([]);

          // No entry lost; duplicates bounded by the batches A had in flight (default 2).
          const received = await readStream(stream);
          expect(new Set(received.map((m) => seqOf(m))).size).toBe(60);
          expect(received.length - 60).toBeLessThanOrEqual(2 * batchSize);
          // Had A acked after resuming, the store would have refused its token.
          if (claimedByA.length > 0) {
            const error = await store
              .ack(claimedByA, { claimer: "A", fence: { lock: lockName, token: BigInt(gainedA.token as string) } })
              .then(
                () => null,
                (caught: unknown) => caught,
              );
            expect(OutboxError.is(error, OutboxErrorCode.Fenced)).toBe(true);
          }
        } finally {
          await child.stop();
          if (b) await stopRelay(b);
        }
      }, 90_000);
    }
  });

  // ---------------------------------------------------------------- (c) 2 and 3 relays

  for (const count of [2, 3]) {
    it(`(c) ${count} relays with the Redis lock on one PostgreSQL outbox: one drains at a time, nothing lost, duplicates bounded`, async () => {
      const store = await freshOutbox();
      const lockName = uniqueName("leader");
      const ops: StoreOp[] = [];
      const deliveries: Delivery[] = [];
      const leaderEvents: LeaderEvent[] = [];
      const relays: RunningRelay[] = [];
      let producing = true;
      let enqueued = 0;
      const producer = (async () => {
        while (producing) {
          await store.enqueue(pool, messages(enqueued, 10, 25));
          enqueued += 10;
          await sleep(50);
        }
      })();
      const faults = ["stop-start", "partition", "client-kill", "zombie", "stop-start", "partition"] as const;
      try {
        for (let i = 0; i < count; i++) {
          const id = `R${i + 1}`;
          relays.push(
            await startRelay(
              id,
              recordingStore(store as OutboxStore<never>, id, ops),
              recordingPublisher(id, deliveries),
              lockName,
              leaderEvents,
              { viaProxy: true },
            ),
          );
        }
        for (const fault of faults) {
          const before = deliveries.length;
          const leader = await waitFor(
            () => relays.find((r) => r.relay.metrics().leader && deliveries.length >= before + 10),
            15_000,
            `a leader making progress before ${fault}`,
          );
          const gainsBefore = leaderEvents.filter((e) => e.type === "gained").length;
          const someoneElseLeads = () =>
            leaderEvents.filter((e) => e.type === "gained").length > gainsBefore &&
            leaderEvents.filter((e) => e.type === "gained").at(-1)?.relay !== leader.id;
          if (fault === "stop-start") {
            await leader.relay.stop(); // releases the lock after its in-flight batch
            await waitFor(someoneElseLeads, 10_000, "a new leader after stop()");
            leader.relay.start();
          } else if (fault === "partition") {
            (leader.proxy as RedisProxy).cut("blackhole"); // cut off from Redis only; PostgreSQL still reachable
            await waitFor(() => leader.events.at(-1)?.type === "lost", 10_000, "the partitioned leader to step down");
            await waitFor(someoneElseLeads, 10_000, "a new leader after the partition");
            (leader.proxy as RedisProxy).restore();
          } else if (fault === "zombie") {
            // Its next publish hangs past the TTL while it is also cut off from Redis: the lock
            // lapses mid-publish; the late publish lands (a bounded duplicate), the ack must not.
            (leader.publisher as RecordingPublisher).stallNext(ttlMs + 500);
            (leader.proxy as RedisProxy).cut("blackhole");
            await waitFor(() => leader.events.at(-1)?.type === "lost", 10_000, "the zombie to step down");
            await waitFor(someoneElseLeads, 10_000, "a new leader while the zombie publishes");
            (leader.proxy as RedisProxy).restore();
          } else {
            const clientId = await leader.client.client("ID");
            await admin.client("KILL", "ID", String(clientId));
          }
        }
        producing = false;
        await producer;
        const total = enqueued;
        await waitFor(
          async () => new Set(deliveries.map((d) => d.seq)).size === total && (await store.stats()).pending === 0,
          30_000,
          "every entry published and acked",
        );
      } finally {
        producing = false;
        await producer;
        for (const running of relays) await stopRelay(running);
      }

      const total = enqueued;
      expect(new Set(deliveries.map((d) => d.seq))).toEqual(new Set(Array.from({ length: total }, (_, i) => i)));
      // Each fault may replay at most the batch that was in flight.
      expect(deliveries.length - total).toBeLessThanOrEqual(batchSize * faults.length);
      expect(keyOrderViolations(firstOccurrences(deliveries))).toEqual([]);
      // At most one drains at any time: the store activity of different tokens never overlaps...
      expect(drainOverlaps(ops)).toEqual([]);
      // ...and the store never accepted an older token after a newer one.
      expect(fenceOrderViolations(ops)).toEqual([]);
      const gains = leaderEvents.filter((e) => e.type === "gained");
      for (let i = 1; i < gains.length; i++) {
        expect((gains[i] as LeaderEvent).token > (gains[i - 1] as LeaderEvent).token).toBe(true);
      }
      // The faults really moved leadership around.
      expect(new Set(gains.map((e) => e.relay)).size).toBeGreaterThanOrEqual(2);
      expect(gains.length).toBeGreaterThanOrEqual(1 + faults.filter((f) => f !== "client-kill").length);
    }, 120_000);
  }
});

// ---------------------------------------------------------------- child relay and stream helpers

interface ChildEvent {
  type: string;
  at: number;
  token?: string;
  ids?: string[];
  [field: string]: unknown;
}

const childScript = fileURLToPath(new URL("./fixtures/relay-child.ts", import.meta.url));
const childHooks = new URL("../../../scripts/register-ts.mjs", import.meta.url).href;

function processState(pid: number): string | null {
  try {
    // /proc/<pid>/stat: "pid (comm) state ..."; comm may contain spaces, the state follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0] ?? null;
  } catch {
    return null;
  }
}

function spawnRelayChild(config: ChildConfig) {
  const child: ChildProcess = spawn(
    process.execPath,
    ["--conditions=@outbox/source", "--no-warnings", "--import", childHooks, childScript],
    { env: { ...process.env, RELAY_CHILD: JSON.stringify(config) }, stdio: ["ignore", "pipe", "pipe"] },
  );
  const events: ChildEvent[] = [];
  let stderr = "";
  const waiters = new Set<() => void>();
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
    try {
      events.push(JSON.parse(line) as ChildEvent);
    } catch {
      stderr += `${line}\n`;
    }
    for (const wake of waiters) wake();
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  let exitedAlready = false;
  void exited.then(() => {
    exitedAlready = true;
    for (const wake of waiters) wake();
  });
  return {
    process: child,
    events,
    /** The first event (already seen or coming) matching `predicate`. */
    async next(predicate: (event: ChildEvent) => boolean, timeoutMs: number): Promise<ChildEvent> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = events.find(predicate);
        if (found) return found;
        if (exitedAlready) throw new Error(`child relay exited early; stderr:\n${stderr}`);
        const remaining = deadline - Date.now();
        if (remaining <= 0) {
          throw new Error(
            `child relay: no matching event in ${timeoutMs} ms; events: ${JSON.stringify(events.map((e) => e.type))}; stderr:\n${stderr}`,
          );
        }
        await new Promise<void>((resolve) => {
          const wake = () => {
            waiters.delete(wake);
            clearTimeout(timer);
            resolve();
          };
          const timer = setTimeout(wake, remaining);
          waiters.add(wake);
        });
      }
    },
    /** SIGCONT (in case it is stopped), then SIGTERM: the child stops its relay and exits. */
    async stop(): Promise<void> {
      if (exitedAlready) return;
      child.kill("SIGCONT");
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

interface StreamRecord extends ReturnType<typeof decodeStreamFields> {
  /** Milliseconds part of the stream entry id: when Redis appended it. */
  addedAt: number;
}

async function readStream(stream: string): Promise<StreamRecord[]> {
  const entries = (await admin.xrangeBuffer(stream, "-", "+")) as Array<[Buffer, Buffer[]]>;
  return entries.map(([id, fields]) => ({
    ...decodeStreamFields(fields),
    addedAt: Number(id.toString().split("-")[0]),
  }));
}
