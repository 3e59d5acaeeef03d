import { OutboxError, OutboxErrorCode } from "@outbox/core";

/**
 * The one seam between `enqueue` and a MySQL driver: something that runs one statement with `?`
 * placeholders on the connection of your transaction. A mysql2/promise `PoolConnection` or
 * `Connection` fits as it is (its `[rows | ResultSetHeader, fields]` answer is understood), and
 * so does a `mariadb` connection; the `from*` adapters below wrap query builders and ORMs.
 */
export interface MySqlQueryable {
  query(sql: string, values?: unknown[]): Promise<unknown>;
}

export type Row = Record<string, unknown>;

/** What the store reads from any driver's answer. */
export interface StatementResult {
  rows: Row[];
  /** The first AUTO_INCREMENT id of an INSERT, when the driver reports it. */
  insertId?: bigint;
  affectedRows?: number;
}

function isHeader(value: unknown): value is { insertId?: unknown; affectedRows?: unknown } {
  return (
    typeof value === "object" &&
    value !== null &&
    !Array.isArray(value) &&
    ("affectedRows" in value || "insertId" in value) &&
    !("rows" in value)
  );
}

function toBigint(value: unknown): bigint | undefined {
  if (typeof value === "bigint") return value;
  if (typeof value === "number" && Number.isInteger(value)) return BigInt(value);
  if (typeof value === "string" && /^[0-9]+$/.test(value)) return BigInt(value);
  return undefined;
}

/**
 * Normalises the answers of mysql2 (`[rows, fields]` / `[ResultSetHeader, undefined]`), mariadb
 * (rows / OkPacket), TypeORM and Sequelize (the driver's own), Kysely (`{ rows, insertId }`) and
 * Prisma (`$executeRaw`'s count).
 */
export function normalizeResult(raw: unknown): StatementResult {
  if (typeof raw === "number") return { rows: [], affectedRows: raw };
  if (Array.isArray(raw)) {
    const first = raw[0];
    if (Array.isArray(first)) return { rows: first as Row[] };
    if (isHeader(first)) return headerResult(first);
    return { rows: raw as Row[] };
  }
  if (isHeader(raw)) return headerResult(raw);
  if (typeof raw === "object" && raw !== null && Array.isArray((raw as { rows?: unknown }).rows)) {
    const result = raw as { rows: Row[]; insertId?: unknown; numAffectedRows?: unknown };
    const affected = toBigint(result.numAffectedRows);
    return {
      rows: result.rows,
      insertId: toBigint(result.insertId),
      affectedRows: affected === undefined ? undefined : Number(affected),
    };
  }
  throw new OutboxError(OutboxErrorCode.StoreUnavailable, "the driver returned an answer the store cannot read");
}

function headerResult(header: { insertId?: unknown; affectedRows?: unknown }): StatementResult {
  const insertId = toBigint(header.insertId);
  return {
    rows: [],
    insertId: insertId === undefined || insertId === 0n ? undefined : insertId,
    affectedRows: Number(header.affectedRows ?? 0),
  };
}

/** Runs one statement and normalises the answer. */
export async function runStatement(db: MySqlQueryable, sql: string, values: unknown[] = []): Promise<StatementResult> {
  const pending = db.query(sql, values) as unknown;
  if (typeof (pending as { then?: unknown } | null)?.then !== "function") {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      "query() did not return a promise: pass a mysql2/promise connection (require('mysql2/promise')), not a callback one",
    );
  }
  return normalizeResult(await pending);
}

/** A Knex transaction (or Knex instance) on the mysql2 client: `trx.raw(sql, bindings)`. */
export interface KnexLike {
  raw(sql: string, bindings: readonly unknown[]): PromiseLike<unknown>;
}

/** Adapts a Knex transaction: `store.enqueue(fromKnex(trx), messages)`. Knex answers with mysql2's tuple. */
export function fromKnex(trx: KnexLike): MySqlQueryable {
  return { query: async (sql, values = []) => trx.raw(sql, values) };
}

/** A Kysely transaction (or instance) with the MySQL dialect, and Kysely's `CompiledQuery` class. */
export interface KyselyLike<Compiled> {
  executeQuery(query: Compiled): PromiseLike<unknown>;
}
export interface KyselyCompiledQueryFactory<Compiled> {
  raw(sql: string, parameters?: unknown[]): Compiled;
}

/**
 * Adapts a Kysely transaction: `store.enqueue(fromKysely(trx, CompiledQuery), messages)`, with
 * `CompiledQuery` imported from "kysely" (passed in so this package does not depend on Kysely).
 */
export function fromKysely<Compiled>(
  trx: KyselyLike<Compiled>,
  compiledQuery: KyselyCompiledQueryFactory<Compiled>,
): MySqlQueryable {
  return { query: async (sql, values = []) => trx.executeQuery(compiledQuery.raw(sql, values)) };
}

/** A Drizzle transaction on mysql2 (`tx.execute(query)` answers with mysql2's tuple). */
export interface DrizzleLike<Query> {
  execute(query: Query): PromiseLike<unknown>;
}
/** Drizzle's `sql` tag (imported from "drizzle-orm"), as far as the adapter needs it. */
export interface DrizzleSqlTag<Query, Chunk> {
  raw(text: string): Chunk;
  param(value: unknown): Chunk;
  join(chunks: Chunk[]): Query;
}

/**
 * Adapts a Drizzle transaction: `store.enqueue(fromDrizzle(tx, sql), messages)`, with `sql`
 * imported from "drizzle-orm". The store's statements hold `?` only as placeholders.
 */
export function fromDrizzle<Query, Chunk>(tx: DrizzleLike<Query>, sql: DrizzleSqlTag<Query, Chunk>): MySqlQueryable {
  return {
    async query(text, values = []) {
      const parts = text.split("?");
      const chunks: Chunk[] = [];
      parts.forEach((part, i) => {
        chunks.push(sql.raw(part));
        if (i < parts.length - 1) chunks.push(sql.param(values[i]));
      });
      return tx.execute(sql.join(chunks));
    },
  };
}

/** A Prisma interactive transaction client (`prisma.$transaction(async (tx) => ...)`). */
export interface PrismaLike {
  $queryRawUnsafe(query: string, ...values: unknown[]): PromiseLike<unknown>;
  $executeRawUnsafe(query: string, ...values: unknown[]): PromiseLike<number>;
}

/**
 * Adapts a Prisma transaction client (driver adapter `@prisma/adapter-mariadb`, which also
 * serves MySQL): `store.enqueue(fromPrisma(tx), messages)`. Prisma's raw execute reports no
 * insert id; the store then reads `LAST_INSERT_ID()` on the same transaction.
 */
export function fromPrisma(tx: PrismaLike): MySqlQueryable {
  return {
    async query(sql, values = []) {
      if (/^\s*(INSERT|UPDATE|DELETE)\b/i.test(sql)) return tx.$executeRawUnsafe(sql, ...values);
      return tx.$queryRawUnsafe(sql, ...values);
    },
  };
}

/** A TypeORM `EntityManager` of `dataSource.transaction(...)` or a `QueryRunner` inside a transaction. */
export interface TypeOrmLike {
  query(sql: string, parameters?: unknown[]): Promise<unknown>;
}

/** Adapts TypeORM: `store.enqueue(fromTypeORM(manager), messages)` (mysql2 driver). */
export function fromTypeORM(manager: TypeOrmLike): MySqlQueryable {
  return { query: (sql, values = []) => manager.query(sql, values) };
}

/** A Sequelize instance, as far as the adapter needs it (`sequelize.query(sql, options)`). */
export interface SequelizeLike {
  query(sql: string, options: object): Promise<unknown>;
}

/**
 * Adapts a Sequelize managed or unmanaged transaction (mysql or mariadb dialect):
 * `store.enqueue(fromSequelize(sequelize, t), messages)`. Values go as replacements (Sequelize
 * escapes them; Buffers become hex literals). Sequelize answers an INSERT with
 * `[insertId, affectedRows]` and a raw SELECT with `[rows, rows]`.
 */
export function fromSequelize(sequelize: SequelizeLike, transaction: unknown): MySqlQueryable {
  return {
    async query(sql, values = []) {
      const answer = await sequelize.query(sql, { replacements: values, transaction, type: "RAW", raw: true });
      if (Array.isArray(answer) && typeof answer[0] === "number" && typeof answer[1] === "number") {
        return { insertId: answer[0], affectedRows: answer[1] };
      }
      return Array.isArray(answer) ? answer[0] : answer;
    },
  };
}
