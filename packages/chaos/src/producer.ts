// The application: writes entries at a steady rate, each in a real transaction through the
// store's enqueue, straight to the database (faults hit the relays, not the producer). Keys are
// drawn from a seeded PRNG (a tenth of the keys are hot: they get half the entries), each with
// its own seq. Every key belongs to one of CHAOS_LANES writers that commit one after the other,
// so a key's seq order is its commit order and its id order. Started with startRelayChild; sends
//   {committed: [[id, key, seq, committedAt], ...]}  after each COMMIT
//   {failed: text}                                    a transaction failed (it is retried as is)
// and on "stop" finishes the transactions in flight (what is still queued is never written: a slow
// database must not stretch production), sends {done: {...}} and exits 0.
import { setTimeout as delay } from "node:timers/promises";
import type { OutboxMessage } from "@outbox/core";
import { seededRandom } from "./schedule.js";
import { EnqueuedAtHeader, type Names, SeqHeader } from "./stack.js";
import { loadStack } from "./stacks/load.js";

const send = (message: unknown) => process.send?.(message);
const env = (name: string): string => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`producer: ${name} is not set`);
  return value;
};

const stack = await loadStack(env("CHAOS_STACK"));
const names = JSON.parse(env("CHAOS_NAMES")) as Names;
const rate = Number(env("CHAOS_RATE"));
const keys = Number(env("CHAOS_KEYS"));
const lanes = Number(process.env.CHAOS_LANES ?? 4);
const random = seededRandom(Number(env("CHAOS_SEED")));
const handle = await stack.openStore(env("CHAOS_DB_URL"), names, { app: "chaos-producer" });

interface Pending {
  readonly id: string;
  readonly key: string;
  readonly seq: number;
}
const queues: Pending[][] = Array.from({ length: lanes }, () => []);
/** Per lane: how many entries at the head of its queue its transaction in flight holds. */
const writing: number[] = queues.map(() => 0);
const seqs = new Map<string, number>();
let generated = 0;
let committed = 0;
let failures = 0;
let stopping = false;

function generate(): void {
  const hot = Math.max(1, Math.floor(keys / 10));
  const k = random() < 0.5 ? Math.floor(random() * hot) : Math.floor(random() * keys);
  const key = `key-${String(k).padStart(4, "0")}`;
  const seq = seqs.get(key) ?? 0;
  seqs.set(key, seq + 1);
  (queues[k % lanes] as Pending[]).push({ id: `chaos-${generated}`, key, seq });
  generated++;
}

async function lane(queue: Pending[], index: number): Promise<void> {
  for (;;) {
    if (queue.length === 0) {
      if (stopping) return;
      await delay(5);
      continue;
    }
    const batch = queue.slice(0, 20);
    writing[index] = batch.length;
    const at = Date.now();
    const messages: OutboxMessage[] = batch.map((entry) => ({
      topic: names.topic,
      key: entry.key,
      payload: JSON.stringify(entry),
      headers: { [SeqHeader]: String(entry.seq), [EnqueuedAtHeader]: String(at) },
      idempotencyKey: entry.id,
    }));
    try {
      await handle.enqueueCommitted(messages);
    } catch (error) {
      failures++;
      send({ failed: (error as Error).message });
      await delay(100);
      continue; // the same entries again: a key's seq never skips
    }
    const committedAt = Date.now();
    queue.splice(0, batch.length);
    writing[index] = 0;
    committed += batch.length;
    send({ committed: batch.map((entry) => [entry.id, entry.key, entry.seq, committedAt]) });
  }
}

// The clock says how many entries are due; a slow database makes the queues grow, never the rate drop.
const startedAt = Date.now();
const ticker = setInterval(() => {
  const due = Math.floor(((Date.now() - startedAt) * rate) / 1_000);
  while (generated < due) generate();
}, 10);
const writers = queues.map((queue, index) => lane(queue, index));

process.on("message", async (message) => {
  if (message !== "stop") return;
  clearInterval(ticker);
  stopping = true;
  let dropped = 0;
  for (const [index, queue] of queues.entries()) {
    // The head batch may be committing right now: it stays (its lane removes it when done).
    const keep = writing[index] as number;
    dropped += queue.length - keep;
    queue.splice(keep);
  }
  await Promise.all(writers);
  await handle.close();
  send({ done: { generated, committed, failures, neverWritten: dropped, seconds: (Date.now() - startedAt) / 1_000 } });
  process.exit(0);
});

process.on("disconnect", () => process.exit(1)); // the orchestrator is gone

send({ started: process.pid });
