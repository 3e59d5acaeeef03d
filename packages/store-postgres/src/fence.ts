import type { SchemaNames } from "./schema.js";

/**
 * Fencing inside a statement, with the lock name at `$k` and the token at `$k+1` (they always come
 * last: see PostgresStore#run).
 *
 * A statement carrying the token the table already records only reads the fence row: it never
 * locks it, so a slow statement cannot hold up the claims and acks of every other relay. Only a
 * newer token's first statement writes the row (the upsert keeps the greater token and returns
 * it, so a refusal reports the true newest token even when a newer leader's statement committed
 * a moment ago). A statement that read an older snapshot of the row than a newer leader's commit
 * takes effect as if it had committed just before it: every entry it touches is re-checked under
 * its row lock, so it can never take over a lease taken under the newer token.
 */
export function fenceCte(n: SchemaNames, k: number): string {
  return `fence_seen AS MATERIALIZED (
    SELECT token FROM ${n.qualifiedFence} WHERE lock_name = $${k}
  ),
  fence_bump AS (
    INSERT INTO ${n.qualifiedFence} AS f (lock_name, token)
    SELECT $${k}, $${k + 1}::numeric WHERE NOT EXISTS (SELECT 1 FROM fence_seen WHERE token >= $${k + 1}::numeric)
    ON CONFLICT (lock_name) DO UPDATE SET token = greatest(f.token, excluded.token)
    RETURNING token
  ),
  fence AS MATERIALIZED (
    SELECT coalesce((SELECT token FROM fence_bump), (SELECT token FROM fence_seen)) AS token
  )`;
}

/** `fence_ok` (1 when the statement's token is the newest) and `newest_token`, for the refusal. */
export function fenceColumns(k: number): string {
  return `(SELECT count(*) FROM fence WHERE token = $${k + 1}::numeric)::int AS fence_ok,
    (SELECT token::text FROM fence) AS newest_token`;
}

/** A WHERE condition that holds only when the statement's token is the newest. */
export function fenceGuard(k: number): string {
  return `AND EXISTS (SELECT 1 FROM fence WHERE token = $${k + 1}::numeric)`;
}
