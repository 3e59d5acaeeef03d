import { createHash } from "node:crypto";
import { type Clock, OutboxError, OutboxErrorCode, systemClock } from "@outbox/core";
import type {
  InboxConsumerStats,
  InboxDeadItem,
  InboxDeadLetter,
  InboxFailure,
  InboxPurgeRequest,
  InboxRecord,
  InboxStore,
  InboxStoreCapabilities,
  ListInboxDeadOptions,
  RecordOutcome,
} from "@outbox/inbox";
import { closedError, isLockConflict, mysqlErrno, storeError } from "./errors.js";
import { checkPool, type MySqlPoolConnectionLike, poolTransaction } from "./pool.js";
import { type MySqlQueryable, runStatement, type StatementResult } from "./queryable.js";
import { type ConnectionSource, checkIdentifier, type MigrationStatement, quoteIdent, runMigration } from "./schema.js";
import { TXT } from "./statements.js";
import { bytes, cleanError, text } from "./values.js";

/** `@outbox/inbox`, an optional peer: loaded by the inbox store only, so the outbox store never needs it. */
const inboxHelpers = () => import("@outbox/inbox");

/** Where the inbox lives. Both names are validated and always quoted. */
export interface InboxSchemaOptions {
  /** The database (MySQL's schema). Default: the connection's current database. */
  database?: string;
  /** Default "inbox". The attempt counters live in `<table>_attempts`. */
  table?: string;
}

export interface InboxSchemaNames {
  readonly database: string | null;
  readonly table: string;
  /** `` `database`.`table` `` (or `` `table` ``), ready to splice into SQL. */
  readonly qualifiedTable: string;
  readonly qualifiedAttempts: string;
}

/** Index names (per table in MySQL, so fixed). */
const inboxIndexes = {
  processed: "inbox_processed_idx",
  dead: "inbox_dead_idx",
  consumer: "inbox_consumer_idx",
  attempts: "inbox_attempts_at_idx",
  attemptsConsumer: "inbox_attempts_consumer_idx",
};

export function resolveInboxNames(options: InboxSchemaOptions = {}): InboxSchemaNames {
  const database = options.database === undefined ? null : checkIdentifier(options.database, "database", 64);
  // MySQL identifiers are at most 64 characters; the attempts table adds 9.
  const table = checkIdentifier(options.table ?? "inbox", "table", 55);
  const prefix = database === null ? "" : `${quoteIdent(database)}.`;
  return {
    database,
    table,
    qualifiedTable: `${prefix}${quoteIdent(table)}`,
    qualifiedAttempts: `${prefix}${quoteIdent(`${table}_attempts`)}`,
  };
}

/** 1: handled (or dropped from the dead letters); 2: a dead letter. */
const PROCESSED = 1;
const DEAD = 2;

/**
 * The DDL of the inbox, idempotent (`IF NOT EXISTS`), as separate statements. Common subset of MySQL 8.0 and
 * MariaDB 10.6+.
 */
export function inboxSchemaStatements(options: InboxSchemaOptions = {}): string[] {
  const n = resolveInboxNames(options);
  return [
    `CREATE TABLE IF NOT EXISTS ${n.qualifiedTable} (
  -- SHA-256 of the UTF-8 JSON text ["<consumer>","<message id>"]: the dedupe key (a utf8mb4 VARCHAR(1024) is too
  -- long for a primary key). One row per handled message and consumer; dead letters keep the message.
  key_hash    BINARY(32)    NOT NULL,
  consumer    VARCHAR(255)  NOT NULL,
  message_id  VARCHAR(1024) NOT NULL,
  -- 1 processed, 2 dead.
  status      TINYINT       NOT NULL DEFAULT 1,
  -- Milliseconds since the Unix epoch from the inbox's clock: no time zone anywhere.
  recorded_at BIGINT        NOT NULL,
  attempts    INT           NOT NULL DEFAULT 0,
  last_error  TEXT          NULL,
  -- A dead letter's message: JSON text as UTF-8 bytes (payload in base64).
  message     LONGBLOB      NULL,
  PRIMARY KEY (key_hash),
  -- Retention: processed keys by the time they were recorded.
  KEY ${inboxIndexes.processed} (status, recorded_at),
  -- Dead letters of a consumer by message id.
  KEY ${inboxIndexes.dead} (consumer, status, message_id(400)),
  -- stats(): a consumer's keys by status with their oldest and newest times, from the index alone.
  KEY ${inboxIndexes.consumer} (consumer, status, recorded_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin ROW_FORMAT=DYNAMIC`,
    `CREATE TABLE IF NOT EXISTS ${n.qualifiedAttempts} (
  -- Failed attempts of messages not handled yet (written outside the handler's rolled-back transaction).
  key_hash   BINARY(32) NOT NULL,
  attempts   INT        NOT NULL,
  last_error TEXT       NULL,
  updated_at BIGINT     NOT NULL,
  -- The message's consumer, for stats() (NULL on counters written before v2: they are left out).
  consumer   VARCHAR(255) NULL,
  PRIMARY KEY (key_hash),
  KEY ${inboxIndexes.attempts} (updated_at),
  KEY ${inboxIndexes.attemptsConsumer} (consumer)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`,
  ];
}

/** ER_DUP_FIELDNAME and ER_DUP_KEYNAME: the column or index an upgrade step adds is there already. */
const ER_DUP_FIELDNAME = 1060;
const ER_DUP_KEYNAME = 1061;

/** v2's upgrade of tables v1 created: the consumer index, and the consumer of attempt counters. */
function inboxUpgradeStatements(n: InboxSchemaNames): Array<{ sql: string; doneErrno: number }> {
  return [
    {
      sql: `ALTER TABLE ${n.qualifiedTable} ADD KEY ${inboxIndexes.consumer} (consumer, status, recorded_at)`,
      doneErrno: ER_DUP_KEYNAME,
    },
    { sql: `ALTER TABLE ${n.qualifiedAttempts} ADD COLUMN consumer VARCHAR(255) NULL`, doneErrno: ER_DUP_FIELDNAME },
    {
      sql: `ALTER TABLE ${n.qualifiedAttempts} ADD KEY ${inboxIndexes.attemptsConsumer} (consumer)`,
      doneErrno: ER_DUP_KEYNAME,
    },
  ];
}

/** The DDL as one script. */
export function inboxSchemaSql(options: InboxSchemaOptions = {}): string {
  const n = resolveInboxNames(options);
  return `-- @outbox/store-mysql inbox schema v2 for ${n.qualifiedTable}. Idempotent: safe to run again.
-- MySQL 8.0+ / MariaDB 10.6+, InnoDB, utf8mb4.

${inboxSchemaStatements(options).join(";\n\n")};

-- Tables created by v1 are upgraded with these (migrateInbox() runs them and skips what is there already):
${inboxUpgradeStatements(n)
  .map((step) => `-- ${step.sql};`)
  .join("\n")}
`;
}

/**
 * Creates the inbox tables if missing. Idempotent and safe to run from several processes at once (serialised
 * by `GET_LOCK`). `db` is a mysql2/promise Pool (a connection is borrowed) or a Connection.
 */
export async function migrateInbox(
  db: ConnectionSource | MySqlQueryable,
  options: InboxSchemaOptions = {},
): Promise<void> {
  const n = resolveInboxNames(options);
  const statements: MigrationStatement[] = [...inboxSchemaStatements(options), ...inboxUpgradeStatements(n)];
  await runMigration(db, `inbox:${n.database ?? ""}.${n.table}`, n.qualifiedTable, statements);
}

export interface MySqlInboxStoreOptions<C extends MySqlPoolConnectionLike = MySqlPoolConnectionLike>
  extends InboxSchemaOptions {
  /**
   * A mysql2/promise `Pool`: each handler transaction gets a connection of its own (START TRANSACTION ...
   * COMMIT), which is the handler's `tx`; the store's other statements run on the pool.
   */
  pool: MySqlQueryable & { getConnection(): Promise<C> };
  /** Time of `dropDead` (the moment a dropped message starts counting as processed). Default `systemClock`. */
  clock?: Clock;
  /** Runs of a store-owned unit (attempts, dead letters) after a deadlock or lock-wait timeout. Default 4. */
  lockRetries?: number;
}

/** ER_DUP_ENTRY: the key is there (committed, or its transaction ended while this insert waited). */
const ER_DUP_ENTRY = 1062;
/** Inserts of a key that was deleted (requeued, purged) between the duplicate and the read of its row. */
const recordRounds = 3;

/** The dedupe key's index column: SHA-256 over the UTF-8 JSON text of [consumer, message id]. */
export function inboxKeyHash(consumer: string, messageId: string): Buffer {
  return createHash("sha256")
    .update(new TextEncoder().encode(JSON.stringify([consumer, messageId]).toWellFormed()))
    .digest();
}

function hashes(consumer: string, messageIds: readonly string[]): Buffer[] {
  return [...new Set(messageIds.filter((id) => typeof id === "string"))].map((id) => inboxKeyHash(consumer, id));
}

const inList = (count: number) => `(${Array.from({ length: count }, () => "?").join(", ")})`;

/**
 * The MySQL / MariaDB inbox store (mysql2). `transaction()` opens the handler's transaction on a connection of
 * the store's pool; the handler gets that connection (a mysql2 `PoolConnection`), the handle
 * `MySqlStore.enqueue` takes: follow-up outbox entries enqueued on it commit with the key.
 */
export class MySqlInboxStore<C extends MySqlPoolConnectionLike = MySqlPoolConnectionLike> implements InboxStore<C> {
  readonly capabilities: InboxStoreCapabilities = { transactions: true, concurrentWriters: true };
  readonly names: InboxSchemaNames;
  readonly #pool: MySqlInboxStoreOptions<C>["pool"];
  readonly #sql: ReturnType<typeof buildInboxStatements>;
  readonly #clock: Clock;
  readonly #lockRetries: number;
  #closed = false;

  constructor(options: MySqlInboxStoreOptions<C>) {
    this.#pool = checkPool(options?.pool, "createMySqlInboxStore");
    this.names = resolveInboxNames(options);
    this.#sql = buildInboxStatements(this.names);
    this.#clock = options.clock ?? systemClock;
    const lockRetries = options.lockRetries ?? 4;
    if (!Number.isInteger(lockRetries) || lockRetries <= 0) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, `lockRetries must be a positive integer`);
    }
    this.#lockRetries = lockRetries;
  }

  /**
   * START TRANSACTION, `work`, COMMIT on one pooled connection; ROLLBACK when `work` throws. The handler's own
   * error is rethrown untouched (the inbox tells it apart from store failures); failures of START TRANSACTION
   * and COMMIT become OUTBOX_STORE_UNAVAILABLE (after a lost COMMIT answer the redelivery finds out, deduped).
   * The transaction runs at the session's isolation level (the server default: REPEATABLE READ).
   */
  async transaction<T>(work: (tx: C) => Promise<T>): Promise<T> {
    this.#assertOpen();
    return poolTransaction(this.#pool, "inbox transaction", work, (error) => storeError("inbox transaction", error));
  }

  /**
   * A plain INSERT of the key on the handler's transaction. A concurrent delivery's insert of the same key waits
   * for this transaction's row lock: after its COMMIT it fails with a duplicate key (then a locking read of the
   * row says duplicate or dead), after its ROLLBACK it inserts. A handled message's attempt counter is left to
   * `purge` (deleting it here would take a gap lock on the handler's transaction).
   */
  async record(tx: C, record: InboxRecord): Promise<RecordOutcome> {
    this.#assertOpen();
    if (!tx || typeof tx.query !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "record needs the connection of the handler's transaction");
    }
    const hash = inboxKeyHash(record.consumer, record.messageId);
    try {
      for (let round = 0; round < recordRounds; round++) {
        try {
          await runStatement(tx, this.#sql.record, [
            hash,
            bytes(record.consumer),
            bytes(record.messageId),
            record.at.getTime(),
          ]);
          return "recorded";
        } catch (error) {
          if (mysqlErrno(error) !== ER_DUP_ENTRY) throw error;
        }
        const [row] = (await runStatement(tx, this.#sql.status, [hash])).rows;
        if (row) return Number(row.status) === DEAD ? "dead" : "duplicate";
      }
      throw new OutboxError(
        OutboxErrorCode.StoreUnavailable,
        `inbox record: the key of ${JSON.stringify(record.messageId)} kept being deleted between its duplicate and its read`,
      );
    } catch (error) {
      throw storeError("inbox record", error);
    }
  }

  async recordFailure(failure: InboxFailure): Promise<number> {
    const hash = inboxKeyHash(failure.consumer, failure.messageId);
    const error = bytes(cleanError(failure.error));
    const consumer = bytes(failure.consumer);
    const at = failure.at.getTime();
    return this.#unit("inbox recordFailure", async (conn) => {
      await runStatement(conn, this.#sql.recordFailure, [hash, error, at, consumer, error, at, consumer]);
      const [row] = (await runStatement(conn, this.#sql.attempts, [hash])).rows;
      return Number(row?.attempts ?? 0);
    });
  }

  async deadLetter(item: InboxDeadItem): Promise<boolean> {
    const hash = inboxKeyHash(item.consumer, item.messageId);
    const at = item.at.getTime();
    const error = bytes(cleanError(item.error));
    const message = bytes((await inboxHelpers()).encodeStoredMessage(item.message));
    return this.#unit("inbox deadLetter", async (conn) => {
      await runStatement(conn, this.#sql.deadLetter, [
        hash,
        bytes(item.consumer),
        bytes(item.messageId),
        at,
        item.attempts,
        error,
        message,
        at,
        item.attempts,
        error,
        message,
      ]);
      const [row] = (await runStatement(conn, this.#sql.status, [hash])).rows;
      await runStatement(conn, this.#sql.clearAttempts(1), [hash]);
      return Number(row?.status) === DEAD;
    });
  }

  async listDead(consumer: string, options: ListInboxDeadOptions = {}): Promise<InboxDeadLetter[]> {
    const { listDeadOptions, decodeStoredMessage } = await inboxHelpers();
    const { limit, after } = listDeadOptions(options);
    // Message ids are never empty: "" is before every one.
    const { rows } = await this.#run("inbox listDead", this.#sql.listDead, [
      bytes(consumer),
      bytes(after ?? ""),
      limit,
    ]);
    return rows.map((row) => ({
      consumer,
      messageId: text(row.message_id),
      message: decodeStoredMessage(text(row.message)),
      error: row.last_error === null || row.last_error === undefined ? "" : text(row.last_error),
      attempts: Number(row.attempts),
      deadAt: new Date(Number(row.recorded_at)),
    }));
  }

  async requeueDead(consumer: string, messageIds: readonly string[]): Promise<number> {
    const keys = hashes(consumer, messageIds);
    if (keys.length === 0) return 0;
    return this.#unit("inbox requeueDead", async (conn) => {
      await runStatement(conn, this.#sql.clearDeadAttempts(keys.length), keys);
      return (await runStatement(conn, this.#sql.requeueDead(keys.length), keys)).affectedRows ?? 0;
    });
  }

  async dropDead(consumer: string, messageIds: readonly string[]): Promise<number> {
    const keys = hashes(consumer, messageIds);
    if (keys.length === 0) return 0;
    return this.#unit(
      "inbox dropDead",
      async (conn) =>
        (await runStatement(conn, this.#sql.dropDead(keys.length), [this.#clock.now(), ...keys])).affectedRows ?? 0,
    );
  }

  /** Key hashes first (no locks), then a DELETE by primary key that re-checks: no gap locks, no long transaction. */
  async purge(request: InboxPurgeRequest): Promise<number> {
    this.#assertOpen();
    const batch = async (select: string, remove: (count: number) => string, cutoff: number, size: number) => {
      const keys = (await this.#run("inbox purge", select, [cutoff, size])).rows.map((row) => row.key_hash);
      if (keys.length === 0) return 0;
      return (await this.#run("inbox purge", remove(keys.length), [...keys, cutoff])).affectedRows ?? 0;
    };
    return (await inboxHelpers()).purgeInBatches(request, {
      keys: (olderThan, size) => batch(this.#sql.purgeKeys, this.#sql.purge, olderThan.getTime(), size),
      attempts: (olderThan, size) =>
        batch(this.#sql.purgeAttemptKeys, this.#sql.purgeAttempts, olderThan.getTime(), size),
    });
  }

  async stats(consumer?: string): Promise<InboxConsumerStats[]> {
    const { consumerStats, statsConsumer } = await inboxHelpers();
    const only = statsConsumer(consumer);
    const { rows } =
      only === undefined
        ? await this.#run("inbox stats", this.#sql.stats, [])
        : await this.#run("inbox stats", this.#sql.consumerStats, [bytes(only), bytes(only)]);
    const time = (value: unknown) => (value === null || value === undefined ? null : new Date(Number(value)));
    const failing = rows.filter((row) => Number(row.status) === FAILING);
    return consumerStats(
      only,
      rows
        .filter((row) => Number(row.status) !== FAILING)
        .map((row) => ({
          consumer: text(row.consumer),
          status: Number(row.status) === DEAD ? "dead" : "processed",
          count: Number(row.n),
          oldest: time(row.oldest),
          newest: time(row.newest),
        })),
      failing.map((row) => ({ consumer: text(row.consumer), count: Number(row.n) })),
    );
  }

  /** Marks the store closed. Does not end the pool: it is yours. */
  async close(): Promise<void> {
    this.#closed = true;
  }

  async #run(operation: string, sql: string, params: unknown[]): Promise<StatementResult> {
    this.#assertOpen();
    try {
      return await runStatement(this.#pool, sql, params);
    } catch (error) {
      throw storeError(operation, error);
    }
  }

  /** A store-owned transaction, run again after a deadlock or lock-wait timeout (it was rolled back whole). */
  async #unit<T>(operation: string, work: (conn: C) => Promise<T>): Promise<T> {
    this.#assertOpen();
    for (let attempt = 1; ; attempt++) {
      try {
        return await poolTransaction(this.#pool, operation, work);
      } catch (error) {
        if (isLockConflict(error) && attempt < this.#lockRetries && !this.#closed) continue;
        throw storeError(operation, error);
      }
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError();
  }
}

/** The status `stats()` gives the rows counting failing messages (keys are 1 or 2). */
const FAILING = 0;

/**
 * `stats()`: keys by consumer and status from the consumer index alone, then failing messages (attempt counters
 * whose key is not there, a primary-key lookup each: a handled message's counter stays until `purge`). With `one`,
 * both parts take the consumer as a parameter.
 */
export function inboxStatsSql(n: InboxSchemaNames, one: boolean): string {
  const t = n.qualifiedTable;
  const a = n.qualifiedAttempts;
  return `SELECT CAST(consumer AS BINARY) AS consumer, status, COUNT(*) AS n, MIN(recorded_at) AS oldest,
      MAX(recorded_at) AS newest
    FROM ${t} FORCE INDEX (${inboxIndexes.consumer}) ${one ? `WHERE consumer = ${TXT}` : ""}
    GROUP BY consumer, status
    UNION ALL
    SELECT CAST(a.consumer AS BINARY), ${FAILING}, COUNT(*), NULL, NULL
    FROM ${a} a FORCE INDEX (${inboxIndexes.attemptsConsumer})
    WHERE ${one ? `a.consumer = ${TXT}` : "a.consumer IS NOT NULL"}
      AND NOT EXISTS (SELECT 1 FROM ${t} k WHERE k.key_hash = a.key_hash)
    GROUP BY a.consumer`;
}

/** Every statement the store runs, built once per table (identifiers are validated and quoted). */
function buildInboxStatements(n: InboxSchemaNames) {
  const t = n.qualifiedTable;
  const a = n.qualifiedAttempts;
  const dead = (value: string, column: string) => `${column} = IF(status = ${DEAD}, ${value}, ${column})`;
  return {
    stats: inboxStatsSql(n, false),
    consumerStats: inboxStatsSql(n, true),
    record: `INSERT INTO ${t} (key_hash, consumer, message_id, status, recorded_at)
      VALUES (?, ${TXT}, ${TXT}, ${PROCESSED}, ?)`,
    // A locking read: the newest committed row, whatever the transaction's snapshot.
    status: `SELECT status FROM ${t} WHERE key_hash = ? LOCK IN SHARE MODE`,
    recordFailure: `INSERT INTO ${a} (key_hash, attempts, last_error, updated_at, consumer)
      VALUES (?, 1, ${TXT}, ?, ${TXT})
      ON DUPLICATE KEY UPDATE attempts = attempts + 1, last_error = ${TXT}, updated_at = ?, consumer = ${TXT}`,
    attempts: `SELECT attempts FROM ${a} WHERE key_hash = ?`,
    // A processed key stays as it is (a concurrent delivery handled it); a dead one is updated.
    deadLetter: `INSERT INTO ${t} (key_hash, consumer, message_id, status, recorded_at, attempts, last_error, message)
      VALUES (?, ${TXT}, ${TXT}, ${DEAD}, ?, ?, ${TXT}, ?)
      ON DUPLICATE KEY UPDATE ${dead("?", "recorded_at")}, ${dead("?", "attempts")}, ${dead(TXT, "last_error")},
        ${dead("?", "message")}`,
    clearAttempts: (count: number) => `DELETE FROM ${a} WHERE key_hash IN ${inList(count)}`,
    listDead: `SELECT CAST(message_id AS BINARY) AS message_id, attempts, CAST(last_error AS BINARY) AS last_error,
        message, recorded_at
      FROM ${t} FORCE INDEX (${inboxIndexes.dead})
      WHERE consumer = ${TXT} AND status = ${DEAD} AND message_id > ${TXT}
      ORDER BY message_id LIMIT ?`,
    clearDeadAttempts: (count: number) => `DELETE FROM ${a} WHERE key_hash IN
      (SELECT key_hash FROM ${t} WHERE key_hash IN ${inList(count)} AND status = ${DEAD})`,
    requeueDead: (count: number) => `DELETE FROM ${t} WHERE key_hash IN ${inList(count)} AND status = ${DEAD}`,
    dropDead: (count: number) => `UPDATE ${t} SET status = ${PROCESSED}, message = NULL, recorded_at = ?
      WHERE key_hash IN ${inList(count)} AND status = ${DEAD}`,
    purgeKeys: `SELECT key_hash FROM ${t} FORCE INDEX (${inboxIndexes.processed})
      WHERE status = ${PROCESSED} AND recorded_at < ? ORDER BY status, recorded_at LIMIT ?`,
    purge: (count: number) =>
      `DELETE FROM ${t} WHERE key_hash IN ${inList(count)} AND status = ${PROCESSED} AND recorded_at < ?`,
    purgeAttemptKeys: `SELECT key_hash FROM ${a} FORCE INDEX (${inboxIndexes.attempts})
      WHERE updated_at < ? ORDER BY updated_at LIMIT ?`,
    purgeAttempts: (count: number) => `DELETE FROM ${a} WHERE key_hash IN ${inList(count)} AND updated_at < ?`,
  };
}

/** Creates the MySQL/MariaDB inbox store. Run `migrateInbox()` once first. */
export function createMySqlInboxStore<C extends MySqlPoolConnectionLike = MySqlPoolConnectionLike>(
  options: MySqlInboxStoreOptions<C>,
): MySqlInboxStore<C> {
  return new MySqlInboxStore(options);
}
