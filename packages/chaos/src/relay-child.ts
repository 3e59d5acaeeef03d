// A relay replica in its own process (started with test-support's startRelayChild): the stack's
// store, publisher and lock, package defaults plus the lock TTL, with its database and broker
// behind the orchestrator's proxies. Besides what startRelayChild reads ({started}, {leader},
// {published}, {error}, {dead}), it reports over IPC:
//   {op: [op, lock, token, start, end]}  every fenced store call the store accepted (the checker
//                                        looks for stale tokens among them)
//   {refused: op}                         a fenced call the store refused (OUTBOX_FENCED)
//   {publish: [start, end, entries]}      every publish call (how long the broker took)
//   {trace: [what, start, end, ids]}      the entries (idempotency keys) of every claim returned and
//                                        every publish call, with the outcome of each published one:
//                                        the raw records then explain an inversion or a duplicate
//   {lost: token}                         leadership lost
//   {session: id}                         a database session it opened (MySQL thread id)
// On "stop" it stops gracefully and exits 0.
import {
  describeError,
  type Fence,
  OutboxError,
  OutboxErrorCode,
  type OutboxPublisher,
  OutboxRelay,
  type OutboxStore,
} from "@outbox/core";
import type { Names } from "./stack.js";
import { loadStack } from "./stacks/load.js";

const send = (message: unknown) => {
  if (process.connected) process.send?.(message);
};
const env = (name: string): string => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`relay child: ${name} is not set`);
  return value;
};

const stack = await loadStack(env("CHAOS_STACK"));
const names = JSON.parse(env("CHAOS_NAMES")) as Names;
const handle = await stack.openStore(env("CHAOS_DB_URL"), names, {
  app: env("CHAOS_APP"),
  onSession: (id) => send({ session: id }),
  onError: (error) => send({ error: `store: ${describeError(error)}` }),
});
const publisher = await stack.openPublisher(env("CHAOS_BROKER"), names);
const lock = await stack.openLock();

/** Wall-clock time with sub-millisecond resolution, comparable across the run's processes. */
const now = () => performance.timeOrigin + performance.now();

function audited<T>(op: string, fence: Fence | undefined, call: () => Promise<T>): Promise<T> {
  if (!fence) return call();
  const start = now();
  return call().then(
    (result) => {
      send({ op: [op, fence.lock, String(fence.token), start, now()] });
      return result;
    },
    (error: unknown) => {
      if (OutboxError.is(error, OutboxErrorCode.Fenced)) send({ refused: op });
      throw error;
    },
  );
}

const inner = handle.store;
const store: OutboxStore<never> = {
  capabilities: inner.capabilities,
  enqueue: (tx, messages) => inner.enqueue(tx, messages),
  claim: (request) => {
    const start = now();
    return audited("claim", request.fence, () => inner.claim(request)).then((entries) => {
      if (entries.length > 0)
        send({ trace: [`claim ${request.claimer}`, start, now(), entries.map((entry) => entry.idempotencyKey)] });
      return entries;
    });
  },
  ack: (ids, context) => audited("ack", context.fence, () => inner.ack(ids, context)),
  retry: (items, context) => audited("retry", context.fence, () => inner.retry(items, context)),
  deadLetter: (items, context) => audited("deadLetter", context.fence, () => inner.deadLetter(items, context)),
  release: (ids, context) => audited("release", context.fence, () => inner.release(ids, context)),
  listDead: (options) => inner.listDead(options),
  requeueDead: (ids) => inner.requeueDead(ids),
  purge: (request) => inner.purge(request),
  stats: () => inner.stats(),
  ...(inner.subscribe ? { subscribe: inner.subscribe.bind(inner) } : {}),
  close: () => inner.close(),
};

const timedPublisher: OutboxPublisher = {
  ...(publisher.capabilities ? { capabilities: publisher.capabilities } : {}),
  publish: async (entries, options) => {
    const start = now();
    let outcomes: Awaited<ReturnType<OutboxPublisher["publish"]>> | undefined;
    try {
      outcomes = await publisher.publish(entries, options);
      return outcomes;
    } finally {
      const end = now();
      send({ publish: [start, end, entries.length] });
      send({
        trace: [
          "publish",
          start,
          end,
          entries.map((entry, i) => `${entry.idempotencyKey}:${outcomes?.[i]?.status ?? "threw"}`),
        ],
      });
    }
  },
};

const relay = new OutboxRelay({
  id: env("CHAOS_RELAY_ID"),
  store,
  publisher: timedPublisher,
  leaseMs: Number(env("CHAOS_LEASE_MS")),
  leader: { backend: lock.backend, name: names.lock, ttlMs: Number(env("CHAOS_TTL_MS")) },
});
relay.on("published", ({ entries }) => send({ published: entries.length }));
// The cause, with numbers masked so that the orchestrator can count causes, and the attempt.
relay.on("retried", ({ entry, error }) =>
  send({ retried: describeError(error).replace(/\d+/g, "N").slice(0, 160), attempts: entry.attempts }),
);
relay.on("deadLettered", ({ entry, error }) => send({ dead: entry.id, error: describeError(error) }));
relay.on("error", ({ error, phase }) => send({ error: `${phase}: ${describeError(error)}` }));
relay.on("leadershipGained", ({ grant }) => send({ leader: String(grant.token) }));
relay.on("leadershipLost", ({ grant }) => send({ lost: String(grant.token) }));

process.on("message", async (message) => {
  if (message !== "stop") return;
  await relay.stop();
  await publisher.close?.();
  await handle.close();
  await lock.close();
  send({ stopped: relay.metrics() });
  process.exit(0);
});
process.on("disconnect", () => process.exit(1)); // the orchestrator is gone

relay.start();
send({ started: process.pid });
