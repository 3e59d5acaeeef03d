// The operator surface against the real PostgreSQL (scripts/services.sh start postgres kafka):
// /readyz says whether the relay can deliver, configuration problems exit 2 with a code and a
// hint, outbox_fence_token is absent without leader election, `dead show` cuts large payloads.
// The relay runs in-process (fake signals, captured output); the broker case runs the CLI as
// its own process. Assertions are on codes, exit statuses and fields, never on message text.
import {
  type OutboxEntry,
  OutboxErrorCode,
  type OutboxPublisher,
  type PublishOutcome,
  permanentFailure,
  published,
  transientFailure,
} from "@outbox/core";
import { createPostgresLockBackend } from "@outbox/lock-postgres";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
import { waitFor } from "@outbox/test-support/wait";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CliErrorCode, ExitCode } from "../src/errors.js";
import { NotReadyReason } from "../src/readiness.js";
import { CliProcess, childEnv } from "./process.js";
import { globalConfigPath, type InProcessRun, run, runInProcess, setTestConfig } from "./support.js";

let pool: pg.Pool;
const tables: string[] = [];
const children: CliProcess[] = [];

beforeAll(() => {
  pool = new pg.Pool({ connectionString: pgUrl });
});

afterAll(async () => {
  await Promise.all(children.map((child) => child.dispose()));
  for (const table of tables) await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`);
  await pool.query("DELETE FROM outbox_lock_tokens WHERE lock_name = ANY($1)", [tables]).catch(() => undefined);
  await pool?.end();
});

async function freshTable(): Promise<string> {
  const table = freshIdentifier("cliop");
  tables.push(table);
  await migrate(pool, { table });
  return table;
}

/** A store per command (each command closes the store it used); the test's pool stays open. */
const storeOn = (table: string) => () => createPostgresStore({ pool, table, listen: false });

/** A publisher whose broker is "down" (every entry transient) until `up` is set. */
class SwitchablePublisher implements OutboxPublisher {
  up = false;
  readonly sent: OutboxEntry[] = [];
  async publish(entries: readonly OutboxEntry[]): Promise<PublishOutcome[]> {
    if (!this.up) return entries.map(() => transientFailure(new Error("connect ECONNREFUSED 127.0.0.1:9092")));
    this.sent.push(...entries);
    return entries.map(() => published());
  }
}

interface ReadyBody {
  ready: boolean;
  reasons: Array<{ code: string; message: string }>;
  publishFailuresInARow: number;
}

async function startRelay(args: string[], env: Record<string, string | undefined> = {}) {
  const relay = runInProcess(
    [
      "relay",
      "--config",
      globalConfigPath,
      "--port",
      "0",
      "--host",
      "127.0.0.1",
      "--stats-interval",
      "20ms",
      "--no-default-metrics",
      ...args,
    ],
    env,
  );
  const started = await waitFor(
    () => relay.stdout.json<{ msg: string; port: number }>().find((line) => line.msg === "relay started"),
    15_000,
    `the relay to start (stdout: ${relay.stdout.text.slice(-500)}; stderr: ${relay.stderr.text.slice(-500)})`,
  );
  return { relay, base: `http://127.0.0.1:${started.port}` };
}

async function readyz(base: string): Promise<{ status: number; body: ReadyBody }> {
  const response = await fetch(`${base}/readyz`);
  return { status: response.status, body: (await response.json()) as ReadyBody };
}

const codes = (body: ReadyBody) => body.reasons.map((reason) => reason.code);

async function stop(relay: InProcessRun): Promise<number> {
  relay.signal("SIGTERM");
  return relay.code;
}

describe("/readyz reflects whether the relay can deliver", () => {
  it("publish failures in a row make it unready (503, reason publish-failing) until a publish succeeds", async () => {
    const table = await freshTable();
    const publisher = new SwitchablePublisher();
    // Retries come back at once, so failed attempts follow each other without waiting.
    setTestConfig({
      store: storeOn(table),
      publisher,
      relay: { pollMs: 10, retry: { maxAttempts: 1_000, baseDelayMs: 0, maxDelayMs: 0 } },
    });
    const store = createPostgresStore({ pool, table, listen: false });
    await inTransaction(pool, (tx) => store.enqueue(tx, [{ topic: "orders", key: "a", payload: "1" }]));

    const { relay, base } = await startRelay(["--ready-max-failures", "3", "--ready-max-lag", "off"]);
    const down = await waitFor(
      async () => {
        const probe = await readyz(base);
        return probe.status === 503 && codes(probe.body).includes(NotReadyReason.PublishFailing) ? probe : null;
      },
      15_000,
      "/readyz 503 publish-failing",
    );
    expect(down.body.ready).toBe(false);
    expect(down.body.publishFailuresInARow).toBeGreaterThanOrEqual(3);
    // The change is logged at the next stats poll, with the reasons.
    await waitFor(
      () =>
        relay.stdout
          .json<{ msg: string; reasons?: Array<{ code: string }> }>()
          .some(
            (line) =>
              line.msg === "not ready" && line.reasons?.some((reason) => reason.code === NotReadyReason.PublishFailing),
          ),
      15_000,
      "a not-ready log line with publish-failing",
    );
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/^outbox_ready 0$/m);

    publisher.up = true;
    const up = await waitFor(
      async () => {
        const probe = await readyz(base);
        return probe.status === 200 ? probe : null;
      },
      15_000,
      "/readyz 200 once the broker is back",
    );
    expect(up.body).toMatchObject({ ready: true, reasons: [], publishFailuresInARow: 0 });
    expect(publisher.sent).toHaveLength(1);
    expect(await stop(relay)).toBe(ExitCode.Ok);
    await store.close();
  });

  it("a broker that refuses entries for good does not make it unready (it answered)", async () => {
    const table = await freshTable();
    const refusing: OutboxPublisher = {
      publish: async (entries) => entries.map(() => permanentFailure(new Error("MESSAGE_TOO_LARGE"))),
    };
    setTestConfig({ store: storeOn(table), publisher: refusing, relay: { pollMs: 10 } });
    const store = createPostgresStore({ pool, table, listen: false });
    await inTransaction(pool, (tx) =>
      store.enqueue(
        tx,
        Array.from({ length: 5 }, (_, n) => ({ topic: "orders", key: `k${n}`, payload: "x" })),
      ),
    );
    const { relay, base } = await startRelay(["--ready-max-failures", "1"]);
    await waitFor(async () => (await store.stats()).dead === 5, 15_000, "5 dead letters");
    const probe = await waitFor(
      async () => {
        const answer = await readyz(base);
        return answer.status === 200 ? answer : null;
      },
      15_000,
      "/readyz 200",
    );
    expect(probe.body.reasons).toEqual([]);
    expect(await stop(relay)).toBe(ExitCode.Ok);
    await store.close();
  });

  it("an entry older than --ready-max-lag (a hand-written INSERT) makes it unready with lag-above-max", async () => {
    const table = await freshTable();
    // SQL-side enqueue, as psql would: created an hour ago, due in an hour (so it stays pending).
    await pool.query(
      `INSERT INTO "${table}" (topic, key, payload, created_at, available_at)
       VALUES ('orders', 'k', convert_to('{"n":1}', 'UTF8'), now() - interval '1 hour', now() + interval '1 hour')`,
    );
    setTestConfig({ store: storeOn(table), publisher: new SwitchablePublisher(), relay: { pollMs: 10 } });

    const strict = await startRelay(["--ready-max-lag", "10m"]);
    const probe = await waitFor(
      async () => {
        const answer = await readyz(strict.base);
        return answer.status === 503 ? answer : null;
      },
      15_000,
      "/readyz 503",
    );
    expect(codes(probe.body)).toEqual([NotReadyReason.LagAboveMax]);
    expect(await stop(strict.relay)).toBe(ExitCode.Ok);

    // The default limit (5 minutes) applies without the flag; `off` turns it off.
    const byDefault = await startRelay([]);
    await waitFor(
      async () => codes((await readyz(byDefault.base)).body).includes(NotReadyReason.LagAboveMax),
      15_000,
      "lag-above-max with the default limit",
    );
    expect(await stop(byDefault.relay)).toBe(ExitCode.Ok);
    const off = await startRelay(["--ready-max-lag", "off"]);
    await waitFor(async () => (await readyz(off.base)).status === 200, 15_000, "/readyz 200 with the lag check off");
    expect(await stop(off.relay)).toBe(ExitCode.Ok);
  });

  it("with the broker unreachable (real Kafka publisher, closed port), /readyz turns 503 publish-failing; stdout stays JSON", async () => {
    const table = await freshTable();
    const store = createPostgresStore({ pool, table, listen: false });
    await inTransaction(pool, (tx) => store.enqueue(tx, [{ topic: "cli-unreachable", key: "a", payload: "1" }]));
    await store.close();
    const child = new CliProcess(
      [
        "relay",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--stats-interval",
        "100ms",
        "--ready-max-failures",
        "1",
        "--ready-max-lag",
        "off",
      ],
      childEnv({
        OUTBOX_DATABASE_URL: pgUrl,
        OUTBOX_TABLE: table,
        // Nothing listens on port 1: every connection is refused.
        OUTBOX_KAFKA_BROKERS: "127.0.0.1:1",
        OUTBOX_CONFIG: undefined,
      }),
    );
    children.push(child);
    const started = await child.waitForLog("relay started");
    const base = `http://127.0.0.1:${started.port}`;
    const probe = await waitFor(
      async () => {
        const answer = await readyz(base);
        return answer.status === 503 ? answer : null;
      },
      60_000,
      "/readyz 503 with the broker unreachable",
    );
    expect(codes(probe.body)).toContain(NotReadyReason.PublishFailing);
    await child.waitForLog("not ready");
    child.signal("SIGTERM");
    expect(await child.exit).toBe(ExitCode.Ok);
    // Every stdout line is JSON (logs() throws otherwise), and nothing went to stderr.
    expect(child.stderr).toBe("");
  }, 90_000);
});

describe("configuration problems exit 2 with OUTBOX_CLI_CONFIG and a hint", () => {
  const stack = (extra: Record<string, string | undefined> = {}) => ({ OUTBOX_DATABASE_URL: pgUrl, ...extra });
  const errorOf = (stderr: { text: string }) =>
    JSON.parse(stderr.text).error as { code: string; details?: { field?: string; hint?: unknown } };

  it("a missing outbox table: status, dead list and relay exit 2 naming OUTBOX_TABLE; after migrate, status works", async () => {
    const table = freshIdentifier("cliop");
    tables.push(table);
    for (const args of [
      ["status", "--json"],
      ["dead", "list", "--json"],
      ["purge", "--older-than", "7d", "--json"],
    ]) {
      const result = await run(args, stack({ OUTBOX_TABLE: table }));
      expect(result.code, args.join(" ")).toBe(ExitCode.Usage);
      const error = errorOf(result.stderr);
      expect(error).toMatchObject({ code: CliErrorCode.Config, details: { field: "OUTBOX_TABLE" } });
      expect(typeof error.details?.hint).toBe("string");
    }

    const relay = await run(
      ["relay", "--port", "0", "--host", "127.0.0.1", "--no-default-metrics"],
      stack({ OUTBOX_TABLE: table, OUTBOX_KAFKA_BROKERS: "127.0.0.1:9092" }),
    );
    expect(relay.code).toBe(ExitCode.Usage);
    const failed = relay.stdout
      .json<{ msg: string; error?: { code?: string } }>()
      .find((line) => line.msg === "relay failed to start");
    expect(failed?.error?.code).toBe(CliErrorCode.Config);

    const migrated = await run(["migrate", "--json"], stack({ OUTBOX_TABLE: table }));
    expect(migrated.code).toBe(ExitCode.Ok);
    expect((await run(["status", "--json"], stack({ OUTBOX_TABLE: table }))).code).toBe(ExitCode.Ok);
  });

  it("a missing table behind a config file names the `store` field", async () => {
    const table = freshIdentifier("cliop");
    setTestConfig({ store: storeOn(table) });
    const result = await run(["status", "--json", "--config", globalConfigPath]);
    expect(result.code).toBe(ExitCode.Usage);
    expect(errorOf(result.stderr)).toMatchObject({ code: CliErrorCode.Config, details: { field: "store" } });
  });

  it.each([
    ["not a URL", "base", OutboxErrorCode.InvalidOptions],
    ["another scheme", "mysql://u@127.0.0.1/db", OutboxErrorCode.InvalidOptions],
    ["a host that does not resolve", "postgres://u@no-such-host.invalid:5432/db", CliErrorCode.Config],
  ])("OUTBOX_DATABASE_URL %s: exit 2 naming the variable", async (_name, url, code) => {
    const result = await run(["status", "--json"], { OUTBOX_DATABASE_URL: url });
    expect(result.code).toBe(ExitCode.Usage);
    const error = errorOf(result.stderr);
    expect(error).toMatchObject({ code, details: { field: "OUTBOX_DATABASE_URL" } });
    expect(typeof error.details?.hint).toBe("string");
  });

  it("a URL the driver rejects inside a config file: exit 2 naming `store`", async () => {
    const table = freshIdentifier("cliop");
    const broken = new pg.Pool({ connectionString: "postgres://u:p@[not-a-host/db" });
    broken.on("error", () => undefined);
    setTestConfig({ store: () => createPostgresStore({ pool: broken, table, listen: false }) });
    try {
      const result = await run(["status", "--json", "--config", globalConfigPath]);
      expect(result.code).toBe(ExitCode.Usage);
      expect(errorOf(result.stderr)).toMatchObject({ code: CliErrorCode.Config, details: { field: "store" } });
    } finally {
      await broken.end().catch(() => undefined);
    }
  });

  it("OUTBOX_KAFKA_BROKERS without host:port: relay exits 2 naming it", async () => {
    const table = await freshTable();
    const result = await run(
      ["relay", "--port", "0", "--host", "127.0.0.1", "--no-default-metrics"],
      stack({ OUTBOX_TABLE: table, OUTBOX_KAFKA_BROKERS: "base" }),
    );
    expect(result.code).toBe(ExitCode.Usage);
    const failed = result.stdout
      .json<{ msg: string; error?: { code?: string; details?: { field?: string } } }>()
      .find((line) => line.msg === "relay failed to start");
    expect(failed?.error).toMatchObject({
      code: OutboxErrorCode.InvalidOptions,
      details: { field: "OUTBOX_KAFKA_BROKERS" },
    });
  });

  it("an unreachable server stays a runtime failure (exit 1, OUTBOX_STORE_UNAVAILABLE)", async () => {
    const result = await run(["status", "--json"], { OUTBOX_DATABASE_URL: "postgres://postgres@127.0.0.1:1/outbox" });
    expect(result.code).toBe(ExitCode.Failure);
    expect(errorOf(result.stderr).code).toBe(OutboxErrorCode.StoreUnavailable);
  });
});

describe("outbox_fence_token", () => {
  const fenceLines = (text: string) => text.split("\n").filter((line) => line.startsWith("outbox_fence_token"));

  it("is absent without leader election, and carries the token (by lock) with it", async () => {
    const table = await freshTable();
    setTestConfig({ store: storeOn(table), publisher: new SwitchablePublisher(), relay: { pollMs: 10 } });
    const plain = await startRelay([]);
    await waitFor(async () => (await readyz(plain.base)).status === 200, 15_000, "/readyz 200");
    const without = await (await fetch(`${plain.base}/metrics`)).text();
    expect(without).toContain("# TYPE outbox_fence_token gauge");
    expect(fenceLines(without)).toEqual([]);
    expect(await stop(plain.relay)).toBe(ExitCode.Ok);

    const lock = createPostgresLockBackend({ connectionString: pgUrl });
    setTestConfig({
      store: storeOn(table),
      publisher: new SwitchablePublisher(),
      lock,
      relay: { pollMs: 10, leader: { name: table, ttlMs: 5_000 } },
    });
    const leading = await startRelay([]);
    await waitFor(
      () => leading.relay.stdout.json<{ msg: string }>().some((line) => line.msg === "leadership gained"),
      15_000,
      "leadership",
    );
    const withLock = await (await fetch(`${leading.base}/metrics`)).text();
    const [line] = fenceLines(withLock);
    expect(line).toMatch(new RegExp(`^outbox_fence_token\\{lock="${table}"\\} [1-9]\\d*$`));
    expect(await stop(leading.relay)).toBe(ExitCode.Ok);
  });
});

describe("dead show cuts large payloads unless --full", () => {
  it("shows the first 4 KiB by default (whole characters), all of it with --full, and --max-payload", async () => {
    const table = await freshTable();
    const store = createPostgresStore({ pool, table, listen: false });
    const text = "é".repeat(6_000); // 12,000 bytes of UTF-8, 2 bytes a character
    const binary = new Uint8Array(10_000).map((_, n) => (n % 2 === 0 ? 0xff : n % 256));
    const [textId, binaryId] = await inTransaction(pool, (tx) =>
      store.enqueue(tx, [
        { topic: "orders", key: "big-text", payload: text },
        { topic: "orders", key: "big-binary", payload: binary },
      ]),
    );
    const claimed = await store.claim({ claimer: "t", limit: 10, leaseMs: 60_000 });
    await store.deadLetter(
      claimed.map((entry) => ({ id: entry.id, error: "MESSAGE_TOO_LARGE" })),
      { claimer: "t" },
    );
    await store.close();
    setTestConfig({ store: storeOn(table) });
    const show = async (...args: string[]) => {
      const result = await run(["dead", "show", ...args, "--config", globalConfigPath]);
      expect(result.code).toBe(ExitCode.Ok);
      return result;
    };
    const json = async (...args: string[]) =>
      JSON.parse((await show(...args, "--json")).stdout.text) as {
        payloadBytes: number;
        payloadText: string | null;
        payloadBase64: string;
        payloadTruncated: boolean;
      };

    const cut = await json(textId as string);
    expect(cut).toMatchObject({ payloadBytes: 12_000, payloadTruncated: true });
    expect(Buffer.byteLength(cut.payloadText ?? "")).toBe(4_096);
    expect(text.startsWith(cut.payloadText ?? "-")).toBe(true);

    const odd = await json(textId as string, "--max-payload", "101");
    expect(Buffer.byteLength(odd.payloadText ?? "")).toBe(100); // not half a character
    expect(text.startsWith(odd.payloadText ?? "-")).toBe(true);

    const full = await json(textId as string, "--full");
    expect(full).toMatchObject({ payloadText: text, payloadTruncated: false });

    const bin = await json(binaryId as string);
    expect(bin).toMatchObject({ payloadText: null, payloadTruncated: true, payloadBytes: 10_000 });
    expect(Buffer.from(bin.payloadBase64, "base64")).toEqual(Buffer.from(binary.subarray(0, 4_096)));
    const binFull = await json(binaryId as string, "--full");
    expect(Buffer.from(binFull.payloadBase64, "base64")).toEqual(Buffer.from(binary));

    // The text view is cut too: far shorter than the payload, and --full prints it all.
    const human = await show(textId as string);
    expect(human.stdout.text.length).toBeLessThan(6_000);
    expect((await show(textId as string, "--full")).stdout.text).toContain(text);

    const usage = await run(["dead", "show", textId as string, "--max-payload", "0", "--config", globalConfigPath]);
    expect(usage.code).toBe(ExitCode.Usage);
  });
});
