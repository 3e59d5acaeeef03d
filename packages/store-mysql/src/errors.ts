import { describeError, OutboxError, OutboxErrorCode } from "@outbox/core";

/** The server's error number of a driver error (mysql2 and mariadb both expose `errno`). */
export function mysqlErrno(error: unknown): number | undefined {
  const errno = (error as { errno?: unknown } | null)?.errno;
  return typeof errno === "number" ? errno : undefined;
}

/** ER_LOCK_DEADLOCK: InnoDB rolled the whole transaction back. */
export const ER_LOCK_DEADLOCK = 1213;
/** ER_LOCK_WAIT_TIMEOUT: by default only the statement was rolled back. */
export const ER_LOCK_WAIT_TIMEOUT = 1205;

/** Deadlocks and lock-wait timeouts: the store rolls back and runs the whole unit again. */
export function isLockConflict(error: unknown): boolean {
  const errno = mysqlErrno(error);
  return errno === ER_LOCK_DEADLOCK || errno === ER_LOCK_WAIT_TIMEOUT;
}

/** ER_STATEMENT_TIMEOUT (MariaDB, max_statement_time) and ER_QUERY_TIMEOUT (MySQL, MAX_EXECUTION_TIME). */
const statementTimeoutErrnos = new Set([1969, 3024]);

/** The server stopped the statement at its time limit. */
export function isStatementTimeout(error: unknown): boolean {
  const errno = mysqlErrno(error);
  return errno !== undefined && statementTimeoutErrnos.has(errno);
}

/**
 * A claim statement stopped at `statementTimeoutMs`: OUTBOX_STORE_UNAVAILABLE (the relay backs
 * off and claims again), with `details.statementTimeoutMs` and the server's errno.
 */
export function timeoutError(operation: string, timeoutMs: number, cause: unknown): OutboxError {
  const details: Record<string, unknown> = { operation, statementTimeoutMs: timeoutMs };
  const errno = mysqlErrno(cause);
  if (errno !== undefined) details.errno = errno;
  return new OutboxError(
    OutboxErrorCode.StoreUnavailable,
    `${operation} failed: a statement ran past statementTimeoutMs (${timeoutMs} ms) and the server stopped it; nothing was leased`,
    { cause, details },
  );
}

/**
 * Every driver failure of a store operation becomes OUTBOX_STORE_UNAVAILABLE with the driver
 * error as `cause` (its `errno`, `code` and `sqlState` in `details` when present). OutboxErrors pass.
 */
export function storeError(operation: string, cause: unknown): OutboxError {
  if (OutboxError.is(cause)) return cause;
  const source = (cause ?? {}) as { errno?: unknown; code?: unknown; sqlState?: unknown };
  const details: Record<string, unknown> = { operation };
  if (typeof source.errno === "number") details.errno = source.errno;
  if (typeof source.code === "string") details.driverCode = source.code;
  if (typeof source.sqlState === "string") details.sqlState = source.sqlState;
  return new OutboxError(OutboxErrorCode.StoreUnavailable, `${operation} failed: ${describeError(cause)}`, {
    cause,
    details,
  });
}

export function closedError(): OutboxError {
  return new OutboxError(OutboxErrorCode.Closed, "the mysql store is closed");
}

const connectionMessages =
  /connection lost|closed state|server has gone away|lost connection|connection is in closed|connect ETIMEDOUT|ECONNREFUSED|ECONNRESET|socket hang up|pool is closed|Connection terminated|server shutdown/i;
const connectionCodes = new Set([
  "PROTOCOL_CONNECTION_LOST",
  "PROTOCOL_SEQUENCE_TIMEOUT",
  "ECONNRESET",
  "ECONNREFUSED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ER_SOCKET_UNEXPECTED_CLOSE",
  "ER_CONNECTION_ALREADY_CLOSED",
  "ER_GET_CONNECTION_TIMEOUT",
]);
/**
 * Server errors that mean "this connection is gone": 1053 shutdown in progress, 1077 normal
 * shutdown, 1152/1184 aborted connection, 1927 connection killed (MariaDB), 2006 server has gone
 * away, 2013 lost connection, 4031 client interaction timeout (MySQL 8).
 */
const connectionErrnos = new Set([1053, 1077, 1152, 1184, 1927, 2006, 2013, 4031]);

/**
 * True when the statement failed because the connection failed (killed connection, server
 * restart, network), not because of the statement itself.
 */
export function isConnectionError(error: unknown): boolean {
  const errno = mysqlErrno(error);
  if (errno !== undefined && connectionErrnos.has(errno)) return true;
  const source = error as { code?: unknown; fatal?: unknown } | null;
  if (typeof source?.code === "string" && connectionCodes.has(source.code)) return true;
  if (source?.fatal === true && errno === undefined) return true;
  return error instanceof Error && connectionMessages.test(error.message);
}
