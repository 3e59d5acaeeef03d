/**
 * How a failed Kafka send maps to outbox outcomes. Kept apart from the publisher so it can be
 * unit-tested without a broker, and so users can read (and override) the policy in one place.
 */

export type KafkaFailure =
  /**
   * The broker refused the records for good. `scope: "record"` means some record of the send was
   * refused (oversize, invalid, corrupt): the publisher isolates the culprit and publishes the
   * rest. `scope: "topic"` means every record for the topic will be refused (unknown topic with
   * auto-creation off, not authorised, invalid name, policy).
   */
  | { readonly kind: "permanent"; readonly scope: "record" | "topic"; readonly type: string }
  /**
   * Worth another attempt: broker down, leader election, timeouts, throttling. `resetProducer`
   * means the idempotent producer's sequence numbers no longer match the broker's and the
   * producer id must be renewed before the next send.
   */
  | { readonly kind: "transient"; readonly resetProducer: boolean; readonly type: string };

/** Refused records: retrying the same bytes can never succeed. */
const recordErrors = new Set([
  "MESSAGE_TOO_LARGE",
  "RECORD_LIST_TOO_LARGE",
  "INVALID_RECORD",
  // kafkajs marks it retriable (a bit flip on the wire is), but brokers older than Kafka 2.5
  // also answered it for records they validate and refuse (a keyless record on a compacted
  // topic; newer ones say INVALID_RECORD). Once kafkajs' own retries are spent, it is the record.
  "CORRUPT_MESSAGE",
  "INVALID_TIMESTAMP",
  "UNSUPPORTED_FOR_MESSAGE_FORMAT",
]);

/** Every record for the topic is refused. */
const topicErrors = new Set([
  // Retriable for kafkajs (a topic being created is briefly unknown); reported to us only after
  // kafkajs' bounded retries, so the topic does not exist and auto-creation is off.
  "UNKNOWN_TOPIC_OR_PARTITION",
  "TOPIC_AUTHORIZATION_FAILED",
  "INVALID_TOPIC_EXCEPTION",
  "POLICY_VIOLATION",
]);

/** The broker lost track of this producer's sequence numbers: renew the producer id. */
const producerStateErrors = new Set([
  "OUT_OF_ORDER_SEQUENCE_NUMBER",
  "DUPLICATE_SEQUENCE_NUMBER",
  "UNKNOWN_PRODUCER_ID",
  "INVALID_PRODUCER_EPOCH",
  "INVALID_PRODUCER_ID_MAPPING",
  "PRODUCER_FENCED",
]);

/** Kafka protocol error codes, for clients that report a numeric code without kafkajs' `type`. */
const typeByCode: Record<number, string> = {
  2: "CORRUPT_MESSAGE",
  3: "UNKNOWN_TOPIC_OR_PARTITION",
  10: "MESSAGE_TOO_LARGE",
  17: "INVALID_TOPIC_EXCEPTION",
  18: "RECORD_LIST_TOO_LARGE",
  29: "TOPIC_AUTHORIZATION_FAILED",
  32: "INVALID_TIMESTAMP",
  43: "UNSUPPORTED_FOR_MESSAGE_FORMAT",
  44: "POLICY_VIOLATION",
  45: "OUT_OF_ORDER_SEQUENCE_NUMBER",
  46: "DUPLICATE_SEQUENCE_NUMBER",
  47: "INVALID_PRODUCER_EPOCH",
  49: "INVALID_PRODUCER_ID_MAPPING",
  59: "UNKNOWN_PRODUCER_ID",
  87: "INVALID_RECORD",
  90: "PRODUCER_FENCED",
};

interface ErrorLike {
  name?: unknown;
  type?: unknown;
  code?: unknown;
  cause?: unknown;
  message?: unknown;
}

/**
 * The errors of a failure, outermost first: kafkajs wraps the broker's error in
 * KafkaJSNumberOfRetriesExceeded / KafkaJSNonRetriableError (`cause`).
 */
export function errorChain(error: unknown): ErrorLike[] {
  const chain: ErrorLike[] = [];
  let current: unknown = error;
  while (typeof current === "object" && current !== null && chain.length < 8 && !chain.includes(current)) {
    chain.push(current as ErrorLike);
    current = (current as ErrorLike).cause;
  }
  return chain;
}

/** The Kafka protocol error type (e.g. "MESSAGE_TOO_LARGE") anywhere in the chain, else the error's name. */
export function kafkaErrorType(error: unknown): string {
  const chain = errorChain(error);
  for (const link of chain) {
    if (typeof link.type === "string" && link.type.length > 0) return link.type;
    if (typeof link.code === "number" && typeByCode[link.code]) return typeByCode[link.code] as string;
  }
  const named = chain.find((link) => typeof link.name === "string");
  return named ? String(named.name) : typeof error;
}

/**
 * Classifies an error thrown by `producer.sendBatch`. Anything not known to be permanent is
 * transient: a misconfigured client (wrong SASL password, cluster authorisation) fails every
 * entry and must not dead-letter the whole backlog.
 */
export function classifyKafkaError(error: unknown): KafkaFailure {
  const type = kafkaErrorType(error);
  if (recordErrors.has(type)) return { kind: "permanent", scope: "record", type };
  if (topicErrors.has(type)) return { kind: "permanent", scope: "topic", type };
  if (producerStateErrors.has(type)) return { kind: "transient", resetProducer: true, type };
  // kafkajs validation (e.g. "Invalid topic") is a KafkaJSNonRetriableError with no cause.
  const chain = errorChain(error);
  const last = chain[chain.length - 1];
  if (chain.length === 1 && last?.name === "KafkaJSNonRetriableError" && /invalid topic/i.test(String(last.message))) {
    return { kind: "permanent", scope: "topic", type: "INVALID_TOPIC" };
  }
  return { kind: "transient", resetProducer: false, type };
}
