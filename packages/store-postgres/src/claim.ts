import { fenceColumns, fenceCte, fenceGuard } from "./fence.js";
import type { SchemaNames } from "./schema.js";

/** The claim reads the oldest `limit x this` pending entries... */
export const nearWindowFactor = 4;
/** ...and, only when they hold fewer than `limit` claimable entries, the next `limit x this`. */
export const farWindowFactor = 16;
/** ...and, only when both still hold fewer, the heads of up to `limit x this` keys past them. */
export const walkFactor = 4;

// The byte count lets the client decode the base64 payload straight into the entry's own array.
export const entryColumns = (alias: string) => `${alias}.id::text AS id, ${alias}.topic, ${alias}.key,
  encode(${alias}.payload, 'base64') AS payload, length(${alias}.payload) AS payload_bytes,
  ${alias}.headers::text AS headers, coalesce(${alias}.idempotency_key, ${alias}.id::text) AS idempotency_key,
  (extract(epoch FROM ${alias}.created_at) * 1000)::float8 AS created_at,
  (extract(epoch FROM ${alias}.available_at) * 1000)::float8 AS available_at,
  ${alias}.attempts, ${alias}.last_error`;

/**
 * The claim, one statement. Parameters: $1 now, $2 lease end, $3 claimer, $4 the key the walk
 * starts at ('' for the first), $5 the id the keyless look-ahead starts after (0 for the first),
 * then the fence ($6 lock, $7 token). `limit` is written into the
 * text, so every plan, generic or not, knows how few rows each step reads. Result rows are the
 * claimed entries, each also carrying `walk_next` (see step 4) and, fenced, the fence columns.
 *
 * Its cost is bounded by `limit` whatever the planner believes about the table: every step is a
 * LIMITed scan in the order of one index (pending entries by id, or by key then id), a sort of
 * rows already read, or a lookup by ctid or id. No join strategy is left to the planner, and no
 * step can be answered without a sort by any index but the one it is written for (the trap of a
 * plan built on stale statistics).
 *
 * 1. `near`: the oldest `4 x limit` pending entries, in id order. No pending entry lies below the
 *    oldest one, so the entries of a key in the window are the first pending entries of that key,
 *    in order: a key's run can be read off the window alone, with no probe per key.
 * 2. An entry is open when it and every earlier entry of its key in the window are claimable
 *    (available, and unleased, lease expired, or leased under an older token of this lock). A key
 *    whose head is leased or waiting for a retry is closed entirely.
 * 3. Only when `near` holds fewer than `limit` open entries (its keys are held by another relay,
 *    frozen or not, or wait for a retry), the claim looks past it, so keys held back behind a wall
 *    of blocked entries still move:
 *    - `walk` visits up to `4 x limit` distinct keys in key order from `$4`, one index probe each,
 *      for their heads; `walk_next` is where the next walk starts (NULL: no walk ran, '': this one
 *      reached the last key);
 *    - `far`: only when the walk found claimable heads past `near` (a lone hot key held by this
 *      very relay finds none, and costs nothing more), the next `16 x limit` pending entries, so
 *      keys behind the wall move in runs; (1, 2) hold for both windows together;
 *    - walk heads past both windows go one entry per key and claim;
 *    - `keyless` reads `16 x limit` keyless entries past the windows, each a run of its own,
 *      from where the last one stopped (`keyless_next`, like `walk_next`; '0': start over).
 * 4. Open entries are locked one by one in id order, through the ctid the scan saw (a nested
 *    loop over the candidates: a LATERAL leaves the planner no other way), skipping rows another
 *    claim holds, until `limit` are locked. A row updated since is followed to its newest
 *    version and checked again, as any FOR UPDATE does.
 * 5. A key's run stops before its first open entry that was not locked, so two claims never
 *    share a key; what remains is leased.
 */
export function claimSql(n: SchemaNames, limit: number, fenced: boolean): string {
  const t = n.qualifiedTable;
  const walkSteps = limit * walkFactor;
  const keylessRows = limit * farWindowFactor;
  const claimable = (a: string) => `${a}.available_at <= $1::timestamptz
      AND (${a}.lease_until IS NULL OR ${a}.lease_until <= $1::timestamptz${
        fenced ? ` OR (${a}.lease_lock = $6 AND ${a}.lease_token < $7::numeric)` : ""
      })`;
  const guard = fenced ? fenceGuard(6) : "";
  // A keyed entry belongs to its key's run; a keyless entry is a run of its own.
  const byRun = `PARTITION BY key COLLATE "C", (CASE WHEN key IS NULL THEN id END) ORDER BY id`;
  const byId = (condition: string, rows: number) => `SELECT o.id, o.key, o.ctid AS row, ${claimable("o")} AS ok
    FROM ${t} o
    WHERE o.status = 'pending' ${condition} ${guard}
    ORDER BY o.id LIMIT ${rows}`;
  // "settled_at IS NULL" (pending, said otherwise) matches the predicate of the (key, id) index
  // and not the one of the pending index, and ORDER BY key, id (no equality on key) is an order
  // only that index yields without a sort: the planner has one index to walk keys with. No pending
  // entry lies below the oldest one, so index entries of settled rows below it (not yet vacuumed)
  // are passed over inside the index, without a visit to the table.
  const nextKey = (from: string) => `SELECT o.key, o.id, o.ctid AS row, ${claimable("o")} AS ok
      FROM ${t} o
      WHERE o.settled_at IS NULL AND o.key IS NOT NULL AND ${from}
        AND o.id >= (SELECT min(id) FROM near) ${guard}
      ORDER BY o.key, o.id LIMIT 1`;
  return `WITH RECURSIVE ${fenced ? `${fenceCte(n, 6)},` : ""}
  near AS MATERIALIZED (${byId("", limit * nearWindowFactor)}),
  look AS MATERIALIZED (
    SELECT count(*) FILTER (WHERE open) < ${limit} AS past_near
    FROM (SELECT bool_and(ok) OVER (${byRun}) AS open FROM near) r
  ),
  walk AS (
    SELECT 1 AS step, s.* FROM (${nextKey("o.key >= $4 AND (SELECT past_near FROM look)")}) s
    UNION ALL
    SELECT w.step + 1, s.* FROM walk w CROSS JOIN LATERAL (${nextKey("o.key > w.key")}) s
    WHERE w.step < ${walkSteps}
  ),
  far AS MATERIALIZED (${byId(
    `AND o.id > (SELECT max(id) FROM near)
      AND EXISTS (SELECT 1 FROM walk WHERE ok AND id > (SELECT max(id) FROM near))`,
    limit * farWindowFactor,
  )}),
  windows AS MATERIALIZED (
    SELECT id, key, row, bool_and(ok) OVER (${byRun}) AS open
    FROM (SELECT * FROM near UNION ALL SELECT * FROM far) w
  ),
  keyless AS MATERIALIZED (
    SELECT o.id, o.key, o.ctid AS row, ${claimable("o")} AS ok
    FROM ${t} o
    WHERE o.settled_at IS NULL AND o.key IS NULL AND o.id > greatest((SELECT max(id) FROM windows), $5::bigint)
      AND (SELECT past_near FROM look) ${guard}
    ORDER BY o.key, o.id LIMIT ${keylessRows}
  ),
  candidates AS MATERIALIZED (
    SELECT id, key, row FROM windows WHERE open
    UNION ALL
    SELECT id, key, row FROM walk WHERE ok AND id > (SELECT max(id) FROM windows)
    UNION ALL
    SELECT id, key, row FROM keyless WHERE ok
  ),
  locked AS MATERIALIZED (
    SELECT l.id FROM (SELECT row FROM candidates ORDER BY id) c
    CROSS JOIN LATERAL (
      SELECT o.id FROM ${t} o
      WHERE o.ctid = c.row AND o.status = 'pending' AND ${claimable("o")}
      FOR UPDATE OF o SKIP LOCKED
    ) l
    LIMIT ${limit}
  ),
  chosen AS (
    SELECT id FROM (
      SELECT id, bool_and(id = ANY (ARRAY(SELECT id FROM locked))) OVER (${byRun}) AS kept FROM candidates
    ) r
    WHERE kept
  ),
  claimed AS (
    UPDATE ${t} o SET attempts = o.attempts + 1, claimed_by = $3, lease_until = $2::timestamptz,
      lease_lock = ${fenced ? "$6" : "NULL"}, lease_token = ${fenced ? "$7::numeric" : "NULL"}
    WHERE o.id = ANY (ARRAY(SELECT id FROM chosen))
    RETURNING o.*
  )
  SELECT ${fenced ? `${fenceColumns(6)},` : ""} ${entryColumns("c")},
    (SELECT CASE WHEN NOT (SELECT past_near FROM look) THEN NULL
      WHEN count(*) < ${walkSteps} THEN '' ELSE max(key) END FROM walk) AS walk_next,
    (SELECT CASE WHEN NOT (SELECT past_near FROM look) THEN NULL
      WHEN count(*) < ${keylessRows} THEN '0' ELSE max(id)::text END FROM keyless) AS keyless_next
  FROM (SELECT 1) AS one LEFT JOIN claimed c ON true
  ORDER BY c.id`;
}
