// What the publishers' end-to-end tests share: sequenced entries enqueued in the application's
// transactions, relays in child processes that report over IPC, and the per-key order check of
// what the broker holds.
import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import type pg from "pg";
import { pgUrl } from "./postgres.js";

/** The part of an outbox store these helpers use: enqueue inside a pg transaction. */
export interface EnqueueingStore {
  enqueue(
    tx: pg.PoolClient,
    messages: Array<{
      topic: string;
      key: string;
      payload: string;
      headers: Record<string, string>;
      idempotencyKey: string;
    }>,
  ): Promise<unknown>;
}

export interface SequencedOptions {
  entries: number;
  keys: number;
  topic: string;
  /** Headers every entry carries besides `x-seq`. */
  headers?: Record<string, string>;
}

/**
 * Enqueues `entries` entries in transactions of 1,000, round-robin over `keys` keys: entry n is
 * key `key-(n % keys)` with seq `floor(n / keys)` (header `x-seq`) and idempotency key `e2e-n`.
 * Returns each idempotency key's seq.
 */
export async function enqueueSequenced(
  pool: pg.Pool,
  store: EnqueueingStore,
  options: SequencedOptions,
): Promise<Map<string, number>> {
  const seqOf = new Map<string, number>();
  for (let start = 0; start < options.entries; start += 1_000) {
    const messages = Array.from({ length: Math.min(1_000, options.entries - start) }, (_, i) => {
      const n = start + i;
      const key = `key-${n % options.keys}`;
      const seq = Math.floor(n / options.keys);
      return {
        topic: options.topic,
        key,
        payload: JSON.stringify({ n, key, seq }),
        headers: { "x-seq": String(seq), ...options.headers },
        idempotencyKey: `e2e-${n}`,
      };
    });
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      await store.enqueue(client, messages);
      await client.query("COMMIT");
    } catch (error) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw error;
    } finally {
      client.release();
    }
    for (const m of messages) seqOf.set(m.idempotencyKey, Number(m.headers["x-seq"]));
  }
  return seqOf;
}

/** A message as a consumer read it back. */
export interface ReceivedMessage {
  idempotencyKey: string;
  key: string | null;
  headers: Record<string, string>;
}

export interface DeliveryCheck {
  /** Entries seen at least once. */
  distinct: number;
  /** Messages beyond the first of each entry. */
  duplicates: number;
  /** Per key, first occurrences must be seq 0, 1, 2, ... without gaps. */
  orderViolations: string[];
  /** Messages whose `x-seq` is not the one their entry was enqueued with. */
  wrongSeq: string[];
}

/**
 * Checks what the broker holds. `received` must be in the broker's order for each key (one
 * queue's order, or a partition's offset order): duplicates are skipped, and each key's first
 * occurrences must follow its enqueue order.
 */
export function checkDelivery(received: Iterable<ReceivedMessage>, seqOf: ReadonlyMap<string, number>): DeliveryCheck {
  const firstSeen = new Set<string>();
  const lastSeq = new Map<string | null, number>();
  const orderViolations: string[] = [];
  const wrongSeq: string[] = [];
  let total = 0;
  for (const m of received) {
    total += 1;
    if (firstSeen.has(m.idempotencyKey)) continue;
    firstSeen.add(m.idempotencyKey);
    const seq = Number(m.headers["x-seq"]);
    if (seq !== seqOf.get(m.idempotencyKey)) wrongSeq.push(`${m.idempotencyKey}: x-seq ${m.headers["x-seq"]}`);
    const previous = lastSeq.get(m.key) ?? -1;
    if (seq !== previous + 1) orderViolations.push(`${m.key}: seq ${seq} after ${previous}`);
    lastSeq.set(m.key, seq);
  }
  return { distinct: firstSeen.size, duplicates: total - firstSeen.size, orderViolations, wrongSeq };
}

/**
 * Forks `script` (TypeScript, run from source; workspace packages resolve to their sources too)
 * with OUTBOX_PG_URL and `env`, its stdout and stderr inherited, an IPC channel open.
 */
export function forkSource(script: URL, env: Record<string, string>): ChildProcess {
  return fork(fileURLToPath(script), {
    execArgv: [
      "--conditions=@outbox/source",
      "--experimental-strip-types",
      "--no-warnings",
      "--import",
      fileURLToPath(new URL("../../../scripts/register-ts.mjs", import.meta.url)),
    ],
    env: { ...process.env, OUTBOX_PG_URL: pgUrl, ...env },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
}

/** A relay in its own process and what it reported over IPC. */
export interface RelayChild {
  readonly process: ChildProcess;
  published: number;
  retried: number;
  /** Broker connections its publisher opened, when it reports them. */
  connections: number;
  readonly errors: string[];
  readonly dead: string[];
  /** Fencing tokens of every leadership it gained. */
  readonly leaderships: string[];
  exited: Promise<number | null>;
}

/**
 * Forks `script` (TypeScript, run from source) with OUTBOX_PG_URL and `env`; resolves once it
 * reports `{ started }`. The child reports `{ published: n }`, `{ retried: 1 }`,
 * `{ connections: n }`, `{ leader: token }`, `{ error }` and `{ dead, error }`.
 */
export function startRelayChild(script: URL, env: Record<string, string>): Promise<RelayChild> {
  const child = forkSource(script, env);
  const relay: RelayChild = {
    process: child,
    published: 0,
    retried: 0,
    connections: 0,
    errors: [],
    dead: [],
    leaderships: [],
    exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))),
  };
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`relay child exited early (${code})`)));
    child.on("message", (message: Record<string, unknown>) => {
      if (typeof message.published === "number") relay.published += message.published;
      if (typeof message.retried === "number") relay.retried += message.retried;
      if (typeof message.connections === "number") relay.connections = message.connections;
      if (typeof message.leader === "string") relay.leaderships.push(message.leader);
      if (typeof message.error === "string" && message.dead === undefined) relay.errors.push(message.error);
      if (message.dead !== undefined) relay.dead.push(`${message.dead}: ${message.error}`);
      if (message.started) resolve(relay);
    });
  });
}
