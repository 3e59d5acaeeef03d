import {
  heldBack,
  KeyFailures,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxPublisher,
  type PublishOutcome,
  permanentFailure,
  published,
  transientFailure,
} from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import { describe, expect, it } from "vitest";
import {
  type BrokerStall,
  type PublisherCheckId,
  type PublisherHarness,
  publisherChecks,
  runChecks,
  uniqueName,
} from "../src/index.js";

// Each rule of the publisher checks added for the escaped adapter bugs (issue: "" keys, conditions
// that pass, aborts while the broker hangs, keys left paused, producers left out of step) has a
// broken publisher below that must fail its check, next to a faithful one that must pass it.

type Harness = PublisherHarness & { largePayloadBytes: number };

/** Refused for good (oversize) and failed for now (a full queue): the sizes the harnesses below use. */
const PERMANENT_BYTES = 2_000;
const TRANSIENT_BYTES = 1_500;

function harness(publisher: OutboxPublisher, store: MemoryPublisher, extra: Partial<PublisherHarness> = {}): Harness {
  return {
    largePayloadBytes: 100,
    publisher,
    topic: async () => uniqueName("t"),
    receive: async (topic) => store.topic(topic).map((m) => ({ ...m, id: m.entryId })),
    permanentFailure: async (topic) => ({ topic, key: null, payload: new Uint8Array(PERMANENT_BYTES) }),
    transientFailure: async (topic) => ({ topic, key: null, payload: new Uint8Array(TRANSIENT_BYTES) }),
    teardown: async () => {},
    ...extra,
  };
}

/** Runs only the named checks against `create`; returns what passed, and each failure's message. */
async function results(ids: readonly PublisherCheckId[], create: () => Promise<Harness>) {
  const only = Object.fromEntries(ids.map((id) => [id, publisherChecks[id]])) as typeof publisherChecks;
  const { passed, failed, errors } = await runChecks(only, create, (h) => h.teardown(), { timeoutMs: 30_000 });
  const messages = Object.fromEntries(
    Object.entries(errors).map(([id, error]) => [id, String((error as Error).message)]),
  ) as Partial<Record<PublisherCheckId, string>>;
  return { passed, failed, messages };
}

const outcomeOf = (entry: OutboxEntry): PublishOutcome => {
  if (entry.payload.byteLength === PERMANENT_BYTES) return permanentFailure(new Error("too large"));
  if (entry.payload.byteLength === TRANSIENT_BYTES) return transientFailure(new Error("queue full"));
  return published();
};

describe('the kit catches publishers that treat the key "" as no key', () => {
  /** Judges entries in order; `keyOf` decides which entries form a run (the bug: by truthiness). */
  function runPublisher(store: MemoryPublisher, keyOf: (entry: OutboxEntry) => string | null): OutboxPublisher {
    return {
      async publish(entries) {
        const failed = new Set<string>();
        const outcomes: PublishOutcome[] = [];
        for (const entry of entries) {
          const key = keyOf(entry);
          if (key !== null && failed.has(key)) {
            outcomes.push(heldBack(entry));
            continue;
          }
          const outcome = outcomeOf(entry);
          if (outcome.status === "published") await store.publish([entry]);
          else if (key !== null) failed.add(key);
          outcomes.push(outcome);
        }
        return outcomes;
      },
    };
  }

  const ids = ["key-runs", "key-runs-transient", "empty-key-runs", "round-trip-edges"] as const;

  it('a publisher that keeps a run of any key, "" included, passes', async () => {
    const store = new MemoryPublisher();
    const { failed, messages } = await results(ids, async () =>
      harness(
        runPublisher(store, (e) => e.key),
        store,
      ),
    );
    expect(messages).toEqual({});
    expect(failed).toEqual([]);
  });

  it('a publisher that sends a "" run as keyless entries fails empty-key-runs only', async () => {
    const store = new MemoryPublisher();
    const { failed, messages } = await results(ids, async () =>
      harness(
        runPublisher(store, (e) => e.key || null),
        store,
      ),
    );
    expect(failed).toEqual(["empty-key-runs"]);
    expect(messages["empty-key-runs"]).toContain("must not be published");
  });

  it('a publisher that refuses "" keys as OUTBOX_INVALID_ENTRY (a broker that cannot carry them) passes', async () => {
    const store = new MemoryPublisher();
    const refusing: OutboxPublisher = {
      async publish(entries) {
        const failed = new KeyFailures();
        const outcomes: PublishOutcome[] = [];
        for (const entry of entries) {
          if (failed.blocked(entry)) outcomes.push(heldBack(entry));
          else if (entry.key === "") {
            failed.fail(entry);
            outcomes.push(
              permanentFailure(new OutboxError(OutboxErrorCode.InvalidEntry, 'the key "" cannot be carried')),
            );
          } else outcomes.push(...(await runPublisher(store, (e) => e.key).publish([entry])));
        }
        return outcomes;
      },
    };
    const { messages } = await results(["empty-key-runs"], async () => harness(refusing, store));
    expect(messages).toEqual({});
  });
});

describe("the kit catches publishers that dead-letter conditions of the broker that pass", () => {
  /** A broker whose memory fills up: every send fails "OOM" until it is freed. */
  function memoryFull(kind: "transient" | "permanent") {
    const store = new MemoryPublisher();
    let full = false;
    const publisher = new MemoryPublisher({
      outcome: async (entry) => {
        if (!full) return (await store.publish([entry]))[0] as PublishOutcome;
        const error = new Error("OOM command not allowed when used memory > 'maxmemory'");
        return kind === "transient" ? transientFailure(error) : permanentFailure(error);
      },
    });
    return harness(publisher, store, {
      transientConditions: {
        "memory full": async (topic) => {
          full = true;
          return {
            entry: { topic, key: "oom", payload: new Uint8Array([1]) },
            restore: async () => {
              full = false;
            },
          };
        },
      },
    });
  }

  it("a publisher that reports a full broker transient passes", async () => {
    expect((await results(["transient-conditions"], async () => memoryFull("transient"))).messages).toEqual({});
  });

  it("a publisher that reports a full broker permanent fails transient-conditions", async () => {
    const { failed, messages } = await results(["transient-conditions"], async () => memoryFull("permanent"));
    expect(failed).toEqual(["transient-conditions"]);
    expect(messages["transient-conditions"]).toContain("memory full: a condition of the broker that passes");
  });
});

/**
 * An in-memory broker client with Pub/Sub's client's habits: a failed send pauses its key (later
 * sends of it fail at once) until `resume(key)`. `stall()` makes the broker stop answering: sends
 * wait, and fail when the stall is released (the client gave up on them). Sends to a topic in
 * `missing` are refused (NOT_FOUND).
 */
class PausingClient {
  readonly store = new MemoryPublisher();
  readonly paused = new Set<string>();
  readonly missing = new Set<string>();
  #stall: { released: Promise<void>; sent(): void } | null = null;

  async send(entry: OutboxEntry): Promise<void> {
    if (entry.key !== null && this.paused.has(entry.key)) throw new Error(`ordering key ${entry.key} is paused`);
    try {
      if (this.missing.has(entry.topic)) throw new Error(`NOT_FOUND: topic ${entry.topic}`);
      const stall = this.#stall;
      if (stall) {
        stall.sent();
        await stall.released;
        throw new Error("DEADLINE_EXCEEDED: the broker did not answer");
      }
      await this.store.publish([entry]);
    } catch (error) {
      if (entry.key !== null) this.paused.add(entry.key);
      throw error;
    }
  }

  resume(key: string): void {
    this.paused.delete(key);
  }

  stall(): BrokerStall {
    let sent!: () => void;
    let release!: () => void;
    const stall = {
      sent: new Promise<void>((resolve) => {
        sent = resolve;
      }),
      released: new Promise<void>((resolve) => {
        release = resolve;
      }),
    };
    this.#stall = { released: stall.released, sent };
    return {
      sent: stall.sent,
      release: async () => {
        this.#stall = null;
        release();
        // Every stalled send has failed (and its handlers ran) once the event loop turned.
        await new Promise((resolve) => setImmediate(resolve));
      },
    };
  }
}

interface PausingOptions {
  /** Stops waiting when the signal aborts (else waits for the broker, however long). */
  honoursAbort: boolean;
  /** Resumes the key of a send that failed after the call stopped waiting for it. */
  resumesLate: boolean;
  /** Resumes, at the end of the call, the keys of sends that failed in it. */
  resumesAtEnd: boolean;
  /** What an abandoned send is reported as. */
  abandoned?: "transient" | "published";
}

const faithful: PausingOptions = { honoursAbort: true, resumesLate: true, resumesAtEnd: true };

function pausingPublisher(client: PausingClient, options: PausingOptions): OutboxPublisher {
  return {
    async publish(entries, publishOptions) {
      const signal = publishOptions?.signal;
      const aborted = new Promise<"aborted">((resolve) => {
        if (signal?.aborted) resolve("aborted");
        signal?.addEventListener("abort", () => resolve("aborted"), { once: true });
      });
      const failures = new KeyFailures();
      const toResume = new Set<string>();
      const outcomes: PublishOutcome[] = [];
      let stopped = signal?.aborted ?? false;
      for (const entry of entries) {
        if (failures.blocked(entry)) {
          outcomes.push(heldBack(entry));
          continue;
        }
        if (stopped) {
          failures.fail(entry);
          outcomes.push(transientFailure(new Error("not sent: the publish was aborted")));
          continue;
        }
        const sending = client.send(entry).then(
          () => null,
          (error: unknown) => (error instanceof Error ? error : new Error(String(error))),
        );
        const result = options.honoursAbort ? await Promise.race([sending, aborted]) : await sending;
        if (result === "aborted") {
          stopped = true;
          if (options.resumesLate) {
            void sending.then((late) => {
              if (late && entry.key !== null) client.resume(entry.key);
            });
          }
          failures.fail(entry);
          outcomes.push(
            options.abandoned === "published"
              ? published()
              : transientFailure(new Error("not confirmed before the publish was aborted")),
          );
          continue;
        }
        if (result === null) {
          outcomes.push(published());
          continue;
        }
        failures.fail(entry);
        if (entry.key !== null) toResume.add(entry.key);
        outcomes.push(/^NOT_FOUND/.test(result.message) ? permanentFailure(result) : transientFailure(result));
      }
      if (options.resumesAtEnd) for (const key of toResume) client.resume(key);
      return outcomes;
    },
  };
}

function pausingHarness(options: PausingOptions): Harness {
  const client = new PausingClient();
  return harness(pausingPublisher(client, options), client.store, {
    stallBroker: async () => client.stall(),
    missingTopic: async () => {
      const topic = uniqueName("missing");
      client.missing.add(topic);
      return {
        topic,
        create: async () => {
          client.missing.delete(topic);
        },
      };
    },
  });
}

describe("the kit catches publishers that hang on a silent broker or leave a key paused", () => {
  const ids = ["abort-while-stalled", "key-recovers-after-refusal"] as const;

  it("a publisher that stops waiting on abort and resumes every paused key passes", async () => {
    const { passed, messages } = await results(ids, async () => pausingHarness(faithful));
    expect(messages).toEqual({});
    expect(passed).toEqual([...ids]);
  });

  it("a publisher that waits for a silent broker after its signal aborted fails abort-while-stalled", async () => {
    const { failed, messages } = await results(ids, async () => pausingHarness({ ...faithful, honoursAbort: false }));
    expect(failed).toEqual(["abort-while-stalled"]);
    expect(messages["abort-while-stalled"]).toContain("must settle within 5 s");
  });

  it("a publisher that reports an unconfirmed send published on abort fails abort-while-stalled", async () => {
    const { failed } = await results(ids, async () => pausingHarness({ ...faithful, abandoned: "published" }));
    expect(failed).toEqual(["abort-while-stalled"]);
  });

  it("a publisher that leaves a key paused by a send failing after the call stopped waiting fails abort-while-stalled", async () => {
    const { failed, messages } = await results(ids, async () => pausingHarness({ ...faithful, resumesLate: false }));
    expect(failed).toEqual(["abort-while-stalled"]);
    expect(messages["abort-while-stalled"]).toContain("must be resumed");
  });

  it("a publisher that does not resume the keys paused in a call at its end fails key-recovers-after-refusal", async () => {
    const { failed, messages } = await results(ids, async () => pausingHarness({ ...faithful, resumesAtEnd: false }));
    expect(failed).toEqual(["key-recovers-after-refusal"]);
    expect(messages["key-recovers-after-refusal"]).toContain("must be resumed");
  });
});

/**
 * A Kafka-like idempotent producer: a key's batch carries a sequence range; the broker appends a
 * batch only in sequence, acknowledges an exact repeat of a batch it has as a duplicate, and
 * refuses any other (OUT_OF_ORDER_SEQUENCE_NUMBER). `loseNextAnswer()`: the next batch is
 * appended, but its answer is lost, so the producer's sequence does not advance. `renew()`: a new
 * producer id, sequences from 0.
 */
class SequenceClient {
  readonly store = new MemoryPublisher();
  #producer = 0;
  readonly #next = new Map<string, number>();
  readonly #batches = new Map<string, Array<{ first: number; last: number }>>();
  #loseNext = false;

  loseNextAnswer(): void {
    this.#loseNext = true;
  }

  renew(): void {
    this.#producer += 1;
    this.#next.clear();
  }

  async send(key: string, batch: OutboxEntry[]): Promise<void> {
    const first = this.#next.get(key) ?? 0;
    const last = first + batch.length - 1;
    const id = `${this.#producer}\u0000${key}`;
    const batches = this.#batches.get(id) ?? [];
    this.#batches.set(id, batches);
    if (!batches.some((b) => b.first === first && b.last === last)) {
      if ((batches.at(-1)?.last ?? -1) + 1 !== first) throw new Error("OUT_OF_ORDER_SEQUENCE_NUMBER");
      await this.store.publish(batch);
      batches.push({ first, last });
    }
    if (this.#loseNext) {
      this.#loseNext = false;
      throw new Error("connection lost before the broker's answer");
    }
    this.#next.set(key, last + 1);
  }
}

/** One batch per key (first appearance order); a failed batch fails its entries transient. */
function sequencePublisher(client: SequenceClient, renewsAfterFailure: boolean): OutboxPublisher {
  return {
    async publish(entries) {
      const outcomes: PublishOutcome[] = new Array(entries.length);
      const batches = new Map<string, number[]>();
      entries.forEach((entry, index) => {
        const key = entry.key ?? `\u0000${entry.id}`;
        batches.set(key, [...(batches.get(key) ?? []), index]);
      });
      for (const [key, indexes] of batches) {
        try {
          await client.send(
            key,
            indexes.map((i) => entries[i] as OutboxEntry),
          );
          for (const i of indexes) outcomes[i] = published();
        } catch (error) {
          // The batch may have been written: its sequence numbers can no longer be trusted.
          if (renewsAfterFailure) client.renew();
          for (const i of indexes) outcomes[i] = transientFailure(error);
        }
      }
      return outcomes;
    },
  };
}

describe("the kit catches idempotent producers left out of step with the broker", () => {
  function sequenceHarness(renewsAfterFailure: boolean): Harness {
    const client = new SequenceClient();
    return harness(sequencePublisher(client, renewsAfterFailure), client.store, {
      failNextPublish: async () => client.loseNextAnswer(),
    });
  }

  it("a producer renewed after a failed send passes broker-failure", async () => {
    expect((await results(["broker-failure"], async () => sequenceHarness(true))).messages).toEqual({});
  });

  it("a producer not renewed after a lost answer fails broker-failure", async () => {
    const { failed, messages } = await results(["broker-failure"], async () => sequenceHarness(false));
    expect(failed).toEqual(["broker-failure"]);
    expect(messages["broker-failure"]).toContain("must get a new producer id");
  });
});
