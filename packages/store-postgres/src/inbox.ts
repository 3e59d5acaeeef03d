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
import { closedError, isConnectionError, storeError } from "./errors.js";
import { type Queryable, runScript, type ScriptRunner } from "./queryable.js";
import { checkIdentifier, fnv1a, quoteIdent } from "./schema.js";
import type { PgPoolLike } from "./store.js";

/** Where the inbox lives. Both names are validated and always quoted. */
export interface InboxSchemaOptions {
  /** Default "public". */
  schema?: string;
  /** Default "inbox". The attempt counters live in `<table>_attempts`. */
  table?: string;
}

export interface InboxSchemaNames {
  readonly schema: string;
  readonly table: string;
  readonly qualifiedTable: string;
  readonly qualifiedAttempts: string;
  readonly quotedSchema: string;
  readonly processedIndex: string;
  readonly consumerIndex: string;
  readonly attemptsIndex: string;
}

export function resolveInboxNames(options: InboxSchemaOptions = {}): InboxSchemaNames {
  const schema = checkIdentifier(options.schema ?? "public", "schema", 63);
  // The longest derived name adds 18 characters; PostgreSQL truncates identifiers at 63 bytes.
  const table = checkIdentifier(options.table ?? "inbox", "table", 45);
  const quotedSchema = quoteIdent(schema);
  return {
    schema,
    table,
    quotedSchema,
    qualifiedTable: `${quotedSchema}.${quoteIdent(table)}`,
    qualifiedAttempts: `${quotedSchema}.${quoteIdent(`${table}_attempts`)}`,
    processedIndex: quoteIdent(`${table}_processed_idx`),
    consumerIndex: quoteIdent(`${table}_consumer_idx`),
    attemptsIndex: quoteIdent(`${table}_attempts_at_idx`),
  };
}

/** The DDL of the inbox, idempotent (`IF NOT EXISTS` everywhere). */
export function inboxSchemaSql(options: InboxSchemaOptions = {}): string {
  const n = resolveInboxNames(options);
  return `-- @outbox/store-postgres inbox schema v2 for ${n.qualifiedTable}. Idempotent: safe to run again.
CREATE SCHEMA IF NOT EXISTS ${n.quotedSchema};

-- One row per handled message and consumer: the primary key is the dedupe. Dead letters keep the message.
CREATE TABLE IF NOT EXISTS ${n.qualifiedTable} (
  consumer    text COLLATE "C" NOT NULL,
  message_id  text COLLATE "C" NOT NULL,
  status      text        NOT NULL DEFAULT 'processed' CHECK (status IN ('processed', 'dead')),
  recorded_at timestamptz NOT NULL DEFAULT now(),
  attempts    integer     NOT NULL DEFAULT 0,
  last_error  text,
  -- json, not jsonb: header values may hold any string, byte for byte.
  message     json,
  PRIMARY KEY (consumer, message_id)
);
-- Retention: processed keys by the time they were recorded.
CREATE INDEX IF NOT EXISTS ${n.processedIndex} ON ${n.qualifiedTable} (recorded_at) WHERE status = 'processed';
-- v2: stats() counts a consumer's keys by status, and reads their oldest and newest times, from this index alone.
-- On a large table, create it first by hand with CREATE INDEX CONCURRENTLY (this statement then skips it).
CREATE INDEX IF NOT EXISTS ${n.consumerIndex} ON ${n.qualifiedTable} (consumer, status, recorded_at);

-- Failed attempts of messages not handled yet (written outside the handler's rolled-back transaction).
CREATE TABLE IF NOT EXISTS ${n.qualifiedAttempts} (
  consumer   text COLLATE "C" NOT NULL,
  message_id text COLLATE "C" NOT NULL,
  attempts   integer     NOT NULL,
  last_error text,
  updated_at timestamptz NOT NULL,
  PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS ${n.attemptsIndex} ON ${n.qualifiedAttempts} (updated_at);
`;
}

/**
 * Creates the inbox tables and indexes if missing. Idempotent and safe to run from several processes at once
 * (serialised by an advisory lock), as one implicit transaction. `db` is a pg Pool/Client or a PGlite instance.
 */
export async function migrateInbox(db: Queryable | ScriptRunner, options: InboxSchemaOptions = {}): Promise<void> {
  const n = resolveInboxNames(options);
  const lockId = fnv1a(`@outbox/store-postgres:migrate:${n.schema}.${n.table}`);
  try {
    await runScript(db, `SELECT pg_advisory_xact_lock(${lockId});\n${inboxSchemaSql(options)}`);
  } catch (cause) {
    throw new OutboxError(OutboxErrorCode.StoreUnavailable, `migrating ${n.qualifiedTable} failed`, { cause });
  }
}

export interface PostgresInboxStoreOptions extends InboxSchemaOptions {
  /** A pg `Pool`: each handler transaction gets a client of its own (BEGIN ... COMMIT). */
  pool?: PgPoolLike;
  /**
   * A PGlite instance (handler transactions run in `db.transaction()`), or another Queryable (a pg `Client`:
   * transactions then run one at a time on it). Give either `pool` or `db`.
   */
  db?: Queryable;
  /** Time of `dropDead` (the moment a dropped message starts counting as processed). Default `systemClock`. */
  clock?: Clock;
}

type Row = Record<string, unknown>;

/** `@outbox/inbox`, an optional peer: loaded by the inbox store only, so the outbox store never needs it. */
const inboxHelpers = () => import("@outbox/inbox");

interface PgliteLike extends Queryable {
  transaction<T>(work: (tx: Queryable) => Promise<T>): Promise<T>;
}

function isPglite(db: unknown): db is PgliteLike {
  const candidate = db as { transaction?: unknown; exec?: unknown; listen?: unknown } | null;
  return typeof candidate?.transaction === "function" && typeof candidate.exec === "function";
}

function cleanText(value: string): string {
  return value.includes("\u0000") ? value.replaceAll("\u0000", "\uFFFD") : value;
}

/**
 * The PostgreSQL inbox store (pg and PGlite). `transaction()` opens the handler's transaction on the store's
 * own pool/db; the handler gets that connection (a pg `PoolClient` or a PGlite transaction), the same kind of
 * handle `PostgresStore.enqueue` takes: follow-up outbox entries enqueued on it commit with the key.
 */
export class PostgresInboxStore implements InboxStore<Queryable> {
  readonly capabilities: InboxStoreCapabilities;
  readonly names: InboxSchemaNames;
  readonly #pool: PgPoolLike | null;
  readonly #db: Queryable;
  readonly #sql: ReturnType<typeof buildInboxStatements>;
  readonly #clock: Clock;
  /** Transactions on a single `db` that is not PGlite run one at a time. */
  #serial: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(options: PostgresInboxStoreOptions) {
    if (!options || (options.pool && options.db) || !(options.pool ?? options.db)) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        "createPostgresInboxStore needs exactly one of `pool` or `db`",
      );
    }
    this.names = resolveInboxNames(options);
    this.#pool = options.pool ?? null;
    this.#db = (options.pool ?? options.db) as Queryable;
    if (typeof this.#db.query !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "`pool`/`db` must have a query(text, params) method");
    }
    if (this.#pool && typeof this.#pool.connect !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "`pool` must be a pg Pool (with connect())");
    }
    this.capabilities = { transactions: true, concurrentWriters: this.#pool !== null };
    this.#sql = buildInboxStatements(this.names);
    this.#clock = options.clock ?? systemClock;
  }

  async transaction<T>(work: (tx: Queryable) => Promise<T>): Promise<T> {
    this.#assertOpen();
    if (this.#pool) return this.#poolTransaction(this.#pool, work);
    const db = this.#db;
    if (isPglite(db)) return db.transaction((tx) => work(tx));
    const run = this.#serial.then(() => beginCommit(db, work, () => undefined));
    this.#serial = run.catch(() => undefined);
    return run;
  }

  async #poolTransaction<T>(pool: PgPoolLike, work: (tx: Queryable) => Promise<T>): Promise<T> {
    let client: Awaited<ReturnType<NonNullable<PgPoolLike["connect"]>>>;
    try {
      client = await (pool.connect as NonNullable<PgPoolLike["connect"]>)();
    } catch (error) {
      throw storeError("inbox transaction", error);
    }
    // A backend dying while the client is checked out makes it emit "error"; the query in flight rejects anyway.
    const ignore = () => undefined;
    client.on?.("error", ignore);
    let broken: Error | undefined;
    try {
      return await beginCommit(client, work, (error) => {
        if (isConnectionError(error)) broken = error as Error;
      });
    } finally {
      client.removeListener?.("error", ignore);
      client.release(broken);
    }
  }

  async record(tx: Queryable, record: InboxRecord): Promise<RecordOutcome> {
    this.#assertOpen();
    if (!tx || typeof tx.query !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "record needs the Queryable of the handler's transaction");
    }
    try {
      const { rows } = await tx.query(this.#sql.record, [record.consumer, record.messageId, record.at.toISOString()]);
      if (rows.length === 1) return "recorded";
      const existing = await tx.query(this.#sql.status, [record.consumer, record.messageId]);
      return (existing.rows[0] as Row | undefined)?.status === "dead" ? "dead" : "duplicate";
    } catch (error) {
      throw storeError("inbox record", error);
    }
  }

  async recordFailure(failure: InboxFailure): Promise<number> {
    const rows = await this.#run("inbox recordFailure", this.#sql.recordFailure, [
      failure.consumer,
      failure.messageId,
      cleanText(failure.error),
      failure.at.toISOString(),
    ]);
    return Number(rows[0]?.attempts ?? 0);
  }

  async deadLetter(item: InboxDeadItem): Promise<boolean> {
    const rows = await this.#run("inbox deadLetter", this.#sql.deadLetter, [
      item.consumer,
      item.messageId,
      item.at.toISOString(),
      item.attempts,
      cleanText(item.error),
      (await inboxHelpers()).encodeStoredMessage(item.message),
    ]);
    return Number(rows[0]?.n ?? 0) > 0;
  }

  async listDead(consumer: string, options: ListInboxDeadOptions = {}): Promise<InboxDeadLetter[]> {
    const { listDeadOptions, decodeStoredMessage } = await inboxHelpers();
    const { limit, after } = listDeadOptions(options);
    const rows = await this.#run("inbox listDead", this.#sql.listDead, [consumer, after, limit]);
    return rows.map((row) => ({
      consumer,
      messageId: String(row.message_id),
      message: decodeStoredMessage(row.message),
      error: String(row.last_error ?? ""),
      attempts: Number(row.attempts),
      deadAt: new Date(Number(row.recorded_at)),
    }));
  }

  async requeueDead(consumer: string, messageIds: readonly string[]): Promise<number> {
    if (messageIds.length === 0) return 0;
    const rows = await this.#run("inbox requeueDead", this.#sql.requeueDead, [consumer, [...messageIds]]);
    return Number(rows[0]?.n ?? 0);
  }

  async dropDead(consumer: string, messageIds: readonly string[]): Promise<number> {
    if (messageIds.length === 0) return 0;
    const rows = await this.#run("inbox dropDead", this.#sql.dropDead, [
      consumer,
      [...messageIds],
      new Date(this.#clock.now()).toISOString(),
    ]);
    return Number(rows[0]?.n ?? 0);
  }

  async purge(request: InboxPurgeRequest): Promise<number> {
    const count = async (sql: string, olderThan: Date, batchSize: number) =>
      Number((await this.#run("inbox purge", sql, [olderThan.toISOString(), batchSize]))[0]?.n ?? 0);
    return (await inboxHelpers()).purgeInBatches(request, {
      keys: (olderThan, batchSize) => count(this.#sql.purge, olderThan, batchSize),
      attempts: (olderThan, batchSize) => count(this.#sql.purgeAttempts, olderThan, batchSize),
    });
  }

  async stats(consumer?: string): Promise<InboxConsumerStats[]> {
    const { consumerStats, statsConsumer } = await inboxHelpers();
    const only = statsConsumer(consumer);
    const rows =
      only === undefined
        ? await this.#run("inbox stats", this.#sql.stats, [])
        : await this.#run("inbox stats", this.#sql.consumerStats, [only]);
    const time = (value: unknown) => (value === null || value === undefined ? null : new Date(Number(value)));
    return consumerStats(
      only,
      rows
        .filter((row) => row.status !== "failing")
        .map((row) => ({
          consumer: String(row.consumer),
          status: row.status === "dead" ? "dead" : "processed",
          count: Number(row.n),
          oldest: time(row.oldest),
          newest: time(row.newest),
        })),
      rows
        .filter((row) => row.status === "failing")
        .map((row) => ({ consumer: String(row.consumer), count: Number(row.n) })),
    );
  }

  /** Marks the store closed. Does not end the pool or db: they are yours. */
  async close(): Promise<void> {
    this.#closed = true;
  }

  async #run(operation: string, sql: string, params: unknown[]): Promise<Row[]> {
    this.#assertOpen();
    try {
      return (await this.#db.query(sql, params)).rows as Row[];
    } catch (error) {
      throw storeError(operation, error);
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError();
  }
}

/**
 * BEGIN, `work`, COMMIT on one connection; ROLLBACK when `work` throws. The handler's own error is rethrown
 * untouched (the inbox tells it apart from store failures); BEGIN/COMMIT failures become
 * OUTBOX_STORE_UNAVAILABLE.
 */
async function beginCommit<T>(
  client: Queryable,
  work: (tx: Queryable) => Promise<T>,
  onFailure: (error: unknown) => void,
): Promise<T> {
  try {
    await client.query("BEGIN");
  } catch (error) {
    onFailure(error);
    throw storeError("inbox BEGIN", error);
  }
  let result: T;
  try {
    result = await work(client);
  } catch (error) {
    await client.query("ROLLBACK").catch((rollbackError: unknown) => onFailure(rollbackError));
    throw error;
  }
  try {
    await client.query("COMMIT");
  } catch (error) {
    onFailure(error);
    // The outcome is unknown (the commit may have gone through): the redelivery finds out, deduped.
    throw storeError("inbox COMMIT", error);
  }
  return result;
}

/**
 * `stats()`: keys by consumer and status (from the consumer index alone), then failing messages (attempt counters
 * whose key is not there: a primary-key lookup each), in one snapshot. `$1` is the consumer, when `one`.
 */
export function inboxStatsSql(n: InboxSchemaNames, one: boolean): string {
  const t = n.qualifiedTable;
  const a = n.qualifiedAttempts;
  const ms = (value: string) => `round(extract(epoch FROM ${value}) * 1000)::float8`;
  return `SELECT consumer, status, count(*)::float8 AS n, ${ms("min(recorded_at)")} AS oldest,
      ${ms("max(recorded_at)")} AS newest
    FROM ${t} ${one ? "WHERE consumer = $1" : ""}
    GROUP BY consumer, status
    UNION ALL
    SELECT a.consumer, 'failing', count(*)::float8, NULL, NULL
    FROM ${a} a
    WHERE ${one ? "a.consumer = $1 AND" : ""}
      NOT EXISTS (SELECT 1 FROM ${t} k WHERE k.consumer = a.consumer AND k.message_id = a.message_id)
    GROUP BY a.consumer`;
}

function buildInboxStatements(n: InboxSchemaNames) {
  const t = n.qualifiedTable;
  const a = n.qualifiedAttempts;
  return {
    stats: inboxStatsSql(n, false),
    consumerStats: inboxStatsSql(n, true),
    // The dedupe: a primary-key insert in the handler's transaction. A concurrent delivery's insert of the
    // same key waits for this transaction and then does nothing (or inserts, when this one rolled back).
    // One row written on every message's path: attempt counters of keys handled in the end stay until purge
    // (stats ignore counters of recorded keys). A data-modifying WITH that also deleted them cost a quarter of the rate.
    record: `INSERT INTO ${t} (consumer, message_id, status, recorded_at) VALUES ($1, $2, 'processed', $3::timestamptz)
      ON CONFLICT (consumer, message_id) DO NOTHING
      RETURNING 1`,
    status: `SELECT status FROM ${t} WHERE consumer = $1 AND message_id = $2`,
    recordFailure: `INSERT INTO ${a} AS a (consumer, message_id, attempts, last_error, updated_at)
      VALUES ($1, $2, 1, $3, $4::timestamptz)
      ON CONFLICT (consumer, message_id) DO UPDATE
        SET attempts = a.attempts + 1, last_error = EXCLUDED.last_error, updated_at = EXCLUDED.updated_at
      RETURNING attempts`,
    deadLetter: `WITH dead AS (
      INSERT INTO ${t} AS t (consumer, message_id, status, recorded_at, attempts, last_error, message)
      VALUES ($1, $2, 'dead', $3::timestamptz, $4, $5, $6::json)
      ON CONFLICT (consumer, message_id) DO UPDATE
        SET recorded_at = EXCLUDED.recorded_at, attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error,
          message = EXCLUDED.message
        WHERE t.status = 'dead'
      RETURNING 1
    ),
    cleared AS (DELETE FROM ${a} WHERE consumer = $1 AND message_id = $2)
    SELECT (SELECT count(*) FROM dead)::int AS n`,
    listDead: `SELECT message_id, attempts, last_error, message::text AS message,
        (extract(epoch FROM recorded_at) * 1000)::float8 AS recorded_at
      FROM ${t}
      WHERE consumer = $1 AND status = 'dead' AND ($2::text IS NULL OR message_id > $2::text)
      ORDER BY message_id LIMIT $3`,
    requeueDead: `WITH gone AS (
      DELETE FROM ${t} WHERE consumer = $1 AND message_id = ANY($2::text[]) AND status = 'dead'
      RETURNING message_id
    ),
    cleared AS (DELETE FROM ${a} WHERE consumer = $1 AND message_id IN (SELECT message_id FROM gone))
    SELECT (SELECT count(*) FROM gone)::int AS n`,
    dropDead: `WITH dropped AS (
      UPDATE ${t} SET status = 'processed', message = NULL, recorded_at = $3::timestamptz
      WHERE consumer = $1 AND message_id = ANY($2::text[]) AND status = 'dead'
      RETURNING 1
    )
    SELECT (SELECT count(*) FROM dropped)::int AS n`,
    purge: `WITH doomed AS (
      SELECT consumer, message_id FROM ${t}
      WHERE status = 'processed' AND recorded_at < $1::timestamptz
      ORDER BY recorded_at
      LIMIT $2
      FOR UPDATE SKIP LOCKED
    ),
    gone AS (
      DELETE FROM ${t} o USING doomed d WHERE o.consumer = d.consumer AND o.message_id = d.message_id RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone)::int AS n`,
    purgeAttempts: `WITH doomed AS (
      SELECT consumer, message_id FROM ${a} WHERE updated_at < $1::timestamptz LIMIT $2 FOR UPDATE SKIP LOCKED
    ),
    gone AS (
      DELETE FROM ${a} o USING doomed d WHERE o.consumer = d.consumer AND o.message_id = d.message_id RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone)::int AS n`,
  };
}

/** Creates the PostgreSQL inbox store. Run `migrateInbox()` once first. */
export function createPostgresInboxStore(options: PostgresInboxStoreOptions): PostgresInboxStore {
  return new PostgresInboxStore(options);
}
