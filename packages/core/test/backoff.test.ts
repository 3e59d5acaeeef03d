import { describe, expect, it } from "vitest";
import { type OutboxError, OutboxErrorCode, resolveRetryPolicy, retryDelayMs } from "../src/index.js";

describe("retry backoff", () => {
  const policy = resolveRetryPolicy({ baseDelayMs: 100, maxDelayMs: 1_000, jitter: 0.5 });

  it("doubles per attempt up to the cap, jitter drawing within [half, full]", () => {
    expect([1, 2, 3, 4, 5].map((attempt) => retryDelayMs(policy, attempt, () => 0))).toEqual([50, 100, 200, 400, 500]);
    expect([1, 2, 3, 4, 5].map((attempt) => retryDelayMs(policy, attempt, () => 0.999999))).toEqual([
      100, 200, 400, 800, 1_000,
    ]);
  });

  it("without jitter is exact", () => {
    const exact = resolveRetryPolicy({ baseDelayMs: 10, maxDelayMs: 50, jitter: 0 });
    expect([1, 2, 3, 4].map((attempt) => retryDelayMs(exact, attempt, () => 0.7))).toEqual([10, 20, 40, 50]);
  });

  it("never waits longer than the entry has waited, nor less than the base delay", () => {
    const exact = resolveRetryPolicy({ baseDelayMs: 100, maxDelayMs: 10_000, jitter: 0 });
    // Attempt 8 alone would be 12.8 s (capped at 10 s).
    expect(retryDelayMs(exact, 8, Math.random, 3_000)).toBe(3_000);
    expect(retryDelayMs(exact, 8, Math.random, 20)).toBe(100);
    expect(retryDelayMs(exact, 8, Math.random, -5_000)).toBe(100);
    expect(retryDelayMs(exact, 8, Math.random, 60_000)).toBe(10_000);
    expect(retryDelayMs(exact, 2, Math.random, 60_000)).toBe(200);
  });

  it.each([
    { maxAttempts: 0 },
    { maxAttempts: 1.5 },
    { baseDelayMs: 10, maxDelayMs: 5 },
    { jitter: 2 },
  ])("rejects %o with OUTBOX_INVALID_OPTIONS", (input) => {
    expect(() => resolveRetryPolicy(input)).toThrowError(
      expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }) as unknown as OutboxError,
    );
  });
});
