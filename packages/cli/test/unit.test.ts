import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import {
  OutboxErrorCode,
  type OutboxStore,
  permanentFailure,
  published,
  type StoreStats,
  systemClock,
  transientFailure,
} from "@outbox/core";
import { MemoryPublisher, MemoryStore } from "@outbox/memory";
import { waitFor } from "@outbox/test-support/wait";
import { beforeEach, describe, expect, it } from "vitest";
import { validateConfig } from "../src/config.js";
import { createDashboardHandler } from "../src/dashboard/handler.js";
import { parseDuration, parseMoment } from "../src/duration.js";
import { CliErrorCode, ExitCode } from "../src/errors.js";
import { createLogger } from "../src/log.js";
import { RelayMetrics } from "../src/metrics.js";
import { NotReadyReason, notReadyReasons, PublishHealth } from "../src/readiness.js";
import { redact, redactText, redactUrl } from "../src/redact.js";
import { configFromEnv } from "../src/stack.js";
import { globalConfigPath, run, runInProcess, setTestConfig } from "./support.js";

function codeOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return { code: (error as { code?: unknown }).code, details: (error as { details?: unknown }).details };
  }
  return "did not throw";
}

describe("redaction", () => {
  it("masks URL passwords and secret query parameters, keeps the rest", () => {
    expect(redactUrl("postgres://app:s3cr3t@db.internal:5432/orders?sslmode=require")).toBe(
      "postgres://app:***@db.internal:5432/orders?sslmode=require",
    );
    expect(redactUrl("https://broker.example/x?token=abc&region=eu")).toBe(
      "https://broker.example/x?token=***&region=eu",
    );
    expect(redactUrl("postgres://db.internal/orders")).toBe("postgres://db.internal/orders");
    expect(redactUrl("not a url")).toBe("not a url");
  });

  it("masks URLs and password pairs inside free text", () => {
    const text = redactText(
      'connect to postgres://u:hunter2@h/db failed; dsn "host=h password=hunter2 user=u" secret: hunter2',
    );
    expect(text).not.toContain("hunter2");
    expect(text).toContain("postgres://u:***@h/db");
  });

  it("masks secret-named fields deeply, but not fencing tokens", () => {
    const value = redact({
      sasl: { mechanism: "plain", username: "u", password: "p" },
      nested: [{ password: "p", connectionString: "postgres://u:p@h/db" }],
      fence: { lock: "outbox-relay", token: 7n },
      url: "postgres://u:p@h/db",
    });
    expect(JSON.stringify(value)).not.toMatch(/"p"|:p@/);
    expect(value).toMatchObject({
      sasl: "***",
      fence: { lock: "outbox-relay", token: "7" },
      url: "postgres://u:***@h/db",
    });
  });
});

describe("structured logs", () => {
  it("writes one JSON object per line, redacted, with errors serialised", () => {
    const lines: string[] = [];
    const logger = createLogger({ level: "info", write: (line) => lines.push(line), now: () => 0 });
    logger.debug("hidden");
    logger.info("relay started", { url: "postgres://u:pw@h/db", count: 2n });
    logger.error("relay error", {
      error: new Error("connect ECONNREFUSED postgres://u:pw@h/db", { cause: new Error("password=pw") }),
    });
    expect(lines).toHaveLength(2);
    for (const line of lines) expect(line.endsWith("\n") && !line.slice(0, -1).includes("\n")).toBe(true);
    const [first, second] = lines.map((line) => JSON.parse(line));
    expect(first).toEqual({
      time: "1970-01-01T00:00:00.000Z",
      level: "info",
      msg: "relay started",
      url: "postgres://u:***@h/db",
      count: "2",
    });
    expect(second.error.message).toContain("postgres://u:***@h/db");
    expect(JSON.stringify(second)).not.toContain("pw");
  });
});

describe("config validation", () => {
  const store = new MemoryStore();
  const publisher = new MemoryPublisher();

  it("accepts adapters, factories and relay settings", () => {
    expect(() =>
      validateConfig({ store, publisher: () => publisher, relay: { batchSize: 10, maxInFlightBatches: 3, pollMs: 5 } }),
    ).not.toThrow();
  });

  it.each([
    ["not an object", 42, "(root)"],
    ["no store", { publisher }, "store"],
    ["store of the wrong type", { store: "postgres://x" }, "store"],
    ["unknown top-level key", { store, publsher: publisher }, "publsher"],
    ["unknown relay key", { store, relay: { batchsize: 3 } }, "relay.batchsize"],
    ["non-positive relay number", { store, relay: { batchSize: 0 } }, "relay.batchSize"],
    ["fractional batch size", { store, relay: { batchSize: 2.5 } }, "relay.batchSize"],
    ["leader without lock", { store, relay: { leader: { name: "x" } } }, "relay.leader"],
    ["hook that is not a function", { store, migrate: "yes" }, "migrate"],
  ])("rejects %s with OUTBOX_INVALID_OPTIONS naming the field", (_name, config, field) => {
    expect(codeOf(() => validateConfig(config))).toEqual({ code: OutboxErrorCode.InvalidOptions, details: { field } });
  });

  it("the env stack needs OUTBOX_DATABASE_URL and validates OUTBOX_LEADER", () => {
    const logger = createLogger({ write: () => undefined });
    expect(configFromEnv({}, logger)).toBeUndefined();
    expect(configFromEnv({ OUTBOX_DATABASE_URL: "postgres://h/db" }, logger)?.lock).toBeUndefined();
    expect(
      typeof configFromEnv({ OUTBOX_DATABASE_URL: "postgres://h/db", OUTBOX_LEADER: "postgres" }, logger)?.lock,
    ).toBe("function");
    expect(
      codeOf(() => configFromEnv({ OUTBOX_DATABASE_URL: "postgres://h/db", OUTBOX_LEADER: "redis" }, logger)),
    ).toEqual({
      code: OutboxErrorCode.InvalidOptions,
      details: { field: "OUTBOX_LEADER" },
    });
  });
});

describe("durations", () => {
  it("parses units and moments", () => {
    expect(parseDuration("7d")).toBe(604_800_000);
    expect(parseDuration("1.5h")).toBe(5_400_000);
    expect(parseDuration("250ms")).toBe(250);
    expect(parseDuration("1500")).toBe(1500);
    expect(parseMoment("1h", 10_000_000).getTime()).toBe(10_000_000 - 3_600_000);
    expect(parseMoment("2024-05-01T00:00:00Z", 0).toISOString()).toBe("2024-05-01T00:00:00.000Z");
    expect(codeOf(() => parseDuration("7 days"))).toMatchObject({ code: CliErrorCode.Usage });
    expect(codeOf(() => parseMoment("yesterday", 0))).toMatchObject({ code: CliErrorCode.Usage });
  });
});

/**
 * The store as the CLI sees it: every method delegated, close() a no-op (each command closes
 * what it used, and the test keeps using the store), plus `overrides`.
 */
function asConfigured(store: MemoryStore, overrides: Record<string, unknown> = {}): OutboxStore {
  const methods = [
    "enqueue",
    "claim",
    "ack",
    "retry",
    "deadLetter",
    "release",
    "listDead",
    "requeueDead",
    "purge",
    "stats",
  ] as const;
  const view: Record<string, unknown> = { capabilities: store.capabilities, close: async () => undefined };
  for (const name of methods)
    view[name] = (...args: unknown[]) => (store[name] as (...a: unknown[]) => unknown)(...args);
  return Object.assign(view, overrides) as unknown as OutboxStore;
}

/**
 * A MemoryStore with three dead entries (two on "orders", one on "billing"). Its clock runs a
 * second behind the CLI's, so "settled before now" holds for them even within one millisecond.
 */
async function storeWithDeadEntries() {
  const store = new MemoryStore({ clock: { ...systemClock, now: () => systemClock.now() - 1_000 } });
  await store.transaction((tx) =>
    store.enqueue(tx, [
      { topic: "orders", key: "a", payload: '{"n":1}' },
      { topic: "orders", key: "b", payload: new Uint8Array([0xff, 0xfe]) },
      { topic: "billing", key: "a", payload: "x" },
      { topic: "orders", key: "c", payload: "alive" },
    ]),
  );
  const claimed = await store.claim({ claimer: "t", limit: 10, leaseMs: 60_000 });
  const dead = claimed.filter((entry) => entry.key !== "c");
  await store.deadLetter(
    dead.map((entry) => ({
      id: entry.id,
      error: entry.topic === "orders" ? "MESSAGE_TOO_LARGE" : "TOPIC_AUTHORIZATION_FAILED",
    })),
    { claimer: "t" },
  );
  await store.release(
    claimed.filter((entry) => entry.key === "c").map((entry) => entry.id),
    { claimer: "t" },
  );
  return { store, ids: dead.map((entry) => entry.id) };
}

describe("operator commands (in-process, in-memory store)", () => {
  let store: MemoryStore;
  let ids: string[];
  const cli = (...args: string[]) => run(["--config", globalConfigPath, ...args]);

  beforeEach(async () => {
    ({ store, ids } = await storeWithDeadEntries());
    setTestConfig({ store: asConfigured(store), publisher: new MemoryPublisher(), relay: { pollMs: 10 } });
  });

  it("status --json", async () => {
    const { code, stdout } = await cli("status", "--json");
    expect(code).toBe(ExitCode.Ok);
    const report = JSON.parse(stdout.text);
    expect(report).toMatchObject({ pending: 1, inFlight: 0, dead: 3, relays: [], leader: null });
    expect(typeof report.lagSeconds).toBe("number");
  });

  it("status shows a log-capture store's slot: JSON as the store reports it, text in bytes", async () => {
    const capture = {
      source: "shop_outbox_outbox",
      active: true,
      state: "reserved",
      lagBytes: 3 * 1024 * 1024,
      retainedBytes: 1536,
    };
    setTestConfig({
      store: asConfigured(store, { stats: async () => ({ ...(await store.stats()), capture }) }),
      publisher: new MemoryPublisher(),
    });
    expect(JSON.parse((await cli("status", "--json")).stdout.text).capture).toEqual(capture);
    const text = await cli("status");
    expect(text.stdout.lines()).toContain(
      "capture      slot shop_outbox_outbox (reserved, active): 3.0 MiB behind, 1.5 KiB of WAL retained",
    );
    const missing = { ...capture, active: false, state: "missing", lagBytes: null, retainedBytes: null };
    setTestConfig({
      store: asConfigured(store, { stats: async () => ({ ...(await store.stats()), capture: missing }) }),
      publisher: new MemoryPublisher(),
    });
    expect((await cli("status")).stdout.text).toMatch(
      /^capture +slot shop_outbox_outbox \(missing, no consumer\): entries committed since are in the table only/m,
    );
    // A polling store has no capture line.
    setTestConfig({ store: asConfigured(store), publisher: new MemoryPublisher() });
    expect((await cli("status")).stdout.text).not.toMatch(/^capture/m);
  });

  it("metrics: a log-capture store's slot lag and retained WAL, absent for a polling store", async () => {
    const stats = { pending: 0, inFlight: 0, dead: 0, oldestPendingAt: null };
    const capture = { source: "s1", active: true, state: "extended", lagBytes: 2048, retainedBytes: 4096 };
    let current: StoreStats = { ...stats, capture };
    const metrics = new RelayMetrics({
      backlog: () => ({ stats: current, ok: true }),
      fence: () => null,
      ready: () => true,
      defaultMetrics: false,
    });
    const scraped = await metrics.registry.metrics();
    expect(scraped).toMatch(/^outbox_capture_lag_bytes\{source="s1",state="extended"\} 2048$/m);
    expect(scraped).toMatch(/^outbox_capture_retained_bytes\{source="s1",state="extended"\} 4096$/m);
    current = stats;
    expect(await metrics.registry.metrics()).not.toMatch(/^outbox_capture_\w+\{/m);
  });

  it("dead list filters (through the store, which filters itself) and prints JSON or a table", async () => {
    const listed = await cli("dead", "list", "--json", "--topic", "orders");
    expect(listed.code).toBe(0);
    const body = JSON.parse(listed.stdout.text);
    // The store reads its matches only: 2 scanned of the 3 dead.
    expect(body).toMatchObject({ matched: 2, scanned: 2, complete: true });
    expect(body.entries.map((entry: { id: string }) => entry.id)).toEqual(ids.slice(0, 2));
    const byError = JSON.parse((await cli("dead", "list", "--json", "--error", "authorization")).stdout.text);
    expect(byError.entries.map((entry: { topic: string }) => entry.topic)).toEqual(["billing"]);
    const table = await cli("dead", "list", "--key", "a");
    expect(table.stdout.lines()[0]).toMatch(/^ID\s+TOPIC\s+KEY\s+ATTEMPTS\s+CREATED\s+LAST ERROR$/);
    expect(table.stdout.text).toContain("2 shown, 2 matched, 2 scanned");
  });

  it("dead list and show page through more dead entries than one listDead call returns", async () => {
    const many = new MemoryStore();
    await many.transaction((tx) =>
      many.enqueue(
        tx,
        Array.from({ length: 2_500 }, (_, n) => ({ topic: n === 2_400 ? "late" : "bulk", payload: String(n) })),
      ),
    );
    const claimed = await many.claim({ claimer: "t", limit: 2_500, leaseMs: 60_000 });
    await many.deadLetter(
      claimed.map((entry) => ({ id: entry.id, error: "boom" })),
      { claimer: "t" },
    );
    const calls: Array<{ limit?: number; after?: string }> = [];
    setTestConfig({
      // A store that does not declare capabilities.deadLetterFilters: the CLI reads every dead entry and filters.
      store: asConfigured(many, {
        capabilities: { wakeUps: true, transactions: true },
        listDead: (options: { limit?: number; after?: string }) => {
          calls.push({ ...options });
          return many.listDead(options);
        },
      }),
    });
    const all = JSON.parse((await cli("dead", "list", "--json", "--topic", "late")).stdout.text);
    expect(all).toMatchObject({ matched: 1, scanned: 2_500, complete: true });
    expect(calls.map((call) => call.limit)).toEqual([1_000, 1_000, 1_000]);
    expect(calls[1]?.after).toBe(claimed[999]?.id);

    const capped = JSON.parse((await cli("dead", "list", "--json", "--scan", "1500")).stdout.text);
    expect(capped).toMatchObject({ scanned: 1_500, complete: false });

    calls.length = 0;
    const shown = JSON.parse((await cli("dead", "show", claimed[1_200]?.id as string, "--json")).stdout.text);
    expect(shown).toMatchObject({ id: claimed[1_200]?.id, payloadText: "1200" });
    expect(calls).toHaveLength(2);
  });

  it("dead list, requeue and drop pass --topic, --key, --keyless and --error to a store that filters", async () => {
    // 2,500 dead entries, the matches far apart: past the first --scan entries and the first page of 1,000.
    const many = new MemoryStore();
    const special = new Map([
      [1_200, { topic: "late", key: "k", error: "Broker TIMEOUT" }],
      [2_000, { topic: "late", key: null, error: "timeout again" }],
      [2_400, { topic: "late", key: "k", error: "refused" }],
    ]);
    await many.transaction((tx) =>
      many.enqueue(
        tx,
        Array.from({ length: 2_500 }, (_, n) => ({
          topic: special.get(n)?.topic ?? "bulk",
          key: special.has(n) ? special.get(n)?.key : `key-${n}`,
          payload: String(n),
        })),
      ),
    );
    const claimed = await many.claim({ claimer: "t", limit: 2_500, leaseMs: 60_000 });
    await many.deadLetter(
      claimed.map((entry, n) => ({ id: entry.id, error: special.get(n)?.error ?? "boom" })),
      { claimer: "t" },
    );
    const idOf = (n: number) => claimed[n]?.id as string;
    const calls: Array<Record<string, unknown>> = [];
    const dropped: string[][] = [];
    setTestConfig({
      store: asConfigured(many, {
        listDead: (options: Parameters<MemoryStore["listDead"]>[0]) => {
          calls.push({ ...options });
          return many.listDead(options);
        },
        dropDead: async (chosen: readonly string[]) => {
          dropped.push([...chosen]);
          return chosen.length;
        },
      }),
    });
    const listed = async (...args: string[]) => {
      const { code, stdout } = await cli("dead", "list", "--json", ...args);
      expect(code).toBe(0);
      const body = JSON.parse(stdout.text);
      return { ...body, ids: body.entries.map((entry: { id: string }) => entry.id) };
    };
    // Filtering what --scan 2 read would find nothing: the store finds the first two matches.
    expect(await listed("--topic", "late", "--scan", "2")).toMatchObject({
      ids: [idOf(1_200), idOf(2_000)],
      matched: 2,
      scanned: 2,
      complete: false,
    });
    expect(calls).toEqual([{ topic: "late", limit: 2 }]);
    expect((await listed("--topic", "late", "--key", "k")).ids).toEqual([idOf(1_200), idOf(2_400)]);
    expect((await listed("--keyless", "--error", "TimeOut")).ids).toEqual([idOf(2_000)]);
    calls.length = 0;
    expect((await listed("--error", "timeout", "--limit", "1")).ids).toEqual([idOf(1_200)]);
    expect(calls).toEqual([{ errorContains: "timeout", limit: 1_000 }]);

    const requeued = await cli("dead", "requeue", "--all", "--error", "timeout", "--scan", "5", "--json");
    expect(JSON.parse(requeued.stdout.text)).toMatchObject({ requeued: 2, ids: [idOf(1_200), idOf(2_000)] });
    const drop = await cli("dead", "drop", "--all", "--topic", "late", "--json");
    expect(JSON.parse(drop.stdout.text)).toMatchObject({ dropped: 1, selected: 1 });
    expect(dropped).toEqual([[idOf(2_400)]]);
  });

  it("dead list refuses --key with --keyless, and filters the stores refuse (exit 2)", async () => {
    const both = await cli("dead", "list", "--key", "a", "--keyless", "--json");
    expect(both.code).toBe(ExitCode.Usage);
    expect(JSON.parse(both.stderr.text).error.code).toBe(CliErrorCode.Usage);
    for (const args of [
      ["--topic", ""],
      ["--error", "x".repeat(4_097)],
    ]) {
      const refused = await cli("dead", "list", ...args, "--json");
      expect(refused.code, args.join(" ")).toBe(ExitCode.Usage);
      expect(JSON.parse(refused.stderr.text).error.code).toBe(OutboxErrorCode.InvalidOptions);
    }
    // Checked alike for a store that does not filter (the CLI filters for it).
    setTestConfig({ store: asConfigured(store, { capabilities: { wakeUps: true, transactions: true } }) });
    const unfiltered = await cli("dead", "list", "--topic", "", "--json");
    expect(JSON.parse(unfiltered.stderr.text).error.code).toBe(OutboxErrorCode.InvalidOptions);
    const keyless = JSON.parse((await cli("dead", "list", "--keyless", "--json")).stdout.text);
    expect(keyless).toMatchObject({ matched: 0, scanned: 3 });
  });

  it("dead show gives the payload as text, or base64 when it is not UTF-8", async () => {
    const text = JSON.parse((await cli("dead", "show", ids[0] as string, "--json")).stdout.text);
    expect(text).toMatchObject({ id: ids[0], topic: "orders", payloadText: '{"n":1}', lastError: "MESSAGE_TOO_LARGE" });
    const binary = JSON.parse((await cli("dead", "show", ids[1] as string, "--json")).stdout.text);
    expect(binary).toMatchObject({ payloadText: null, payloadBase64: "//4=" });
    const missing = await cli("dead", "show", "999", "--json");
    expect(missing.code).toBe(ExitCode.Failure);
    expect(JSON.parse(missing.stderr.text).error.code).toBe(CliErrorCode.NotFound);
  });

  it("dead requeue by id, by filter, dry run, and refuses an ambiguous selection", async () => {
    const dry = await cli("dead", "requeue", "--all", "--topic", "orders", "--dry-run", "--json");
    expect(JSON.parse(dry.stdout.text)).toMatchObject({ requeued: 0, selected: 2, dryRun: true });
    expect((await store.stats()).dead).toBe(3);

    const usage = await cli("dead", "requeue");
    expect(usage.code).toBe(ExitCode.Usage);
    const both = await cli("dead", "requeue", ids[0] as string, "--all");
    expect(both.code).toBe(ExitCode.Usage);

    const byId = await cli("dead", "requeue", ids[2] as string, "--json");
    expect(byId.code).toBe(0);
    expect(JSON.parse(byId.stdout.text)).toMatchObject({ requeued: 1, selected: 1 });
    const again = await cli("dead", "requeue", ids[2] as string, "--json");
    expect(again.code).toBe(ExitCode.Failure);

    const byFilter = await cli("dead", "requeue", "--all", "--topic", "orders", "--json");
    expect(JSON.parse(byFilter.stdout.text)).toMatchObject({ requeued: 2, selected: 2 });
    expect(await store.stats()).toMatchObject({ dead: 0, pending: 4 });
  });

  it("dead drop reports OUTBOX_INVALID_OPTIONS (exit 2) when the store cannot drop", async () => {
    const { code, stderr } = await cli("dead", "drop", "--all", "--json");
    expect(code).toBe(ExitCode.Usage);
    expect(JSON.parse(stderr.text).error).toMatchObject({
      code: OutboxErrorCode.InvalidOptions,
      details: { capability: "dropDead" },
    });
  });

  it("dead drop uses a store's dropDead() when it has one", async () => {
    const dropped: string[][] = [];
    const capable = asConfigured(store, {
      dropDead: async (chosen: readonly string[]) => {
        dropped.push([...chosen]);
        return chosen.length;
      },
    });
    setTestConfig({ store: capable });
    const { code, stdout } = await cli("dead", "drop", "--all", "--topic", "billing", "--json");
    expect(code).toBe(0);
    expect(JSON.parse(stdout.text)).toMatchObject({ dropped: 1, selected: 1 });
    expect(dropped).toEqual([[ids[2]]]);
  });

  it("purge --json deletes settled entries only", async () => {
    const { code, stdout } = await cli("purge", "--older-than", "0s", "--json");
    expect(code).toBe(0);
    expect(JSON.parse(stdout.text)).toMatchObject({ deleted: 3, estimatedRows: null });
    expect(await store.stats()).toMatchObject({ pending: 1, dead: 0 });
  });

  it("migrate without a migrate() hook is a configuration error", async () => {
    const { code, stderr } = await cli("migrate", "--json");
    expect(code).toBe(ExitCode.Usage);
    expect(JSON.parse(stderr.text).error).toMatchObject({
      code: OutboxErrorCode.InvalidOptions,
      details: { field: "migrate" },
    });
  });
});

describe("exit codes for bad usage and configuration", () => {
  it.each([
    [["bogus"]],
    [["status", "--no-such-flag"]],
    [["purge"]],
    [["purge", "--older-than", "soon", "--config", globalConfigPath]],
    [["relay", "--port", "99999", "--config", globalConfigPath]],
    [["status", "--config", "/nonexistent/outbox.config.ts"]],
  ])("outbox %j exits 2", async (args) => {
    setTestConfig({ store: new MemoryStore() });
    expect((await run(args)).code).toBe(ExitCode.Usage);
  });

  it("no configuration at all exits 2", async () => {
    const { code, stderr } = await run(["status", "--json"], {});
    expect(code).toBe(ExitCode.Usage);
    expect(JSON.parse(stderr.text).error.code).toBe(OutboxErrorCode.InvalidOptions);
  });

  it("a config whose relay settings are invalid exits 2 from `relay`", async () => {
    setTestConfig({ store: new MemoryStore(), publisher: new MemoryPublisher(), relay: { drainTimeoutMs: -1 } });
    expect((await run(["relay", "--config", globalConfigPath, "--port", "0", "--no-default-metrics"])).code).toBe(2);
  });

  it("relay without a publisher exits 2", async () => {
    setTestConfig({ store: new MemoryStore() });
    expect((await run(["relay", "--config", globalConfigPath, "--port", "0"])).code).toBe(ExitCode.Usage);
  });

  it("a store that fails is a runtime failure (exit 1), its URL redacted", async () => {
    const failing = asConfigured(new MemoryStore(), {
      stats: async () => {
        throw new Error("connect ECONNREFUSED postgres://app:hunter2@10.0.0.1/db");
      },
    });
    setTestConfig({ store: failing });
    const { code, stderr } = await run(["status", "--config", globalConfigPath]);
    expect(code).toBe(ExitCode.Failure);
    expect(stderr.text).toContain("postgres://app:***@10.0.0.1/db");
    expect(stderr.text).not.toContain("hunter2");
  });
});

describe("outbox relay (in-process, in-memory adapters)", () => {
  it("publishes, serves probes and metrics, drains on SIGTERM and exits 0", async () => {
    const store = new MemoryStore();
    const publisher = new MemoryPublisher();
    setTestConfig({ store, publisher, relay: { pollMs: 10 } });
    await store.transaction((tx) =>
      store.enqueue(
        tx,
        Array.from({ length: 50 }, (_, i) => ({ topic: "t", key: `k${i % 5}`, payload: `m${i}` })),
      ),
    );
    const relay = runInProcess([
      "relay",
      "--config",
      globalConfigPath,
      "--port",
      "0",
      "--host",
      "127.0.0.1",
      "--stats-interval",
      "20ms",
    ]);
    const started = await waitFor(
      () => relay.stdout.json<{ msg: string; port: number }>().find((line) => line.msg === "relay started"),
      10_000,
      "the relay to start",
    );
    const base = `http://127.0.0.1:${started.port}`;
    await waitFor(() => publisher.messages.length === 50, 10_000, "50 messages");
    const ready = await waitFor(
      async () => {
        const response = await fetch(`${base}/readyz`);
        const body = (await response.json()) as { ready: boolean; pending: number };
        return response.status === 200 && body.pending === 0 ? body : null;
      },
      10_000,
      "/readyz with an empty backlog",
    );
    expect(ready).toMatchObject({ ready: true, leader: true, leaderElection: false, fence: null, published: 50 });
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/nope`)).status).toBe(404);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/^outbox_published_total 50$/m);
    expect(metrics).toMatch(/^outbox_backlog_entries\{state="pending"\} 0$/m);
    expect(metrics).toMatch(/^outbox_publish_duration_seconds_count\{outcome="ok"\} \d+$/m);
    expect(metrics).toMatch(/^outbox_delivery_latency_seconds_count 50$/m);
    expect(metrics).toMatch(/^process_cpu_user_seconds_total /m);
    // The dashboard's relays panel reads this very /readyz.
    const dashboard = createDashboardHandler({ store, relays: [base], sampleIntervalMs: 60_000 });
    const panel = createServer(dashboard);
    await new Promise<void>((done) => panel.listen(0, "127.0.0.1", done));
    try {
      const state = (await (
        await fetch(`http://127.0.0.1:${(panel.address() as AddressInfo).port}/api/state`)
      ).json()) as { relays: unknown[] };
      expect(state.relays).toEqual([
        expect.objectContaining({
          url: base,
          reachable: true,
          ready: true,
          reasons: [],
          relayId: (ready as unknown as { relayId: string }).relayId,
          leader: true,
          leaderElection: false,
          fence: null,
          published: 50,
          lastPublishError: null,
        }),
      ]);
    } finally {
      dashboard.close();
      await new Promise((done) => panel.close(done));
    }

    relay.signal("SIGTERM");
    expect(await relay.code).toBe(ExitCode.Ok);
    const lines = relay.stdout.json<{ msg: string; level: string }>();
    expect(lines.map((line) => line.msg)).toEqual(expect.arrayContaining(["relay started", "draining", "stopped"]));
    expect(lines.find((line) => line.msg === "stopped")).toMatchObject({ drained: true, published: 50 });
  });
});

describe("readiness", () => {
  const base: Parameters<typeof notReadyReasons>[0] = {
    draining: false,
    running: true,
    backlog: { stats: { pending: 3, inFlight: 0, dead: 0, oldestPendingAt: new Date(0) }, ok: true },
    claimFailures: 0,
    publish: { failedInARow: 0, lastError: null },
    now: 60_000,
    maxLagMs: 120_000,
    maxFailures: 3,
  };
  const codesOf = (input: Partial<typeof base>) => notReadyReasons({ ...base, ...input }).map((reason) => reason.code);

  it("names each reason by a stable code", () => {
    expect(codesOf({})).toEqual([]);
    expect(codesOf({ draining: true })).toEqual([NotReadyReason.Draining]);
    expect(codesOf({ running: false })).toEqual([NotReadyReason.NotRunning]);
    expect(codesOf({ backlog: { stats: null, ok: false } })).toEqual([NotReadyReason.StoreNotReached]);
    expect(codesOf({ backlog: { ...base.backlog, ok: false } })).toEqual([NotReadyReason.StoreFailing]);
    expect(codesOf({ claimFailures: 3 })).toEqual([NotReadyReason.ClaimsFailing]);
    expect(codesOf({ publish: { failedInARow: 3, lastError: "down" } })).toEqual([NotReadyReason.PublishFailing]);
    expect(codesOf({ now: 120_001 })).toEqual([NotReadyReason.LagAboveMax]);
  });

  it("publish failures count only while entries are pending; undefined limits turn checks off", () => {
    const empty = { stats: { pending: 0, inFlight: 0, dead: 0, oldestPendingAt: null }, ok: true };
    expect(codesOf({ backlog: empty, publish: { failedInARow: 9, lastError: null } })).toEqual([]);
    expect(
      codesOf({ maxFailures: undefined, claimFailures: 9, publish: { failedInARow: 9, lastError: null } }),
    ).toEqual([]);
    expect(codesOf({ maxLagMs: undefined, now: 10 ** 12 })).toEqual([]);
  });

  it("a publish call fails when nothing was published and an entry failed transiently, or when it threw", () => {
    const health = new PublishHealth(() => 0);
    health.record([transientFailure(new Error("down")), transientFailure(new Error("down"))]);
    health.record({ error: new Error("thrown") });
    expect(health).toMatchObject({ failedInARow: 2, attempts: 2, lastError: "thrown" });
    health.record([permanentFailure(new Error("too large"))]);
    expect(health.failedInARow).toBe(0);
    health.record([transientFailure(new Error("down"))]);
    health.record([published(), transientFailure(new Error("down"))]);
    expect(health.failedInARow).toBe(0);
  });
});

describe("process warnings in the relay's JSON log", () => {
  it("go to stdout as a JSON line, not to stderr", async () => {
    setTestConfig({ store: new MemoryStore(), publisher: new MemoryPublisher(), relay: { pollMs: 10 } });
    const relay = runInProcess([
      "relay",
      "--config",
      globalConfigPath,
      "--port",
      "0",
      "--host",
      "127.0.0.1",
      "--no-default-metrics",
    ]);
    await waitFor(
      () => relay.stdout.json<{ msg: string }>().some((line) => line.msg === "relay started"),
      10_000,
      "the relay to start",
    );
    const warning = new Error("-1796623872782 is a negative number.");
    warning.name = "TimeoutNegativeWarning";
    warning.stack = `${warning.name}: ${warning.message}\n    at RequestQueue.scheduleCheckPendingRequests (/x/node_modules/kafkajs/src/network/requestQueue/index.js:317:37)`;
    relay.warn(warning);
    relay.signal("SIGTERM");
    expect(await relay.code).toBe(ExitCode.Ok);
    const line = relay.stdout
      .json<{ msg: string; level: string; warning?: { name: string }; note?: string }>()
      .find((candidate) => candidate.msg === "process warning");
    expect(line).toMatchObject({ level: "warn", warning: { name: "TimeoutNegativeWarning" } });
    expect(typeof line?.note).toBe("string");
    expect(relay.stderr.text).toBe("");
  });
});
