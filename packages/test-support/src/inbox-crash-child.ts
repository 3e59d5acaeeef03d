// The inside of the inbox crash tests' child processes (./inbox-crash.ts starts them): what the
// harness tells them in their env, the consuming service's handler, the relay's publish call, and
// what they report over IPC. Both can stop for good at a chosen point, so that the parent's SIGKILL
// lands exactly there instead of racing the child. Each broker's children add only their broker's
// part to runRelayChild() and consumerChild().
//
// The outbox and inbox packages come in as arguments (RelayChildDeps, ConsumerChildDeps):
// test-support depends on none of them.
import pg from "pg";
import { type Queryable, writeEffect } from "./inbox-effects.js";

/** What a consumer child sends its parent. */
export type ConsumerReport =
  | { readonly ready: number }
  /** The helper acknowledged a delivery; `status` is what the inbox did with it. */
  | { readonly result: string; readonly id: string; readonly redelivered?: boolean }
  /** The handler stopped inside its transaction (after its insert, before the commit). */
  | { readonly halted: string | null }
  /** After the parent's "pause": a handler waits inside its transaction for "resume". */
  | { readonly paused: string | null }
  /** A delivery not acknowledged, or a failure of the consumer's loop. */
  | { readonly error: string; readonly reason: string }
  /** It connected to the broker again after losing its connection. */
  | { readonly reconnected: number };

/** Sends `message` to the parent while it listens (a dying parent must not crash the child). */
export function report(message: ConsumerReport | Record<string, unknown>): void {
  if (process.connected) process.send?.(message);
}

export function requiredEnv(name: string): string {
  const value = process.env[name];
  if (value === undefined || value.length === 0) throw new Error(`inbox crash child: ${name} is not set`);
  return value;
}

/** A consumer child's settings (set by the harness). */
export interface ConsumerChildEnv {
  /** The schema of the outbox, the inbox and the effects table. */
  readonly schema: string;
  /** The topic the entries go to (the queue, stream or topic to consume). */
  readonly topic: string;
  /** This consumer's name with the broker (a Redis group consumer): the same across its restarts. */
  readonly consumer: string;
  /** The handler call (1-based) to stop in; 0: never. */
  readonly haltAt: number;
}

export function consumerChildEnv(): ConsumerChildEnv {
  return {
    schema: requiredEnv("E2E_SCHEMA"),
    topic: requiredEnv("E2E_TOPIC"),
    consumer: requiredEnv("E2E_CONSUMER"),
    haltAt: Number(process.env.E2E_HALT_AT ?? 0),
  };
}

/** The parts of an inbox message the handler reads. */
export interface EffectMessage {
  readonly idempotencyKey?: string | null;
  readonly payload?: Uint8Array | string | null;
}

const utf8 = new TextDecoder();

/**
 * The consuming service's handler: the message's effect row on the inbox's transaction. Its
 * `haltAt`-th call reports `{ halted: id }` after the insert and never returns: the parent SIGKILLs
 * the process with that transaction open, which PostgreSQL then rolls back.
 *
 * Between the parent's "pause" and "resume" messages, every call waits after its insert (the first
 * one reports `{ paused: id }`): the parent restarts the broker meanwhile, so that these
 * transactions commit once the broker is gone, and their acknowledgements fail.
 */
export function effectHandler(env: ConsumerChildEnv): (tx: Queryable, message: EffectMessage) => Promise<void> {
  let calls = 0;
  let gate: { promise: Promise<void>; open: () => void; reported: boolean } | null = null;
  process.on("message", (command) => {
    if (command === "pause" && gate === null) {
      let open: () => void = () => undefined;
      const promise = new Promise<void>((resolve) => {
        open = resolve;
      });
      gate = { promise, open, reported: false };
    }
    if (command === "resume") {
      gate?.open();
      gate = null;
    }
  });
  return async (tx, message) => {
    const payload = message.payload ?? "";
    const { key, seq } = JSON.parse(typeof payload === "string" ? payload : utf8.decode(payload)) as {
      key: string;
      seq: number;
    };
    const id = message.idempotencyKey ?? null;
    await writeEffect(tx, env.schema, id, key, seq);
    calls += 1;
    if (calls === env.haltAt) {
      report({ halted: id });
      await new Promise<never>(() => undefined);
    }
    if (gate !== null) {
      if (!gate.reported) report({ paused: id });
      gate.reported = true;
      await gate.promise;
    }
  };
}

export function reportResult(status: string, id: string, redelivered?: boolean): void {
  report(redelivered === undefined ? { result: status, id } : { result: status, id, redelivered });
}

export function reportError(reason: string, error: unknown): void {
  report({ error: error instanceof Error ? `${error.name}: ${error.message}` : String(error), reason });
}

/**
 * A relay child's publish call that stops for good once the broker confirmed `after` entries: the
 * call that crosses it, and every later one, report `{ halted: entries }` when the broker answered
 * and never return, so the relay never acknowledges them in the store. The parent SIGKILLs it then:
 * a crash between the broker's confirm and the store's ack, whose entries the next relay publishes
 * again once their lease ran out. `after` 0: never stops.
 */
export function haltingPublish<E, O, R>(
  publish: (entries: readonly E[], options?: O) => Promise<R>,
  after: number,
): (entries: readonly E[], options?: O) => Promise<R> {
  let confirmed = 0;
  return async (entries, options) => {
    const outcome = await publish(entries, options);
    confirmed += entries.length;
    if (after === 0 || confirmed < after) return outcome;
    report({ halted: entries.length });
    return new Promise<R>(() => undefined);
  };
}

/** A pool of the child's own on the harness's PostgreSQL, as its service would have. */
function childPool(max: number): pg.Pool {
  const pool = new pg.Pool({ connectionString: requiredEnv("OUTBOX_PG_URL"), max });
  pool.on("error", () => undefined);
  return pool;
}

/** A broker's publisher, as the relay uses it (an OutboxPublisher, structurally). */
export interface ChildPublisher<E, O, R, C> {
  readonly capabilities: C;
  publish(entries: readonly E[], options?: O): Promise<R>;
  close(): Promise<void>;
}

/** The relay events a relay child reports (OutboxRelay's, structurally). */
export interface ChildRelay {
  on(event: "published", listener: (payload: { readonly entries: readonly unknown[] }) => void): unknown;
  on(event: "retried", listener: () => void): unknown;
  on(
    event: "deadLettered",
    listener: (payload: { readonly entry: { readonly id: unknown }; readonly error: unknown }) => void,
  ): unknown;
  on(event: "error", listener: (payload: { readonly error: unknown; readonly phase: string }) => void): unknown;
  start(): void;
}

/** Short polls and leases: relay 1's unacknowledged batch comes back within seconds of its death. */
const RELAY_SETTINGS = {
  batchSize: 25,
  pollMs: 50,
  leaseMs: 3_000,
  retry: { baseDelayMs: 200, maxDelayMs: 1_000, maxAttempts: 1_000 },
};

/** What runRelayChild takes from @outbox/core and @outbox/store-postgres. */
export interface RelayChildDeps<S, P> {
  createPostgresStore(options: { pool: pg.Pool; schema: string; listen: false; notifyChannel: false }): S;
  OutboxRelay: new (options: { store: S; publisher: P } & typeof RELAY_SETTINGS) => ChildRelay;
  describeError(error: unknown): string;
}

/**
 * The producing service's relay: PostgreSQL outbox (E2E_SCHEMA) -> `inner`, through
 * haltingPublish(E2E_HALT_AFTER). Reports what startRelayChild reads: {started}, {published: n},
 * {retried}, {error}, {dead}.
 */
export function runRelayChild<E, O, R, C, S>(
  inner: ChildPublisher<E, O, R, C>,
  deps: RelayChildDeps<S, ChildPublisher<E, O, R, C>>,
): void {
  const pool = childPool(4);
  const store = deps.createPostgresStore({
    pool,
    schema: requiredEnv("E2E_SCHEMA"),
    listen: false,
    notifyChannel: false,
  });
  const publisher: ChildPublisher<E, O, R, C> = {
    capabilities: inner.capabilities,
    publish: haltingPublish((entries, options) => inner.publish(entries, options), Number(process.env.E2E_HALT_AFTER)),
    close: () => inner.close(),
  };
  const relay = new deps.OutboxRelay({ store, publisher, ...RELAY_SETTINGS });
  relay.on("published", ({ entries }) => report({ published: entries.length }));
  relay.on("retried", () => report({ retried: 1 }));
  relay.on("deadLettered", ({ entry, error }) => report({ dead: entry.id, error: deps.describeError(error) }));
  relay.on("error", ({ error, phase }) => report({ error: `${phase}: ${deps.describeError(error)}` }));

  relay.start();
  report({ started: process.pid });
}

/** What consumerChild takes from @outbox/inbox and @outbox/store-postgres. */
export interface ConsumerChildDeps<S, I> {
  createPostgresInboxStore(options: { pool: pg.Pool; schema: string }): S;
  createInbox(options: { store: S; consumer: string }): I;
}

/**
 * The consuming service's side every broker's consumer child shares: the harness's settings, the
 * PostgreSQL inbox, and effectHandler(), for the broker's inbox helper. Once per process: the
 * handler listens to the parent's "pause" and "resume".
 */
export function consumerChild<S, I>(
  deps: ConsumerChildDeps<S, I>,
): { env: ConsumerChildEnv; inbox: I; handler: ReturnType<typeof effectHandler> } {
  const env = consumerChildEnv();
  const store = deps.createPostgresInboxStore({ pool: childPool(8), schema: env.schema });
  return { env, inbox: deps.createInbox({ store, consumer: "e2e" }), handler: effectHandler(env) };
}
