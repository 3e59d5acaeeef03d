// One stack's chaos run: three relay processes behind TCP proxies, the producer writing at a
// steady rate, the seeded faults one after the other, a drain, then the checker over what the
// recorder, the producer and the relays reported.
import type { StoreStats } from "@outbox/core";
import { type RelayChild, startRelayChild } from "@outbox/test-support/e2e";
import { freshIdentifier } from "@outbox/test-support/postgres";
import { TcpProxy } from "@outbox/test-support/tcp-proxy";
import { sleep, waitFor } from "@outbox/test-support/wait";
import {
  type CheckResult,
  type Committed,
  check,
  type Delivery,
  type FaultWindow,
  type FencedOp,
  opDurations,
} from "./check.js";
import { type FaultKind, type PlannedFault, planFaults, seededRandom } from "./schedule.js";
import type { Names, Stack, StackAdmin } from "./stack.js";

export interface RunConfig {
  readonly name: "short" | "long";
  readonly seed: number;
  readonly productionMs: number;
  readonly faults: number;
  readonly rate: number;
  /** `rate` was given (--rate): it applies to every stack. */
  readonly rateGiven: boolean;
  readonly keys: number;
  readonly relays: number;
  readonly ttlMs: number;
  /** The relays' lease (see main.ts). */
  readonly leaseMs: number;
  /** Only these kinds of faults (default: all). */
  readonly kinds?: readonly FaultKind[];
  /** Longest wait after production for every committed entry to be delivered. */
  readonly drainMs: number;
}

export interface FaultRecord extends FaultWindow {
  readonly plannedAtMs: number;
  readonly atMs: number;
  readonly durationMs: number;
  readonly target: string;
  readonly detail: string;
  readonly catchUpMs: number | null;
}

export interface StackReport {
  readonly stack: string;
  readonly title: string;
  readonly names: Names;
  readonly settings: Readonly<Record<string, string>>;
  readonly schedule: readonly PlannedFault[];
  readonly faults: readonly FaultRecord[];
  readonly rate: number;
  readonly producer: Record<string, number>;
  readonly relays: {
    readonly started: number;
    readonly unexpectedExits: string[];
    readonly leaderships: number;
    readonly fencedRefusals: number;
    readonly fencedOpsLogged: number;
    /** How long the accepted fenced store calls took (ms), per operation. */
    readonly storeCalls: ReturnType<typeof opDurations>;
    readonly publishCalls: ReturnType<typeof opDurations>[string] | null;
    readonly deadLettered: string[];
    readonly errors: number;
    readonly errorSample: string[];
    /** Entries given a retry, per cause (numbers masked), and the most attempts one of them had. */
    readonly retries: { readonly causes: Record<string, number>; readonly mostAttempts: number };
  };
  readonly recorderErrors: string[];
  readonly drainMs: number;
  /** The scheduled purges of a stack that has them. */
  readonly purged?: PurgeRecord;
  readonly store: StoreStats | null;
  readonly result: CheckResult | null;
  readonly failures: string[];
  readonly pass: boolean;
  /** The raw records, for a look at a failed run (written next to the report, not into it). */
  readonly records?: {
    readonly committed: readonly Committed[];
    readonly deliveries: readonly Delivery[];
    readonly fencedOps: readonly FencedOp[];
    readonly publishCalls: ReadonlyArray<{ op: string; start: number; end: number }>;
    readonly traces: readonly Trace[];
  };
}

/** A relay's claim (the entries it returned) or publish call (each entry with its outcome), by idempotency key. */
export interface Trace {
  readonly relay: string;
  readonly what: string;
  readonly start: number;
  readonly end: number;
  readonly ids: readonly string[];
}

const relayScript = new URL("./relay-child.ts", import.meta.url);
const producerScript = new URL("./producer.ts", import.meta.url);

interface Slot {
  readonly name: string;
  /** Its processes' database application name (pg_terminate_backend finds its sessions by it). */
  readonly app: string;
  readonly dbProxy: TcpProxy;
  readonly brokerProxy: TcpProxy;
  readonly sessions: Set<number>;
  incarnation: number;
  child: RelayChild | null;
  token: bigint | null;
  expectExit: boolean;
}

/** The producer's rate for `stack`: the run's, unless the stack's server cannot take it (and --rate is not given). */
export function rateOf(stack: Stack, config: RunConfig): number {
  return config.rateGiven ? config.rate : (stack.rate?.perSecond ?? config.rate);
}

export async function runStack(stack: Stack, config: RunConfig, log: (line: string) => void): Promise<StackReport> {
  const rate = rateOf(stack, config);
  const names: Names = {
    table: freshIdentifier("chaos"),
    topic: freshIdentifier("chaos").replace("_", "-"),
    lock: freshIdentifier("chaos_leader"),
  };
  const schedule = planFaults(config.seed, {
    productionMs: config.productionMs,
    faults: config.faults,
    ttlMs: config.ttlMs,
    ...(config.kinds ? { kinds: config.kinds } : {}),
  });
  const fallback = seededRandom(config.seed ^ 0x5eed);
  const committed: Committed[] = [];
  const fencedOps: FencedOp[] = [];
  const publishCalls: Array<{ op: string; start: number; end: number }> = [];
  const traces: Trace[] = [];
  const faults: Array<Omit<FaultRecord, "catchUpMs">> = [];
  const unexpectedExits: string[] = [];
  const deadLettered: string[] = [];
  const errorSample: string[] = [];
  const retryCauses = new Map<string, number>();
  let mostAttempts = 0;
  let errors = 0;
  let refusals = 0;
  let leaderships = 0;
  let started = 0;
  let producerDone: Record<string, number> = {};
  let producerFailures = 0;
  let admin: StackAdmin | null = null;
  const slots: Slot[] = [];
  const failures: string[] = [];
  let closing = false;
  let t0 = Date.now();
  const since = () => `+${((Date.now() - t0) / 1_000).toFixed(1)}s`;

  const startSlot = async (slot: Slot): Promise<void> => {
    slot.incarnation++;
    slot.token = null;
    slot.expectExit = false;
    slot.sessions.clear();
    const id = `${slot.name}.${slot.incarnation}`;
    const child = await startRelayChild(relayScript, {
      CHAOS_STACK: stack.id,
      CHAOS_NAMES: JSON.stringify(names),
      CHAOS_DB_URL: stack.dbUrl(slot.dbProxy.endpoint),
      CHAOS_BROKER: slot.brokerProxy.endpoint,
      CHAOS_APP: slot.app,
      CHAOS_RELAY_ID: id,
      CHAOS_TTL_MS: String(config.ttlMs),
      CHAOS_LEASE_MS: String(config.leaseMs),
    });
    started++;
    slot.child = child;
    child.process.on("message", (message: Record<string, unknown>) => {
      if (Array.isArray(message.op)) {
        const [op, lock, token, start, end] = message.op as [string, string, string, number, number];
        fencedOps.push({ relay: id, op, lock, token: BigInt(token), start, end });
      }
      if (typeof message.refused === "string") refusals++;
      if (Array.isArray(message.trace)) {
        const [what, start, end, ids] = message.trace as [string, number, number, string[]];
        traces.push({ relay: id, what, start, end, ids });
      }
      if (Array.isArray(message.publish)) {
        const [start, end] = message.publish as [number, number, number];
        publishCalls.push({ op: "publish", start, end });
      }
      if (typeof message.leader === "string") {
        leaderships++;
        if (slot.child === child) slot.token = BigInt(message.leader);
      }
      if (typeof message.lost === "string" && slot.child === child) slot.token = null;
      if (typeof message.session === "number") slot.sessions.add(message.session);
      if (typeof message.retried === "string") {
        retryCauses.set(message.retried, (retryCauses.get(message.retried) ?? 0) + 1);
        mostAttempts = Math.max(mostAttempts, Number(message.attempts) || 0);
      }
      if (typeof message.error === "string") {
        errors++;
        if (message.dead !== undefined) deadLettered.push(`${id}: entry ${message.dead}: ${message.error}`);
        else if (errorSample.length < 20) errorSample.push(`${since()} ${id} ${message.error}`);
      }
    });
    void child.exited.then((code) => {
      if (slot.child !== child) return;
      slot.child = null;
      slot.token = null;
      if (slot.expectExit) return;
      // A relay must survive every fault: note it, and start a replacement as an orchestrator would.
      unexpectedExits.push(`${id} exited with code ${code} at ${since()}`);
      log(`  ${since()} ${id} EXITED (code ${code}); starting a replacement`);
      void sleep(1_000).then(() => {
        if (!closing) startSlot(slot).catch((error) => log(`  restart failed: ${error}`));
      });
    });
  };

  /** The relay that leads now as far as we know: the newest token among live relays. */
  const currentLeader = (): Slot | undefined =>
    slots
      .filter((slot) => slot.child && slot.token !== null)
      .sort((a, b) => ((a.token as bigint) > (b.token as bigint) ? -1 : 1))[0];
  const labelOf = (slot: Slot | undefined) => (slot ? `${slot.name}.${slot.incarnation}` : "none");

  /** The leader, waiting up to two TTLs for one (a takeover in progress); else a seeded pick. */
  const leader = async (): Promise<Slot> => {
    const found = await waitFor(currentLeader, 2 * config.ttlMs, "a leader", 50).catch(() => undefined);
    if (found) return found;
    const live = slots.filter((slot) => slot.child);
    return (live[Math.floor(fallback() * live.length)] ?? slots[0]) as Slot;
  };

  const inject = async (kind: FaultKind, durationMs: number): Promise<{ target: string; detail: string }> => {
    const target = kind === "leader-deposed" || kind === "broker-outage" ? null : await leader();
    const label = target ? labelOf(target) : "all";
    switch (kind) {
      case "relay-kill": {
        const child = (target as Slot).child;
        (target as Slot).expectExit = true;
        child?.process.kill("SIGKILL");
        await child?.exited;
        await sleep(durationMs);
        await startSlot(target as Slot);
        return { target: label, detail: `SIGKILL, new process after ${durationMs} ms` };
      }
      case "leader-freeze": {
        const child = (target as Slot).child;
        child?.process.kill("SIGSTOP");
        await sleep(durationMs);
        child?.process.kill("SIGCONT");
        return { target: label, detail: `SIGSTOP for ${durationMs} ms (TTL ${config.ttlMs} ms)` };
      }
      case "leader-deposed": {
        const previous = currentLeader();
        await (admin as StackAdmin).depose();
        return { target: labelOf(previous), detail: "lock key deleted" };
      }
      case "session-kill": {
        const killed = await (admin as StackAdmin).killSessions(target as Slot);
        return { target: label, detail: `${killed} database sessions killed` };
      }
      case "db-cut":
      case "broker-cut": {
        const proxy = kind === "db-cut" ? (target as Slot).dbProxy : (target as Slot).brokerProxy;
        const reset = proxy.cut();
        await sleep(durationMs);
        proxy.restore();
        return { target: label, detail: `${reset} connections reset, refused for ${durationMs} ms` };
      }
      case "db-pause":
      case "broker-pause": {
        const proxy = kind === "db-pause" ? (target as Slot).dbProxy : (target as Slot).brokerProxy;
        proxy.blackhole();
        await sleep(durationMs);
        proxy.restore();
        return { target: label, detail: `blackholed for ${durationMs} ms, then reset` };
      }
      case "broker-outage": {
        for (const slot of slots) slot.brokerProxy.cut();
        await sleep(durationMs);
        for (const slot of slots) slot.brokerProxy.restore();
        return { target: label, detail: `broker unreachable for every relay for ${durationMs} ms` };
      }
    }
  };

  let productionStart = 0;
  let productionEnd = 0;
  let drainMs = 0;
  let stats: StoreStats | null = null;
  let result: CheckResult | null = null;
  let producer: RelayChild | null = null;
  let progress: ReturnType<typeof setInterval> | undefined;
  let purging: ScheduledPurge | undefined;
  let purged: PurgeRecord | undefined;
  try {
    log(`[${stack.id}] setting up (table ${names.table}, topic ${names.topic}, lock ${names.lock})`);
    const planned = schedule.map(
      (fault) =>
        `${fault.n} +${(fault.atMs / 1_000).toFixed(1)}s ${fault.kind}${fault.durationMs > 0 ? ` ${fault.durationMs} ms` : ""}`,
    );
    for (let i = 0; i < planned.length; i += 5)
      log(`  ${i === 0 ? "schedule:" : "         "} ${planned.slice(i, i + 5).join(", ")}`);
    admin = await stack.prepare(names);
    for (let i = 1; i <= config.relays; i++) {
      slots.push({
        name: `relay-${i}`,
        app: `chaos-relay-${i}`,
        dbProxy: await TcpProxy.start(stack.db, { resetGapMs: stack.resetGapMs }),
        brokerProxy: await TcpProxy.start(stack.broker),
        sessions: new Set(),
        incarnation: 0,
        child: null,
        token: null,
        expectExit: false,
      });
    }
    for (const slot of slots) await startSlot(slot);
    await waitFor(() => slots.some((slot) => slot.token !== null), 30_000, "a first leader", 50);

    producer = await startRelayChild(producerScript, {
      CHAOS_STACK: stack.id,
      CHAOS_NAMES: JSON.stringify(names),
      CHAOS_DB_URL: stack.dbUrl(stack.db),
      CHAOS_RATE: String(rate),
      CHAOS_KEYS: String(config.keys),
      CHAOS_SEED: String(config.seed),
    });
    productionStart = Date.now();
    t0 = productionStart;
    producer.process.on("message", (message: Record<string, unknown>) => {
      if (Array.isArray(message.committed))
        for (const [id, key, seq, at] of message.committed as Array<[string, string, number, number]>)
          committed.push({ id, key, seq, at });
      if (typeof message.failed === "string") {
        producerFailures++;
        if (producerFailures <= 3) log(`  ${since()} producer transaction failed (retried): ${message.failed}`);
      }
      if (message.done) producerDone = message.done as Record<string, number>;
    });
    log(`[${stack.id}] producing ${rate}/s over ${config.keys} keys for ${config.productionMs / 1_000} s`);

    const recorder = admin.recorder;
    const delivered = () => {
      const ids = new Set<string>();
      for (const delivery of recorder.deliveries) ids.add(delivery.id);
      return ids;
    };
    if (stack.purge) purging = purgeOnSchedule(admin, stack.purge, log, since);
    progress = setInterval(() => {
      const ids = delivered();
      log(
        `  ${since()} committed ${committed.length}, delivered ${ids.size} (lag ${committed.length - ids.size}), leader ${labelOf(currentLeader())}`,
      );
    }, 10_000);

    const faultLoop = (async () => {
      for (const planned of schedule) {
        const wait = productionStart + planned.atMs - Date.now();
        if (wait > 0) await sleep(wait);
        if (Date.now() > productionStart + config.productionMs - 5_000) {
          failures.push(`fault ${planned.n} (${planned.kind}) skipped: the schedule ran late`);
          continue;
        }
        const start = Date.now();
        let injected: { target: string; detail: string };
        try {
          injected = await inject(planned.kind, planned.durationMs);
        } catch (error) {
          failures.push(`fault ${planned.n} (${planned.kind}) could not be injected: ${error}`);
          injected = { target: "?", detail: `failed: ${error}` };
        }
        const { target, detail } = injected;
        const end = Date.now();
        faults.push({
          n: planned.n,
          kind: planned.kind,
          plannedAtMs: planned.atMs,
          atMs: start - productionStart,
          durationMs: end - start,
          start,
          end,
          target,
          detail,
        });
        log(
          `  +${((start - productionStart) / 1_000).toFixed(1)}s fault ${planned.n}/${schedule.length} ${planned.kind} ${target}: ${detail}`,
        );
      }
    })();

    await sleep(productionStart + config.productionMs - Date.now());
    producer.process.send("stop");
    productionEnd = Date.now();
    await faultLoop;
    await producer.exited;
    log(`[${stack.id}] production over: ${committed.length} committed; draining`);

    const drainStart = Date.now();
    await waitFor(
      () => {
        const ids = delivered();
        return committed.every((entry) => ids.has(entry.id));
      },
      config.drainMs,
      "every committed entry to be delivered",
      500,
    ).catch(() => log(`  drain incomplete after ${config.drainMs / 1_000} s`));
    drainMs = Date.now() - drainStart;
    purged = await purging?.stop();
    if (purged)
      log(
        `  scheduled purges: ${purged.runs} runs, ${purged.deleted} entries deleted, ${purged.failed} failed, longest ${purged.longestMs} ms`,
      );
    stats = await admin.stats().catch(() => null);

    result = check({
      committed,
      deliveries: recorder.deliveries,
      fencedOps,
      faults,
      productionStart,
      productionEnd,
      ttlMs: config.ttlMs,
    });
    failures.push(...result.failures);
  } catch (error) {
    failures.push(`run aborted: ${(error as Error).stack ?? error}`);
  } finally {
    clearInterval(progress);
    await purging?.stop();
    closing = true;
    producer?.process.kill("SIGKILL");
    await Promise.all(
      slots.map(async (slot) => {
        const child = slot.child;
        if (!child) return;
        slot.expectExit = true;
        child.process.kill("SIGCONT");
        child.process.send("stop");
        const exited = await Promise.race([child.exited, sleep(15_000).then(() => "timeout")]);
        if (exited === "timeout") child.process.kill("SIGKILL");
      }),
    );
    for (const slot of slots) {
      await slot.dbProxy.close();
      await slot.brokerProxy.close();
    }
  }
  if (unexpectedExits.length > 0) failures.push(`${unexpectedExits.length} relay processes exited on their own`);
  const pass = failures.length === 0;
  await admin?.close(pass).catch((error) => log(`  cleanup failed: ${error}`));

  return {
    stack: stack.id,
    title: stack.title,
    names,
    settings: stack.settings,
    schedule,
    rate,
    faults: faults.map((fault) => ({
      ...fault,
      catchUpMs: result?.catchUp.find((entry) => entry.n === fault.n)?.catchUpMs ?? null,
    })),
    producer: { ...producerDone, transactionFailures: producerFailures },
    relays: {
      started,
      unexpectedExits,
      leaderships,
      fencedRefusals: refusals,
      fencedOpsLogged: fencedOps.length,
      storeCalls: opDurations(fencedOps),
      publishCalls: opDurations(publishCalls).publish ?? null,
      deadLettered,
      errors,
      errorSample,
      retries: {
        causes: Object.fromEntries([...retryCauses].sort((a, b) => b[1] - a[1])),
        mostAttempts,
      },
    },
    recorderErrors: admin?.recorder.errors.slice(0, 20) ?? [],
    drainMs,
    ...(purged ? { purged } : {}),
    store: stats,
    result,
    failures,
    pass,
    records: { committed, deliveries: admin?.recorder.deliveries ?? [], fencedOps, publishCalls, traces },
  };
}

export interface PurgeRecord {
  readonly runs: number;
  readonly deleted: number;
  readonly failed: number;
  readonly longestMs: number;
}

interface ScheduledPurge {
  /** Waits for a purge in progress, stops the schedule and returns what it did. */
  stop(): Promise<PurgeRecord>;
}

/** `admin.purge` every `everyMs`, one at a time (a slow purge delays the next instead of overlapping it). */
function purgeOnSchedule(
  admin: StackAdmin,
  purge: NonNullable<Stack["purge"]>,
  log: (line: string) => void,
  since: () => string,
): ScheduledPurge {
  const record = { runs: 0, deleted: 0, failed: 0, longestMs: 0 };
  let stopped = false;
  let wake: (() => void) | undefined;
  const loop = (async () => {
    while (!stopped) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, purge.everyMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      if (stopped) break;
      const start = Date.now();
      try {
        record.deleted += await admin.purge(new Date(start - purge.olderThanMs));
      } catch (error) {
        record.failed++;
        if (record.failed <= 3) log(`  ${since()} scheduled purge failed: ${(error as Error).message}`);
      }
      record.runs++;
      record.longestMs = Math.max(record.longestMs, Date.now() - start);
    }
  })();
  let result: Promise<PurgeRecord> | undefined;
  return {
    stop() {
      result ??= (async () => {
        stopped = true;
        wake?.();
        await loop;
        return { ...record };
      })();
      return result;
    },
  };
}
