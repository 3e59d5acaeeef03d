// End to end on real servers: PostgreSQL outbox -> OutboxRelay -> Redis stream (our publisher) -> consumer group ->
// startInboxConsumer -> PostgreSQL inbox. Forced redeliveries on the way:
// - some handlers fail once after their insert (rolled back, left pending, their key's later entries held back);
// - some acknowledgements never reach Redis (the entry stays pending and comes back as a duplicate);
// - consumer "a" is stopped mid-way and restarted under its name (it resumes with its own pending entries), then
//   stopped again right after its acknowledgements stopped reaching Redis (a crash after the commits);
// - consumer "b" takes a's pending entries over with XAUTOCLAIM once they have been idle claimIdleMs, and finishes.
// Every entry's effect row must exist exactly once, none missing, each key's effects in enqueue order.
import { uniqueName } from "@outbox/conformance";
import { OutboxRelay } from "@outbox/core";
import { createInbox, type HandleResult, type InboxMessage } from "@outbox/inbox";
import {
  createPostgresInboxStore,
  createPostgresStore,
  migrate,
  migrateInbox,
  type Queryable,
} from "@outbox/store-postgres";
import {
  checkEffects,
  createEffects,
  distinctEffects,
  produceEntries,
  writeEffect,
} from "@outbox/test-support/inbox-effects";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
import { closeClients, newClient } from "@outbox/test-support/redis";
import { waitFor } from "@outbox/test-support/wait";
import pg from "pg";
import { describe, expect, it } from "vitest";
import {
  type InboxConsumer,
  type RedisClientLike,
  type RedisInboxErrorReason,
  type RedisStreamEntry,
  startInboxConsumer,
} from "../src/inbox.js";
import { createRedisStreamPublisher } from "../src/index.js";

const ENTRIES = 300;
const KEYS = 10;
const GROUP = "shipping";
/** b's (and a's first run's) claim delay: failed entries come back after it, a's stale ones are taken over. */
const CLAIM_IDLE_MS = 500;

/** The handler's injected failure (told apart from any other error by its class). */
class InjectedFailure extends Error {}

const entryIds = (pick: (i: number) => boolean) =>
  new Set(
    Array.from({ length: ENTRIES }, (_, i) => i)
      .filter(pick)
      .map((i) => `entry-${i}`),
  );

describe("e2e: outbox -> Redis Streams -> inbox", () => {
  it(`applies each of ${ENTRIES} entries' effect exactly once, in key order, through failures, lost acks, a restart and a takeover`, async () => {
    const schema = freshIdentifier("redis_inbox_e2e");
    const stream = uniqueName("inbox-e2e");
    const pool = new pg.Pool({ connectionString: pgUrl, max: 8 });
    pool.on("error", () => undefined);
    const producer = await newClient();
    const consumerClient = await newClient(); // the consuming service's own client: it sends the XACKs
    const admin = await newClient();
    const store = createPostgresStore({ pool, schema, listen: false, notifyChannel: false });
    const publisher = createRedisStreamPublisher({ client: producer });
    const relay = new OutboxRelay({ store, publisher, pollMs: 50, batchSize: 100 });
    const inbox = createInbox({ store: createPostgresInboxStore({ pool, schema }), consumer: "e2e" });
    const consumers: InboxConsumer[] = [];
    try {
      await migrate(pool, { schema });
      await migrateInbox(pool, { schema });
      await createEffects(pool, schema);

      // The producing service: per key, seq 0, 1, 2, ... in commit order.
      await produceEntries({ topic: stream, count: ENTRIES, keys: KEYS }, (entries) =>
        inTransaction(pool, (tx) => store.enqueue(tx, entries)),
      );
      relay.start();

      // The faults, on disjoint sets of entries.
      const failOnce = entryIds((i) => i % 25 === 3);
      const loseAckOnce = entryIds((i) => i % 25 === 11);
      const failed = new Set<string>();
      const ackLost = new Set<string>();
      /** From a stream entry id to its entry, for the XACK fault. */
      const idempotencyKeyOf = new Map<string, string>();
      /** While set, no acknowledgement reaches Redis (the consumer crashed after its commits). */
      let acksCut = false;

      // The consuming service: each entry's effect row and its inbox key in one transaction.
      const mismatches: string[] = [];
      const handler = async (tx: Queryable, message: InboxMessage, entry: RedisStreamEntry) => {
        const { key, seq } = JSON.parse(new TextDecoder().decode(message.payload as Uint8Array)) as {
          key: string;
          seq: number;
        };
        if (message.key !== key || message.topic !== stream) mismatches.push(`${message.id}: ${message.key}`);
        const id = message.idempotencyKey as string;
        idempotencyKeyOf.set(entry.id, id);
        await writeEffect(tx, schema, id, key, seq);
        if (failOnce.has(id) && !failed.has(id)) {
          failed.add(id);
          throw new InjectedFailure(`${id} fails once, after its insert`);
        }
      };
      // Fault: some XACKs never reach Redis (they "succeed" without being sent).
      const lossy: RedisClientLike = {
        callBuffer: (command, ...args) => {
          const id = idempotencyKeyOf.get(String(args[2]));
          if (command === "XACK" && id !== undefined && (acksCut || (loseAckOnce.has(id) && !ackLost.has(id)))) {
            ackLost.add(id);
            return Promise.resolve(1);
          }
          return consumerClient.callBuffer(command, ...args);
        },
        duplicate: (override) => consumerClient.duplicate(override),
      };

      const outcomes = { handled: 0, duplicate: 0, dead: 0 };
      const deliveries: Record<string, Record<RedisStreamEntry["delivery"], number>> = {};
      const failures: Record<string, number> = {};
      const errors: Record<RedisInboxErrorReason, number> = {
        failed: 0,
        "held-back": 0,
        rejected: 0,
        unacked: 0,
        redis: 0,
      };
      const unexpected: unknown[] = [];
      /** `run`: a label for this run's delivery counts; `name`: the consumer's name in the group. */
      const start = (run: string, name: string, client: RedisClientLike, claimIdleMs: number) => {
        const counts = { new: 0, pending: 0, claimed: 0 };
        deliveries[run] = counts;
        failures[run] = 0;
        const consumer = startInboxConsumer({
          inbox,
          client,
          stream,
          group: GROUP,
          consumer: name,
          handler,
          count: 20,
          blockMs: 100,
          claimIdleMs,
          onResult: (result: HandleResult<unknown>, entry) => {
            outcomes[result.status] += 1;
            counts[entry.delivery] += 1;
          },
          onError: (error, _entry, reason) => {
            errors[reason] += 1;
            if (reason === "failed") failures[run] = (failures[run] ?? 0) + 1;
            if (reason === "failed" && !(error instanceof InjectedFailure)) unexpected.push(error);
            if (reason === "redis" || reason === "rejected" || reason === "unacked") unexpected.push(error);
          },
        });
        consumers.push(consumer);
        return consumer;
      };
      const pendingCount = async () => ((await admin.xpending(stream, GROUP)) as [number])[0];

      // a: its own failures come back after CLAIM_IDLE_MS; stopped mid-way, right after its acknowledgements stopped
      // reaching Redis.
      const a = start("a", "a", lossy, CLAIM_IDLE_MS);
      await waitFor(() => outcomes.handled >= ENTRIES / 3, 60_000, "a to handle a third");
      acksCut = true;
      const firstCutAt = outcomes.handled;
      await waitFor(() => outcomes.handled >= firstCutAt + 5, 60_000, "a to commit 5 entries with lost acks");
      await a.stop();
      acksCut = false;
      expect(await pendingCount(), "a left pending entries behind").toBeGreaterThanOrEqual(5);

      // a, restarted under its name: its own pending entries first. It claims nothing (a long claimIdleMs), and
      // after half its acknowledgements stop reaching Redis; then it is stopped.
      const aAgain = start("a again", "a", lossy, 600_000);
      await waitFor(() => outcomes.handled >= ENTRIES / 2, 60_000, "a to handle half");
      acksCut = true;
      const cutAt = outcomes.handled;
      await waitFor(() => outcomes.handled >= cutAt + 10, 60_000, "a to commit 10 entries with lost acks");
      await aAgain.stop();
      acksCut = false;
      const leftByA = await pendingCount();
      expect(leftByA, "a left pending entries behind (at least the 10 with lost acks)").toBeGreaterThanOrEqual(10);

      // b takes over once a's entries have been idle CLAIM_IDLE_MS: all of them before new entries.
      await waitFor(
        async () => {
          const idle = (await admin.xpending(stream, GROUP, "IDLE", CLAIM_IDLE_MS, "-", "+", ENTRIES)) as unknown[];
          return idle.length === (await pendingCount());
        },
        30_000,
        "a's pending entries to be idle for claimIdleMs",
      );
      const b = start("b", "b", consumerClient, CLAIM_IDLE_MS); // an ioredis client as it is
      await waitFor(
        async () =>
          (await store.stats()).pending === 0 &&
          (await distinctEffects(pool, schema)) === ENTRIES &&
          (await pendingCount()) === 0,
        120_000,
        "every entry handled and acknowledged",
      );
      await b.stop();

      const { missing, doubled, outOfOrder } = await checkEffects(pool, schema, ENTRIES);
      expect(missing, "every entry's effect row exists").toEqual([]);
      expect(doubled, "no entry's effect row exists twice").toEqual([]);
      expect(outOfOrder, "each key's effects applied in enqueue order").toEqual([]);

      expect(mismatches, "key and topic read from the publisher's fields").toEqual([]);
      expect(unexpected, "no other failure").toEqual([]);
      expect(outcomes.handled).toBe(ENTRIES);
      expect(outcomes.dead).toBe(0);
      expect(failed.size, "the injected failures happened").toBeGreaterThan(0);
      expect(errors.failed).toBe(failed.size);
      expect(errors["held-back"], "later entries of a failed key were held back").toBeGreaterThan(0);
      expect(outcomes.duplicate, "each entry whose ack was lost came back as a duplicate").toBeGreaterThanOrEqual(
        ackLost.size,
      );
      expect(deliveries["a again"]?.pending, "a, restarted, took its own pending entries first").toBeGreaterThanOrEqual(
        5,
      );
      expect(deliveries.b?.claimed, "b took a's pending entries over").toBeGreaterThanOrEqual(leftByA);
      expect(deliveries.b?.new, "then b read the rest").toBeGreaterThan(0);
      // b has no pending entries of its own at start: only its claims can have retried its own failures.
      expect(failures.b, "handlers failed in b too, and were claimed back").toBeGreaterThan(0);
      const { rows } = await pool.query(`SELECT count(*)::int AS n FROM "${schema}".inbox`);
      expect((rows[0] as { n: number }).n, "one inbox key per entry").toBe(ENTRIES);
      console.info(
        `[redis inbox e2e] handled ${outcomes.handled}, duplicates ${outcomes.duplicate} (lost acks ${ackLost.size}), left by a ${leftByA}, deliveries ${JSON.stringify(deliveries)}, failures ${JSON.stringify(failures)}, errors ${JSON.stringify(errors)}`,
      );
    } finally {
      await Promise.all(consumers.map((consumer) => consumer.stop()));
      await relay.stop();
      await publisher.close();
      await store.close();
      await admin.del(stream).catch(() => undefined);
      await closeClients();
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
      await pool.end();
    }
  }, 300_000);
});
