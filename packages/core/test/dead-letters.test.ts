import { describe, expect, it } from "vitest";
import {
  deadLetterFilter,
  type ListDeadOptions,
  matchesDeadLetterFilter,
  maxDeadLetterFilterLength,
  OutboxError,
  OutboxErrorCode,
} from "../src/index.js";

function refusal(options: unknown): unknown {
  try {
    deadLetterFilter(options as ListDeadOptions);
  } catch (error) {
    return OutboxError.is(error) ? { code: error.code, option: error.details.option } : error;
  }
  return "accepted";
}

describe("deadLetterFilter", () => {
  it("returns the filters given, key null included, and leaves limit and after to the store", () => {
    expect(deadLetterFilter(undefined)).toEqual({});
    expect(deadLetterFilter({ limit: 5, after: "7" })).toEqual({});
    expect(deadLetterFilter({ topic: "orders", key: null, errorContains: "100%_\\" })).toEqual({
      topic: "orders",
      key: null,
      errorContains: "100%_\\",
    });
    expect(deadLetterFilter({ key: "k" })).toEqual({ key: "k" });
    expect(deadLetterFilter({ errorContains: "x".repeat(maxDeadLetterFilterLength) }).errorContains).toHaveLength(
      maxDeadLetterFilterLength,
    );
  });

  it("refuses empty, over-long, ill-formed and non-string values with OUTBOX_INVALID_OPTIONS naming the option", () => {
    const invalid = (option: string) => ({ code: OutboxErrorCode.InvalidOptions, option });
    expect(refusal({ topic: "" })).toEqual(invalid("topic"));
    expect(refusal({ topic: null })).toEqual(invalid("topic"));
    expect(refusal({ key: "" })).toEqual(invalid("key"));
    expect(refusal({ key: 1 })).toEqual(invalid("key"));
    expect(refusal({ key: "\udc00" })).toEqual(invalid("key"));
    expect(refusal({ errorContains: "x".repeat(maxDeadLetterFilterLength + 1) })).toEqual(invalid("errorContains"));
    expect(refusal({ errorContains: ["x"] })).toEqual(invalid("errorContains"));
    expect(refusal("topic")).toEqual(invalid("options"));
  });
});

describe("matchesDeadLetterFilter", () => {
  const entry = { topic: "orders", key: "k1", lastError: "Broker TIMEOUT: 100% busy" };

  it("matches topic and key exactly, the error text as a plain substring in any case", () => {
    expect(matchesDeadLetterFilter(entry, {})).toBe(true);
    expect(matchesDeadLetterFilter(entry, { topic: "orders", key: "k1", errorContains: "timeout: 100%" })).toBe(true);
    expect(matchesDeadLetterFilter(entry, { topic: "Orders" })).toBe(false);
    expect(matchesDeadLetterFilter(entry, { key: "k1 " })).toBe(false);
    expect(matchesDeadLetterFilter(entry, { key: null })).toBe(false);
    expect(matchesDeadLetterFilter({ ...entry, key: null }, { key: null })).toBe(true);
    expect(matchesDeadLetterFilter(entry, { errorContains: "100_" })).toBe(false);
    expect(matchesDeadLetterFilter({ ...entry, lastError: null }, { errorContains: "x" })).toBe(false);
  });
});
