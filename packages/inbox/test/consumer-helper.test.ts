import { OutboxErrorCode } from "@outbox/core";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  guardedCallbacks,
  type HandleResult,
  nonEmptyOption,
  nonNegativeOption,
  positiveIntegerOption,
} from "../src/index.js";

const invalid = (option: string) =>
  expect.objectContaining({ code: OutboxErrorCode.InvalidOptions, details: { option } }) as unknown as Error;

describe("consumer helper options", () => {
  it("accept what is valid and name the option they refuse", () => {
    expect(nonNegativeOption(0, "holdBackMs")).toBe(0);
    expect(nonNegativeOption(2.5, "holdBackMs")).toBe(2.5);
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY, "5", null]) {
      expect(() => nonNegativeOption(bad, "holdBackMs")).toThrowError(invalid("holdBackMs"));
    }
    expect(positiveIntegerOption(3, "count")).toBe(3);
    for (const bad of [0, 1.5, -2, "3"])
      expect(() => positiveIntegerOption(bad, "count")).toThrowError(invalid("count"));
    expect(nonEmptyOption("g", "group")).toBe("g");
    for (const bad of ["", 7, undefined]) expect(() => nonEmptyOption(bad, "group")).toThrowError(invalid("group"));
  });
});

describe("guardedCallbacks", () => {
  afterEach(() => vi.restoreAllMocks());
  const result: HandleResult<unknown> = { status: "duplicate", messageId: "m1" };

  it("passes results and errors to the user's callbacks, and a callback that throws is logged, not thrown", () => {
    const warned = vi.spyOn(console, "warn").mockImplementation(() => undefined);
    const seen: unknown[] = [];
    const callbacks = guardedCallbacks<string, "nacked" | "held-back">("helper c", {
      onResult: (r, delivery) => {
        seen.push([r.status, delivery]);
        throw new Error("boom");
      },
      onError: (error, delivery, reason) => {
        seen.push([String(error), delivery, reason]);
        throw new Error("boom again");
      },
    });
    expect(() => callbacks.onResult(result, "d1")).not.toThrow();
    expect(() => callbacks.onError("e", "d2", "held-back")).not.toThrow();
    expect(seen).toEqual([
      ["duplicate", "d1"],
      ["e", "d2", "held-back"],
    ]);
    expect(warned.mock.calls.map((call) => call[0])).toEqual([
      "[helper c] onResult threw:",
      "[helper c] onError threw:",
    ]);
  });

  it("without onError, warns for every reason but the quiet ones", () => {
    const warned = vi.spyOn(console, "warn").mockImplementation(() => undefined);
    const callbacks = guardedCallbacks<string, "nacked" | "held-back">("helper c", {}, ["held-back"]);
    callbacks.onError(new Error("x"), "d", "held-back");
    expect(warned).not.toHaveBeenCalled();
    callbacks.onError(new Error("x"), "d", "nacked");
    expect(warned.mock.calls.map((call) => call[0])).toEqual(["[helper c] nacked:"]);
  });
});
