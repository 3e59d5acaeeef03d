/**
 * The one seam between the store and a PostgreSQL driver: something that runs a statement
 * with `$1`-style parameters and returns its rows. A pg `Pool`, `PoolClient` and `Client`,
 * a PGlite instance and a PGlite transaction all fit as they are.
 */
export interface Queryable {
  query(text: string, params?: unknown[]): Promise<{ rows: unknown[] }>;
}

/** Something that runs a multi-statement script without parameters (PGlite's `exec`). */
export interface ScriptRunner {
  exec(text: string): Promise<unknown>;
}

/** Runs a parameterless multi-statement script as one implicit transaction. */
export async function runScript(db: Queryable | ScriptRunner, script: string): Promise<void> {
  // PGlite's query() uses the extended protocol (one statement); exec() the simple one.
  // pg's query() without parameters uses the simple protocol.
  if (typeof (db as Partial<ScriptRunner>).exec === "function") {
    await (db as ScriptRunner).exec(script);
  } else {
    await (db as Queryable).query(script);
  }
}

/** A PostgreSQL array literal of strings/nulls/numbers (what the store's array parameters hold). */
export function arrayLiteral(values: readonly unknown[]): string {
  const items = values.map((value) =>
    value === null || value === undefined
      ? "NULL"
      : `"${String(value).replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`,
  );
  return `{${items.join(",")}}`;
}

/** A Knex transaction (or Knex instance): `trx.raw(sql, bindings)`. */
export interface KnexLike {
  raw(sql: string, bindings: readonly unknown[]): PromiseLike<unknown>;
}

/**
 * Adapts a Knex transaction: `store.enqueue(fromKnex(trx), messages)`.
 * Knex binds `?` placeholders; the store's statements use `$n` and contain no `?`.
 */
export function fromKnex(trx: KnexLike): Queryable {
  return {
    async query(text, params = []) {
      const bindings: unknown[] = [];
      const sql = text.replace(/\$(\d+)/g, (_, index: string) => {
        const value = params[Number(index) - 1];
        // Knex expands array bindings into lists; send arrays as PostgreSQL array literals.
        bindings.push(Array.isArray(value) ? arrayLiteral(value) : value);
        return "?";
      });
      const result = (await trx.raw(sql, bindings)) as { rows?: unknown[] };
      return { rows: result.rows ?? [] };
    },
  };
}

/** A Prisma interactive transaction client (`prisma.$transaction(async (tx) => ...)`). */
export interface PrismaLike {
  $queryRawUnsafe(query: string, ...values: unknown[]): PromiseLike<unknown>;
}

/** Adapts a Prisma transaction client: `store.enqueue(fromPrisma(tx), messages)`. */
export function fromPrisma(tx: PrismaLike): Queryable {
  return {
    async query(text, params = []) {
      return { rows: (await tx.$queryRawUnsafe(text, ...params)) as unknown[] };
    },
  };
}

/** A Kysely transaction (or Kysely instance) and Kysely's `CompiledQuery` class. */
export interface KyselyLike<Compiled> {
  executeQuery(query: Compiled): PromiseLike<{ rows: unknown[] }>;
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
): Queryable {
  return {
    async query(text, params = []) {
      const result = await trx.executeQuery(compiledQuery.raw(text, params));
      return { rows: [...result.rows] };
    },
  };
}

/** A Drizzle transaction on node-postgres or PGlite (`tx.execute(query)` resolves to `{ rows }`). */
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
 * imported from "drizzle-orm" (passed in so this package does not depend on Drizzle).
 */
export function fromDrizzle<Query, Chunk>(tx: DrizzleLike<Query>, sql: DrizzleSqlTag<Query, Chunk>): Queryable {
  return {
    async query(text, params = []) {
      const chunks: Chunk[] = [];
      let last = 0;
      for (const match of text.matchAll(/\$(\d+)/g)) {
        chunks.push(sql.raw(text.slice(last, match.index)));
        chunks.push(sql.param(params[Number(match[1]) - 1]));
        last = match.index + match[0].length;
      }
      chunks.push(sql.raw(text.slice(last)));
      const result = (await tx.execute(sql.join(chunks))) as { rows?: unknown[] } | unknown[];
      return { rows: Array.isArray(result) ? result : (result.rows ?? []) };
    },
  };
}
