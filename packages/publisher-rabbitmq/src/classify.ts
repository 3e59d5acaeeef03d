/**
 * How RabbitMQ's answers map to outbox outcomes. Kept apart from the publisher so the policy is
 * unit-tested without a broker and readable in one place.
 *
 * - `basic.return` (mandatory, no queue bound for the routing key): that entry can never be
 *   routed as it is: permanent. RabbitMQ sends the return before the confirm of the same message.
 * - `basic.nack`: the broker could not take responsibility for the message now (a queue with
 *   `x-overflow: reject-publish` is full, a quorum queue has no quorum, an internal error): transient.
 * - The channel or connection closed before the confirm (broker restart, `close_all_connections`,
 *   a missing exchange's 404 closing the channel, an access refusal): transient for every unconfirmed
 *   entry. A misconfiguration must not dead-letter the whole backlog; it surfaces as retries with
 *   the broker's reply code in the error details.
 * - No confirm before the deadline (a memory or disk alarm blocks publishers): transient.
 */

import { OutboxError, OutboxErrorCode, type PublishOutcome, permanentFailure, transientFailure } from "@outbox/core";
import type { AmqpReturnFields } from "./types.js";

export type AmqpFailureType =
  /** basic.return: no queue bound for the routing key (mandatory publish). */
  | "UNROUTABLE"
  /** basic.nack from the broker (reject-publish overflow, no quorum, internal error). */
  | "NACKED"
  /** The channel closed before the confirm arrived (replyCode in details when the broker said why). */
  | "CHANNEL_CLOSED"
  /** The exchange does not exist (checked when the channel opens). */
  | "EXCHANGE_NOT_FOUND"
  /** No connection or channel could be opened. */
  | "CONNECTION"
  /** The broker blocked the connection (memory or disk alarm): nothing was sent. */
  | "BLOCKED"
  /** No confirm before timeoutMs. */
  | "TIMEOUT"
  /** No confirm before the publish signal aborted (the relay's lease is ending). */
  | "ABORTED"
  /** Encoding limits, checked before sending. */
  | "ROUTING_KEY_INVALID"
  | "MESSAGE_TOO_LARGE"
  | "HEADER_NAME_TOO_LONG"
  | "HEADERS_TOO_LARGE"
  /** amqplib refused the publish call itself. */
  | "CLIENT_ERROR";

const permanentTypes: ReadonlySet<AmqpFailureType> = new Set([
  "UNROUTABLE",
  "ROUTING_KEY_INVALID",
  "MESSAGE_TOO_LARGE",
  "HEADER_NAME_TOO_LONG",
  "HEADERS_TOO_LARGE",
]);

/** Permanent failures are the entry's own fault; everything else is worth another attempt. */
export function isPermanent(type: AmqpFailureType): boolean {
  return permanentTypes.has(type);
}

/** AMQP 0-9-1 reply codes RabbitMQ uses when it closes a channel or connection. */
const replyNames: Record<number, string> = {
  200: "REPLY_SUCCESS",
  311: "CONTENT_TOO_LARGE",
  312: "NO_ROUTE",
  313: "NO_CONSUMERS",
  320: "CONNECTION_FORCED",
  402: "INVALID_PATH",
  403: "ACCESS_REFUSED",
  404: "NOT_FOUND",
  405: "RESOURCE_LOCKED",
  406: "PRECONDITION_FAILED",
  501: "FRAME_ERROR",
  502: "SYNTAX_ERROR",
  503: "COMMAND_INVALID",
  504: "CHANNEL_ERROR",
  505: "UNEXPECTED_FRAME",
  506: "RESOURCE_ERROR",
  530: "NOT_ALLOWED",
  540: "NOT_IMPLEMENTED",
  541: "INTERNAL_ERROR",
};

/** The AMQP reply code of an amqplib error (`error.code`), when it carries one. */
export function replyCode(error: unknown): number | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "number" ? code : undefined;
}

export function replyName(code: number | undefined): string | undefined {
  return code === undefined ? undefined : (replyNames[code] ?? String(code));
}

/** A confirm callback's error: a nack, or the channel closing with the message unconfirmed. */
export function classifyConfirmError(error: unknown, closeError: unknown): AmqpFailureType {
  const message = error instanceof Error ? error.message : String(error);
  if (/nack/i.test(message)) return "NACKED";
  return replyCode(closeError) === 404 ? "EXCHANGE_NOT_FOUND" : "CHANNEL_CLOSED";
}

/** A failure to open a channel (or to find the exchange on it). */
export function classifyOpenError(error: unknown): AmqpFailureType {
  return replyCode(error) === 404 ? "EXCHANGE_NOT_FOUND" : "CONNECTION";
}

/** The outcome of an entry that failed with `type`; the error carries the details for operators. */
export function failureOutcome(
  type: AmqpFailureType,
  message: string,
  details: Readonly<Record<string, unknown>>,
  cause?: unknown,
): PublishOutcome {
  const code = replyCode(cause);
  const error = new OutboxError(OutboxErrorCode.PublishFailed, `${type}: ${message}`, {
    ...(cause === undefined ? {} : { cause }),
    details: {
      ...details,
      type,
      kind: isPermanent(type) ? "permanent" : "transient",
      ...(code === undefined ? {} : { replyCode: code, replyName: replyName(code) }),
    },
  });
  return isPermanent(type) ? permanentFailure(error) : transientFailure(error);
}

/** The outcome of a returned message (always permanent). */
export function returnOutcome(fields: AmqpReturnFields, details: Readonly<Record<string, unknown>>): PublishOutcome {
  return failureOutcome(
    "UNROUTABLE",
    `exchange ${JSON.stringify(fields.exchange)} returned the message: ${fields.replyCode} ${fields.replyText} (routing key ${JSON.stringify(fields.routingKey)})`,
    { ...details, exchange: fields.exchange, routingKey: fields.routingKey, replyCode: fields.replyCode },
  );
}
