// The inbox crash tests, one per broker: PostgreSQL outbox -> relay (a child process) -> broker ->
// consumer (a child process: the broker's inbox helper) -> PostgreSQL inbox, through real faults:
// - the relay is SIGKILLed right after the broker confirmed a batch, before the store's ack (its
//   child stops there and says so), and a new relay publishes that batch again after its lease;
// - the consumer is SIGKILLed inside a handler, after its effect insert and before the commit (its
//   child stops there and says so), with deliveries in hand: a new consumer gets them again;
// - the broker is restarted while both run, and the second half of the entries is committed while
//   it is down; a broker that keeps its messages is stopped while consumer 2 waits inside handlers
//   (told to pause), which then commit with the broker gone: their acknowledgements fail, and the
//   broker delivers those messages again.
// Then every entry's effect row must exist exactly once, none missing, each key's rows in order.
// The children are ./inbox-crash-child.ts's users; every step waits for an event, not for time.
import type { ChildProcess } from "node:child_process";
import pg from "pg";
import { expect } from "vitest";
import { forkSource, type RelayChild, startRelayChild } from "./e2e.js";
import { checkEffects, createEffects, distinctEffects, type EffectEntry, produceEntries } from "./inbox-effects.js";
import { freshIdentifier, inTransaction, pgUrl } from "./postgres.js";
import { waitFor } from "./wait.js";

/** A consumer in its own process and what it reported over IPC (see ConsumerReport). */
export interface ConsumerChild {
  readonly process: ChildProcess;
  /** The deliveries it acknowledged, per inbox outcome. */
  readonly outcomes: { handled: number; duplicate: number; dead: number };
  /** Idempotency keys of the messages it handled (its transaction committed, then it acknowledged). */
  readonly handled: Set<string>;
  /** Deliveries the broker marked as redelivered (where it says so). */
  redelivered: number;
  /** The message whose handler it stopped in, once it did. */
  halted: string | null | undefined;
  /** The first message whose handler waited after a "pause", once one did. */
  paused: string | null | undefined;
  readonly errors: Array<{ reason: string; error: string }>;
  reconnects: number;
  readonly exited: Promise<number | null>;
}

/** Forks a consumer child (TypeScript from source, like startRelayChild); resolves once it reports `{ ready }`. */
export function startConsumerChild(script: URL, env: Record<string, string>): Promise<ConsumerChild> {
  const child = forkSource(script, env);
  const consumer: ConsumerChild = {
    process: child,
    outcomes: { handled: 0, duplicate: 0, dead: 0 },
    handled: new Set(),
    redelivered: 0,
    halted: undefined,
    paused: undefined,
    errors: [],
    reconnects: 0,
    exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))),
  };
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code, signal) => reject(new Error(`consumer child exited early (${code ?? signal})`)));
    child.on("message", (message: Record<string, unknown>) => {
      if (typeof message.result === "string" && typeof message.id === "string") {
        const status = message.result as keyof ConsumerChild["outcomes"];
        consumer.outcomes[status] += 1;
        if (status === "handled") consumer.handled.add(message.id);
        if (message.redelivered === true) consumer.redelivered += 1;
      }
      if ("halted" in message) consumer.halted = message.halted as string | null;
      if ("paused" in message) consumer.paused = message.paused as string | null;
      if (typeof message.error === "string")
        consumer.errors.push({ reason: String(message.reason), error: message.error });
      if (typeof message.reconnected === "number") consumer.reconnects += 1;
      if (typeof message.ready === "number") resolve(consumer);
    });
  });
}

/** SIGKILLs a child (a crashed pod: no cleanup of any kind) and waits until it is gone. */
export async function sigkill(child: { process: ChildProcess; exited: Promise<unknown> }): Promise<void> {
  if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill("SIGKILL");
  await child.exited;
}

/** The outbox store the test made (structural: test-support does not depend on the stores). */
export interface CrashStore {
  enqueue(tx: pg.PoolClient, entries: EffectEntry[]): Promise<unknown>;
  stats(): Promise<{ pending: number; inFlight: number; dead: number }>;
}

export interface InboxCrashOptions {
  pool: pg.Pool;
  /** Holds the outbox (`store`'s table), the inbox and the effects table (createEffects), all migrated. */
  schema: string;
  store: CrashStore;
  /** Where the entries go: it exists already (a queue, a topic with its subscription...). */
  topic: string;
  /** Entries `entry-0` .. `entry-<entries - 1>` over `keys` keys; half before the run, half while the broker is down. */
  entries: number;
  keys: number;
  /**
   * Relay child: reports like startRelayChild's, reads E2E_SCHEMA, and publishes through
   * `haltingPublish(..., E2E_HALT_AFTER)`.
   */
  relayChild: URL;
  /** Consumer child: reads consumerChildEnv(), handles with effectHandler(), reports ConsumerReport. */
  consumerChild: URL;
  /** Both children's env besides the harness's (broker address, group...). */
  env: Record<string, string>;
  /**
   * Stops the broker, runs `whileDown` (the second half of the entries is committed then), starts it
   * again, and makes again whatever it forgot (`forgetsOnRestart`). Null: no restart (while developing).
   */
  restartBroker: ((whileDown: () => Promise<void>) => Promise<void>) | null;
  /**
   * The broker keeps nothing across a restart (in memory): what it held would be lost for good, which
   * no outbox can help. The restart then waits until everything published so far was handled.
   */
  forgetsOnRestart: boolean;
  /** Bound of each wait. Default 90 s. */
  stepTimeoutMs?: number;
}

export interface InboxCrashReport {
  readonly missing: string[];
  readonly doubled: Array<[string, number]>;
  readonly outOfOrder: string[];
  /** Rows of `<schema>.inbox` (one per entry expected). */
  readonly inboxRows: number;
  readonly relays: RelayChild[];
  /** Entries relay 1 had published (broker confirmed) and never acknowledged when it was killed. */
  readonly relayHalted: number;
  readonly consumers: ConsumerChild[];
  /** The message consumer 1 died in, inside its handler. */
  readonly consumerHaltedIn: string | null;
  /** Whether a later consumer handled that message (its transaction had been rolled back). */
  readonly haltedHandledLater: boolean;
  /** Entries committed while the broker was down that consumer 2, running since before, handled. */
  readonly handledAfterRestart: number;
  /** The message consumer 2 waited in while the broker stopped (null: the broker forgets, no wait). */
  readonly pausedAcrossRestart: string | null;
  readonly duplicates: number;
  /** How long the broker restart took (stop, the second half committed, start), or null. */
  readonly restartMs: number | null;
  readonly store: { pending: number; inFlight: number; dead: number };
  readonly ms: number;
  /** What happened when (ms since the start), for the test's log. */
  readonly timeline: string[];
}

const CONSUMER_NAME = "crash-consumer";

/** Runs the faults described at the top of this file, then reads what the effects table holds. */
export async function runInboxCrash(options: InboxCrashOptions): Promise<InboxCrashReport> {
  const { pool, schema, store, topic, entries, keys } = options;
  const stepMs = options.stepTimeoutMs ?? 90_000;
  const startedAt = Date.now();
  const half = Math.floor(entries / 2);
  const commit = (batch: EffectEntry[]) => inTransaction(pool, (tx) => store.enqueue(tx, batch));
  const relayEnv = (haltAfter: number) => ({ ...options.env, E2E_SCHEMA: schema, E2E_HALT_AFTER: String(haltAfter) });
  const consumerEnv = (haltAt: number) => ({
    ...options.env,
    E2E_SCHEMA: schema,
    E2E_TOPIC: topic,
    E2E_CONSUMER: CONSUMER_NAME,
    E2E_HALT_AT: String(haltAt),
  });
  const relays: RelayChild[] = [];
  const consumers: ConsumerChild[] = [];
  const duplicates = () => consumers.reduce((sum, consumer) => sum + consumer.outcomes.duplicate, 0);
  const timeline: string[] = [];
  const note = async (what: string) => {
    const effects = await distinctEffects(pool, schema);
    timeline.push(`${Date.now() - startedAt} ms ${what} (${effects} effects)`);
  };
  try {
    await produceEntries({ topic, count: half, keys }, commit);

    const consumer1 = await startConsumerChild(options.consumerChild, consumerEnv(Math.floor(entries / 8)));
    consumers.push(consumer1);
    const relay1 = await startRelayChild(options.relayChild, relayEnv(Math.floor(entries / 4)));
    relays.push(relay1);
    let relayHalted = 0;
    relay1.process.on("message", (message: Record<string, unknown>) => {
      if (typeof message.halted === "number") relayHalted += message.halted;
    });
    /** Nothing left to publish, relay 1's unacknowledged batch came again, and `effects` effect rows exist. */
    // The newest effect row when consumer 1 died: its own insert, inside the transaction it died in, was numbered
    // before that. A row of its message numbered after it was written by a later consumer, so that transaction
    // did not commit. (Read from the table: a consumer's own report of what it handled dies with it when it crashes
    // between its commit and its acknowledgement.)
    const lastEffect = async () =>
      Number(
        ((await pool.query(`SELECT coalesce(max(n), 0) AS n FROM "${schema}".effects`)).rows[0] as { n: string }).n,
      );
    let effectsAtHalt = Number.POSITIVE_INFINITY;
    /** The numbers of a message's effect rows (exactly one is checked with the others: `doubled`, `missing`). */
    const effectRows = async (messageId: string) =>
      (await pool.query(`SELECT n FROM "${schema}".effects WHERE message_id = $1`, [messageId])).rows.map((row) =>
        Number((row as { n: string }).n),
      );
    const settled = async (effects: number) => {
      const stats = await store.stats();
      return (
        stats.pending === 0 &&
        stats.inFlight === 0 &&
        duplicates() >= relayHalted &&
        (await distinctEffects(pool, schema)) === effects
      );
    };

    // Both crashes, each on its own child's word, in whichever order they come. Settled both before
    // going on: a step still running after a failure would start a child nobody kills.
    const crashes = await Promise.allSettled([
      (async () => {
        await waitFor(
          () => relayHalted > 0,
          stepMs,
          "relay 1 to stop between the broker's confirm and the store's ack",
        );
        await sigkill(relay1);
        await note(`relay 1 killed, ${relayHalted} entries confirmed and not acked`);
        relays.push(await startRelayChild(options.relayChild, relayEnv(0)));
      })(),
      (async () => {
        await waitFor(() => consumer1.halted !== undefined, stepMs, "consumer 1 to stop inside a handler");
        await sigkill(consumer1);
        effectsAtHalt = await lastEffect();
        await note(`consumer 1 killed inside ${consumer1.halted}`);
        consumers.push(await startConsumerChild(options.consumerChild, consumerEnv(0)));
      })(),
    ]);
    for (const crash of crashes) if (crash.status === "rejected") throw crash.reason;
    const consumer2 = consumers[1] as ConsumerChild;

    const produceRest = () => produceEntries({ topic, count: entries, keys, from: half }, commit);
    let restartMs: number | null = null;
    if (options.restartBroker === null) {
      await produceRest();
    } else {
      if (options.forgetsOnRestart) {
        await waitFor(() => settled(half), stepMs, "everything published before the restart to be handled");
      } else {
        // Mid-stream: consumer 2 is busy, and the broker holds more for it.
        const base = consumer2.outcomes.handled;
        await waitFor(
          () => consumer2.outcomes.handled >= base + Math.floor(entries / 16),
          stepMs,
          "consumer 2 to handle some",
        );
        consumer2.process.send("pause");
        await waitFor(() => consumer2.paused !== undefined, stepMs, "consumer 2 to wait inside a handler");
      }
      await note(`broker restart begins, consumer 2 handled ${consumer2.outcomes.handled}`);
      const downAt = Date.now();
      await options.restartBroker(async () => {
        if (!options.forgetsOnRestart) consumer2.process.send("resume");
        await produceRest();
      });
      restartMs = Date.now() - downAt;
      await note(`broker restarted in ${restartMs} ms`);
    }

    await waitFor(
      () => settled(entries),
      stepMs,
      "every entry handled, and relay 1's unacknowledged batch seen again as duplicates",
    );
    // Nothing may change the rows while they are read: only duplicates could still arrive anyway.
    for (const child of [...relays, ...consumers]) await sigkill(child);

    const { missing, doubled, outOfOrder } = await checkEffects(pool, schema, entries);
    const { rows } = await pool.query(`SELECT count(*)::int AS n FROM "${schema}".inbox`);
    const consumerHaltedIn = consumer1.halted ?? null;
    return {
      missing,
      doubled,
      outOfOrder,
      inboxRows: (rows[0] as { n: number }).n,
      relays,
      relayHalted,
      consumers,
      consumerHaltedIn,
      haltedHandledLater:
        consumerHaltedIn !== null && (await effectRows(consumerHaltedIn)).every((n) => n > effectsAtHalt),
      pausedAcrossRestart: consumer2.paused ?? null,
      handledAfterRestart: [...consumer2.handled].filter((id) => Number(id.slice("entry-".length)) >= half).length,
      duplicates: duplicates(),
      restartMs,
      store: await store.stats(),
      ms: Date.now() - startedAt,
      timeline,
    };
  } finally {
    for (const child of [...relays, ...consumers]) await sigkill(child);
  }
}

/** One line for the test's log: what each fault did. */
export function describeCrashRun(report: InboxCrashReport): string {
  const consumers = report.consumers.map((c, i) => {
    const reasons: Record<string, number> = {};
    for (const { reason } of c.errors) reasons[reason] = (reasons[reason] ?? 0) + 1;
    return (
      `consumer ${i + 1} ${JSON.stringify(c.outcomes)} redelivered ${c.redelivered} reconnects ${c.reconnects} ` +
      `errors ${JSON.stringify(reasons)}` +
      (c.errors.length > 0 ? ` (first: ${c.errors[0]?.error})` : "")
    );
  });
  const relays = report.relays.map(
    (r, i) => `relay ${i + 1} published ${r.published} retried ${r.retried} errors ${r.errors.length}`,
  );
  return (
    `[inbox crash] ${report.ms} ms; relay 1 killed with ${report.relayHalted} entries confirmed, not acked; ` +
    `consumer 1 killed inside ${report.consumerHaltedIn}; broker restart ${report.restartMs ?? "off"} ms ` +
    `(consumer 2 waiting inside ${report.pausedAcrossRestart}; then handled ${report.handledAfterRestart} entries committed meanwhile); ` +
    `duplicates ${report.duplicates}; ${relays.join(", ")}; ${consumers.join(", ")}; timeline: ${report.timeline.join("; ")}`
  );
}

/** What runInboxCrashTest takes from @outbox/store-postgres (test-support does not depend on it). */
export interface CrashPostgres<S extends CrashStore> {
  createPostgresStore(options: { pool: pg.Pool; schema: string; listen: false; notifyChannel: false }): S;
  migrate(pool: pg.Pool, options: { schema: string }): Promise<unknown>;
  migrateInbox(pool: pg.Pool, options: { schema: string }): Promise<unknown>;
}

/** Entries of each broker's crash test (over 12 keys): enough for every fault to land mid-stream. */
export const INBOX_CRASH_ENTRIES = 600;

export interface InboxCrashTestOptions<S extends CrashStore>
  extends Omit<InboxCrashOptions, "pool" | "schema" | "store" | "entries" | "keys" | "relayChild" | "consumerChild"> {
  postgres: CrashPostgres<S>;
  /** Of the fresh schema the run gets (dropped afterwards). */
  schemaPrefix: string;
  /** The test's `import.meta.url`: the children are its fixtures/inbox-relay-child.ts and inbox-consumer-child.ts. */
  testFile: string;
}

/**
 * One broker's crash test: runInboxCrash of INBOX_CRASH_ENTRIES entries on a fresh schema (outbox,
 * inbox and effects table), with the test file's fixtures as children. Logs what each fault did
 * and asserts what every broker must give: each entry's effect exactly once, in key order, through
 * both kills. The report is for the broker's own assertions.
 */
export async function runInboxCrashTest<S extends CrashStore & { close(): Promise<void> }>(
  options: InboxCrashTestOptions<S>,
): Promise<InboxCrashReport> {
  const { postgres, schemaPrefix, testFile, ...crash } = options;
  const schema = freshIdentifier(schemaPrefix);
  const pool = new pg.Pool({ connectionString: pgUrl, max: 4 });
  pool.on("error", () => undefined);
  const store = postgres.createPostgresStore({ pool, schema, listen: false, notifyChannel: false });
  try {
    await postgres.migrate(pool, { schema });
    await postgres.migrateInbox(pool, { schema });
    await createEffects(pool, schema);

    const run = await runInboxCrash({
      ...crash,
      entries: INBOX_CRASH_ENTRIES,
      keys: 12,
      pool,
      schema,
      store,
      relayChild: new URL("./fixtures/inbox-relay-child.ts", testFile),
      consumerChild: new URL("./fixtures/inbox-consumer-child.ts", testFile),
    });
    console.info(describeCrashRun(run));

    expect(run.missing, "every entry's effect row exists").toEqual([]);
    expect(run.doubled, "no entry's effect row exists twice").toEqual([]);
    expect(run.outOfOrder, "each key's effects applied in enqueue order").toEqual([]);
    expect(run.inboxRows, "one inbox key per entry").toBe(INBOX_CRASH_ENTRIES);
    expect(run.store.dead).toBe(0);
    expect(run.relayHalted, "relay 1 died with confirmed, unacknowledged entries").toBeGreaterThan(0);
    expect(run.duplicates, "which came again, as duplicates").toBeGreaterThanOrEqual(run.relayHalted);
    expect(run.consumerHaltedIn, "consumer 1 died inside a handler").toMatch(/^entry-\d+$/);
    expect(run.haltedHandledLater, "its rolled-back message was handled by a later consumer").toBe(true);
    return run;
  } finally {
    await store.close();
    await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
    await pool.end();
  }
}
