/**
 * Fault tests of the etcd leader lock with the real PostgreSQL store (its fencing check), real
 * etcd 3.4 and real time. Every relay runs in its own process (test/fixtures/relay-child.ts), so
 * it can be frozen (SIGSTOP) and killed (SIGKILL) for real; its "broker" is a PostgreSQL table.
 * - (a) etcd restarted on its own data while a relay leads and its ack is on the wire;
 * - (a') etcd restarted on a fresh data dir: why `tokensSurviveRestart` needs durable data;
 * - (b) a relay frozen past its TTL (zombie leader), whose late ack the store rejects;
 * - (c) two and three relays under kills, partitions, freezes and restarts.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { keyOrderViolations, uniqueName } from "@outbox/conformance";
import { OutboxError, OutboxErrorCode, type OutboxMessage } from "@outbox/core";
import { createPostgresStore, migrate, type PostgresStore, resolveNames } from "@outbox/store-postgres";
import { freshIdentifier, pgUrl } from "@outbox/test-support/postgres";
import { services } from "@outbox/test-support/services";
import { TcpProxy } from "@outbox/test-support/tcp-proxy";
import { sleep, waitFor } from "@outbox/test-support/wait";
import type { Etcd3 } from "etcd3";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createEtcdLockBackend } from "../src/index.js";
import type { ChildConfig } from "./fixtures/relay-child.js";
import { closeClients, etcdEndpoint, etcdHosts, newClient, processState, restartEtcd } from "./support.js";

const ttlMs = 2_000; // etcd's minimum lease TTL with its default election timeout
const batchSize = 10;
const leaseMs = 4_000;
const pollMs = 50;

let pool: pg.Pool;
let admin: Etcd3;
const tables: string[] = [];

beforeAll(() => {
  pool = new pg.Pool({ connectionString: pgUrl, max: 10 });
  pool.on("error", () => undefined);
  admin = newClient();
});

afterAll(async () => {
  for (const table of tables) {
    const names = resolveNames({ table });
    await pool.query(`DROP TABLE IF EXISTS ${names.qualifiedTable}, ${names.qualifiedFence}, ${table}_deliveries`);
  }
  await pool.end();
  closeClients();
});

interface Outbox {
  store: PostgresStore;
  table: string;
  deliveries: string;
}

async function freshOutbox(): Promise<Outbox> {
  const table = freshIdentifier("etcdfault");
  await migrate(pool, { table });
  tables.push(table);
  const deliveries = `${table}_deliveries`;
  await pool.query(
    `CREATE TABLE ${deliveries} (id bigserial PRIMARY KEY, seq int NOT NULL, key text, relay text NOT NULL)`,
  );
  return { store: createPostgresStore({ pool, table, listen: false, onError: () => {} }), table, deliveries };
}

function messages(from: number, count: number, keys: number): OutboxMessage[] {
  return Array.from({ length: count }, (_, i) => ({
    topic: "orders",
    key: `k${(from + i) % keys}`,
    payload: `entry-${from + i}`,
    headers: { "x-seq": String(from + i) },
  }));
}

interface Delivery {
  seq: number;
  key: string | null;
  relay: string;
}

async function deliveries(outbox: Outbox): Promise<Delivery[]> {
  const { rows } = await pool.query(`SELECT seq, key, relay FROM ${outbox.deliveries} ORDER BY id`);
  return rows as Delivery[];
}

function firstOccurrences(items: Delivery[]): Delivery[] {
  const seen = new Set<number>();
  return items.filter((d) => !seen.has(d.seq) && seen.add(d.seq));
}

async function allDone(outbox: Outbox, total: number): Promise<boolean> {
  const seqs = new Set((await deliveries(outbox)).map((d) => d.seq));
  return seqs.size === total && (await outbox.store.stats()).pending === 0;
}

// ---------------------------------------------------------------- child relays

interface ChildEvent {
  type: string;
  at: number;
  relay: string;
  token?: string;
  ids?: string[];
  op?: string;
  start?: number;
  ok?: boolean;
  code?: string;
  count?: number;
  [field: string]: unknown;
}

const childScript = fileURLToPath(new URL("./fixtures/relay-child.ts", import.meta.url));
const childHooks = new URL("../../../scripts/register-ts.mjs", import.meta.url).href;

type Child = ReturnType<typeof spawnRelayChild>;

function spawnRelayChild(
  outbox: Outbox,
  relayId: string,
  lockName: string,
  options: Partial<ChildConfig> & { log?: ChildEvent[] } = {},
) {
  const { log, ...overrides } = options;
  const config: ChildConfig = {
    relayId,
    pgUrl,
    table: outbox.table,
    deliveries: outbox.deliveries,
    etcdHosts,
    lockName,
    ttlMs,
    pollMs,
    leaseMs,
    batchSize,
    stopAt: "none",
    ...overrides,
  };
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
      const event = { ...(JSON.parse(line) as ChildEvent), relay: relayId };
      events.push(event);
      log?.push(event);
    } catch {
      stderr += `${line}\n`;
    }
    for (const wake of waiters) wake();
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  let exitedAlready = false;
  const exited = new Promise<void>((resolve) =>
    child.on("exit", () => {
      exitedAlready = true;
      for (const wake of waiters) wake();
      resolve();
    }),
  );
  return {
    id: relayId,
    process: child,
    events,
    get exited() {
      return exitedAlready;
    },
    /** The first event (already seen or coming) matching `predicate`. */
    async next(predicate: (event: ChildEvent) => boolean, timeoutMs: number, what = "event"): Promise<ChildEvent> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = events.find(predicate);
        if (found) return found;
        if (exitedAlready) throw new Error(`child relay ${relayId} exited early; stderr:\n${stderr}`);
        const remaining = deadline - Date.now();
        if (remaining <= 0) {
          throw new Error(
            `child relay ${relayId}: no ${what} in ${timeoutMs} ms; events: ${JSON.stringify(events.map((e) => e.type).slice(-30))}; stderr:\n${stderr}`,
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
    /** Whether its latest leadership event is a gain (what it believes, not what is true). */
    believesLeading(): boolean {
      return events.filter((e) => e.type === "gained" || e.type === "lost").at(-1)?.type === "gained";
    },
    kill(signal: NodeJS.Signals): void {
      if (!exitedAlready) child.kill(signal);
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

// ---------------------------------------------------------------- checks

/** Store operations the children reported as finished. */
const opsOf = (events: ChildEvent[]) => events.filter((e) => e.type === "op");
const gainsOf = (events: ChildEvent[]) =>
  events
    .filter((e) => e.type === "gained")
    .sort((a, b) => a.at - b.at || Number(BigInt(a.token as string) - BigInt(b.token as string)));

/** Once the store accepted token t, no operation with a lower token that started later may succeed. */
function fenceOrderViolations(events: ChildEvent[]): string[] {
  const accepted = opsOf(events).filter((op) => op.ok && op.token !== undefined);
  const violations: string[] = [];
  for (const newer of accepted) {
    for (const older of accepted) {
      if (BigInt(older.token as string) < BigInt(newer.token as string) && (older.start as number) > newer.at) {
        violations.push(`${older.relay} ${older.op} with ${older.token} accepted after ${newer.token}`);
      }
    }
  }
  return violations;
}

/**
 * When each token's holder started store operations that the store accepted; the windows of
 * different tokens must not overlap: one drainer at a time. (Starts: the lock decides when a relay
 * may begin an operation; one that began in time and finished late is the fence check's business.)
 */
function drainOverlaps(events: ChildEvent[]): string[] {
  const spans = new Map<string, { relay: string; start: number; end: number }>();
  for (const op of opsOf(events)) {
    if (!op.ok || op.token === undefined) continue;
    const start = op.start as number;
    const span = spans.get(op.token);
    if (!span) spans.set(op.token, { relay: op.relay, start, end: start });
    else Object.assign(span, { start: Math.min(span.start, start), end: Math.max(span.end, start) });
  }
  const sorted = [...spans.entries()].sort((a, b) => a[1].start - b[1].start);
  const overlaps: string[] = [];
  for (let i = 1; i < sorted.length; i++) {
    const [token, span] = sorted[i] as [string, { relay: string; start: number; end: number }];
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

async function lockKeyRevision(lockName: string): Promise<bigint | null> {
  const backend = createEtcdLockBackend({ client: admin });
  const range = await admin.kv.range({ key: Buffer.from(backend.lockKey(lockName)) });
  const kv = range.kvs[0];
  return kv ? BigInt(kv.create_revision) : null;
}

// ---------------------------------------------------------------- (a) restart on its data

describe("faults with the PostgreSQL store (real etcd 3.4, real time, relays in child processes)", () => {
  it("(a) etcd restarted on its data while A leads: the lock and the revision survive; the next leader has a higher token and the store fences A's late ack", async () => {
    const outbox = await freshOutbox();
    const lockName = uniqueName("leader");
    await outbox.store.enqueue(pool, messages(0, 30, 30));
    const log: ChildEvent[] = [];
    // A's first ack is held "on the wire" (a slow network) across the restart.
    const a = spawnRelayChild(outbox, "A", lockName, { holdFirstAck: true, log });
    let b: Child | undefined;
    try {
      const gainedA = await a.next((e) => e.type === "gained", 20_000, "A to lead");
      const held = await a.next((e) => e.type === "ack-held", 20_000, "A's held ack");
      expect(held.token).toBe(gainedA.token);
      b = spawnRelayChild(outbox, "B", lockName, { log });
      await b.next((e) => e.type === "started", 20_000);
      expect(await lockKeyRevision(lockName)).toBe(BigInt(gainedA.token as string));

      // etcd goes down; A steps down on its own clock (its renewals fail); nobody else can lead.
      const downAt = Date.now();
      await services("stop", "etcd");
      const lostA = await a.next((e) => e.type === "lost", 10_000, "A to step down");
      expect(lostA.at - downAt).toBeLessThanOrEqual(ttlMs + 1_000);
      await services("start", "etcd", "--keep-data");
      const backAt = Date.now();
      // On its own data etcd kept A's key (and its lease, whose expiry restarts): same revision.
      await waitFor(async () => (await lockKeyRevision(lockName)) !== undefined, 20_000, "etcd to answer");
      expect(await lockKeyRevision(lockName)).toBe(BigInt(gainedA.token as string));
      expect(b.events.filter((e) => e.type === "gained")).toEqual([]);

      // The next leader has a higher revision than any before the restart: B once A's lease ran
      // out, or A itself (same holder: a fresh grant) if its relay asks first (it pipelines two
      // batches, so it keeps polling while one ack is held).
      const next = await waitFor(() => gainsOf(log).find((e) => e.at > backAt), 20_000, "a leader after the restart");
      expect(BigInt(next.token as string) > BigInt(gainedA.token as string)).toBe(true);
      await waitFor(
        () => log.find((e) => e.type === "op" && e.op === "claim" && e.ok === true && e.token === next.token),
        20_000,
        "the new leader's first fenced claim",
      );

      // Now A's ack, sent while A still led, finally arrives: the store refuses its token.
      a.kill("SIGUSR2");
      const heldIds = JSON.stringify(held.ids);
      const lateAck = await a.next(
        (e) => e.type === "op" && e.op === "ack" && e.token === held.token && JSON.stringify(e.ids) === heldIds,
        10_000,
        "A's late ack",
      );
      expect(lateAck.token).toBe(gainedA.token);
      expect(lateAck.ok).toBe(false);
      expect(lateAck.code).toBe(OutboxErrorCode.Fenced);

      await waitFor(() => allDone(outbox, 30), 30_000, "every entry published and acked");
      const delivered = await deliveries(outbox);
      expect(delivered.length - 30).toBeLessThanOrEqual(batchSize * 2); // A's in-flight batches
      expect(keyOrderViolations(firstOccurrences(delivered))).toEqual([]);
      expect(fenceOrderViolations(log)).toEqual([]);
      expect(drainOverlaps(log)).toEqual([]);
      // Nothing with A's old token was accepted once the new leader led.
      expect(opsOf(log).filter((op) => op.ok && op.token === gainedA.token && (op.start as number) > next.at)).toEqual(
        [],
      );
    } finally {
      await services("start", "etcd", "--keep-data").catch(() => undefined);
      await a.stop();
      await b?.stop();
    }
  }, 120_000);

  // ---------------------------------------------------------------- (a') restart on fresh data

  it("(a') etcd restarted on a fresh data dir: revisions restart low, the store refuses the lower tokens (stalled, not split) until etcd's revision passes the old one", async () => {
    const outbox = await freshOutbox();
    const lockName = uniqueName("leader");
    await outbox.store.enqueue(pool, messages(0, 20, 5));
    // Some writes first, so that the old token is clearly above what a fresh etcd starts with.
    const scratch = uniqueName("scratch");
    for (let i = 0; i < 30; i++) await admin.put(scratch).value(String(i));
    const log: ChildEvent[] = [];
    const a = spawnRelayChild(outbox, "A", lockName, { log });
    try {
      await waitFor(() => allDone(outbox, 20), 20_000, "the first entries published");
      const oldToken = BigInt((gainsOf(a.events).at(-1) as ChildEvent).token as string);
      expect(oldToken > 30n).toBe(true);

      await restartEtcd({ keepData: false });
      const restartedAt = Date.now();
      // A fresh etcd starts counting revisions again: the next leader's token is below the old one.
      const after = await a.next((e) => e.type === "gained" && e.at > restartedAt, 20_000, "A to lead again");
      expect(BigInt(after.token as string) < oldToken).toBe(true);
      await outbox.store.enqueue(pool, messages(20, 10, 5));
      const refused = await a.next(
        (e) => e.type === "op" && e.op === "claim" && e.token === after.token,
        10_000,
        "a claim with the lower token",
      );
      expect(refused.ok).toBe(false);
      expect(refused.code).toBe(OutboxErrorCode.Fenced);
      // Stalled, not split: every claim with a lower token is refused. The operator's remedy:
      // move etcd's revision past the old token (here: one write per revision), or use a new
      // lock name. Beware that on the way up etcd may hand out the old token's value again,
      // which the store cannot tell from the old holder's (see the README).
      const { header } = await admin.put(scratch).value("probe").exec();
      for (let revision = BigInt(header.revision); revision <= oldToken; revision++) {
        await admin.put(scratch).value(String(revision));
      }
      await waitFor(() => allDone(outbox, 30), 30_000, "progress once etcd's revision passed the old token");
      const acceptedAfter = opsOf(a.events).filter((op) => op.ok && (op.start as number) > restartedAt);
      expect(acceptedAfter.filter((op) => op.token !== undefined && BigInt(op.token) < oldToken)).toEqual([]);
      expect(acceptedAfter.some((op) => op.token !== undefined && BigInt(op.token) > oldToken)).toBe(true);
      expect(fenceOrderViolations(log)).toEqual([]);
    } finally {
      await a.stop();
    }
  }, 120_000);

  // ---------------------------------------------------------------- (b) zombie leader

  describe("(b) a relay frozen (SIGSTOP) past its TTL does not act as leader after SIGCONT; its late ack is fenced", () => {
    for (const pause of ["after-claim", "after-publish", "before-ack", "external"] as const) {
      const title =
        pause === "external"
          ? "SIGSTOP from the parent right after a publish, wherever the relay is then"
          : `SIGSTOP by the relay itself ${pause.replace("-", " ")} (exact point)`;
      it(title, async () => {
        const outbox = await freshOutbox();
        const lockName = uniqueName("leader");
        // 20 keys and batches of 10: B finds entries to claim while A's batch is leased.
        await outbox.store.enqueue(pool, messages(0, 40, 20));
        const log: ChildEvent[] = [];
        const a = spawnRelayChild(outbox, "A", lockName, { stopAt: pause === "external" ? "none" : pause, log });
        let b: Child | undefined;
        try {
          let stoppedAt: number;
          if (pause === "external") {
            await a.next((e) => e.type === "publish-end", 20_000, "A's first publish");
            a.kill("SIGSTOP");
            stoppedAt = Date.now();
          } else {
            stoppedAt = (await a.next((e) => e.type === "stopping-self", 20_000, "A to stop itself")).at;
          }
          await waitFor(() => processState(a.process.pid as number) === "T", 5_000, "A to be stopped");
          const gainedA = gainsOf(a.events.filter((e) => e.at <= stoppedAt)).at(-1) as ChildEvent;
          const claimedByA = opsOf(a.events)
            .filter((op) => op.op === "claim" && op.ok && (op.count as number) > 0)
            .flatMap((op) => op.ids as string[]);

          // B takes over while A is frozen (after A's lease ran out on etcd) and drains with its newer token.
          b = spawnRelayChild(outbox, "B", lockName, { log });
          const runningB = b;
          const gainedB = await runningB.next((e) => e.type === "gained", 20_000, "B to lead");
          expect(BigInt(gainedB.token as string) > BigInt(gainedA.token as string)).toBe(true);
          // Not before A's lease ran out on etcd: a TTL after A's last renewal (at most ttl/3 before the stop).
          expect(gainedB.at - stoppedAt).toBeGreaterThanOrEqual(ttlMs - Math.floor(ttlMs / 3) - 100);
          await runningB.next(
            (e) => e.type === "op" && e.op === "claim" && e.ok === true && e.token === gainedB.token,
            20_000,
            "B to drain",
          );
          await waitFor(() => Date.now() - stoppedAt > ttlMs + 100, 5_000, "the pause to exceed the TTL");

          const resumedAt = Date.now();
          a.kill("SIGCONT");
          if (pause === "before-ack") {
            // The zombie's ack goes out with its old token, after B's claims: the store refuses it.
            const late = await a.next((e) => e.type === "op" && e.op === "ack", 10_000, "A's late ack");
            expect(late.token).toBe(gainedA.token);
            expect(late.ok).toBe(false);
            expect(late.code).toBe(OutboxErrorCode.Fenced);
          } else {
            await a.next((e) => e.type === "lost" && e.at >= resumedAt, 10_000, "A to notice its loss");
          }
          // More work while A runs again: B must do all of it.
          await outbox.store.enqueue(pool, messages(40, 20, 20));
          await waitFor(() => allDone(outbox, 60), 30_000, "every entry published and acked");
          await a.stop();

          // What A started after it was resumed: nothing as leader (but the late ack above).
          const afterResume = a.events.filter((e) => e.at >= resumedAt);
          expect(afterResume.filter((e) => e.type === "publish-start")).toEqual([]);
          expect(afterResume.filter((e) => e.type === "claim-start" && e.token !== undefined)).toEqual([]);
          expect(afterResume.filter((e) => e.type === "gained")).toEqual([]);
          // Operations it began after resuming (one sent before the freeze may complete after it).
          expect(
            opsOf(a.events).filter((op) => op.ok && op.token !== undefined && (op.start as number) >= resumedAt),
          ).toEqual([]);
          // At an exact stop point A sends no ack after resuming; stopped from outside "wherever it is", it may
          // have been frozen between its leadership check and its ack (and with two batches in flight that
          // is likelier): such an ack must then be refused, which the check above asserts.
          if (pause === "after-claim" || pause === "after-publish") {
            expect(afterResume.filter((e) => e.type === "ack-start")).toEqual([]);
          }

          const delivered = await deliveries(outbox);
          expect(new Set(delivered.map((d) => d.seq)).size).toBe(60);
          expect(delivered.length - 60).toBeLessThanOrEqual(batchSize * 2); // A's in-flight batches
          if (pause === "after-claim") expect(delivered.filter((d) => d.relay === "A")).toEqual([]);
          expect(keyOrderViolations(firstOccurrences(delivered))).toEqual([]);
          expect(fenceOrderViolations(log)).toEqual([]);
          expect(drainOverlaps(log)).toEqual([]);
          // Had A acked anything it claimed, the store would refuse its token now.
          if (claimedByA.length > 0) {
            const error = await outbox.store
              .ack(claimedByA, { claimer: "A", fence: { lock: lockName, token: BigInt(gainedA.token as string) } })
              .then(
                () => null,
                (caught: unknown) => caught,
              );
            expect(OutboxError.is(error, OutboxErrorCode.Fenced)).toBe(true);
          }
        } finally {
          await a.stop();
          await b?.stop();
        }
      }, 90_000);
    }
  });

  // ---------------------------------------------------------------- (c) 2 and 3 relays

  for (const count of [2, 3]) {
    it(`(c) ${count} relays on one outbox under kills, partitions, freezes and restarts: one drainer at a time, nothing lost, duplicates bounded`, async () => {
      const outbox = await freshOutbox();
      const lockName = uniqueName("leader");
      const log: ChildEvent[] = [];
      const proxies = new Map<string, TcpProxy>();
      const relays = new Map<string, Child>();
      const launch = (id: string) => {
        const proxy = proxies.get(id) as TcpProxy;
        relays.set(id, spawnRelayChild(outbox, id, lockName, { etcdHosts: [proxy.endpoint], log }));
      };
      /**
       * The relay that leads now: the holder of the newest grant (tokens only grow), as long as it
       * still believes it leads. Not "any relay that believes it leads": one deposed while frozen
       * reports its loss only once it runs again, and its report crosses a pipe, so for a moment
       * after SIGCONT it still looks like a leader. A fault aimed at it would hit nobody's lock.
       */
      const currentLeader = (): Child | null => {
        const newest = log
          .filter((e) => e.type === "gained")
          .reduce<ChildEvent | null>(
            (found, e) => (found && BigInt(found.token as string) > BigInt(e.token as string) ? found : e),
            null,
          );
        const relay = newest ? relays.get(newest.relay) : undefined;
        if (!newest || !relay || relay.exited || !relay.events.includes(newest)) return null;
        return relay.believesLeading() ? relay : null;
      };
      let producing = true;
      let enqueued = 0;
      const producer = (async () => {
        while (producing) {
          await outbox.store.enqueue(pool, messages(enqueued, 10, 25));
          enqueued += 10;
          await sleep(50);
        }
      })();
      const faults = ["kill", "partition", "freeze", "stop-start", "kill", "partition"] as const;
      try {
        for (let i = 0; i < count; i++) {
          const id = `R${i + 1}`;
          proxies.set(id, await TcpProxy.start(etcdEndpoint));
          launch(id);
        }
        for (const fault of faults) {
          const before = (await deliveries(outbox)).length;
          const leader = await waitFor(
            async () => {
              const delivered = await deliveries(outbox);
              if (delivered.length < before + 10) return null;
              return currentLeader();
            },
            30_000,
            `a leader making progress before ${fault}`,
          );
          const gainsBefore = gainsOf(log).length;
          const someoneElseLeads = () => {
            const gains = gainsOf(log);
            return gains.length > gainsBefore && gains.at(-1)?.relay !== leader.id;
          };
          const proxy = proxies.get(leader.id) as TcpProxy;
          if (fault === "kill") {
            leader.kill("SIGKILL");
            await waitFor(someoneElseLeads, 20_000, "a new leader after SIGKILL");
            launch(leader.id); // restarted with the same id
          } else if (fault === "partition") {
            const cutAt = Date.now();
            proxy.blackhole(); // cut off from etcd only; PostgreSQL still reachable
            await leader.next((e) => e.type === "lost" && e.at >= cutAt, 10_000, "the partitioned leader to step down");
            await waitFor(someoneElseLeads, 20_000, "a new leader after the partition");
            proxy.restore();
          } else if (fault === "freeze") {
            const frozenAt = Date.now();
            leader.kill("SIGSTOP");
            await waitFor(someoneElseLeads, 20_000, "a new leader while the old one is frozen");
            await waitFor(() => Date.now() - frozenAt > ttlMs + 200, 5_000, "the freeze to outlast the TTL");
            leader.kill("SIGCONT");
          } else {
            await leader.stop(); // graceful: finishes its batch, releases the lock
            await waitFor(someoneElseLeads, 20_000, "a new leader after a graceful stop");
            launch(leader.id);
          }
        }
        producing = false;
        await producer;
        await waitFor(() => allDone(outbox, enqueued), 60_000, "every entry published and acked");
      } finally {
        producing = false;
        await producer;
        for (const relay of relays.values()) await relay.stop();
        for (const proxy of proxies.values()) await proxy.close();
      }

      const total = enqueued;
      const delivered = await deliveries(outbox);
      expect(new Set(delivered.map((d) => d.seq))).toEqual(new Set(Array.from({ length: total }, (_, i) => i)));
      // Each fault may replay at most the batches that were in flight (the relay pipelines two).
      expect(delivered.length - total).toBeLessThanOrEqual(2 * batchSize * faults.length);
      expect(keyOrderViolations(firstOccurrences(delivered))).toEqual([]);
      // One drainer at a time: the store activity of different tokens never overlaps...
      expect(drainOverlaps(log)).toEqual([]);
      // ...and the store never accepted an older token after a newer one.
      expect(fenceOrderViolations(log)).toEqual([]);
      const gains = gainsOf(log);
      for (let i = 1; i < gains.length; i++) {
        expect(
          BigInt((gains[i] as ChildEvent).token as string) > BigInt((gains[i - 1] as ChildEvent).token as string),
        ).toBe(true);
      }
      // The faults really moved leadership around.
      expect(new Set(gains.map((e) => e.relay)).size).toBeGreaterThanOrEqual(2);
      expect(gains.length).toBeGreaterThanOrEqual(1 + faults.length);
    }, 240_000);
  }
});
