import { OutboxError, OutboxErrorCode } from "./errors.js";

export interface RetryPolicy {
  /** Attempts before an entry is dead-lettered. Default 10. */
  maxAttempts: number;
  /** Delay after the first failure. Default 1 s. */
  baseDelayMs: number;
  /** Cap on the delay. Default 5 min. */
  maxDelayMs: number;
  /** 0..1: share of the delay randomised ("equal jitter"). Default 0.5. */
  jitter: number;
}

export const defaultRetryPolicy: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 10,
  baseDelayMs: 1_000,
  maxDelayMs: 5 * 60_000,
  jitter: 0.5,
});

export function resolveRetryPolicy(input: Partial<RetryPolicy> = {}): RetryPolicy {
  const policy = { ...defaultRetryPolicy, ...input };
  if (!Number.isInteger(policy.maxAttempts) || policy.maxAttempts < 1) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, "retry.maxAttempts must be an integer >= 1");
  }
  if (!(policy.baseDelayMs >= 0) || !(policy.maxDelayMs >= policy.baseDelayMs)) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, "retry delays must satisfy 0 <= baseDelayMs <= maxDelayMs");
  }
  if (!(policy.jitter >= 0 && policy.jitter <= 1)) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, "retry.jitter must be within 0..1");
  }
  return policy;
}

/**
 * Exponential backoff with jitter: base * 2^(attempt-1), capped, then the jittered share is
 * drawn uniformly so that retries of a failed batch spread out instead of stampeding.
 *
 * `waitedMs` (how long the entry has waited since it was enqueued) caps the delay too, never below
 * the base delay: attempts count claims, and claims a failed-over leader never answered inflate
 * them, so a young entry's first failures after a few takeovers would otherwise be pushed minutes
 * out. Under a real outage the entry's age grows with its delays and the cap is the exponential.
 */
export function retryDelayMs(
  policy: RetryPolicy,
  attempt: number,
  random: () => number = Math.random,
  waitedMs = Number.POSITIVE_INFINITY,
): number {
  const exponential = policy.baseDelayMs * 2 ** Math.max(0, attempt - 1);
  const capped = Math.min(policy.maxDelayMs, exponential, Math.max(policy.baseDelayMs, waitedMs));
  const fixed = capped * (1 - policy.jitter);
  return Math.round(fixed + capped * policy.jitter * random());
}
