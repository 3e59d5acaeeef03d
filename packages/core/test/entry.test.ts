import { describe, expect, it } from "vitest";
import {
  jsonPayload,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  payloadText,
  prepareMessages,
} from "../src/index.js";

const now = Date.UTC(2030, 0, 1);

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return OutboxError.is(error) ? error.code : `not an OutboxError: ${String(error)}`;
  }
  return undefined;
}

describe("prepareMessages", () => {
  it("normalises a valid message and copies the payload bytes", () => {
    const bytes = new Uint8Array([0, 255, 7]);
    const [prepared] = prepareMessages({ topic: "orders", payload: bytes, key: "k", headers: { a: "b" } }, { now });
    bytes[0] = 99;
    expect(prepared).toEqual({
      topic: "orders",
      key: "k",
      payload: new Uint8Array([0, 255, 7]),
      headers: { a: "b" },
      idempotencyKey: null,
      availableAt: new Date(now),
    });
  });

  it("encodes strings as UTF-8", () => {
    const [prepared] = prepareMessages({ topic: "t", payload: "é🚀" }, { now });
    expect([...(prepared?.payload ?? [])]).toEqual([0xc3, 0xa9, 0xf0, 0x9f, 0x9a, 0x80]);
  });

  it.each<[string, unknown]>([
    ["empty topic", { topic: "", payload: "x" }],
    ["missing topic", { payload: "x" }],
    ["object payload", { topic: "t", payload: { a: 1 } }],
    ["number payload", { topic: "t", payload: 42 }],
    ["lone surrogate payload", { topic: "t", payload: "\udc00" }],
    ["lone surrogate key", { topic: "t", payload: "x", key: "\ud800" }],
    ["empty key", { topic: "t", payload: "x", key: "" }],
    ["non-string header", { topic: "t", payload: "x", headers: { n: 1 } }],
    ["array headers", { topic: "t", payload: "x", headers: ["a"] }],
    ["invalid date", { topic: "t", payload: "x", availableAt: new Date(Number.NaN) }],
    ["null message", null],
    ["topic too long", { topic: "t".repeat(250), payload: "x" }],
    ["oversize payload", { topic: "t", payload: new Uint8Array(11) }],
  ])("rejects %s with OUTBOX_INVALID_ENTRY", (_name, input) => {
    expect(
      codeOf(() =>
        prepareMessages([{ topic: "ok", payload: "fine" }, input as OutboxMessage], {
          now,
          limits: { maxPayloadBytes: 10 },
        }),
      ),
    ).toBe(OutboxErrorCode.InvalidEntry);
  });

  it("says which message and field was invalid", () => {
    try {
      prepareMessages(
        [
          { topic: "ok", payload: "x" },
          { topic: "", payload: "x" },
        ],
        { now },
      );
      expect.unreachable();
    } catch (error) {
      expect(OutboxError.is(error, OutboxErrorCode.InvalidEntry)).toBe(true);
      expect((error as OutboxError).details).toEqual({ index: 1, field: "topic" });
    }
  });
});

describe("payload helpers", () => {
  it("jsonPayload serialises and rejects what JSON cannot hold", () => {
    expect(jsonPayload({ a: [1, "b"] })).toBe('{"a":[1,"b"]}');
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(codeOf(() => jsonPayload(cyclic))).toBe(OutboxErrorCode.InvalidEntry);
    expect(codeOf(() => jsonPayload(10n))).toBe(OutboxErrorCode.InvalidEntry);
    expect(codeOf(() => jsonPayload(undefined))).toBe(OutboxErrorCode.InvalidEntry);
  });

  it("payloadText decodes UTF-8 and refuses invalid bytes", () => {
    expect(payloadText({ payload: new TextEncoder().encode("héllo") })).toBe("héllo");
    expect(() => payloadText({ payload: new Uint8Array([0xc3, 0x28]) })).toThrow(TypeError);
  });
});

describe("OutboxError", () => {
  it("is recognised by name and code, also across copies of the package", () => {
    const foreign = Object.assign(new Error("x"), { name: "OutboxError", code: "OUTBOX_CLOSED" });
    expect(OutboxError.is(foreign, OutboxErrorCode.Closed)).toBe(true);
    expect(OutboxError.is(foreign, OutboxErrorCode.Fenced)).toBe(false);
    expect(OutboxError.is(new Error("x"))).toBe(false);
    expect(OutboxError.is(null)).toBe(false);
    const own = new OutboxError(OutboxErrorCode.Fenced, "stale", { cause: foreign });
    expect(own.code).toBe("OUTBOX_FENCED");
    expect(own.cause).toBe(foreign);
  });
});
