import { OutboxError, OutboxErrorCode } from "@outbox/core";
import { closedError, isConnectionError, isLockConflict, isStatementTimeout, storeError } from "./errors.js";
import { type MySqlQueryable, runStatement } from "./queryable.js";

/** A connection borrowed from the pool (mysql2/promise `PoolConnection`). */
export interface MySqlPoolConnectionLike extends MySqlQueryable {
  release(): void;
  /** Closes the connection and drops it from the pool (used after a connection error). */
  destroy?(): void;
}

/** The parts of a mysql2/promise `Pool` the store uses (structural: no dependency on mysql2). */
export interface MySqlPoolLike extends MySqlQueryable {
  getConnection(): Promise<MySqlPoolConnectionLike>;
}

/** Attempts of a statement whose connection failed before it could have committed. */
const connectionRetries = 3;

/** Thrown inside a unit of work to carry "the transaction never reached COMMIT" to the retry loop. */
class Uncommitted extends Error {
  readonly inner: unknown;
  constructor(inner: unknown) {
    super("uncommitted");
    this.inner = inner;
  }
}

/** What `withRetries` needs of the store running the unit. */
export interface RetryPolicy {
  /** Runs of a unit after lock conflicts (the store's `lockRetries`). */
  readonly lockRetries: number;
  /** A closed store fails every call with OUTBOX_CLOSED, even one whose statement succeeded. */
  isClosed(): boolean;
  /** Counts a lock conflict absorbed by running the unit again (`lockConflictsRetried`). */
  lockConflictRetried(): void;
}

/**
 * Runs `work` on one pooled connection; `tx.begin()` opens a short READ COMMITTED transaction
 * there (`tx.commit()` ends it; a throw rolls it back). A connection error before COMMIT was
 * sent is tagged as uncommitted (the server rolls back a dropped connection's transaction), so
 * even a claim may run again.
 */
export async function onConnection<T>(
  pool: MySqlPoolLike,
  work: (conn: MySqlQueryable, tx: { begin(): Promise<void>; commit(): Promise<void> }) => Promise<T>,
): Promise<T> {
  let conn: MySqlPoolConnectionLike;
  try {
    conn = await pool.getConnection();
  } catch (error) {
    throw new Uncommitted(error);
  }
  const connection = conn;
  let open = false;
  let committing = false;
  let broken = false;
  const tx = {
    async begin() {
      // Applies to the next transaction only: the session's own setting is left alone.
      await runStatement(connection, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED");
      await runStatement(connection, "START TRANSACTION");
      open = true;
    },
    async commit() {
      if (!open) return;
      committing = true;
      await runStatement(connection, "COMMIT");
      open = false;
    },
  };
  try {
    return await work(connection, tx);
  } catch (error) {
    if (isConnectionError(error)) broken = true;
    else if (open)
      await runStatement(connection, "ROLLBACK").catch(() => {
        broken = true;
      });
    throw committing || OutboxError.is(error) ? error : new Uncommitted(error);
  } finally {
    if (broken && connection.destroy) connection.destroy();
    else connection.release();
  }
}

/**
 * Runs a unit of work again after an InnoDB deadlock (1213) or lock-wait timeout (1205), with a
 * short jittered backoff: the unit was rolled back whole, so nothing is lost or doubled. A
 * connection error is retried when the unit is idempotent or never reached COMMIT.
 */
export async function withRetries<T>(
  policy: RetryPolicy,
  operation: string,
  idempotent: boolean,
  unit: () => Promise<T>,
): Promise<T> {
  let lockAttempts = 0;
  let connectionAttempts = 0;
  for (;;) {
    try {
      const result = await unit();
      if (policy.isClosed()) throw closedError();
      return result;
    } catch (caught) {
      const uncommitted = caught instanceof Uncommitted;
      const error = uncommitted ? caught.inner : caught;
      if (policy.isClosed()) throw closedError();
      if (OutboxError.is(error) || isStatementTimeout(error)) throw error;
      if (isLockConflict(error) && ++lockAttempts < policy.lockRetries) {
        policy.lockConflictRetried();
        await new Promise((resolve) => setTimeout(resolve, Math.random() * 2 ** Math.min(lockAttempts, 6)));
        continue;
      }
      if (isConnectionError(error) && (idempotent || uncommitted) && ++connectionAttempts < connectionRetries) {
        continue;
      }
      throw storeError(operation, error);
    }
  }
}

/** `pool` as the stores take it (a mysql2/promise Pool), or OUTBOX_INVALID_OPTIONS naming `factory`. */
export function checkPool<P extends MySqlQueryable & { getConnection(): unknown }>(
  pool: P | undefined,
  factory: string,
): P {
  if (!pool || typeof pool.getConnection !== "function" || typeof pool.query !== "function") {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `${factory} needs \`pool\`: a mysql2/promise Pool (query() and getConnection())`,
    );
  }
  return pool;
}

/**
 * START TRANSACTION, `work`, COMMIT on a connection of `pool`; ROLLBACK when anything throws, and the error is
 * rethrown as it is (`boundary` may turn failures of START TRANSACTION and COMMIT into other errors). A
 * connection that failed, or whose ROLLBACK failed, is destroyed instead of going back to the pool.
 */
export async function poolTransaction<T, C extends MySqlPoolConnectionLike = MySqlPoolConnectionLike>(
  pool: { getConnection(): Promise<C> },
  operation: string,
  work: (tx: C) => Promise<T>,
  boundary: (error: unknown) => unknown = (error) => error,
): Promise<T> {
  let conn: C;
  try {
    conn = await pool.getConnection();
  } catch (error) {
    throw storeError(operation, error);
  }
  let broken = false;
  try {
    await runStatement(conn, "START TRANSACTION").catch((error: unknown) => {
      throw boundary(error);
    });
    const result = await work(conn);
    await runStatement(conn, "COMMIT").catch((error: unknown) => {
      throw boundary(error);
    });
    return result;
  } catch (error) {
    if (isConnectionError(error) || isConnectionError((error as { cause?: unknown } | null)?.cause)) broken = true;
    else
      await runStatement(conn, "ROLLBACK").catch(() => {
        broken = true;
      });
    throw error;
  } finally {
    if (broken && conn.destroy) conn.destroy();
    else conn.release();
  }
}
