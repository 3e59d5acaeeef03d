import { describe, expect, it } from "vitest";
import { type OutboxEntry, OutboxError, OutboxErrorCode, routeEntry } from "../src/index.js";

const entry: OutboxEntry = {
  id: "7",
  topic: "orders",
  key: "k",
  payload: new Uint8Array([1]),
  headers: {},
  idempotencyKey: "7",
  createdAt: new Date(0),
  availableAt: new Date(0),
  attempts: 1,
  lastError: null,
};

function failureOf(result: ReturnType<typeof routeEntry>) {
  if (typeof result === "string") throw new Error(`expected a failure, got ${result}`);
  expect(result.status).toBe("permanent");
  const error = (result as { error: unknown }).error;
  expect(OutboxError.is(error, OutboxErrorCode.PublishFailed)).toBe(true);
  return error as OutboxError;
}

describe("routeEntry", () => {
  it("returns the name the mapping gives", () => {
    expect(routeEntry(entry, (e) => `${e.topic}.v1`)).toBe("orders.v1");
  });

  it("fails the entry permanently, as UNROUTABLE, when the mapping throws", () => {
    const cause = new Error("no route");
    const error = failureOf(
      routeEntry(entry, () => {
        throw cause;
      }),
    );
    expect(error.cause).toBe(cause);
    expect(error.details).toEqual({ entryId: "7", type: "UNROUTABLE" });
  });

  it.each([[""], [undefined], [42]])("fails the entry permanently when the mapping returns %j", (name) => {
    const error = failureOf(routeEntry(entry, () => name, "stream"));
    expect(error.details).toEqual({ entryId: "7", type: "UNROUTABLE" });
  });
});
