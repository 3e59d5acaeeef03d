import type { DeadLetterFilter } from "@outbox/core";
import { indexNames, type SchemaNames } from "./schema.js";

/** A text value as UTF-8 bytes, re-read as utf8mb4 by the server: immune to the connection's charset. */
export const TXT = "CONVERT(? USING utf8mb4) COLLATE utf8mb4_bin";

/**
 * The ranges of key_hash (by its first byte) a claim reads the key index in past its window, each
 * from its own cursor: `pastWindow` is a UNION of one range scan per slice.
 */
export const slices = 8;

export type Dialect = "mariadb" | "mysql";

/**
 * Gives a claim's statement the server-side timeout: MariaDB stops any statement
 * (`SET STATEMENT max_statement_time`, seconds); MySQL 8 only SELECTs that lock nothing
 * (`MAX_EXECUTION_TIME`, ms), the claim's reads (its writes go by primary key, and its locking
 * read skips locked rows instead of waiting).
 */
export function withTimeout(dialect: Dialect, timeoutMs: number, sql: string, kind: "read" | "write"): string {
  if (dialect === "mariadb") return `SET STATEMENT max_statement_time = ${timeoutMs / 1000} FOR ${sql}`;
  return kind === "read" ? sql.replace("SELECT ", `SELECT /*+ MAX_EXECUTION_TIME(${timeoutMs}) */ `) : sql;
}

function placeholders(count: number): string {
  return Array.from({ length: count }, () => "?").join(", ");
}

/** Every statement the store runs, built once per table (identifiers are validated and quoted). */
export function buildStatements(n: SchemaNames) {
  const t = n.qualifiedTable;
  const state = (a: string) => `CAST(${a}.id AS CHAR) AS id, ${a}.key_hash, ${a}.available_at, ${a}.lease_until,
    CAST(${a}.lease_lock AS BINARY) AS lease_lock, CAST(${a}.lease_token AS CHAR) AS lease_token`;
  // Columns are always qualified: MySQL resolves an unqualified ORDER BY id to the text alias.
  const entry = `CAST(o.id AS CHAR) AS id, CAST(o.topic AS BINARY) AS topic, CAST(o.entry_key AS BINARY) AS entry_key,
    o.key_hash, o.payload, o.headers, CAST(o.idempotency_key AS BINARY) AS idempotency_key, o.created_at,
    o.available_at, o.status, o.attempts, CAST(o.last_error AS BINARY) AS last_error, o.lease_until,
    CAST(o.lease_lock AS BINARY) AS lease_lock, CAST(o.lease_token AS CHAR) AS lease_token`;
  const columns =
    "(topic, entry_key, key_hash, payload, headers, idempotency_key, created_at, available_at, claimed_by)";
  const valueRow = `(${TXT}, ${TXT}, ?, ?, ?, ${TXT}, ?, ?, ${TXT})`;
  // Params: now, now, fence lock (NULL without a fence), fence token (NULL without a fence).
  const claimableSql = (a: string) => `${a}.available_at <= ? AND (${a}.lease_until IS NULL OR ${a}.lease_until <= ?
    OR (${a}.lease_lock = ${TXT} AND ${a}.lease_token < CAST(? AS DECIMAL(65,0))))`;
  const inList = (count: number) => `(${placeholders(count)})`;
  // Pending entries, as a range the optimizer can only scan as a range: with `status = 0` it may
  // plan a ref scan of (status) or (status, key_hash) from the first matching entry, filtering
  // the rest of the condition, which statistics taken on an empty table make look cheap
  // (measured on MariaDB 10.11: 26,911 index reads instead of 511 for one slice of the slab).
  // Each read past the window then orders by the whole index, so no sort is needed either
  // (`<=> NULL`, not `IS NULL`, for the same reason).
  const pendingRange = "status >= 0 AND status <= 0";
  // A statement carrying a fence checks it in its WHERE clause: the token must be the newest
  // recorded (params: lock, token, appended last).
  const fenceCheck = (fenced: boolean) =>
    fenced
      ? ` AND (SELECT f.token FROM ${n.qualifiedFence} f WHERE f.lock_name = ${TXT}) <= CAST(? AS DECIMAL(65,0))`
      : "";
  const caseById = (count: number, value: string) =>
    `CASE id ${Array.from({ length: count }, () => `WHEN ? THEN ${value}`).join(" ")} END`;

  return {
    insert: (count: number) =>
      `INSERT INTO ${t} ${columns} VALUES ${Array.from({ length: count }, () => valueRow).join(", ")}`,
    // LAST_INSERT_ID() is the statement's first id on this connection; the marker picks its rows.
    insertedIds: `SELECT CAST(o.id AS CHAR) AS id FROM ${t} o
      WHERE o.id >= LAST_INSERT_ID() AND o.claimed_by = ${TXT} ORDER BY o.id`,
    // The oldest pending entries: an ordered range scan of (status, id) with LIMIT.
    window: `SELECT ${state("o")} FROM ${t} o FORCE INDEX (${indexNames.pending})
      WHERE o.status = 0 ORDER BY o.id LIMIT ?`,
    // Past the window, two bounded reads in one statement. The heads of the keys in the next
    // slab of the key index: in each of `slices` ranges of key_hash, the entries after that
    // range's cursor (index only). Each slice starts at a key boundary, so a key's first entry in
    // it is its head; the slices are grouped per key (`slab` counts the key's entries read) and
    // joined in that order (STRAIGHT_JOIN) to the rows by primary key. Then the next keyless
    // entries after the keyless cursor.
    pastWindow: `SELECT ${state("o")}, h.slab FROM (
        SELECT s.key_hash, MIN(s.id) AS id, COUNT(*) AS slab FROM (${Array.from(
          { length: slices },
          () => `(SELECT key_hash, id FROM ${t} FORCE INDEX (${indexNames.key})
            WHERE ${pendingRange} AND key_hash > ? AND key_hash < ? ORDER BY status, key_hash, id LIMIT ?)`,
        ).join(" UNION ALL ")}) s GROUP BY s.key_hash
      ) h STRAIGHT_JOIN ${t} o FORCE INDEX (PRIMARY) ON o.id = h.id
      UNION ALL (SELECT ${state("o")}, 0 AS slab FROM ${t} o FORCE INDEX (${indexNames.key})
        WHERE ${pendingRange.replaceAll("status", "o.status")} AND o.key_hash <=> NULL AND o.id > ?
        ORDER BY o.status, o.key_hash, o.id LIMIT ?)`,
    // One range scan with LIMIT per key, after the key's head or after the window's edge.
    runs: (keys: number) =>
      Array.from(
        { length: keys },
        () => `(SELECT ${state("o")} FROM ${t} o FORCE INDEX (${indexNames.key})
          WHERE ${pendingRange.replaceAll("status", "o.status")} AND o.key_hash = ? AND o.id > ?
          ORDER BY o.status, o.key_hash, o.id LIMIT ?)`,
      ).join(" UNION ALL "),
    // Params: the ids, the claimable params, how many. The first lockable candidates in id order,
    // skipping rows other claims hold; rows the WHERE clause rejects are not kept locked (READ
    // COMMITTED) nor counted.
    lockRows: (count: number) => `SELECT ${entry} FROM ${t} o FORCE INDEX (PRIMARY)
      WHERE o.id IN ${inList(count)} AND o.status = 0 AND ${claimableSql("o")} ORDER BY o.id LIMIT ?
      FOR UPDATE SKIP LOCKED`,
    lease: (count: number, fenced: boolean) => `UPDATE ${t} FORCE INDEX (PRIMARY) SET attempts = attempts + 1,
      claimed_by = ${TXT}, lease_until = ?, lease_lock = ${TXT}, lease_token = CAST(? AS DECIMAL(65,0))
      WHERE id IN ${inList(count)}${fenceCheck(fenced)}`,
    fenceUpsert: `INSERT INTO ${n.qualifiedFence} (lock_name, token) VALUES (${TXT}, CAST(? AS DECIMAL(65,0)))
      ON DUPLICATE KEY UPDATE token = GREATEST(token, CAST(? AS DECIMAL(65,0)))`,
    fenceRead: `SELECT CAST(token AS CHAR) AS token FROM ${n.qualifiedFence} WHERE lock_name = ${TXT}`,
    ack: (count: number, fenced: boolean) => `UPDATE ${t} FORCE INDEX (PRIMARY) SET status = 1, settled_at = ?,
      lease_until = NULL WHERE id IN ${inList(count)} AND status = 0${fenceCheck(fenced)}`,
    retry: (count: number, fenced: boolean) => `UPDATE ${t} FORCE INDEX (PRIMARY) SET
      last_error = ${caseById(count, TXT)}, available_at = ${caseById(count, "?")}, lease_until = NULL,
      claimed_by = NULL, lease_lock = NULL, lease_token = NULL
      WHERE id IN ${inList(count)} AND status = 0 AND claimed_by = ${TXT}${fenceCheck(fenced)}`,
    deadLetter: (count: number, fenced: boolean) => `UPDATE ${t} FORCE INDEX (PRIMARY) SET status = 2,
      last_error = ${caseById(count, TXT)}, settled_at = ?, lease_until = NULL
      WHERE id IN ${inList(count)} AND status = 0 AND claimed_by = ${TXT}${fenceCheck(fenced)}`,
    release: (count: number, fenced: boolean) => `UPDATE ${t} FORCE INDEX (PRIMARY) SET
      attempts = GREATEST(attempts - 1, 0), lease_until = NULL, claimed_by = NULL, lease_lock = NULL, lease_token = NULL
      WHERE id IN ${inList(count)} AND status = 0 AND claimed_by = ${TXT}${fenceCheck(fenced)}`,
    // One claimer's rows have no index of their own: a consistent read of the pending entries
    // (no locks; a claim whose reply was lost is rare, and its entries are among the oldest).
    heldBy: `SELECT CAST(o.id AS CHAR) AS id FROM ${t} o FORCE INDEX (${indexNames.pending})
      WHERE o.status = 0 AND o.claimed_by = ${TXT} ORDER BY o.id`,
    // Dead entries in id order: through (status, id), or with a key filter through (status, key_hash,
    // id), that key's dead entries only. Topic and error text are checked on each row the scan
    // reaches until the page is full (no index serves them; dead entries are few next to the
    // table). Topic and key compare as bytes: utf8mb4_bin pads with spaces ('k1' = 'k1 '). The
    // error text is lowered by utf8mb4's rules on both sides and matched with LIKE, '!' escaping
    // its wildcards. Params: [key hash, key], after, [topic], [pattern], limit.
    listDead: (filter: DeadLetterFilter) => {
      const where = ["o.status = 2"];
      if (filter.key === null) where.push("o.key_hash <=> NULL");
      else if (filter.key !== undefined) where.push("o.key_hash = ?", "CAST(o.entry_key AS BINARY) = ?");
      where.push("o.id > ?");
      if (filter.topic !== undefined) where.push("CAST(o.topic AS BINARY) = ?");
      if (filter.errorContains !== undefined) where.push(`LOWER(o.last_error) LIKE LOWER(${TXT}) ESCAPE '!'`);
      const byKey = filter.key !== undefined;
      return `SELECT ${entry} FROM ${t} o FORCE INDEX (${byKey ? indexNames.key : indexNames.pending})
        WHERE ${where.join(" AND ")} ORDER BY ${byKey ? "o.status, o.key_hash, o.id" : "o.id"} LIMIT ?`;
    },
    dropDead: (count: number) => `DELETE FROM ${t} WHERE id IN ${inList(count)} AND status = 2`,
    requeueDead: (count: number) => `UPDATE ${t} SET status = 0, attempts = 0, available_at = ?, claimed_by = NULL,
      lease_until = NULL, lease_lock = NULL, lease_token = NULL, settled_at = NULL
      WHERE id IN ${inList(count)} AND status = 2`,
    purgeIds: `SELECT CAST(o.id AS CHAR) AS id FROM ${t} o FORCE INDEX (${indexNames.settled})
      WHERE o.settled_at < ? ORDER BY o.settled_at LIMIT ?`,
    purge: (count: number) => `DELETE FROM ${t} WHERE id IN ${inList(count)} AND status <> 0 AND settled_at < ?`,
    // One pass over the pending entries through the (status, id) index for their count, the leased
    // ones and the oldest. Without the hint the optimizer reads the leased count and the oldest
    // with full table scans (2 s for 1,000,000 rows, 100,000 of them pending).
    stats: `SELECT p.pending, p.in_flight, p.oldest,
      (SELECT COUNT(*) FROM ${t} FORCE INDEX (${indexNames.pending}) WHERE status = 2) AS dead
      FROM (SELECT COUNT(*) AS pending, COALESCE(SUM(o.lease_until > ?), 0) AS in_flight, MIN(o.created_at) AS oldest
        FROM ${t} o FORCE INDEX (${indexNames.pending}) WHERE o.status = 0) p`,
    // Row kind 0: the scan's size and retry-waiting count; kind 1: one hot key each; kind 2: one
    // blocked key each (its first pending entry, its lowest id in the scan, failed and waits).
    pendingSummary: `SELECT 0 AS kind, NULL AS entry_key, COUNT(*) AS n,
        COALESCE(SUM(s.available_at > ? AND (s.lease_until IS NULL OR s.lease_until <= ?)), 0) AS waiting,
        NULL AS head_id, NULL AS attempts, NULL AS last_error, NULL AS available_at
      FROM (SELECT o.available_at, o.lease_until FROM ${t} o FORCE INDEX (${indexNames.pending})
        WHERE o.status = 0 ORDER BY o.id LIMIT ?) s
      UNION ALL
      SELECT 1 AS kind, h.entry_key, h.n, NULL AS waiting, NULL, NULL, NULL, NULL
      FROM (SELECT s.entry_key, COUNT(*) AS n
        FROM (SELECT o.entry_key FROM ${t} o FORCE INDEX (${indexNames.pending})
          WHERE o.status = 0 ORDER BY o.id LIMIT ?) s
        WHERE s.entry_key IS NOT NULL GROUP BY s.entry_key ORDER BY n DESC, s.entry_key LIMIT ?) h
      UNION ALL
      SELECT 2 AS kind, b.entry_key, b.n, NULL AS waiting, CAST(b.id AS CHAR), b.attempts,
        CAST(b.last_error AS BINARY), b.available_at
      FROM (SELECT k.entry_key, k.n, o.id, o.attempts, o.last_error, o.available_at
        FROM (SELECT s.entry_key, COUNT(*) AS n, MIN(s.id) AS head
          FROM (SELECT o.id, o.entry_key FROM ${t} o FORCE INDEX (${indexNames.pending})
            WHERE o.status = 0 ORDER BY o.id LIMIT ?) s
          WHERE s.entry_key IS NOT NULL GROUP BY s.entry_key) k
        JOIN ${t} o ON o.id = k.head
        WHERE o.last_error IS NOT NULL AND o.available_at > ? AND (o.lease_until IS NULL OR o.lease_until <= ?)
        ORDER BY k.n DESC, k.entry_key LIMIT ?) b`,
    activityFences: `SELECT CAST(f.lock_name AS BINARY) AS lock_name, CAST(f.token AS CHAR) AS token
      FROM ${n.qualifiedFence} f ORDER BY f.lock_name LIMIT ?`,
    // One group per claimer holding unexpired leases, and one (NULL) for the other pending entries looked at.
    activityLeases: `SELECT CAST(s.holder AS BINARY) AS claimed_by, COUNT(*) AS n, MAX(s.lease_until) AS until
      FROM (SELECT CASE WHEN o.lease_until > ? THEN o.claimed_by END AS holder, o.lease_until
        FROM ${t} o FORCE INDEX (${indexNames.pending}) WHERE o.status = 0 ORDER BY o.id LIMIT ?) s
      GROUP BY s.holder`,
    activityPublished: `SELECT s.settled_at FROM (SELECT o.status, o.settled_at FROM ${t} o FORCE INDEX (${indexNames.settled})
        WHERE o.settled_at IS NOT NULL ORDER BY o.settled_at DESC LIMIT ?) s
      WHERE s.status = 1 ORDER BY s.settled_at DESC LIMIT 1`,
    // The failed among the oldest pending entries (their retry's due time as `at`), and the newest dead entries.
    activityErrors: `(SELECT CAST(o.id AS CHAR) AS id, CAST(o.entry_key AS BINARY) AS entry_key,
        CAST(o.topic AS BINARY) AS topic, CAST(o.last_error AS BINARY) AS last_error, o.attempts, o.status,
        o.available_at AS at
      FROM (SELECT p.id FROM ${t} p FORCE INDEX (${indexNames.pending}) WHERE p.status = 0 ORDER BY p.id LIMIT ?) s
      STRAIGHT_JOIN ${t} o FORCE INDEX (PRIMARY) ON o.id = s.id
      WHERE o.last_error IS NOT NULL ORDER BY o.available_at DESC, o.id DESC LIMIT ?)
      UNION ALL
      (SELECT CAST(o.id AS CHAR), CAST(o.entry_key AS BINARY), CAST(o.topic AS BINARY), CAST(o.last_error AS BINARY),
        o.attempts, o.status, o.settled_at
      FROM ${t} o FORCE INDEX (${indexNames.pending})
      WHERE o.status = 2 ORDER BY o.id DESC LIMIT ?)`,
  };
}

export type Statements = ReturnType<typeof buildStatements>;
