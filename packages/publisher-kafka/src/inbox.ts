// The consumer half: kafkajs's eachMessage and eachBatch through an @outbox/inbox. A subpath export
// (@outbox/publisher-kafka/inbox) so a publisher-only application never loads @outbox/inbox.
import { describeError } from "@outbox/core";
import { type HandleResult, type Inbox, type InboxMessage, inboxMessageFrom, invalidOption } from "@outbox/inbox";

/** The parts of a kafkajs `KafkaMessage` the helpers read (structural: no dependency on kafkajs). */
export interface KafkaMessageLike {
  readonly key: Uint8Array | string | null;
  readonly value: Uint8Array | null;
  readonly offset: string;
  readonly headers?: Readonly<Record<string, Uint8Array | string | ReadonlyArray<Uint8Array | string> | undefined>>;
}

/** The parts of kafkajs's `EachMessagePayload` the helper reads (structural: no dependency on kafkajs). */
export interface KafkaEachMessagePayloadLike {
  readonly topic: string;
  readonly partition: number;
  readonly message: KafkaMessageLike;
}

/**
 * The parts of kafkajs's `EachBatchPayload` the batch helper uses (structural: no dependency on kafkajs). The batch
 * holds messages of one topic-partition, in offset order.
 */
export interface KafkaEachBatchPayloadLike {
  readonly batch: {
    readonly topic: string;
    readonly partition: number;
    readonly messages: ReadonlyArray<KafkaMessageLike>;
  };
  /** Marks `offset` processed: the consumer's next fetch of the partition, and its next commit, go past it. */
  resolveOffset(offset: string): void;
  /** Commits the resolved offsets if `autoCommitInterval` or `autoCommitThreshold` says it is time. */
  commitOffsetsIfNecessary(): Promise<void>;
  /** Tells the group this member is alive (kafkajs sends it at most every `heartbeatInterval`). */
  heartbeat(): Promise<void>;
  /** False once the consumer is stopping (`consumer.stop()` / `disconnect()`). */
  isRunning(): boolean;
  /** True once the batch is outdated: a `consumer.seek()` on its partition is pending. */
  isStale(): boolean;
}

/** The message type of a batch payload type. */
export type KafkaBatchMessageOf<P extends KafkaEachBatchPayloadLike> = P["batch"]["messages"][number];

/**
 * One message of a batch, with its topic and partition: the shape of kafkajs's `EachMessagePayload` without its
 * functions, so that one handler typed on `KafkaEachMessagePayloadLike` serves both helpers.
 */
export interface KafkaBatchRecord<M extends KafkaMessageLike = KafkaMessageLike> {
  readonly topic: string;
  readonly partition: number;
  readonly message: M;
}

/** A kafkajs `Consumer`, as far as committing offsets goes. */
export interface KafkaOffsetCommitter {
  commitOffsets(offsets: Array<{ topic: string; partition: number; offset: string }>): Promise<void>;
}

export interface InboxEachMessageOptions<Tx, P extends KafkaEachMessagePayloadLike> {
  inbox: Inbox<Tx>;
  /** The consumer to commit offsets on. Run it with `autoCommit: false`: this helper commits each offset itself. */
  consumer: KafkaOffsetCommitter;
  /**
   * Your business writes, on the inbox's transaction `tx` (and follow-up outbox entries: `store.enqueue(tx, ...)`).
   * Throwing rolls both back; the error reaches kafkajs (wrapped in a `KafkaInboxRetryError` if kafkajs would not
   * retry it as it is), which seeks back and delivers the message again.
   */
  handler: (tx: Tx, message: InboxMessage, payload: P) => Promise<unknown>;
  /** Called after each message's offset was committed, with what the inbox did (handled, duplicate, dead). */
  onResult?: (result: HandleResult<unknown>, payload: P) => void;
}

export interface InboxEachBatchOptions<Tx, P extends KafkaEachBatchPayloadLike> {
  inbox: Inbox<Tx>;
  /**
   * Your business writes, on the inbox's transaction `tx` (and follow-up outbox entries: `store.enqueue(tx, ...)`).
   * Throwing rolls both back; the batch stops there and the error reaches kafkajs (wrapped in a
   * `KafkaInboxRetryError` if kafkajs would not retry it as it is), which fetches the partition again from that
   * message.
   */
  handler: (tx: Tx, message: InboxMessage, record: KafkaBatchRecord<KafkaBatchMessageOf<P>>) => Promise<unknown>;
  /**
   * Called after each message's offset was resolved, with what the inbox did (handled, duplicate, dead). A throw is
   * logged (console.warn) and does not stop the batch.
   */
  onResult?: (result: HandleResult<unknown>, record: KafkaBatchRecord<KafkaBatchMessageOf<P>>) => void;
}

/**
 * The inbox message for a Kafka message: id from the `outbox-id` header our publishers write (else
 * `<topic>:<partition>:<offset>`), idempotency key from `outbox-idempotency-key`, the record key as ordering key,
 * topic from `outbox-topic` (else the topic it was read from), the value as payload and every header as text.
 */
export function inboxMessageFromKafka(record: KafkaEachMessagePayloadLike): InboxMessage {
  const { topic, partition, message } = record;
  return inboxMessageFrom({
    headers: message.headers,
    key: message.key,
    topic,
    payload: message.value,
    fallbackId: `${topic}:${partition}:${message.offset}`,
  });
}

/** What kafkajs's retry takes for a bug of its own: it stops the consumer for good instead of fetching again. */
const unrecoverableForKafkajs = new Set(["RangeError", "ReferenceError", "SyntaxError", "TypeError"]);

/**
 * What the helpers throw to kafkajs in place of a handler's (or the inbox store's) `TypeError`, `RangeError`,
 * `ReferenceError` or `SyntaxError`, of an error marked `retriable: false`, or of a thrown value that is not an
 * `Error`; the original is its `cause`. kafkajs takes those for bugs of its own and stops the consumer for good
 * (no restart) instead of fetching the message again, so a message whose handler throws one (a payload that does
 * not parse) would stop the partition before the inbox could count the attempts that park it. Other errors reach
 * kafkajs as they are.
 */
export class KafkaInboxRetryError extends Error {
  override readonly name = "KafkaInboxRetryError";
  /** Retried by kafkajs (it retries whatever is not marked `retriable: false` or named like the above). */
  readonly retriable = true;

  constructor(cause: unknown) {
    super(`the inbox handler or store failed: ${describeError(cause)}`, { cause });
  }
}

/** The error to hand kafkajs for a failure of `inbox.handle`, so that kafkajs fetches the message again. */
function retriedByKafkajs(error: unknown): unknown {
  if (!(error instanceof Error)) return new KafkaInboxRetryError(error);
  if (unrecoverableForKafkajs.has(error.name) || (error as { retriable?: unknown }).retriable === false) {
    return new KafkaInboxRetryError(error);
  }
  return error;
}

/** The options both helpers share: an inbox, a handler function, an optional onResult function. */
function checkCommonOptions(
  options: { inbox?: unknown; handler?: unknown; onResult?: unknown } | undefined,
  helper: string,
): void {
  if (typeof options !== "object" || options === null) {
    throw invalidOption("options", `${helper} needs an options object`);
  }
  const inbox = options.inbox as { handle?: unknown } | null | undefined;
  if (typeof inbox !== "object" || inbox === null || typeof inbox.handle !== "function") {
    throw invalidOption("inbox", `${helper} needs an inbox from createInbox() as \`inbox\``);
  }
  if (typeof options.handler !== "function") {
    throw invalidOption("handler", `${helper} needs a handler function`);
  }
  if (options.onResult !== undefined && typeof options.onResult !== "function") {
    throw invalidOption("onResult", `${helper}'s onResult must be a function`);
  }
}

/**
 * An `eachMessage` for kafkajs's `consumer.run()`: each message goes through `inbox.handle` (deduped on the
 * `outbox-idempotency-key` / `outbox-id` headers our publishers write, else on `topic:partition:offset`), and its
 * offset is committed only after the handler's transaction committed (or the message was found to be a
 * duplicate, or was parked in the dead letters). A crash between the two redelivers the message: the inbox
 * reports it as a duplicate and commits the offset then. Unusable options throw OUTBOX_INVALID_OPTIONS.
 */
export function inboxEachMessage<Tx, P extends KafkaEachMessagePayloadLike>(
  options: InboxEachMessageOptions<Tx, P>,
): (payload: P) => Promise<void> {
  checkCommonOptions(options, "inboxEachMessage");
  const consumer = options.consumer as Partial<KafkaOffsetCommitter> | null | undefined;
  if (typeof consumer !== "object" || consumer === null || typeof consumer.commitOffsets !== "function") {
    throw invalidOption("consumer", "inboxEachMessage needs the kafkajs consumer (to commit offsets on) as `consumer`");
  }
  const { inbox, handler, onResult } = options;
  return async (payload) => {
    const { topic, partition, message } = payload;
    const received = inboxMessageFromKafka(payload);
    let result: HandleResult<unknown>;
    try {
      result = await inbox.handle(received, (tx, handled) => handler(tx, handled, payload));
    } catch (error) {
      throw retriedByKafkajs(error);
    }
    await options.consumer.commitOffsets([{ topic, partition, offset: (BigInt(message.offset) + 1n).toString() }]);
    onResult?.(result, payload);
  };
}

/**
 * An `eachBatch` for kafkajs's `consumer.run({ eachBatch, eachBatchAutoResolve: false })`. The messages of the
 * batch (one partition) are handled one after the other, in offset order, each through `inbox.handle` (deduped like
 * `inboxEachMessage`'s). After each message's transaction committed, or once the inbox reported it a duplicate or
 * parked it in the dead letters, its offset is resolved; then `commitOffsetsIfNecessary()` (kafkajs commits the
 * resolved offsets when `autoCommitInterval` / `autoCommitThreshold` say so, and with `autoCommit` on at the end
 * of each batch) and `heartbeat()`.
 *
 * A handler or store failure leaves that offset and every later one of the batch unresolved and rethrows (see
 * `KafkaInboxRetryError` for the errors kafkajs would not retry as they are): kafkajs
 * commits what was resolved (with `autoCommit` on) and fetches the partition again from the failed message, so
 * nothing after it is committed before it is handled. The inbox counts the attempts and parks the message after
 * its `maxAttempts`; then its offset is resolved like a handled one. When the consumer stops (`isRunning()` false)
 * or the batch goes stale (`isStale()`: a pending `seek`), the helper returns without resolving the messages it
 * has not handled, which is why `eachBatchAutoResolve` must be false: kafkajs's default resolves the whole batch
 * after the callback, handled or not. A heartbeat that fails (the group is rebalancing) stops the batch the same
 * way, with the error going to kafkajs. Partitions run concurrently with kafkajs's `partitionsConsumedConcurrently`.
 * Unusable options throw OUTBOX_INVALID_OPTIONS.
 */
export function inboxEachBatch<Tx, P extends KafkaEachBatchPayloadLike>(
  options: InboxEachBatchOptions<Tx, P>,
): (payload: P) => Promise<void> {
  checkCommonOptions(options, "inboxEachBatch");
  const { inbox, handler } = options;
  const onResult = (result: HandleResult<unknown>, record: KafkaBatchRecord<KafkaBatchMessageOf<P>>) => {
    try {
      options.onResult?.(result, record);
    } catch (error) {
      // The offset is resolved already: a throw here must not make kafkajs fetch the batch again.
      console.warn(`[@outbox/publisher-kafka/inbox ${inbox.consumer}] onResult threw:`, error);
    }
  };
  return async (payload) => {
    if (
      typeof payload?.resolveOffset !== "function" ||
      typeof payload.batch !== "object" ||
      payload.batch === null ||
      !Array.isArray(payload.batch.messages)
    ) {
      throw invalidOption(
        "eachBatch",
        "inboxEachBatch returns an eachBatch callback: pass it to consumer.run({ eachBatch, eachBatchAutoResolve: false })",
      );
    }
    const { topic, partition, messages } = payload.batch;
    for (const message of messages as ReadonlyArray<KafkaBatchMessageOf<P>>) {
      // Stopping or seeking: leave the rest unresolved, so that it is fetched (and committed) again later.
      if (!payload.isRunning() || payload.isStale()) return;
      const record: KafkaBatchRecord<KafkaBatchMessageOf<P>> = { topic, partition, message };
      const received = inboxMessageFromKafka(record);
      let result: HandleResult<unknown>;
      try {
        result = await inbox.handle(received, (tx, handled) => handler(tx, handled, record));
      } catch (error) {
        // Before resolveOffset: kafkajs fetches the partition again from this message.
        throw retriedByKafkajs(error);
      }
      payload.resolveOffset(message.offset);
      onResult(result, record);
      await payload.commitOffsetsIfNecessary();
      await payload.heartbeat();
    }
  };
}
