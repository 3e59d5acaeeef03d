// End to end against the real servers (scripts/services.sh start postgres kafka): the CLI runs
// as its own process with a config file or the environment stack, publishes to Kafka, serves
// probes and metrics, drains on SIGTERM, and repairs dead letters.
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
import { kafkaBrokers } from "@outbox/test-support/services";
import { waitFor } from "@outbox/test-support/wait";
import type { Admin, Kafka } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
// Shared with @outbox/publisher-kafka's tests (a real consumer that reads a whole topic).
import { createTopic, newKafka, readTopic } from "../../publisher-kafka/test/support/kafka.js";
import { CliProcess, childEnv, pgKafkaConfig, runCli } from "./process.js";

let pool: pg.Pool;
let kafka: Kafka;
let admin: Admin;
const tables: string[] = [];
const running: CliProcess[] = [];

beforeAll(async () => {
  pool = new pg.Pool({ connectionString: pgUrl });
  kafka = newKafka();
  admin = kafka.admin();
  await admin.connect();
});

afterAll(async () => {
  await Promise.all(running.map((cli) => cli.dispose()));
  await admin?.disconnect();
  for (const table of tables) await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`);
  await pool.query("DELETE FROM outbox_lock_tokens WHERE lock_name = ANY($1)", [tables]).catch(() => undefined);
  await pool?.end();
});

function relay(args: string[], env: NodeJS.ProcessEnv): CliProcess {
  const cli = new CliProcess(
    ["relay", "--port", "0", "--host", "127.0.0.1", "--stats-interval", "200ms", ...args],
    env,
  );
  running.push(cli);
  return cli;
}

async function counts(table: string) {
  const { rows } = await pool.query(
    `SELECT count(*) FILTER (WHERE status = 'pending')::int AS pending,
            count(*) FILTER (WHERE status = 'pending' AND lease_until > now())::int AS leased,
            count(*) FILTER (WHERE status = 'published')::int AS published,
            count(*) FILTER (WHERE status = 'dead')::int AS dead
     FROM "${table}"`,
  );
  return rows[0] as { pending: number; leased: number; published: number; dead: number };
}

/** Marks the dead-letter test's own probe record on its topic. */
const probeHeader = "cli-test-probe";

function metricValue(text: string, name: string): number | undefined {
  const line = text.split("\n").find((candidate) => candidate.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

describe("outbox relay on PostgreSQL + Kafka", () => {
  it("publishes, serves /metrics and /readyz, loses nothing on SIGTERM mid-backlog, resumes from the env stack", async () => {
    const table = freshIdentifier("cli");
    tables.push(table);
    const env = childEnv({ CLI_TEST_TABLE: table, CLI_TEST_BATCH_SIZE: "10" });

    const migrated = await runCli(["migrate", "--json", "--config", pgKafkaConfig], env);
    expect(migrated.code).toBe(0);
    expect(JSON.parse(migrated.stdout)).toMatchObject({ migrated: true });

    const topic = await createTopic(admin, { partitions: 3 });
    const store = createPostgresStore({ pool, table, listen: false });
    const total = 20_000;
    const ids = await inTransaction(pool, (tx) =>
      store.enqueue(
        tx,
        Array.from({ length: total }, (_, seq) => ({
          topic,
          key: `key-${seq % 100}`,
          payload: JSON.stringify({ seq }),
        })),
      ),
    );
    await store.close();

    // First run: config file, leader lock, batches of 10 so the backlog takes a while.
    const first = relay(["--config", pgKafkaConfig, "--log-level", "debug"], env);
    const started = await first.waitForLog("relay started");
    const base = `http://127.0.0.1:${started.port}`;
    await first.waitForLog("leadership gained");

    // Scrape while it publishes.
    const metrics = await waitFor(
      async () => {
        const text = await (await fetch(`${base}/metrics`)).text();
        return (metricValue(text, "outbox_published_total") ?? 0) >= 200 ? text : null;
      },
      60_000,
      "200 entries published",
    );
    expect(metricValue(metrics, "outbox_leader")).toBe(1);
    expect(metricValue(metrics, `outbox_fence_token{lock="${table}"}`)).toBeGreaterThan(0);
    expect(metrics).toMatch(/^outbox_backlog_entries\{state="pending"\} \d+$/m);
    expect(metrics).toMatch(/^outbox_lag_seconds \d/m);
    expect(metrics).toMatch(/^outbox_publish_duration_seconds_bucket\{le="0.1",outcome="ok"\} \d+$/m);
    expect(metrics).toMatch(/^outbox_delivery_latency_seconds_count \d+$/m);
    expect(metrics).toMatch(/^outbox_claimed_total \d+$/m);
    expect(metricValue(metrics, "outbox_store_up")).toBe(1);

    const readyz = await fetch(`${base}/readyz`);
    expect(readyz.status).toBe(200);
    const ready = (await readyz.json()) as Record<string, unknown>;
    expect(ready).toMatchObject({ ready: true, leader: true, leaderElection: true, fence: { lock: table } });
    expect(typeof ready.lagSeconds).toBe("number");
    expect((await fetch(`${base}/healthz`)).status).toBe(200);

    // `outbox status` asks the relay who leads.
    const statusRun = await runCli(["status", "--json", "--config", pgKafkaConfig, "--relay", base], env);
    expect(statusRun.code).toBe(0);
    const status = JSON.parse(statusRun.stdout);
    expect(status.pending).toBeGreaterThan(0);
    expect(status.leader).toMatchObject({ relayId: started.relayId, fence: { lock: table } });

    // SIGTERM mid-backlog: drains the in-flight batches, exits 0, leaves no lease behind.
    first.signal("SIGTERM");
    expect(await first.exit).toBe(0);
    const afterStop = await counts(table);
    expect(afterStop.pending).toBeGreaterThan(0);
    expect(afterStop.leased).toBe(0);
    expect(afterStop.published + afterStop.pending).toBe(total);
    const logs = first.logs();
    // The log stream is JSON only: process warnings (kafkajs' negative timer on Node 24) are log lines.
    expect(first.stderr).toBe("");
    expect(logs.map((line) => line.msg)).toEqual(expect.arrayContaining(["draining", "stopped"]));
    expect(logs.find((line) => line.msg === "stopped")).toMatchObject({ drained: true });

    // Second run: no config file, the PostgreSQL + Kafka stack from the environment.
    const second = relay(
      [],
      childEnv({
        OUTBOX_DATABASE_URL: pgUrl,
        OUTBOX_TABLE: table,
        OUTBOX_KAFKA_BROKERS: kafkaBrokers.join(","),
        OUTBOX_CONFIG: undefined,
      }),
    );
    const secondStarted = await second.waitForLog("relay started");
    expect(secondStarted.config).toBe("environment");
    await waitFor(async () => (await counts(table)).pending === 0, 120_000, "the backlog to drain");
    second.signal("SIGTERM");
    expect(await second.exit).toBe(0);
    // No secret in the logs: the URL's password never appears.
    const password = new URL(pgUrl).password;
    if (password) expect(second.stdout).not.toContain(`:${password}@`);

    // Nothing lost: every enqueued id is on the topic, and each key's entries arrived in order.
    const received = await readTopic(kafka, admin, topic, 120_000);
    const seen = new Set(received.map((message) => message.headers["outbox-id"]));
    const missing = ids.filter((id) => !seen.has(id));
    expect(missing).toEqual([]);
    const lastSeqByKey = new Map<string, number>();
    const firstSeen = new Set<string>();
    for (const message of received) {
      const id = message.headers["outbox-id"] as string;
      if (firstSeen.has(id)) continue;
      firstSeen.add(id);
      const { seq } = JSON.parse(new TextDecoder().decode(message.payload)) as { seq: number };
      const key = message.key as string;
      expect(seq).toBeGreaterThan(lastSeqByKey.get(key) ?? -1);
      lastSeqByKey.set(key, seq);
    }
    console.info(
      `[cli e2e] ${total} entries; ${afterStop.pending} still pending at SIGTERM; ${received.length - seen.size} duplicates on the topic`,
    );
  }, 300_000);

  it("dead letters: list, show, requeue --all republishes after the cause is fixed", async () => {
    const table = freshIdentifier("cli");
    tables.push(table);
    const env = childEnv({ CLI_TEST_TABLE: table });
    await migrate(pool, { table });
    // The broker refuses records above 1 KiB on this topic: a permanent failure.
    const topic = await createTopic(admin, { partitions: 1, config: { "max.message.bytes": "1024" } });
    const store = createPostgresStore({ pool, table, listen: false });
    const big = "x".repeat(4_000);
    const ids = await inTransaction(pool, (tx) =>
      store.enqueue(tx, [
        { topic, key: "big-1", payload: big },
        { topic, key: "small-1", payload: "small" },
        { topic, key: "big-2", payload: big },
        { topic, key: "small-2", payload: "small" },
      ]),
    );
    await store.close();
    const bigIds = [ids[0], ids[2]];

    const cli = relay(["--config", pgKafkaConfig], env);
    await cli.waitForLog("relay started");
    // The relay logs a dead letter after the store committed it: wait for the log lines too (they
    // cross a pipe from another process), not only for the rows.
    const deadLogs = () => cli.logs().filter((line) => line.msg === "entry dead-lettered");
    let seen = "";
    await waitFor(
      async () => {
        const now = await counts(table);
        seen = `${JSON.stringify(now)}, ${deadLogs().length} dead letters logged`;
        return now.dead === 2 && now.published === 2 && deadLogs().length >= 2;
      },
      60_000,
      "2 dead, 2 published, 2 dead letters logged",
    ).catch((error: Error) => {
      throw new Error(`${error.message}; last seen ${seen}; relay stdout: ${cli.stdout.slice(-4_000)}`, {
        cause: error,
      });
    });
    expect(deadLogs()).toHaveLength(2);
    expect(new Set(deadLogs().map((line) => line.entryId))).toEqual(new Set(bigIds));

    const list = await runCli(["dead", "list", "--json", "--topic", topic, "--config", pgKafkaConfig], env);
    expect(list.code).toBe(0);
    const listed = JSON.parse(list.stdout) as { entries: Array<{ id: string; attempts: number }>; matched: number };
    expect(listed.entries.map((entry) => entry.id)).toEqual(bigIds);

    const show = await runCli(["dead", "show", bigIds[0] as string, "--json", "--config", pgKafkaConfig], env);
    expect(show.code).toBe(0);
    expect(JSON.parse(show.stdout)).toMatchObject({
      id: bigIds[0],
      key: "big-1",
      payloadText: big,
      payloadBytes: 4_000,
    });

    // Fix the cause, then requeue: the running relay republishes.
    await admin.alterConfigs({
      validateOnly: false,
      resources: [
        { type: 2 /* TOPIC */, name: topic, configEntries: [{ name: "max.message.bytes", value: "1048588" }] },
      ],
    });
    // The controller has committed the change; the broker applies it when it replays the metadata
    // log, a moment later. Requeue once the broker itself takes a record of that size (a probe
    // record, told apart by a header), or the requeued entries could be refused again.
    const probe = kafka.producer();
    await probe.connect();
    try {
      await waitFor(
        () => probe.send({ topic, messages: [{ value: big, headers: { [probeHeader]: "1" } }] }).then(() => true),
        30_000,
        "the broker to take a 4,000-byte record",
      );
    } finally {
      await probe.disconnect();
    }
    const requeue = await runCli(
      ["dead", "requeue", "--all", "--topic", topic, "--json", "--config", pgKafkaConfig],
      env,
    );
    expect(requeue.code).toBe(0);
    expect(JSON.parse(requeue.stdout)).toMatchObject({ requeued: 2, selected: 2, ids: bigIds });
    await waitFor(async () => (await counts(table)).published === 4, 60_000, "the requeued entries to be published");

    const received = (await readTopic(kafka, admin, topic, 60_000)).filter(
      (message) => message.headers[probeHeader] === undefined,
    );
    expect(new Set(received.map((message) => message.headers["outbox-id"]))).toEqual(new Set(ids));
    cli.signal("SIGTERM");
    expect(await cli.exit).toBe(0);
  }, 180_000);
});
