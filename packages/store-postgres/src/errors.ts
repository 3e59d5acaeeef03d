import { describeError, OutboxError, OutboxErrorCode } from "@outbox/core";

/** SQLSTATE of a driver error, when it has one (pg and PGlite both expose `code`). */
export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/**
 * Every driver failure of a store operation becomes OUTBOX_STORE_UNAVAILABLE with the driver
 * error as `cause` (and its SQLSTATE in `details.sqlState` when there is one). OutboxErrors pass.
 */
export function storeError(operation: string, cause: unknown): OutboxError {
  if (OutboxError.is(cause)) return cause;
  const state = sqlState(cause);
  return new OutboxError(OutboxErrorCode.StoreUnavailable, `${operation} failed: ${describeError(cause)}`, {
    cause,
    details: state ? { operation, sqlState: state } : { operation },
  });
}

export function closedError(): OutboxError {
  return new OutboxError(OutboxErrorCode.Closed, "the postgres store is closed");
}

const connectionMessages =
  /connection terminated|connection error|not queryable|terminating connection|timeout exceeded when trying to connect|server closed the connection|connection refused|socket hang up/i;
const connectionCodes = new Set(["ECONNRESET", "ECONNREFUSED", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH"]);

/**
 * True when the statement failed because the connection failed (killed backend, server
 * restart, network), not because of the statement itself. Only idempotent statements are
 * retried on such errors.
 */
export function isConnectionError(error: unknown): boolean {
  const state = sqlState(error);
  if (state) return state.startsWith("08") || state === "57P01" || state === "57P02" || state === "57P03";
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string" && connectionCodes.has(code)) return true;
  return error instanceof Error && connectionMessages.test(error.message);
}
