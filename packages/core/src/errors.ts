/** Stable error codes. Tests and callers branch on these, never on message text. */
export const OutboxErrorCode = {
  /** An entry failed validation at enqueue (empty topic, bad payload type, oversize, ...). */
  InvalidEntry: "OUTBOX_INVALID_ENTRY",
  /** Options passed to a constructor or factory are unusable. */
  InvalidOptions: "OUTBOX_INVALID_OPTIONS",
  /** The store, publisher, lock or relay was used after close()/stop(). */
  Closed: "OUTBOX_CLOSED",
  /** A claim or ack carried a fencing token older than the newest one the store has seen. */
  Fenced: "OUTBOX_FENCED",
  /** An operation needed the leader lock and the caller no longer holds it. */
  LockNotHeld: "OUTBOX_LOCK_NOT_HELD",
  /** The broker did not confirm an entry. */
  PublishFailed: "OUTBOX_PUBLISH_FAILED",
  /** The publisher broke its contract (e.g. returned the wrong number of outcomes). */
  PublisherContract: "OUTBOX_PUBLISHER_CONTRACT",
  /** The store could not be reached or failed a query. */
  StoreUnavailable: "OUTBOX_STORE_UNAVAILABLE",
  /** The lock backend could not be reached. */
  LockUnavailable: "OUTBOX_LOCK_UNAVAILABLE",
  /** stop() gave up waiting for the in-flight batch. */
  DrainTimeout: "OUTBOX_DRAIN_TIMEOUT",
} as const;

export type OutboxErrorCode = (typeof OutboxErrorCode)[keyof typeof OutboxErrorCode];

export interface OutboxErrorOptions {
  cause?: unknown;
  /** Machine-readable context, e.g. `{ index: 3, field: "topic" }`. */
  details?: Readonly<Record<string, unknown>>;
}

export class OutboxError extends Error {
  override readonly name = "OutboxError";
  readonly code: OutboxErrorCode;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: OutboxErrorCode, message: string, options: OutboxErrorOptions = {}) {
    super(`[${code}] ${message}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details ?? {};
  }

  /**
   * Checks by name and code rather than instanceof: two copies of @outbox/core in one
   * node_modules tree must still recognise each other's errors.
   */
  static is(value: unknown, code?: OutboxErrorCode): value is OutboxError {
    if (typeof value !== "object" || value === null) return false;
    const candidate = value as { name?: unknown; code?: unknown };
    if (candidate.name !== "OutboxError" || typeof candidate.code !== "string") return false;
    return code === undefined || candidate.code === code;
  }
}

/** A short, storable description of any thrown value. */
export function describeError(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return typeof code === "string" && !error.message.includes(code) ? `${code}: ${error.message}` : error.message;
  }
  return typeof error === "string" ? error : (JSON.stringify(error) ?? String(error));
}
