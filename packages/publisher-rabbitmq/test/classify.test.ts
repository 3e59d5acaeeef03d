// The outcome policy and the message encoding, without a broker.
import { makeEntry } from "@outbox/conformance";
import { describe, expect, it } from "vitest";
import {
  AmqpHeader,
  classifyConfirmError,
  classifyOpenError,
  decodeMessage,
  encodeMessage,
  headerTableBytes,
  isPermanent,
  planWaves,
  replyName,
} from "../src/index.js";

const limits = { maxMessageBytes: 1_000, maxPropertiesBytes: 65_536 };

describe("classification", () => {
  it("a nack is transient, a channel closed with 404 means the exchange is gone", () => {
    expect(classifyConfirmError(new Error("message nacked"), undefined)).toBe("NACKED");
    expect(classifyConfirmError(new Error("channel closed"), undefined)).toBe("CHANNEL_CLOSED");
    expect(classifyConfirmError(new Error("channel closed"), Object.assign(new Error("x"), { code: 404 }))).toBe(
      "EXCHANGE_NOT_FOUND",
    );
    expect(classifyOpenError(Object.assign(new Error("NOT_FOUND"), { code: 404 }))).toBe("EXCHANGE_NOT_FOUND");
    expect(classifyOpenError(new Error("ECONNREFUSED"))).toBe("CONNECTION");
  });

  it("only the entry's own faults are permanent", () => {
    for (const type of ["UNROUTABLE", "MESSAGE_TOO_LARGE", "HEADERS_TOO_LARGE", "HEADER_NAME_TOO_LONG"] as const) {
      expect(isPermanent(type)).toBe(true);
    }
    for (const type of [
      "NACKED",
      "CHANNEL_CLOSED",
      "EXCHANGE_NOT_FOUND",
      "CONNECTION",
      "BLOCKED",
      "TIMEOUT",
      "ABORTED",
      "CLIENT_ERROR",
    ] as const) {
      expect(isPermanent(type)).toBe(false);
    }
    expect(replyName(320)).toBe("CONNECTION_FORCED");
    expect(replyName(999)).toBe("999");
  });
});

describe("planWaves", () => {
  it("puts the i-th entry of every key in wave i and every keyless entry in wave 0", () => {
    const keys = ["a", "b", null, "a", "a", null, "b", "c"];
    expect(planWaves(keys.map((key) => ({ key })))).toEqual([[0, 1, 2, 5, 7], [3, 6], [4]]);
  });

  it("distinct keys are one wave; one hot key is one wave per entry; empty is none", () => {
    expect(planWaves(["a", "b", "c"].map((key) => ({ key })))).toEqual([[0, 1, 2]]);
    expect(planWaves(["h", "h", "h"].map((key) => ({ key })))).toEqual([[0], [1], [2]]);
    expect(planWaves([])).toEqual([]);
  });
});

describe("encodeMessage", () => {
  it("maps an entry to AMQP properties, byte-exact", () => {
    const payload = new Uint8Array([0, 255, 1, 0]);
    const entry = makeEntry({
      topic: "orders",
      key: "customer-7",
      payload,
      headers: { "Content-Type": "application/octet-stream", "content-encoding": "gzip", "x-a": "1" },
      idempotencyKey: "idem-1",
      createdAt: new Date("2026-01-02T03:04:05.678Z"),
    });
    const message = encodeMessage(entry, "orders", limits);
    if ("type" in message) throw new Error(message.message);
    expect(message.routingKey).toBe("orders");
    expect(message.content.equals(Buffer.from(payload))).toBe(true);
    expect(message.options).toEqual({
      mandatory: true,
      persistent: true,
      messageId: "idem-1",
      contentType: "application/octet-stream",
      contentEncoding: "gzip",
      timestamp: Math.floor(Date.parse("2026-01-02T03:04:05.678Z") / 1_000),
      headers: {
        "Content-Type": "application/octet-stream",
        "content-encoding": "gzip",
        "x-a": "1",
        [AmqpHeader.Id]: entry.id,
        [AmqpHeader.IdempotencyKey]: "idem-1",
        [AmqpHeader.Key]: "customer-7",
      },
    });
  });

  it("adds outbox-topic when the routing key is not the topic; keyless entries carry no key header", () => {
    const entry = makeEntry({ topic: "orders.created" });
    const message = encodeMessage(entry, "orders", limits);
    if ("type" in message) throw new Error(message.message);
    expect(message.options.headers?.[AmqpHeader.Topic]).toBe("orders.created");
    expect(message.options.headers).not.toHaveProperty(AmqpHeader.Key);
  });

  it("refuses what AMQP or the broker can never take", () => {
    const long = "x".repeat(256);
    expect(encodeMessage(makeEntry({ topic: "t" }), long, limits)).toMatchObject({ type: "ROUTING_KEY_INVALID" });
    expect(encodeMessage(makeEntry({ topic: "t", payload: new Uint8Array(1_001) }), "t", limits)).toMatchObject({
      type: "MESSAGE_TOO_LARGE",
    });
    expect(encodeMessage(makeEntry({ topic: "t", headers: { [long]: "v" } }), "t", limits)).toMatchObject({
      type: "HEADER_NAME_TOO_LONG",
    });
    const big = makeEntry({ topic: "t", headers: { a: "v".repeat(70_000) } });
    expect(encodeMessage(big, "t", limits)).toMatchObject({ type: "HEADERS_TOO_LARGE" });
    expect(encodeMessage(big, "t", { ...limits, maxPropertiesBytes: 200_000 })).not.toHaveProperty("type");
  });

  it("leaves messageId unset for an idempotency key over 255 bytes (the header still carries it)", () => {
    const entry = makeEntry({ topic: "t", idempotencyKey: "k".repeat(300) });
    const message = encodeMessage(entry, "t", limits);
    if ("type" in message) throw new Error(message.message);
    expect(message.options.messageId).toBeUndefined();
    expect(message.options.headers?.[AmqpHeader.IdempotencyKey]).toBe("k".repeat(300));
  });

  it("counts header table bytes like amqplib encodes them", () => {
    expect(headerTableBytes({})).toBe(4);
    expect(headerTableBytes({ ab: "日本" })).toBe(4 + 1 + 2 + 1 + 4 + 6);
  });

  it("decodeMessage reads back what encodeMessage wrote", () => {
    const entry = makeEntry({ topic: "orders.created", key: "k", headers: { h: "v" } });
    const message = encodeMessage(entry, "orders", limits);
    if ("type" in message) throw new Error(message.message);
    const decoded = decodeMessage({
      fields: { routingKey: "orders" },
      properties: {
        messageId: message.options.messageId,
        headers: { ...message.options.headers, bytes: Buffer.from("b") },
      },
      content: message.content,
    });
    expect(decoded).toMatchObject({
      id: entry.id,
      topic: "orders.created",
      key: "k",
      idempotencyKey: entry.idempotencyKey,
    });
    expect(decoded.headers.h).toBe("v");
    expect(decoded.headers.bytes).toBe("b");
    expect(Buffer.from(decoded.payload).equals(Buffer.from(entry.payload))).toBe(true);
  });
});
