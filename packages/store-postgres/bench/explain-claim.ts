// Buffers one claim touches, by workload: a load-independent view of the claim's cost.
//   node bench/explain-claim.ts   (after a build; OUTBOX_PG_URL)
import { createPostgresStore, migrate, type Queryable } from "@outbox/store-postgres";
import pg from "pg";

const url = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const pool = new pg.Pool({ connectionString: url, max: 4 });
const batch = 256;

async function probe(
  name: string,
  count: number,
  keying: (i: number) => string | null,
  drainFirst: number,
  pipelined: boolean,
) {
  const schema = `probe_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
  await migrate(pool, { schema });
  let captured: { text: string; params: unknown[] } | null = null;
  const spy: Queryable = {
    query: async (text: string, params?: unknown[]) => {
      if (text.includes("near_heads AS")) captured = { text, params: params ?? [] };
      return pool.query(text, params as unknown[]);
    },
  };
  const store = createPostgresStore({ db: spy, schema, listen: false });
  for (let done = 0; done < count; done += 5_000) {
    const n = Math.min(5_000, count - done);
    const client = await pool.connect();
    await client.query("BEGIN");
    await store.enqueue(
      client,
      Array.from({ length: n }, (_, i) => ({ topic: "p", key: keying(done + i), payload: "x".repeat(1024) })),
    );
    await client.query("COMMIT");
    client.release();
  }
  await pool.query(`VACUUM ANALYZE "${schema}".outbox`);
  let drained = 0;
  while (drained < drainFirst) {
    const got = await store.claim({ claimer: "d", limit: batch, leaseMs: 60_000 });
    await store.ack(
      got.map((e) => e.id),
      { claimer: "d" },
    );
    drained += got.length;
  }
  if (pipelined) await store.claim({ claimer: "inflight", limit: batch, leaseMs: 60_000 });
  await store.claim({ claimer: "probe", limit: batch, leaseMs: 1 });
  const { text, params } = captured as unknown as { text: string; params: unknown[] };
  const client = await pool.connect();
  await client.query("BEGIN");
  const plan = await client.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${text}`, params);
  await client.query("ROLLBACK");
  client.release();
  const top = (plan.rows[0]["QUERY PLAN"] as Array<{ Plan: Record<string, number>; "Execution Time": number }>)[0];
  console.log(
    `${name.padEnd(44)} buffers ${String((top?.Plan["Shared Hit Blocks"] ?? 0) + (top?.Plan["Shared Read Blocks"] ?? 0)).padStart(7)}  time ${top?.["Execution Time"].toFixed(2)} ms`,
  );
  if (process.env.PLAN) console.log(JSON.stringify(plan.rows[0]["QUERY PLAN"], null, 1).slice(0, 2000000));
  await store.close();
  await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
}

if (process.env.ONLY) {
  await probe("hot 100k", 100_000, () => "hot", 50_000, false);
  await pool.end();
  process.exit(0);
}
for (const n of [1_000, 10_000, 100_000]) {
  await probe(`hot key, backlog ${n}, half drained`, n, () => "hot", n / 2, false);
  await probe(`hot key, backlog ${n}, half drained, pipelined`, n, () => "hot", n / 2, true);
}
await probe("1,000 keys, 20k, half drained", 20_000, (i) => `k${i % 1000}`, 10_000, false);
await probe("1,000 keys, 20k, half drained, pipelined", 20_000, (i) => `k${i % 1000}`, 10_000, true);
await probe("distinct keys, 20k, half drained", 20_000, (i) => `k${i}`, 10_000, false);
await probe("distinct keys, 20k, half drained, pipelined", 20_000, (i) => `k${i}`, 10_000, true);
await pool.end();
