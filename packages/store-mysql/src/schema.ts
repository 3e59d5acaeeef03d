import { OutboxError, OutboxErrorCode } from "@outbox/core";
import { mysqlErrno } from "./errors.js";
import { type MySqlQueryable, runStatement } from "./queryable.js";

/** Where the outbox lives. Both names are validated and always quoted. */
export interface SchemaOptions {
  /** The database (MySQL's schema). Default: the connection's current database. */
  database?: string;
  /** Default "outbox". The fence table is `<table>_fence`. */
  table?: string;
}

/** Resolved, validated and quoted names of every object the store uses. */
export interface SchemaNames {
  readonly database: string | null;
  readonly table: string;
  /** `` `database`.`table` `` (or `` `table` ``), ready to splice into SQL. */
  readonly qualifiedTable: string;
  readonly qualifiedFence: string;
  readonly fenceTable: string;
}

const identifier = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** MySQL identifiers are at most 64 characters; the fence table adds 6. */
const maxTableLength = 58;

export function checkIdentifier(value: unknown, what: string, maxLength: number): string {
  if (typeof value !== "string" || !identifier.test(value) || value.length > maxLength) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `${what} must match ${identifier} and be at most ${maxLength} characters, got ${JSON.stringify(value)}`,
      { details: { option: what } },
    );
  }
  return value;
}

/** Quotes an identifier that already passed validation (so it holds no backtick). */
export function quoteIdent(name: string): string {
  return `\`${name}\``;
}

export function resolveNames(options: SchemaOptions = {}): SchemaNames {
  const database = options.database === undefined ? null : checkIdentifier(options.database, "database", 64);
  const table = checkIdentifier(options.table ?? "outbox", "table", maxTableLength);
  const prefix = database === null ? "" : `${quoteIdent(database)}.`;
  const fenceTable = `${table}_fence`;
  return {
    database,
    table,
    qualifiedTable: `${prefix}${quoteIdent(table)}`,
    qualifiedFence: `${prefix}${quoteIdent(fenceTable)}`,
    fenceTable,
  };
}

/** Index names (per table in MySQL, so fixed). The claim names them in FORCE INDEX hints. */
export const indexNames = {
  pending: "outbox_pending_idx",
  key: "outbox_key_idx",
  settled: "outbox_settled_idx",
} as const;

/**
 * The DDL of the outbox, idempotent (`IF NOT EXISTS`), as separate statements. Common subset of
 * MySQL 8.0 and MariaDB 10.6+.
 */
export function schemaStatements(options: SchemaOptions = {}): string[] {
  const n = resolveNames(options);
  return [
    `CREATE TABLE IF NOT EXISTS ${n.qualifiedTable} (
  id              BIGINT        NOT NULL AUTO_INCREMENT,
  topic           VARCHAR(1024) NOT NULL,
  entry_key       VARCHAR(1024) NULL,
  -- First 16 bytes of SHA-256 over the key's UTF-8 bytes, computed by the store: the index key of
  -- the key (a utf8mb4 VARCHAR(1024) is too long for an index). A collision only makes two keys
  -- share one order, never breaks either.
  key_hash        BINARY(16)    NULL,
  payload         LONGBLOB      NOT NULL,
  -- JSON text as UTF-8 bytes: byte for byte what was enqueued (MySQL's JSON type normalises).
  headers         LONGBLOB      NOT NULL,
  idempotency_key VARCHAR(1024) NULL,
  -- Times are milliseconds since the Unix epoch from the store's clock: no time zone anywhere.
  created_at      BIGINT        NOT NULL,
  available_at    BIGINT        NOT NULL,
  -- 0 pending, 1 published, 2 dead.
  status          TINYINT       NOT NULL DEFAULT 0,
  attempts        INT           NOT NULL DEFAULT 0,
  last_error      TEXT          NULL,
  claimed_by      VARCHAR(1024) NULL,
  lease_until     BIGINT        NULL,
  -- The fence the lease was taken under: a claim with a newer token of that lock takes it over.
  lease_lock      VARCHAR(255)  NULL,
  lease_token     DECIMAL(65,0) NULL,
  settled_at      BIGINT        NULL,
  PRIMARY KEY (id),
  -- Claim window and dead letters: entries of one status in id order.
  KEY ${indexNames.pending} (status, id),
  -- Key heads and runs (ordered range scans from a cursor) and keyless entries.
  KEY ${indexNames.key} (status, key_hash, id),
  -- Retention: settled entries by settle time (pending ones have none).
  KEY ${indexNames.settled} (settled_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin ROW_FORMAT=DYNAMIC`,
    `CREATE TABLE IF NOT EXISTS ${n.qualifiedFence} (
  -- Newest fencing token seen per lock name; claims and settles carrying an older one are refused.
  lock_name VARCHAR(255)  NOT NULL,
  token     DECIMAL(65,0) NOT NULL,
  PRIMARY KEY (lock_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`,
  ];
}

/** The DDL as one script. `sql/schema.sql` in the package is this text for the default names. */
export function schemaSql(options: SchemaOptions = {}): string {
  const n = resolveNames(options);
  return `-- @outbox/store-mysql schema v1 for ${n.qualifiedTable}. Idempotent: safe to run again.
-- MySQL 8.0+ / MariaDB 10.6+ (SKIP LOCKED), InnoDB, utf8mb4.

${schemaStatements(options).join(";\n\n")};
`;
}

/** Stable 31-bit hash of a string (FNV-1a), for lock names. */
export function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) & 0x7fffffff;
}

/** A mysql2/promise Pool, or anything that hands out connections with `getConnection()`. */
export interface ConnectionSource {
  getConnection(): Promise<MySqlQueryable & { release(): void }>;
}

/**
 * Creates the outbox table and the fence table if missing. Idempotent and safe to run from
 * several processes at once (serialised by `GET_LOCK`). `db` is a mysql2/promise Pool (a
 * connection is borrowed) or a Connection.
 */
export async function migrate(db: ConnectionSource | MySqlQueryable, options: SchemaOptions = {}): Promise<void> {
  const n = resolveNames(options);
  await runMigration(db, `${n.database ?? ""}.${n.table}`, n.qualifiedTable, schemaStatements(options));
}

/**
 * A DDL statement of a migration. An upgrade step of a table an older version created (`ALTER TABLE ... ADD`) says
 * which error number means it was done already (MySQL 8.0 has no `ADD COLUMN IF NOT EXISTS`): it is then skipped.
 */
export type MigrationStatement = string | { readonly sql: string; readonly doneErrno: number };

/**
 * Runs DDL `statements` under a `GET_LOCK` named after `lockKey` (so concurrent migrations of one table wait
 * for each other), on a connection borrowed from `db` when it is a pool. Failures become
 * OUTBOX_STORE_UNAVAILABLE naming `qualifiedTable`.
 */
export async function runMigration(
  db: ConnectionSource | MySqlQueryable,
  lockKey: string,
  qualifiedTable: string,
  statements: readonly MigrationStatement[],
): Promise<void> {
  const lockName = `outbox-migrate-${fnv1a(lockKey).toString(36)}`;
  const pooled = typeof (db as Partial<ConnectionSource>).getConnection === "function";
  let conn: (MySqlQueryable & { release?(): void }) | undefined;
  try {
    conn = pooled ? await (db as ConnectionSource).getConnection() : (db as MySqlQueryable);
    await runStatement(conn, "SELECT GET_LOCK(?, 60) AS locked", [lockName]);
    try {
      for (const statement of statements) {
        if (typeof statement === "string") {
          await runStatement(conn, statement);
          continue;
        }
        try {
          await runStatement(conn, statement.sql);
        } catch (error) {
          if (mysqlErrno(error) !== statement.doneErrno) throw error;
        }
      }
    } finally {
      await runStatement(conn, "SELECT RELEASE_LOCK(?) AS released", [lockName]).catch(() => undefined);
    }
  } catch (cause) {
    if (OutboxError.is(cause)) throw cause;
    throw new OutboxError(OutboxErrorCode.StoreUnavailable, `migrating ${qualifiedTable} failed`, { cause });
  } finally {
    if (pooled) conn?.release?.();
  }
}
