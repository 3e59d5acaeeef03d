// End to end on real servers, through kafkajs's eachBatch: PostgreSQL outbox -> OutboxRelay -> Kafka ->
// inboxEachBatch -> PostgreSQL inbox. Three consumers of one group, one after the other:
// 1. autoCommit on (kafkajs commits the resolved offsets after each batch): stopped in the middle of a batch, so
//    the helper returns without resolving the rest, and what the group committed must be exactly what it resolved;
// 2. autoCommit off with autoCommitThreshold (commits only from the helper's commitOffsetsIfNecessary, every
//    THRESHOLD resolved offsets): goes away with its last resolved offsets uncommitted, like a crash between the
//    handlers' commits and the offset commit, so the third consumer gets them again (duplicates);
// 3. autoCommit on, to the end.
// Handlers fail once or twice after their insert (rolled back; kafkajs fetches the partition again from the failed
// message), one of them with a TypeError, which kafkajs retries only because the helper wraps it; the inbox store
// fails once on a key; a poison message fails every time and is parked after MAX_ATTEMPTS. Every other entry's effect
// row must exist exactly once, none missing, each key's effects in order, and no committed offset may ever be ahead
// of what was handled.
import { OutboxRelay } from "@outbox/core";
import { createInbox, type InboxMessage } from "@outbox/inbox";
import {
  createPostgresInboxStore,
  createPostgresStore,
  migrate,
  migrateInbox,
  type Queryable,
} from "@outbox/store-postgres";
import { checkEffects, createEffects, produceEntries, writeEffect } from "@outbox/test-support/inbox-effects";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
import type { Consumer, EachBatchPayload } from "kafkajs";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { inboxEachBatch, type KafkaBatchRecord } from "../src/inbox.js";
import { createKafkaPublisher } from "../src/index.js";
import { createTopic, newKafka } from "./support/kafka.js";

const ENTRIES = 600;
const KEYS = 12;
const PARTITIONS = 3;
/** Fails every time: the inbox parks it after MAX_ATTEMPTS. */
const POISON = "entry-420";
const MAX_ATTEMPTS = 3;
/** Consumer 2 commits every THRESHOLD resolved offsets (kafkajs's autoCommitThreshold). */
const THRESHOLD = 20;

/** Resolves when `done()` holds, checked at each `changed()`; the timeout is a safety net, not a wait. */
function conditions() {
  const waiters: Array<{ done: () => boolean; resolve: () => void }> = [];
  return {
    changed(): void {
      for (const waiter of [...waiters]) {
        if (!waiter.done()) continue;
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    },
    until(done: () => boolean, timeoutMs: number, what: string): Promise<void> {
      return new Promise((resolve, reject) => {
        if (done()) return resolve();
        const timer = setTimeout(
          () => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)),
          timeoutMs,
        );
        waiters.push({
          done,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        });
      });
    },
  };
}

describe("e2e: outbox -> Kafka -> inboxEachBatch", () => {
  it(`applies each of ${ENTRIES} entries' effect exactly once, in key order, across failures and two consumer restarts`, async () => {
    const schema = freshIdentifier("inbox_batch_e2e");
    const pool = new pg.Pool({ connectionString: pgUrl, max: 8 });
    pool.on("error", () => undefined);
    const kafka = newKafka();
    const admin = kafka.admin();
    await admin.connect();
    const store = createPostgresStore({ pool, schema, listen: false, notifyChannel: false });
    const publisher = createKafkaPublisher({ kafka });
    const relay = new OutboxRelay({ store, publisher, pollMs: 50, batchSize: 100 });
    const consumers: Consumer[] = [];
    const events = conditions();
    try {
      await migrate(pool, { schema });
      await migrateInbox(pool, { schema });
      await createEffects(pool, schema);
      const topic = await createTopic(admin, { partitions: PARTITIONS });

      // The producing service: per key, seq 0, 1, 2, ... in commit order. The whole topic is published before the
      // consumers start, so that their batches are full (up to maxBytesPerPartition).
      await produceEntries({ topic, count: ENTRIES, keys: KEYS }, (entries) =>
        inTransaction(pool, (tx) => store.enqueue(tx, entries)),
      );
      let published = 0;
      relay.on("published", ({ entries }) => {
        published += entries.length;
        events.changed();
      });
      relay.start();
      await events.until(() => published >= ENTRIES, 60_000, "the relay to publish every entry");
      /** Per partition: its high watermark, the offset after its last message. */
      const ends = new Map((await admin.fetchTopicOffsets(topic)).map((p) => [p.partition, BigInt(p.high)]));

      // The consuming service: each message's effect row and its inbox key in one transaction.
      const inboxStore = createPostgresInboxStore({ pool, schema });
      // Fault: the inbox store fails once on entry-333's key (a store failure: no attempt counted).
      const record = inboxStore.record.bind(inboxStore);
      let storeFailures = 1;
      inboxStore.record = async (tx, recorded) => {
        if (recorded.messageId === "entry-333" && storeFailures > 0) {
          storeFailures -= 1;
          throw new Error("the inbox store fails once");
        }
        return record(tx, recorded);
      };
      const inbox = createInbox({ store: inboxStore, consumer: "batch-e2e", maxAttempts: MAX_ATTEMPTS });
      // Fault: these handlers fail after their insert, as many times as said; entry-150 with a TypeError (which
      // kafkajs would not retry as it is).
      const handlerFailures = new Map([
        ["entry-7", 1],
        ["entry-150", 1],
        ["entry-299", 2],
        ["entry-510", 1],
        ["entry-598", 1],
      ]);
      const handler = async (tx: Queryable, message: InboxMessage) => {
        const { key, seq } = JSON.parse(new TextDecoder().decode(message.payload as Uint8Array)) as {
          key: string;
          seq: number;
        };
        await writeEffect(tx, schema, message.idempotencyKey, key, seq);
        const id = message.idempotencyKey ?? "";
        // Fault: a poison message, failing every time with a SyntaxError: parked after MAX_ATTEMPTS.
        if (id === POISON) JSON.parse("{ not json");
        const left = handlerFailures.get(id) ?? 0;
        if (left > 0) {
          handlerFailures.set(id, left - 1);
          throw id === "entry-150" ? new TypeError("the handler fails, after its insert") : new Error("it fails");
        }
      };

      const outcomes = { handled: 0, duplicate: 0, dead: 0 };
      const runs: Run[] = [];
      const crashes: Error[] = [];
      /** Whether the group's consumers have resolved every partition to its end (handled, or skipped by a bug). */
      const caughtUp = () =>
        [...ends].every(
          ([partition, end]) => end === 0n || runs.some((run) => (run.resolved.get(partition) ?? -1n) >= end - 1n),
        );
      const groupId = freshIdentifier("inbox-batch-e2e-group");

      interface Run {
        readonly consumer: Consumer;
        readonly outcomes: { handled: number; duplicate: number; dead: number };
        /** Per partition: the last offset the helper resolved. */
        readonly resolved: Map<number, bigint>;
        /** Batches the helper returned from with messages left unresolved, the consumer stopping. */
        earlyStops: number;
        commits: number;
        stopped: Promise<void> | null;
      }

      const startConsumer = async (
        config: { autoCommit: boolean; autoCommitThreshold?: number },
        stopWhen: ((run: Run, record: KafkaBatchRecord, lastOfBatch: boolean) => boolean) | null,
      ): Promise<Run> => {
        const consumer = kafka.consumer({
          groupId,
          maxWaitTimeInMs: 100,
          // Small batches: many per partition, each committed at its end with autoCommit on.
          maxBytesPerPartition: 4096,
          // Each handler failure is one retry of kafkajs's fetch loop, with a back-off.
          retry: { initialRetryTime: 100, maxRetryTime: 1_000, retries: 30 },
        });
        consumers.push(consumer);
        const run: Run = {
          consumer,
          outcomes: { handled: 0, duplicate: 0, dead: 0 },
          resolved: new Map(),
          earlyStops: 0,
          commits: 0,
          stopped: null,
        };
        runs.push(run);
        consumer.on(consumer.events.COMMIT_OFFSETS, () => {
          run.commits += 1;
        });
        consumer.on(consumer.events.CRASH, ({ payload }) => {
          // kafkajs gave up on the consumer (no restart): nothing would fetch the partitions again.
          if (!payload.restart) crashes.push(payload.error);
          events.changed();
        });
        /** Per partition: the last offset of the batch in hand. */
        const batchEnd = new Map<number, string>();
        const eachBatch = inboxEachBatch({
          inbox,
          handler,
          onResult: (result, record) => {
            outcomes[result.status] += 1;
            run.outcomes[result.status] += 1;
            const lastOfBatch = batchEnd.get(record.partition) === record.message.offset;
            if (run.stopped === null && stopWhen?.(run, record, lastOfBatch)) {
              // Stops the consumer from inside a batch: isRunning() is false from here on.
              run.stopped = consumer.disconnect();
            }
            events.changed();
          },
        });
        await consumer.connect();
        await consumer.subscribe({ topic, fromBeginning: true });
        await consumer.run({
          ...config,
          eachBatchAutoResolve: false,
          partitionsConsumedConcurrently: 2,
          eachBatch: async (payload: EachBatchPayload) => {
            const { partition, messages } = payload.batch;
            const last = messages.at(-1)?.offset;
            if (last !== undefined) batchEnd.set(partition, last);
            let lastResolved: string | null = null;
            try {
              await eachBatch({
                ...payload,
                resolveOffset: (offset: string) => {
                  lastResolved = offset;
                  run.resolved.set(partition, BigInt(offset));
                  payload.resolveOffset(offset);
                },
              });
              if (lastResolved !== last && !payload.isRunning()) run.earlyStops += 1;
            } finally {
              events.changed();
            }
          },
        });
        return run;
      };

      /** The group's committed offset per partition (the next offset to read). */
      const committed = async (): Promise<Map<number, bigint>> => {
        const [offsets] = await admin.fetchOffsets({ groupId, topics: [topic] });
        return new Map((offsets?.partitions ?? []).map((p) => [p.partition, BigInt(p.offset)]));
      };

      // Consumer 1: autoCommit on, stopped in the middle of a batch past a third of the entries.
      const first = await startConsumer(
        { autoCommit: true },
        (_run, _record, lastOfBatch) => outcomes.handled >= ENTRIES / 3 && !lastOfBatch,
      );
      await events.until(
        () => first.stopped !== null || crashes.length > 0,
        120_000,
        "the first consumer to handle a third",
      );
      expect(crashes, "kafkajs never gave up on a consumer").toEqual([]);
      await first.stopped;
      const afterFirst = await committed();
      expect(first.earlyStops, "the first consumer stopped in the middle of a batch").toBeGreaterThan(0);
      for (const [partition, offset] of first.resolved) {
        expect(afterFirst.get(partition), `partition ${partition}: committed = resolved + 1`).toBe(offset + 1n);
      }

      // Consumer 2: commits every THRESHOLD resolved offsets only; goes away past two thirds, half a threshold
      // after its last commit, so that those offsets are lost.
      let sinceCommit = 0;
      let commitsSeen = 0;
      const second = await startConsumer({ autoCommit: false, autoCommitThreshold: THRESHOLD }, (run) => {
        if (run.commits > commitsSeen) {
          commitsSeen = run.commits;
          sinceCommit = 0;
        }
        sinceCommit += 1;
        return outcomes.handled >= (2 * ENTRIES) / 3 && run.commits > 0 && sinceCommit === THRESHOLD / 2;
      });
      await events.until(
        () => second.stopped !== null || crashes.length > 0,
        120_000,
        "the second consumer to handle two thirds",
      );
      expect(crashes, "kafkajs never gave up on a consumer").toEqual([]);
      await second.stopped;
      const afterSecond = await committed();
      let lost = 0n;
      for (const [partition, offset] of second.resolved) {
        const next = afterSecond.get(partition) ?? 0n;
        expect(next, `partition ${partition}: nothing committed past what was handled`).toBeLessThanOrEqual(
          offset + 1n,
        );
        lost += offset + 1n - next;
      }
      expect(second.commits, "the second consumer committed at its threshold").toBeGreaterThan(0);
      expect(lost, "the second consumer went away with resolved offsets uncommitted").toBeGreaterThan(0n);

      // Consumer 3: autoCommit on, to the end.
      const third = await startConsumer({ autoCommit: true }, null);
      await events.until(
        () => caughtUp() || crashes.length > 0,
        180_000,
        "the consumers to reach the end of every partition",
      );
      expect(crashes, "kafkajs never gave up on a consumer").toEqual([]);

      const { missing, doubled, outOfOrder } = await checkEffects(pool, schema, ENTRIES);
      expect(missing, "every entry's effect row exists, but the poison message's").toEqual([POISON]);
      expect(doubled, "no entry's effect row exists twice").toEqual([]);
      expect(outOfOrder, "each key's effects applied in enqueue order").toEqual([]);
      expect(outcomes.handled).toBe(ENTRIES - 1);
      expect(outcomes.dead, "the poison message was parked").toBe(1);
      const dead = await inbox.listDead();
      expect(dead.map((letter) => [letter.messageId, letter.attempts])).toEqual([[POISON, MAX_ATTEMPTS]]);
      expect(third.outcomes.duplicate, "the lost offsets' messages came back as duplicates").toBeGreaterThanOrEqual(
        Number(lost),
      );
      expect([first, second, third].map((run) => run.outcomes.handled > 0)).toEqual([true, true, true]);
      expect([...handlerFailures.values()], "every handler failure happened").toEqual([0, 0, 0, 0, 0]);
      expect(storeFailures, "the store failure happened").toBe(0);
    } finally {
      for (const consumer of consumers) await consumer.disconnect().catch(() => undefined);
      await relay.stop();
      await publisher.close();
      await store.close();
      await admin.disconnect();
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
      await pool.end();
    }
  }, 300_000);
});
