import {
  describeError,
  headersWithMetadata,
  heldBack,
  KeyFailures,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  OutboxHeader,
  type OutboxPublisher,
  type PublisherCapabilities,
  type PublishOptions,
  type PublishOutcome,
  permanentFailure,
  published,
  routeEntry,
  transientFailure,
} from "@outbox/core";
import { classifyKafkaError, type KafkaFailure } from "./classify.js";
import { createOutboxPartitioner } from "./partitioner.js";
import type { KafkaClientLike, KafkaMessage, KafkaProducerConfig, KafkaProducerLike } from "./types.js";

/** Where the producer comes from. */
export type KafkaPublisherSource =
  /** Your producer: you connect/disconnect it (the publisher connects it lazily if needed). */
  | { readonly producer: KafkaProducerLike }
  /** The publisher builds, owns and closes a producer with safe defaults (see README). */
  | { readonly kafka: KafkaClientLike; readonly producerConfig?: KafkaProducerConfig };

export interface KafkaPublisherOptions {
  /** Destination topic per entry. Default: `entry.topic`. A throw or an empty name makes that entry fail permanently. */
  topic?: (entry: OutboxEntry) => string;
  /**
   * Largest record batch the broker takes (its `message.max.bytes` / the topic's
   * `max.message.bytes`, broker default 1048588). Records estimated above it fail permanently
   * without being sent; requests are split so no partition's batch can exceed it. Default 1_000_000.
   */
  maxMessageBytes?: number;
  /** -1 (all in-sync replicas, default) or 1 (leader only; not with an idempotent producer). */
  acks?: -1 | 1;
  /**
   * Upper bound for one publish() call, connecting included. Entries still unconfirmed then are
   * reported transient (and may still reach the broker: at-least-once). Keep it below the
   * relay's lease (30 s by default). Default 20_000.
   */
  timeoutMs?: number;
  /** How long the broker may wait for replica acks per produce request (kafkajs `timeout`). Default 10_000. */
  ackTimeoutMs?: number;
  /** kafkajs `CompressionTypes` value. Default none. */
  compression?: number;
  /** Overrides the classification of a send error; return undefined to keep the default. */
  classifyError?: (error: unknown) => KafkaFailure | undefined;
}

/** The defaults applied to producers the publisher builds itself (`{ kafka }`). */
export const defaultProducerConfig: Readonly<KafkaProducerConfig> = Object.freeze({
  idempotent: true,
  // kafkajs allows up to 5 with idempotence; 1 means a retried request can never overtake the next.
  maxInFlightRequests: 1,
  // Bounded (kafkajs' idempotent default is unlimited): a dead broker becomes a transient
  // outcome after about 5 s of retries instead of a publish that never returns.
  retry: { retries: 5, initialRetryTime: 200, maxRetryTime: 2_000 },
});

/** A record batch's fixed overhead (v2 format). */
const BATCH_OVERHEAD = 61;
/** Upper bound of one record's own varints and attributes. */
const RECORD_OVERHEAD = 40;
/** Upper bound of one header's varints. */
const HEADER_OVERHEAD = 10;

function positiveOption(value: number | undefined, fallback: number, name: string): number {
  const result = value ?? fallback;
  if (!Number.isFinite(result) || result <= 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive number, got ${value}`);
  }
  return result;
}

/** Bytes a record takes in a batch, rounded up (uncompressed). */
export function estimateRecordBytes(message: KafkaMessage): number {
  const length = (value: Buffer | string | null | undefined): number =>
    value === null || value === undefined ? 0 : typeof value === "string" ? Buffer.byteLength(value) : value.byteLength;
  let size = RECORD_OVERHEAD + length(message.key) + length(message.value);
  for (const [name, value] of Object.entries(message.headers ?? {})) {
    const values = Array.isArray(value) ? value : [value];
    for (const item of values) size += HEADER_OVERHEAD + Buffer.byteLength(name) + length(item);
  }
  return size;
}

interface Item {
  readonly index: number;
  readonly entry: OutboxEntry;
  readonly topic: string;
  readonly message: KafkaMessage;
  readonly bytes: number;
}

function fail(run: PublishRun, item: Item, outcome: PublishOutcome): void {
  run.outcomes[item.index] = outcome;
  run.failedKeys.fail(item.entry, item.index);
}

interface PublishRun {
  readonly deadline: number;
  /** The relay's lease signal: once aborted, nothing more is sent and nothing more awaited. */
  readonly signal: AbortSignal | undefined;
  readonly outcomes: Array<PublishOutcome | undefined>;
  /** Topics refused as a whole during this publish (unknown, not authorised). */
  readonly refusedTopics: Map<string, { error: unknown; failure: KafkaFailure }>;
  /** Keys with a failed entry in this publish: the rest of their run is held back (run contract). */
  readonly failedKeys: KeyFailures;
}

function pin(item: Item, partition: number): Item {
  return { ...item, message: { ...item.message, partition } };
}

class DeadlineExceeded extends Error {
  override readonly name = "DeadlineExceeded";
}

/** Publishes outbox entries to Kafka through a kafkajs(-compatible) producer. Create with createKafkaPublisher(). */
export class KafkaPublisher implements OutboxPublisher {
  readonly capabilities: PublisherCapabilities;
  readonly #kafka: KafkaClientLike | null;
  readonly #producerConfig: KafkaProducerConfig;
  readonly #route: (entry: OutboxEntry) => string;
  readonly #maxMessageBytes: number;
  readonly #acks: -1 | 1;
  readonly #timeoutMs: number;
  readonly #ackTimeoutMs: number;
  readonly #compression: number | undefined;
  readonly #classify: (error: unknown) => KafkaFailure;

  #producer: KafkaProducerLike | null;
  #connected = false;
  #connecting: Promise<void> | null = null;
  #unsubscribe: (() => void) | null = null;
  /** Owned idempotent producer whose sequence numbers may no longer match the broker's. */
  #stale = false;
  #closed = false;
  #queue: Promise<unknown> = Promise.resolve();
  #renewals = 0;
  /** The partition the producer's partitioner picked for each message (owned producers). */
  readonly #assigned = new WeakMap<KafkaMessage, number>();

  constructor(source: KafkaPublisherSource, options: KafkaPublisherOptions = {}) {
    if (!source || typeof source !== "object") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "createKafkaPublisher needs { producer } or { kafka }");
    }
    if ("producer" in source && source.producer) {
      if (typeof source.producer.sendBatch !== "function") {
        throw new OutboxError(OutboxErrorCode.InvalidOptions, "producer must implement the kafkajs sendBatch() API");
      }
      this.#kafka = null;
      this.#producer = source.producer;
      this.#producerConfig = {};
      this.#watch(source.producer);
    } else if ("kafka" in source && source.kafka && typeof source.kafka.producer === "function") {
      this.#kafka = source.kafka;
      this.#producer = null;
      const config: KafkaProducerConfig = {
        ...defaultProducerConfig,
        ...(options.acks === 1 ? { idempotent: false } : {}),
        ...source.producerConfig,
      };
      const createPartitioner = config.createPartitioner ?? createOutboxPartitioner;
      // Records which partition each message went to, for #isolate.
      config.createPartitioner = () => {
        const partitioner = createPartitioner();
        return (args) => {
          const partition = partitioner(args);
          this.#assigned.set(args.message as KafkaMessage, partition);
          return partition;
        };
      };
      this.#producerConfig = config;
    } else {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "createKafkaPublisher needs { producer } or { kafka }");
    }
    if (options.acks !== undefined && options.acks !== -1 && options.acks !== 1) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        `acks must be -1 or 1, got ${options.acks} (acks 0 never confirms a record)`,
      );
    }
    this.#acks = options.acks ?? -1;
    const idempotent = this.#kafka ? this.#producerConfig.idempotent : this.#producer?.isIdempotent?.();
    if (this.#acks === 1 && idempotent) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "an idempotent producer needs acks -1");
    }
    this.#maxMessageBytes = positiveOption(options.maxMessageBytes, 1_000_000, "maxMessageBytes");
    this.#timeoutMs = positiveOption(options.timeoutMs, 20_000, "timeoutMs");
    this.#ackTimeoutMs = positiveOption(options.ackTimeoutMs, 10_000, "ackTimeoutMs");
    this.#compression = options.compression;
    this.#route = options.topic ?? ((entry) => entry.topic);
    const custom = options.classifyError;
    this.#classify = custom ? (error) => custom(error) ?? classifyKafkaError(error) : classifyKafkaError;
    this.capabilities = Object.freeze({
      maxPayloadBytes: this.#maxMessageBytes - BATCH_OVERHEAD - RECORD_OVERHEAD,
    });
  }

  /** How often an owned producer was replaced to renew its idempotent producer id (for monitoring/tests). */
  get producerRenewals(): number {
    return this.#renewals;
  }

  publish(entries: readonly OutboxEntry[], options: PublishOptions = {}): Promise<PublishOutcome[]> {
    if (this.#closed) {
      return Promise.reject(new OutboxError(OutboxErrorCode.Closed, "the Kafka publisher is closed"));
    }
    if (entries.length === 0) return Promise.resolve([]);
    // One publish at a time: producer renewal and per-key order rely on it.
    const run = this.#queue.then(() => this.#publish(entries, options.signal));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** Waits for the in-flight publish, then disconnects the producer if the publisher built it. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#queue;
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    if (this.#kafka && this.#producer) {
      const producer = this.#producer;
      this.#producer = null;
      this.#connected = false;
      await producer.disconnect();
    }
  }

  async #publish(entries: readonly OutboxEntry[], signal: AbortSignal | undefined): Promise<PublishOutcome[]> {
    const outcomes: Array<PublishOutcome | undefined> = new Array(entries.length);
    const failedKeys = new KeyFailures();
    const items: Item[] = [];
    entries.forEach((entry, index) => {
      if (failedKeys.blocked(entry, index)) {
        outcomes[index] = heldBack(entry);
        return;
      }
      const item = this.#prepare(entry, index);
      if ("status" in item) {
        outcomes[index] = item;
        failedKeys.fail(entry, index);
      } else {
        items.push(item);
      }
    });

    const run: PublishRun = {
      deadline: Date.now() + this.#timeoutMs,
      signal,
      outcomes,
      refusedTopics: new Map(),
      failedKeys,
    };
    for (const chunk of this.#chunks(items)) {
      await this.#sendGroup(chunk, run);
    }
    return outcomes.map(
      (outcome, index) =>
        outcome ??
        transientFailure(
          new OutboxError(OutboxErrorCode.PublishFailed, `entry ${entries[index]?.id} was not sent (internal error)`),
        ),
    );
  }

  #prepare(entry: OutboxEntry, index: number): Item | PublishOutcome {
    const topic = routeEntry(entry, this.#route);
    if (typeof topic !== "string") return topic;
    const headers: Record<string, string> = headersWithMetadata(entry);
    if (topic !== entry.topic) headers[OutboxHeader.Topic] = entry.topic;
    const payload = entry.payload;
    const message: KafkaMessage = {
      key: entry.key,
      // A view on the entry's bytes, not a copy.
      value: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
      headers,
    };
    const bytes = estimateRecordBytes(message);
    if (bytes + BATCH_OVERHEAD > this.#maxMessageBytes) {
      return permanentFailure(
        new OutboxError(
          OutboxErrorCode.PublishFailed,
          `MESSAGE_TOO_LARGE: entry ${entry.id} makes a record of about ${bytes + BATCH_OVERHEAD} bytes, over maxMessageBytes ${this.#maxMessageBytes}`,
          { details: { entryId: entry.id, topic, type: "MESSAGE_TOO_LARGE", bytes: bytes + BATCH_OVERHEAD } },
        ),
      );
    }
    return { index, entry, topic, message, bytes };
  }

  /**
   * Splits a batch into requests whose records add up to at most maxMessageBytes, so that no
   * partition's record batch can exceed the broker's limit. One chunk for ordinary batches.
   */
  #chunks(items: Item[]): Item[][] {
    const chunks: Item[][] = [];
    let current: Item[] = [];
    let size = BATCH_OVERHEAD;
    for (const item of items) {
      if (current.length > 0 && size + item.bytes > this.#maxMessageBytes) {
        chunks.push(current);
        current = [];
        size = BATCH_OVERHEAD;
      }
      current.push(item);
      size += item.bytes;
    }
    if (current.length > 0) chunks.push(current);
    return chunks;
  }

  /**
   * Sends a group in one sendBatch; on a permanent refusal, isolates the culprits (see #isolate).
   * Transient failures mark the whole group transient.
   */
  async #sendGroup(group: Item[], run: PublishRun): Promise<void> {
    const items: Item[] = [];
    for (const item of group) {
      const refused = run.refusedTopics.get(item.topic);
      // Records of one key share a partition and travel in order; once one failed, the rest of
      // its run stays unsent. Every record of a refused topic fails without kafkajs' retries.
      if (run.failedKeys.blocked(item.entry, item.index)) fail(run, item, heldBack(item.entry));
      else if (refused) fail(run, item, permanentFailure(wrap(refused.error, refused.failure, item)));
      else items.push(item);
    }
    if (items.length === 0) return;
    if (Date.now() >= run.deadline || run.signal?.aborted) {
      const why = run.signal?.aborted ? "the publish was aborted" : `timeoutMs ${this.#timeoutMs} passed`;
      const error = new OutboxError(OutboxErrorCode.PublishFailed, `not sent: ${why}`, {
        details: { type: "TIMEOUT" },
      });
      for (const item of items) fail(run, item, transientFailure(error));
      return;
    }
    let error: unknown;
    let sent = false;
    try {
      await this.#withDeadline(run, async () => {
        const producer = await this.#ready();
        sent = true;
        await producer.sendBatch({
          topicMessages: groupByTopic(items),
          acks: this.#acks,
          timeout: this.#ackTimeoutMs,
          ...(this.#compression === undefined ? {} : { compression: this.#compression }),
        });
      });
      for (const item of items) run.outcomes[item.index] = published();
      return;
    } catch (caught) {
      error = caught;
    }
    const failure: KafkaFailure =
      error instanceof DeadlineExceeded
        ? { kind: "transient", resetProducer: true, type: "TIMEOUT" }
        : this.#classify(error);

    if (failure.kind === "transient") {
      // The request may have been written in part or in full (lost response): an owned
      // idempotent producer gets a new producer id before its next send, so its sequence
      // numbers cannot be out of step with the broker's. (A connect that failed sent nothing.)
      if (sent && this.#kafka && this.#producerConfig.idempotent) this.#stale = true;
      for (const item of items) fail(run, item, transientFailure(wrap(error, failure, item)));
      return;
    }
    await this.#isolate(items, failure, error, run);
  }

  /**
   * A request was refused for good. The broker judges each partition's record batch on its own:
   * batches for other partitions may have been appended, the refused one was not, and kafkajs
   * does not say which. So: re-send the very same per-partition batches one at a time (the
   * partitions come from the publisher's partitioner, which recorded them). An appended batch
   * comes back as a duplicate of the same producer id and sequence numbers, which the broker
   * acknowledges without writing it twice; the refused one fails again, alone, and is then
   * halved until the culprit is alone. A topic-wide refusal fails that topic's entries only.
   */
  async #isolate(items: Item[], failure: KafkaFailure & { kind: "permanent" }, error: unknown, run: PublishRun) {
    const groups = new Map<string, Item[]>();
    for (const item of items) {
      const partition = this.#assigned.get(item.message);
      const key = `${item.topic}\u0000${partition ?? ""}`;
      const group = groups.get(key);
      if (group) group.push(item);
      else groups.set(key, [item]);
    }
    if (groups.size > 1) {
      for (const group of groups.values()) {
        const partition = this.#assigned.get((group[0] as Item).message);
        // Pin the partition: the re-send must rebuild exactly the batch of the first attempt.
        await this.#sendGroup(partition === undefined ? group : group.map((item) => pin(item, partition)), run);
      }
      return;
    }
    if (failure.scope === "topic" || items.length === 1) {
      if (failure.scope === "topic") run.refusedTopics.set((items[0] as Item).topic, { error, failure });
      for (const item of items) fail(run, item, permanentFailure(wrap(error, failure, item)));
      return;
    }
    const half = Math.ceil(items.length / 2);
    await this.#sendGroup(items.slice(0, half), run);
    await this.#sendGroup(items.slice(half), run);
  }

  async #withDeadline<T>(run: PublishRun, operation: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new DeadlineExceeded(`no broker confirmation within timeoutMs ${this.#timeoutMs}`)),
        Math.max(0, run.deadline - Date.now()),
      );
      onAbort = () => reject(new DeadlineExceeded("no broker confirmation before the publish was aborted"));
      run.signal?.addEventListener("abort", onAbort, { once: true });
    });
    const running = operation();
    try {
      return await Promise.race([running, timeout]);
    } catch (error) {
      // The abandoned operation settles later; never let it become an unhandled rejection.
      if (error instanceof DeadlineExceeded) running.catch(() => undefined);
      throw error;
    } finally {
      clearTimeout(timer);
      if (onAbort) run.signal?.removeEventListener("abort", onAbort);
    }
  }

  /** The producer, connected; builds or renews an owned one first when needed. */
  async #ready(): Promise<KafkaProducerLike> {
    if (this.#kafka && (this.#stale || !this.#producer)) {
      const old = this.#producer;
      if (old) {
        this.#renewals += 1;
        this.#unsubscribe?.();
        this.#unsubscribe = null;
        // In the background: an abandoned send may still hold it for a while.
        old.disconnect().catch(() => undefined);
      }
      const producer = this.#kafka.producer(this.#producerConfig);
      this.#producer = producer;
      this.#connected = false;
      this.#connecting = null;
      this.#stale = false;
      this.#watch(producer);
    }
    const producer = this.#producer as KafkaProducerLike;
    if (!this.#connected) {
      // A connect abandoned at a deadline may still be running: wait for that one.
      const connecting =
        this.#connecting ??
        producer.connect().finally(() => {
          if (this.#connecting === connecting) this.#connecting = null;
        });
      this.#connecting = connecting;
      await connecting;
      if (producer === this.#producer) this.#connected = true;
    }
    return producer;
  }

  /** Notices a disconnect() (by anyone) so the next publish connects again. */
  #watch(producer: KafkaProducerLike): void {
    const event = producer.events?.DISCONNECT;
    if (event !== "producer.disconnect" || typeof producer.on !== "function") return;
    this.#unsubscribe = producer.on(event, () => {
      if (producer === this.#producer) this.#connected = false;
    });
  }
}

function groupByTopic(items: Item[]): Array<{ topic: string; messages: KafkaMessage[] }> {
  const byTopic = new Map<string, KafkaMessage[]>();
  for (const item of items) {
    const messages = byTopic.get(item.topic);
    if (messages) messages.push(item.message);
    else byTopic.set(item.topic, [item.message]);
  }
  return Array.from(byTopic, ([topic, messages]) => ({ topic, messages }));
}

function wrap(error: unknown, failure: KafkaFailure, item: Item): OutboxError {
  return new OutboxError(
    OutboxErrorCode.PublishFailed,
    `${failure.type} (topic "${item.topic}"): ${describeError(error)}`,
    {
      cause: error,
      details: { entryId: item.entry.id, topic: item.topic, type: failure.type, kind: failure.kind },
    },
  );
}

/**
 * Creates an OutboxPublisher for Kafka. Pass your producer (`{ producer }`), or your Kafka client
 * (`{ kafka, producerConfig? }`) to let the publisher build an idempotent, acks=all producer
 * with one in-flight request, renew it when its sequence numbers go stale, and disconnect it on close().
 */
export function createKafkaPublisher(
  source: KafkaPublisherSource,
  options: KafkaPublisherOptions = {},
): KafkaPublisher {
  return new KafkaPublisher(source, options);
}
