// The consumer half: kafkajs's eachMessage through an @outbox/inbox. A subpath export
// (@outbox/publisher-kafka/inbox) so a publisher-only application never loads @outbox/inbox.
import { type HandleResult, type Inbox, type InboxMessage, inboxMessageFrom } from "@outbox/inbox";

/** The parts of kafkajs's `EachMessagePayload` the helper reads (structural: no dependency on kafkajs). */
export interface KafkaEachMessagePayloadLike {
  readonly topic: string;
  readonly partition: number;
  readonly message: {
    readonly key: Uint8Array | string | null;
    readonly value: Uint8Array | null;
    readonly offset: string;
    readonly headers?: Readonly<Record<string, Uint8Array | string | ReadonlyArray<Uint8Array | string> | undefined>>;
  };
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
   * Throwing rolls both back; the error reaches kafkajs, which seeks back and delivers the message again.
   */
  handler: (tx: Tx, message: InboxMessage, payload: P) => Promise<unknown>;
  /** Called after each message's offset was committed, with what the inbox did (handled, duplicate, dead). */
  onResult?: (result: HandleResult<unknown>, payload: P) => void;
}

/**
 * An `eachMessage` for kafkajs's `consumer.run()`: each message goes through `inbox.handle` (deduped on the
 * `outbox-idempotency-key` / `outbox-id` headers our publishers write, else on `topic:partition:offset`), and its
 * offset is committed only after the handler's transaction committed (or the message was found to be a
 * duplicate, or was parked in the dead letters). A crash between the two redelivers the message: the inbox
 * reports it as a duplicate and commits the offset then.
 */
export function inboxEachMessage<Tx, P extends KafkaEachMessagePayloadLike>(
  options: InboxEachMessageOptions<Tx, P>,
): (payload: P) => Promise<void> {
  const { inbox, consumer, handler, onResult } = options;
  return async (payload) => {
    const { topic, partition, message } = payload;
    const received = inboxMessageFrom({
      headers: message.headers,
      key: message.key,
      topic,
      payload: message.value,
      fallbackId: `${topic}:${partition}:${message.offset}`,
    });
    const result = await inbox.handle(received, (tx, handled) => handler(tx, handled, payload));
    await consumer.commitOffsets([{ topic, partition, offset: (BigInt(message.offset) + 1n).toString() }]);
    onResult?.(result, payload);
  };
}
