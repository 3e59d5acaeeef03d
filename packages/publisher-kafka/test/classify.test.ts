import {
  KafkaJSConnectionError,
  KafkaJSError,
  KafkaJSNonRetriableError,
  KafkaJSNumberOfRetriesExceeded,
  KafkaJSProtocolError,
  KafkaJSRequestTimeoutError,
} from "kafkajs";
import { describe, expect, it } from "vitest";
import { classifyKafkaError, kafkaErrorType } from "../src/index.js";

// kafkajs builds protocol errors from its own table (type, code, retriable); mirror it.
const protocol = (type: string, code: number, retriable: boolean) =>
  new KafkaJSProtocolError({ type, code, retriable, message: `broker said ${type}` } as never);
const exhausted = (cause: Error) =>
  new KafkaJSNumberOfRetriesExceeded(cause, { retryCount: 5, retryTime: 2000 } as never);

describe("classifyKafkaError", () => {
  it.each([
    ["MESSAGE_TOO_LARGE", 10, false, "record"],
    ["RECORD_LIST_TOO_LARGE", 18, false, "record"],
    ["INVALID_RECORD", 87, false, "record"],
    ["INVALID_TIMESTAMP", 32, false, "record"],
    ["TOPIC_AUTHORIZATION_FAILED", 29, false, "topic"],
    ["INVALID_TOPIC_EXCEPTION", 17, false, "topic"],
    ["POLICY_VIOLATION", 44, false, "topic"],
  ] as const)("%s is permanent (%s scope)", (type, code, retriable, scope) => {
    expect(classifyKafkaError(protocol(type, code, retriable))).toEqual({ kind: "permanent", scope, type });
    // kafkajs may wrap it; the broker's error is in the cause chain.
    const wrapped = Object.assign(new KafkaJSNonRetriableError(protocol(type, code, retriable)), {
      cause: protocol(type, code, retriable),
    });
    expect(classifyKafkaError(wrapped)).toMatchObject({ kind: "permanent", scope });
  });

  it("retriable-for-kafkajs errors that outlived kafkajs' retries are permanent: unknown topic, corrupt record", () => {
    expect(classifyKafkaError(exhausted(protocol("UNKNOWN_TOPIC_OR_PARTITION", 3, true)))).toEqual({
      kind: "permanent",
      scope: "topic",
      type: "UNKNOWN_TOPIC_OR_PARTITION",
    });
    expect(classifyKafkaError(exhausted(protocol("CORRUPT_MESSAGE", 2, true)))).toMatchObject({
      kind: "permanent",
      scope: "record",
    });
  });

  it.each([
    ["LEADER_NOT_AVAILABLE", 5],
    ["NOT_LEADER_FOR_PARTITION", 6],
    ["REQUEST_TIMED_OUT", 7],
    ["NETWORK_EXCEPTION", 13],
    ["NOT_ENOUGH_REPLICAS", 19],
    ["NOT_ENOUGH_REPLICAS_AFTER_APPEND", 20],
    ["KAFKA_STORAGE_ERROR", 56],
  ] as const)("%s (broker busy or electing) is transient", (type, code) => {
    expect(classifyKafkaError(exhausted(protocol(type, code, true)))).toEqual({
      kind: "transient",
      resetProducer: false,
      type,
    });
  });

  it("connection errors, request timeouts and unknown errors are transient", () => {
    for (const error of [
      new KafkaJSConnectionError("Connection error: connect ECONNREFUSED 127.0.0.1:9092"),
      exhausted(new KafkaJSConnectionError("Connection error: ECONNREFUSED")),
      Object.assign(new KafkaJSConnectionError("Closed connection"), { name: "KafkaJSConnectionClosedError" }),
      exhausted(new KafkaJSRequestTimeoutError("Request Produce(key: 0, version: 7) timed out")),
      new KafkaJSError("The producer is disconnected"),
      new Error("something odd"),
      "a string",
      undefined,
      // A client misconfiguration must not dead-letter the backlog.
      protocol("CLUSTER_AUTHORIZATION_FAILED", 31, false),
      protocol("SASL_AUTHENTICATION_FAILED", 58, false),
    ]) {
      expect(classifyKafkaError(error)).toMatchObject({ kind: "transient", resetProducer: false });
    }
  });

  it.each([
    ["OUT_OF_ORDER_SEQUENCE_NUMBER", 45],
    ["DUPLICATE_SEQUENCE_NUMBER", 46],
    ["INVALID_PRODUCER_EPOCH", 47],
    ["UNKNOWN_PRODUCER_ID", 59],
  ] as const)("%s is transient and asks for a new producer id", (type, code) => {
    expect(classifyKafkaError(protocol(type, code, false))).toEqual({ kind: "transient", resetProducer: true, type });
  });

  it("reads numeric Kafka error codes from clients without kafkajs' `type`", () => {
    const error = Object.assign(new Error("Message too large"), { code: 10 });
    expect(classifyKafkaError(error)).toMatchObject({ kind: "permanent", type: "MESSAGE_TOO_LARGE" });
    expect(kafkaErrorType(Object.assign(new Error("x"), { code: 29 }))).toBe("TOPIC_AUTHORIZATION_FAILED");
  });

  it("treats kafkajs' invalid-topic validation as a topic-wide refusal", () => {
    expect(classifyKafkaError(new KafkaJSNonRetriableError("Invalid topic"))).toMatchObject({
      kind: "permanent",
      scope: "topic",
    });
  });

  it("survives cyclic causes", () => {
    const error = new Error("loop") as Error & { cause?: unknown };
    error.cause = error;
    expect(classifyKafkaError(error)).toMatchObject({ kind: "transient" });
  });
});
