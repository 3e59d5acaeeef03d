import {
  guardedCallbacks,
  type HandleResult,
  type Inbox,
  type InboxMessage,
  inboxMessageFrom,
  KeyOrder,
  nonNegativeOption,
} from "@outbox/inbox";

/** The parts of @google-cloud/pubsub's `Message` the helper reads (structural: no dependency on its types). */
export interface PubSubMessageLike {
  /** Pub/Sub's message id: the same on every redelivery of the message. */
  readonly id: string;
  readonly data: Buffer | Uint8Array;
  readonly attributes: Readonly<Record<string, string>>;
  /** The ordering key; Pub/Sub hands an empty string (or nothing) for a message without one. */
  readonly orderingKey?: string;
  ack(): void;
  nack(): void;
}

/**
 * Why a message was nacked:
 * - `nacked`: the handler or the inbox's store failed (`error`); Pub/Sub delivers it again.
 * - `held-back`: an earlier message of its ordering key failed and was nacked (`error` is that failure); nacked
 *   without running, so that the key's messages are handled in order once Pub/Sub redelivers the failed one.
 */
export type PubSubInboxNackReason = "nacked" | "held-back";

export interface InboxMessageHandlerOptions<Tx, M extends PubSubMessageLike> {
  inbox: Inbox<Tx>;
  /**
   * Your business writes, on the inbox's transaction `tx` (and follow-up outbox entries: `store.enqueue(tx, ...)`).
   * Throwing rolls both back; the message is nacked, and Pub/Sub delivers it again.
   */
  handler: (tx: Tx, message: InboxMessage, pubsubMessage: M) => Promise<unknown>;
  /** Called after each message was acked, with what the inbox did (handled, duplicate, dead). */
  onResult?: (result: HandleResult<unknown>, pubsubMessage: M) => void;
  /** Called for each message nacked, with why. Default: console.warn, except `held-back`. */
  onError?: (error: unknown, pubsubMessage: M, reason: PubSubInboxNackReason) => void;
  /**
   * After a failure of a key's message, the key's later messages are nacked without running until Pub/Sub
   * redelivers the failed one, for at most this long, in ms. Default 5000.
   */
  holdBackMs?: number;
}

/**
 * The inbox message for a Pub/Sub message: id from the `outbox-id` attribute our publisher writes (else
 * `pubsub:<message id>`), idempotency key from `outbox-idempotency-key`, the ordering key as key (an empty one is
 * none), topic from `outbox-topic` (written when the publisher routed the entry to another topic, else null), the
 * data as payload and every attribute as a header.
 */
export function inboxMessageFromPubSub(message: PubSubMessageLike): InboxMessage {
  const data = message.data;
  return inboxMessageFrom({
    headers: message.attributes,
    key: message.orderingKey ? message.orderingKey : null,
    payload: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    fallbackId: `pubsub:${message.id}`,
  });
}

/** A key after a failure: the id of the message it waits for, until when, and that message's error. */
interface Hold {
  readonly id: string;
  readonly until: number;
  readonly error: unknown;
}

/**
 * A listener for `subscription.on("message", ...)`: each message goes through `inbox.handle` (deduped on the
 * `outbox-idempotency-key` / `outbox-id` attributes our publisher writes, else on `pubsub:<message id>`) and is acked
 * only after the handler's transaction committed (or the message was found to be a duplicate, or was parked in the
 * inbox's dead letters). A handler or store failure nacks it, so that Pub/Sub delivers it again, and is reported to
 * `onError`: the returned promise never rejects (a rejection in an event listener is an unhandled rejection, which
 * ends the process). The inbox counts the attempts and parks the message after its `maxAttempts`; then it is acked.
 * A crash between the commit and the ack redelivers the message: the inbox reports it as a duplicate and it is acked.
 *
 * Order: messages of one ordering key run one at a time, in arrival order. With message ordering enabled on the
 * subscription, Pub/Sub delivers a key's messages in publish order and redelivers a nacked message of a key before
 * the later ones of that key (those are delivered again too). Later messages of the key already received when one
 * fails are nacked without running ("held back") until the failed one comes back, at most `holdBackMs`, so the
 * handler sees the key in order. Without ordering on the subscription there is no order to keep.
 *
 * Concurrency: the subscriber's flow control (`flowControl.maxMessages` in the subscription's options) bounds the
 * messages in hand, hence the handlers in flight (at most one per key), each holding a connection of your pool.
 */
export function inboxMessageHandler<Tx, M extends PubSubMessageLike = PubSubMessageLike>(
  options: InboxMessageHandlerOptions<Tx, M>,
): (message: M) => Promise<void> {
  const { inbox, handler } = options;
  const holdBackMs = nonNegativeOption(options.holdBackMs ?? 5_000, "holdBackMs");
  // The callbacks run on a key's chain: one that throws must neither reject the listener nor stop the key.
  const { warn, onResult, onError } = guardedCallbacks<M, PubSubInboxNackReason>(
    `@outbox/publisher-pubsub/inbox ${inbox.consumer}`,
    options,
    ["held-back"],
  );
  /** Each key's messages run one at a time, in arrival order. */
  const keyOrder = new KeyOrder();
  /** Per key: the failed message it waits for. */
  const held = new Map<string, Hold>();

  /** Acks or nacks; false when that threw (never expected of @google-cloud/pubsub's): the ack deadline redelivers. */
  const settle = (message: M, action: "ack" | "nack"): boolean => {
    try {
      if (action === "ack") message.ack();
      else message.nack();
      return true;
    } catch (error) {
      warn(`${action} failed`, error);
      return false;
    }
  };

  const run = async (message: M, received: InboxMessage, key: string | null): Promise<void> => {
    if (key !== null) {
      const hold = held.get(key);
      if (hold !== undefined && (hold.id === message.id || Date.now() >= hold.until)) held.delete(key);
      else if (hold !== undefined) {
        if (settle(message, "nack")) onError(hold.error, message, "held-back");
        return;
      }
    }
    let result: HandleResult<unknown>;
    try {
      result = await inbox.handle(received, (tx, handled) => handler(tx, handled, message));
    } catch (error) {
      if (key !== null) {
        // The key's next messages wait for this one's redelivery.
        const now = Date.now();
        if (held.size >= 1_000) for (const [other, hold] of held) if (hold.until <= now) held.delete(other);
        held.set(key, { id: message.id, until: now + holdBackMs, error });
      }
      if (settle(message, "nack")) onError(error, message, "nacked");
      return;
    }
    if (settle(message, "ack")) onResult(result, message);
  };

  return (message) => {
    let received: InboxMessage;
    try {
      received = inboxMessageFromPubSub(message);
    } catch (error) {
      // Not a Pub/Sub message (no data, no id): nothing to handle.
      if (settle(message, "nack")) onError(error, message, "nacked");
      return Promise.resolve();
    }
    const key = typeof received.key === "string" ? received.key : null;
    return keyOrder.run(key, () => run(message, received, key));
  };
}
