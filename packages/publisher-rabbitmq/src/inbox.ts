import {
  dedupeKey,
  guardedCallbacks,
  type HandleResult,
  type HeaderValue,
  type Inbox,
  type InboxMessage,
  inboxMessageFrom,
  KeyOrder,
  nonNegativeOption,
  orderingKey,
} from "@outbox/inbox";
import { AmqpHeader } from "./message.js";

/** The parts of an amqplib `ConsumeMessage` the helper reads (structural: no dependency on amqplib's types). */
export interface AmqpDeliveryLike {
  readonly content: Uint8Array;
  readonly fields: { readonly routingKey: string; readonly redelivered?: boolean };
  readonly properties: { readonly messageId?: unknown; readonly headers?: Readonly<Record<string, unknown>> };
}

/** An amqplib `Channel` (or `ConfirmChannel`), as far as settling deliveries goes. */
export interface AmqpAckChannelLike<M> {
  ack(message: M, allUpTo?: boolean): void;
  nack(message: M, allUpTo?: boolean, requeue?: boolean): void;
}

/**
 * Why a delivery was not acknowledged:
 * - `requeued`: the handler or the inbox's store failed (`error`); nacked with requeue, RabbitMQ delivers it again.
 * - `held-back`: an earlier delivery of its key failed and was requeued (`error` is that failure); nacked with
 *   requeue without running, so that the key's messages are handled in order once the failed one is back.
 * - `rejected`: the message cannot be handled at all (no `outbox-id` header and no `messageId` to dedupe on, or an
 *   over-long key); nacked without requeue: to the queue's dead-letter exchange if it has one, else dropped.
 * - `unsettled`: the ack or nack itself failed (the channel is closed); RabbitMQ delivers the message again to
 *   another channel, where the inbox reports it as a duplicate if its transaction had committed.
 */
export type AmqpInboxNackReason = "requeued" | "held-back" | "rejected" | "unsettled";

export interface InboxOnMessageOptions<Tx, M extends AmqpDeliveryLike> {
  inbox: Inbox<Tx>;
  /** The channel the consumer runs on (`noAck: false`, the default): the helper acks and nacks on it. */
  channel: AmqpAckChannelLike<M>;
  /**
   * Your business writes, on the inbox's transaction `tx` (and follow-up outbox entries: `store.enqueue(tx, ...)`).
   * Throwing rolls both back; the delivery is nacked with requeue, and RabbitMQ delivers it again.
   */
  handler: (tx: Tx, message: InboxMessage, delivery: M) => Promise<unknown>;
  /** Called after each delivery was acked, with what the inbox did (handled, duplicate, dead). */
  onResult?: (result: HandleResult<unknown>, delivery: M) => void;
  /** Called for each delivery nacked (or left unsettled), with why. Default: console.warn, except `held-back`. */
  onError?: (error: unknown, delivery: M, reason: AmqpInboxNackReason) => void;
  /**
   * How long a failed delivery is kept before it is nacked with requeue, in ms: a back-off, so that a database
   * outage is not a hot loop of redeliveries. The delivery keeps its prefetch slot meanwhile. Default 1000.
   */
  requeueDelayMs?: number;
  /**
   * After a failure of a key's message, later deliveries of that key are held back (nacked with requeue) until
   * the failed one comes back, for at most this long, in ms. Default 5000. See the README's notes on order.
   */
  holdBackMs?: number;
}

function headerValue(value: unknown): HeaderValue {
  if (value === null || value === undefined || typeof value === "string" || value instanceof Uint8Array) return value;
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") return String(value);
  if (value instanceof Date) return value.toISOString();
  try {
    return JSON.stringify(value);
  } catch {
    return undefined;
  }
}

/**
 * The inbox message for an amqplib delivery: id from the `outbox-id` header our publisher writes (else the
 * `messageId` property), idempotency key from `outbox-idempotency-key`, ordering key from `outbox-key`, topic from
 * `outbox-topic` (else the routing key), the content as payload and every header as text. Throws
 * OUTBOX_INVALID_ENTRY for a message with neither an `outbox-id` header nor a `messageId`.
 */
export function inboxMessageFromDelivery(delivery: AmqpDeliveryLike): InboxMessage {
  const headers: Record<string, HeaderValue> = {};
  for (const [name, value] of Object.entries(delivery.properties.headers ?? {})) headers[name] = headerValue(value);
  const messageId = delivery.properties.messageId;
  const content = delivery.content;
  return inboxMessageFrom({
    headers,
    key: headers[AmqpHeader.Key] as string | Uint8Array | null | undefined,
    topic: delivery.fields.routingKey,
    payload: new Uint8Array(content.buffer, content.byteOffset, content.byteLength),
    fallbackId: typeof messageId === "string" && messageId.length > 0 ? messageId : undefined,
  });
}

/**
 * A key after a failure: the messages it owes, in order (the failed one first, then each delivery held back
 * behind it), and until when it waits for the first of them to come back.
 */
interface Backlog {
  readonly owed: string[];
  until: number;
  readonly error: unknown;
}

const backlogs = new WeakMap<object, Map<string, Backlog>>();

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * An `onMessage` for amqplib's `channel.consume(queue, onMessage)`: each delivery goes through `inbox.handle`
 * (deduped on the `outbox-idempotency-key` / `outbox-id` headers our publisher writes, else on the `messageId`
 * property) and is acked only after the handler's transaction committed (or the message was found to be a
 * duplicate, or was parked in the inbox's dead letters). A handler or store failure nacks it with requeue after
 * `requeueDelayMs`; the inbox counts the attempts and parks the message after its `maxAttempts`, then it is acked.
 * Deliveries of one key (`outbox-key`) are handled one at a time in delivery order, and after a failure the key's
 * later deliveries are requeued behind the failed one. A crash (or a closed channel) between the commit and the ack
 * redelivers the message: the inbox reports it as a duplicate and it is acked then.
 */
export function inboxOnMessage<Tx, M extends AmqpDeliveryLike>(
  options: InboxOnMessageOptions<Tx, M>,
): (delivery: M | null) => void {
  const { inbox, channel, handler } = options;
  // The callbacks run on the delivery chain of a key: one that throws must not stop the key's later deliveries.
  const { onResult, onError } = guardedCallbacks<M, AmqpInboxNackReason>(
    `@outbox/publisher-rabbitmq/inbox ${inbox.consumer}`,
    options,
    ["held-back"],
  );
  const requeueDelayMs = nonNegativeOption(options.requeueDelayMs ?? 1_000, "requeueDelayMs");
  const holdBackMs = nonNegativeOption(options.holdBackMs ?? 5_000, "holdBackMs");
  /** Each key's deliveries run one at a time, in arrival order. */
  const keyOrder = new KeyOrder();
  // Per key: its backlog after a failure. Shared by every helper of one inbox (the consumers of a process on
  // several channels, or the one that replaces a closed channel's).
  const held = backlogs.get(inbox) ?? new Map<string, Backlog>();
  backlogs.set(inbox, held);

  const settle = (delivery: M, action: "ack" | "requeue" | "reject"): boolean => {
    try {
      if (action === "ack") channel.ack(delivery);
      else channel.nack(delivery, false, action === "requeue");
      return true;
    } catch (error) {
      onError(error, delivery, "unsettled");
      return false;
    }
  };

  const run = async (delivery: M, message: InboxMessage, messageId: string, key: string | null): Promise<void> => {
    if (key !== null) {
      const backlog = held.get(key);
      const now = Date.now();
      if (backlog !== undefined && now >= backlog.until) {
        // The message the key waits for did not come back in time (another process took it): the key goes on.
        held.delete(key);
      } else if (backlog !== undefined && backlog.owed[0] === messageId) {
        backlog.owed.shift();
        backlog.until = now + holdBackMs;
        if (backlog.owed.length === 0) held.delete(key);
      } else if (backlog !== undefined) {
        // Requeued behind the messages the key owes: RabbitMQ delivers them again in the order they were nacked
        // (a classic queue puts each back at its position, a quorum queue at its tail).
        if (!backlog.owed.includes(messageId)) backlog.owed.push(messageId);
        if (settle(delivery, "requeue")) onError(backlog.error, delivery, "held-back");
        return;
      }
    }
    let result: HandleResult<unknown>;
    try {
      result = await inbox.handle(message, (tx, handled) => handler(tx, handled, delivery));
    } catch (error) {
      if (key !== null) {
        // From now on, another consumer of this inbox does not run the key's next message either.
        const now = Date.now();
        if (held.size >= 1_000) for (const [other, backlog] of held) if (backlog.until <= now) held.delete(other);
        const backlog = held.get(key);
        const until = now + requeueDelayMs + holdBackMs;
        if (backlog === undefined) held.set(key, { owed: [messageId], until, error });
        else {
          backlog.owed.unshift(messageId);
          backlog.until = until;
        }
      }
      if (requeueDelayMs > 0) await sleep(requeueDelayMs);
      if (settle(delivery, "requeue")) onError(error, delivery, "requeued");
      return;
    }
    if (settle(delivery, "ack")) onResult(result, delivery);
  };

  return (delivery) => {
    // null: RabbitMQ cancelled the consumer (queue deleted, node failover); amqplib emits nothing else for it.
    if (delivery === null) return;
    let message: InboxMessage;
    let messageId: string;
    let key: string | null;
    try {
      message = inboxMessageFromDelivery(delivery);
      messageId = dedupeKey(message);
      key = orderingKey(message);
    } catch (error) {
      if (settle(delivery, "reject")) onError(error, delivery, "rejected");
      return;
    }
    const orderedKey = key;
    void keyOrder.run(orderedKey, () => run(delivery, message, messageId, orderedKey));
  };
}
