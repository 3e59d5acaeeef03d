import { describeError, OutboxError, OutboxErrorCode } from "@outbox/core";

/** The server's numeric error code of a driver error, when it has one. */
export function mongoCode(error: unknown): number | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "number" ? code : undefined;
}

export function isDuplicateKey(error: unknown): boolean {
  return mongoCode(error) === 11000;
}

/** A driver error label (TransientTransactionError, RetryableWriteError, ...). */
export function hasLabel(error: unknown, label: string): boolean {
  const candidate = error as { hasErrorLabel?: (label: string) => boolean } | null;
  try {
    return typeof candidate?.hasErrorLabel === "function" && candidate.hasErrorLabel(label) === true;
  } catch {
    return false;
  }
}

/**
 * Every driver failure of a store operation becomes OUTBOX_STORE_UNAVAILABLE with the driver
 * error as `cause` (and the server's error code in `details.mongoCode`). OutboxErrors pass.
 */
export function storeError(operation: string, cause: unknown): OutboxError {
  if (OutboxError.is(cause)) return cause;
  const code = mongoCode(cause);
  return new OutboxError(OutboxErrorCode.StoreUnavailable, `${operation} failed: ${describeError(cause)}`, {
    cause,
    details: code === undefined ? { operation } : { operation, mongoCode: code },
  });
}

export function closedError(): OutboxError {
  return new OutboxError(OutboxErrorCode.Closed, "the mongodb store is closed");
}

/** Driver error classes that mean "the connection or the server went away", matched by name. */
const connectionErrorNames = new Set([
  "MongoNetworkError",
  "MongoNetworkTimeoutError",
  "MongoServerSelectionError",
  "MongoPoolClearedError",
]);
/** Server codes of a node stepping down or shutting down (the operation did not run, or may be re-sent). */
const connectionCodes = new Set([6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436]);

/**
 * True when an operation failed because its connection or server failed, not because of the
 * operation itself. Only idempotent operations are re-sent on such errors.
 */
export function isConnectionError(error: unknown): boolean {
  const name = (error as { name?: unknown } | null)?.name;
  if (typeof name === "string" && connectionErrorNames.has(name)) return true;
  if (hasLabel(error, "ResetPool") || hasLabel(error, "RetryableWriteError")) return true;
  const code = mongoCode(error);
  return code !== undefined && connectionCodes.has(code);
}

/**
 * The indexes of the operations of a failed unordered bulk insert that hit a duplicate key.
 * Empty when any write error is something else (or the error is not a bulk write error).
 */
export function duplicateIndexes(error: unknown): Set<number> {
  const raw = (error as { writeErrors?: unknown } | null)?.writeErrors;
  const list = Array.isArray(raw) ? raw : raw ? [raw] : [];
  const indexes = new Set<number>();
  if (list.length === 0) return indexes;
  for (const item of list as Array<{ index?: unknown; code?: unknown; err?: { code?: unknown } }>) {
    const code = item.code ?? item.err?.code;
    if (code !== 11000 || typeof item.index !== "number") return new Set();
    indexes.add(item.index);
  }
  return indexes;
}

/**
 * How a store runs one operation: driver errors become OUTBOX_STORE_UNAVAILABLE, and idempotent
 * operations are sent again when their connection failed (MongoStore's #run).
 */
export type Run = <T>(operation: string, idempotent: boolean, work: () => Promise<T>) => Promise<T>;
