// The effect table of the inbox end-to-end tests (one per broker): each handled message writes
// one row in the inbox's transaction; afterwards every entry's row must exist exactly once, none
// missing, each key's rows in enqueue order.
/** A pg Pool or client, or the stores' transaction handle. */
export interface Queryable {
  query(text: string, params?: unknown[]): Promise<{ rows: unknown[] }>;
}

/** `"<schema>".effects`: one row per handled message, `n` the commit order. */
export async function createEffects(pool: Queryable, schema: string): Promise<void> {
  await pool.query(
    `CREATE TABLE "${schema}".effects (n bigserial PRIMARY KEY, message_id text NOT NULL, key text NOT NULL, seq int NOT NULL)`,
  );
}

/** The handler's business write, on the inbox's transaction. */
export async function writeEffect(
  tx: Queryable,
  schema: string,
  messageId: string | null | undefined,
  key: string,
  seq: number,
): Promise<void> {
  await tx.query(`INSERT INTO "${schema}".effects (message_id, key, seq) VALUES ($1, $2, $3)`, [messageId, key, seq]);
}

/** How many entries have an effect row (each counted once). */
export async function distinctEffects(pool: Queryable, schema: string): Promise<number> {
  const { rows } = await pool.query(`SELECT count(DISTINCT message_id)::int AS n FROM "${schema}".effects`);
  return (rows[0] as { n: number }).n;
}

/**
 * What the rows show against entries `entry-0` .. `entry-<count - 1>`: the ones with no row, the
 * ones with more than one, and each key's rows committed out of `seq` order.
 */
export async function checkEffects(
  pool: Queryable,
  schema: string,
  count: number,
): Promise<{ missing: string[]; doubled: Array<[string, number]>; outOfOrder: string[] }> {
  const { rows: counts } = await pool.query(
    `SELECT message_id, count(*)::int AS n FROM "${schema}".effects GROUP BY message_id`,
  );
  const perId = new Map((counts as Array<{ message_id: string; n: number }>).map((r) => [r.message_id, r.n]));
  const missing = Array.from({ length: count }, (_, i) => `entry-${i}`).filter((id) => !perId.has(id));
  const doubled = [...perId].filter(([, n]) => n !== 1);
  const { rows: ordered } = await pool.query(`SELECT key, seq FROM "${schema}".effects ORDER BY n`);
  const last = new Map<string, number>();
  const outOfOrder: string[] = [];
  for (const { key, seq } of ordered as Array<{ key: string; seq: number }>) {
    if ((last.get(key) ?? -1) >= seq) outOfOrder.push(`${key}: ${seq} after ${last.get(key)}`);
    last.set(key, seq);
  }
  return { missing, doubled, outOfOrder };
}

/** An outbox entry of these tests: its payload says which key and which seq of that key it is. */
export interface EffectEntry {
  readonly topic: string;
  readonly key: string;
  readonly payload: string;
  readonly idempotencyKey: string;
}

/**
 * The producing service: entries `entry-<from>` .. `entry-<count - 1>` (`from` 0 by default) over
 * `keys` keys (per key seq 0, 1, 2, ... in commit order), committed 50 per transaction by `commit`.
 */
export async function produceEntries(
  options: { topic: string; count: number; keys: number; from?: number },
  commit: (entries: EffectEntry[]) => Promise<unknown>,
): Promise<void> {
  const { topic, count, keys, from = 0 } = options;
  for (let start = from; start < count; start += 50) {
    await commit(
      Array.from({ length: Math.min(50, count - start) }, (_, offset) => {
        const i = start + offset;
        const key = `k${i % keys}`;
        const seq = Math.floor(i / keys);
        return { topic, key, payload: JSON.stringify({ key, seq }), idempotencyKey: `entry-${i}` };
      }),
    );
  }
}
