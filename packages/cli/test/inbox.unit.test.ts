// `outbox inbox status|dead|purge` in-process on the in-memory inbox store: output shapes, selection rules and exit
// codes. The same commands on the real servers: inbox.stores.test.ts. Assertions are on codes and fields.
import { wrapInboxStore } from "@outbox/conformance/inbox";
import { ManualClock, OutboxErrorCode } from "@outbox/core";
import { createInbox, type InboxStore, MemoryInboxStore, type MemoryInboxTransaction } from "@outbox/inbox";
import { MemoryStore } from "@outbox/memory";
import { beforeEach, describe, expect, it } from "vitest";
import { validateConfig } from "../src/config.js";
import { CliErrorCode, ExitCode } from "../src/errors.js";
import { type Capture, globalConfigPath, run, runInProcess, setTestConfig } from "./support.js";

const day = 86_400_000;

/** The store as a config gives it: every command closes it, so each gets a view whose close() does nothing. */
function asConfigured(
  store: MemoryInboxStore,
  overrides: Partial<InboxStore<MemoryInboxTransaction>> = {},
): () => InboxStore<MemoryInboxTransaction> {
  return () => wrapInboxStore(store, { close: async () => undefined, ...overrides });
}

/**
 * Consumer "shipping": 3 keys recorded 10 days ago and 2 a minute ago, 3 dead letters (two on "orders", one on
 * "billing" with a binary payload) and a message failing once. Consumer "billing": one key a minute ago.
 */
async function inboxWithLetters() {
  const store = new MemoryInboxStore();
  const start = Date.now();
  const clock = new ManualClock(start - 10 * day);
  const shipping = createInbox({ store, clock, consumer: "shipping", maxAttempts: 2 });
  const ok = async () => undefined;
  for (const id of ["old-1", "old-2", "old-3"]) await shipping.handle({ id }, ok);
  clock.advance(10 * day - 60_000);
  for (const id of ["new-1", "new-2"]) await shipping.handle({ id }, ok);
  const once = createInbox({ store, clock, consumer: "shipping", maxAttempts: 1 });
  const fail = (error: string) => () => Promise.reject(new Error(error));
  await once.handle({ id: "d-1", topic: "orders", key: "a", payload: '{"n":1}' }, fail("validation failed"));
  await once.handle({ id: "d-2", topic: "orders", key: "b", payload: new Uint8Array([0xff, 0xfe]) }, fail("boom"));
  await once.handle({ id: "d-3", topic: "billing", key: "a", payload: "x" }, fail("permission denied"));
  await shipping.handle({ id: "failing" }, fail("flaky")).catch(() => undefined);
  await createInbox({ store, clock, consumer: "billing" }).handle({ id: "new-1" }, ok);
  return { store, shipping };
}

const cli = (...args: string[]) => run(["--config", globalConfigPath, ...args]);
const errorOf = (stderr: Capture) =>
  JSON.parse(stderr.text).error as { code: string; details?: { field?: string; capability?: string } };

describe("outbox inbox (in-process, in-memory inbox store)", () => {
  let store: MemoryInboxStore;
  let shipping: Awaited<ReturnType<typeof inboxWithLetters>>["shipping"];

  beforeEach(async () => {
    ({ store, shipping } = await inboxWithLetters());
    setTestConfig({ inbox: asConfigured(store) });
  });

  it("status --json: every consumer, or the one asked for (zeros for a name that recorded nothing)", async () => {
    const all = await cli("inbox", "status", "--json");
    expect(all.code).toBe(ExitCode.Ok);
    const { consumers } = JSON.parse(all.stdout.text);
    expect(consumers.map((stats: { consumer: string }) => stats.consumer)).toEqual(["billing", "shipping"]);
    expect(consumers[1]).toMatchObject({ consumer: "shipping", processed: 5, dead: 3, failing: 1 });
    expect(Date.parse(consumers[1].oldestProcessedAt)).toBeLessThan(Date.now() - 9 * day);

    const one = JSON.parse((await cli("inbox", "status", "--consumer", "billing", "--json")).stdout.text);
    expect(one.consumers).toEqual([expect.objectContaining({ consumer: "billing", processed: 1, dead: 0 })]);
    const typo = JSON.parse((await cli("inbox", "status", "--consumer", "shiping", "--json")).stdout.text);
    expect(typo.consumers).toEqual([
      {
        consumer: "shiping",
        processed: 0,
        dead: 0,
        failing: 0,
        oldestProcessedAt: null,
        newestProcessedAt: null,
        oldestDeadAt: null,
      },
    ]);
  });

  it("status prints a table with ages; a name that recorded nothing gets a note", async () => {
    const table = await cli("inbox", "status");
    expect(table.stdout.lines()[0]).toMatch(
      /^CONSUMER\s+PROCESSED\s+DEAD\s+FAILING\s+OLDEST KEY\s+NEWEST KEY\s+OLDEST DEAD$/,
    );
    expect(table.stdout.lines()[2]).toMatch(/^shipping\s+5\s+3\s+1\s+10\.0d ago\s+\d+\.\ds ago\s+\d+\.\ds ago$/);
    const typo = await cli("inbox", "status", "--consumer", "shiping");
    expect(typo.code).toBe(ExitCode.Ok);
    expect(typo.stdout.lines()).toHaveLength(3);
  });

  it("dead list needs --consumer, filters client-side and prints JSON or a table", async () => {
    expect((await cli("inbox", "dead", "list")).code).toBe(ExitCode.Usage);
    const listed = await cli("inbox", "dead", "list", "--consumer", "shipping", "--json", "--topic", "orders");
    expect(listed.code).toBe(ExitCode.Ok);
    const body = JSON.parse(listed.stdout.text);
    expect(body).toMatchObject({ consumer: "shipping", matched: 2, scanned: 3, complete: true });
    expect(body.entries.map((letter: { messageId: string }) => letter.messageId)).toEqual(["d-1", "d-2"]);
    expect(body.entries[0]).toMatchObject({ id: "d-1", topic: "orders", key: "a", attempts: 1, payloadBytes: 7 });
    const byError = await cli("inbox", "dead", "list", "--consumer", "shipping", "--json", "--error", "PERMISSION");
    expect(JSON.parse(byError.stdout.text).entries.map((letter: { topic: string }) => letter.topic)).toEqual([
      "billing",
    ]);
    const recent = await cli("inbox", "dead", "list", "--consumer", "shipping", "--json", "--since", "1h");
    expect(JSON.parse(recent.stdout.text).matched).toBe(3);
    const other = await cli("inbox", "dead", "list", "--consumer", "billing", "--json");
    expect(JSON.parse(other.stdout.text)).toMatchObject({ matched: 0, scanned: 0, complete: true });
    const table = await cli("inbox", "dead", "list", "--consumer", "shipping", "--key", "a");
    expect(table.stdout.lines()[0]).toMatch(/^MESSAGE ID\s+TOPIC\s+KEY\s+ATTEMPTS\s+DEAD AT\s+ERROR$/);
    expect(table.stdout.text).toContain("2 shown, 2 matched, 3 scanned");
    const keyless = await cli("inbox", "dead", "list", "--consumer", "shipping", "--json", "--keyless");
    expect(JSON.parse(keyless.stdout.text)).toMatchObject({ matched: 0, scanned: 3 });
  });

  it("dead list and show page through more dead letters than one listDead call returns", async () => {
    const many = new MemoryInboxStore();
    const once = createInbox({ store: many, consumer: "bulk", maxAttempts: 1 });
    for (let n = 0; n < 2_500; n++) {
      const id = `m-${String(n).padStart(4, "0")}`;
      await once.handle({ id, topic: n === 2_400 ? "late" : "bulk", payload: String(n) }, () =>
        Promise.reject(new Error("no")),
      );
    }
    const calls: Array<{ limit?: number; after?: string }> = [];
    setTestConfig({
      inbox: asConfigured(many, {
        listDead: (consumer, options) => {
          calls.push({ ...options });
          return many.listDead(consumer, options);
        },
      }),
    });
    const all = JSON.parse(
      (await cli("inbox", "dead", "list", "--consumer", "bulk", "--json", "--topic", "late")).stdout.text,
    );
    expect(all).toMatchObject({ matched: 1, scanned: 2_500, complete: true });
    expect(calls.map((call) => call.limit)).toEqual([1_000, 1_000, 1_000]);
    expect(calls[1]?.after).toBe("m-0999");
    const capped = JSON.parse(
      (await cli("inbox", "dead", "list", "--consumer", "bulk", "--json", "--scan", "1500")).stdout.text,
    );
    expect(capped).toMatchObject({ scanned: 1_500, complete: false });

    calls.length = 0;
    const shown = JSON.parse(
      (await cli("inbox", "dead", "show", "m-1200", "--consumer", "bulk", "--json")).stdout.text,
    );
    expect(shown).toMatchObject({ messageId: "m-1200", payloadText: "1200" });
    expect(calls, "show stops at the page holding the letter").toHaveLength(2);
  });

  it("dead show gives the payload as text, or base64 when it is not UTF-8; a missing one is OUTBOX_CLI_NOT_FOUND", async () => {
    const text = JSON.parse(
      (await cli("inbox", "dead", "show", "d-1", "--consumer", "shipping", "--json")).stdout.text,
    );
    expect(text).toMatchObject({
      consumer: "shipping",
      messageId: "d-1",
      topic: "orders",
      payloadText: '{"n":1}',
      payloadTruncated: false,
    });
    expect(text.error).toContain("validation failed");
    const binary = JSON.parse(
      (await cli("inbox", "dead", "show", "d-2", "--consumer", "shipping", "--json")).stdout.text,
    );
    expect(binary).toMatchObject({ payloadText: null, payloadBase64: "//4=" });
    const plain = await cli("inbox", "dead", "show", "d-1", "--consumer", "shipping");
    expect(plain.stdout.lines()).toContain('{"n":1}');
    const missing = await cli("inbox", "dead", "show", "d-1", "--consumer", "billing", "--json");
    expect(missing.code).toBe(ExitCode.Failure);
    expect(errorOf(missing.stderr).code).toBe(CliErrorCode.NotFound);
  });

  it("dead requeue by id, by filter, dry run; refuses an ambiguous selection; a requeued message is handled again", async () => {
    const dry = await cli(
      "inbox",
      "dead",
      "requeue",
      "--consumer",
      "shipping",
      "--all",
      "--topic",
      "orders",
      "--dry-run",
      "--json",
    );
    expect(JSON.parse(dry.stdout.text)).toMatchObject({ consumer: "shipping", requeued: 0, selected: 2, dryRun: true });
    expect((await store.stats("shipping"))[0]?.dead).toBe(3);

    expect((await cli("inbox", "dead", "requeue", "--consumer", "shipping")).code).toBe(ExitCode.Usage);
    expect((await cli("inbox", "dead", "requeue", "d-3", "--all", "--consumer", "shipping")).code).toBe(ExitCode.Usage);
    expect((await cli("inbox", "dead", "requeue", "d-3", "--topic", "x", "--consumer", "shipping")).code).toBe(
      ExitCode.Usage,
    );
    expect((await cli("inbox", "dead", "requeue", "d-3")).code, "no --consumer").toBe(ExitCode.Usage);

    const byId = await cli("inbox", "dead", "requeue", "d-3", "--consumer", "shipping", "--json");
    expect(byId.code).toBe(ExitCode.Ok);
    expect(JSON.parse(byId.stdout.text)).toMatchObject({ requeued: 1, selected: 1, ids: ["d-3"] });
    const again = await cli("inbox", "dead", "requeue", "d-3", "--consumer", "shipping", "--json");
    expect(again.code).toBe(ExitCode.Failure);
    expect(errorOf(again.stderr).code).toBe(CliErrorCode.NotFound);
    expect((await shipping.handle({ id: "d-3" }, async () => "ran")).status, "requeued: handled again").toBe("handled");

    const byFilter = await cli("inbox", "dead", "requeue", "--consumer", "shipping", "--all", "--topic", "orders");
    expect(byFilter.code).toBe(ExitCode.Ok);
    expect(byFilter.stdout.lines()[0]).toBe("requeued: 2 of 2 selected");
    expect((await store.stats("shipping"))[0]).toMatchObject({ dead: 0, processed: 6 });
  });

  it("dead drop by id: a dropped letter counts as handled (its redelivery is a duplicate)", async () => {
    const dropped = await cli("inbox", "dead", "drop", "d-1", "d-2", "--consumer", "shipping", "--json");
    expect(dropped.code).toBe(ExitCode.Ok);
    expect(JSON.parse(dropped.stdout.text)).toMatchObject({ dropped: 2, selected: 2 });
    expect((await shipping.handle({ id: "d-1" }, async () => "ran")).status).toBe("duplicate");
    const wrongConsumer = await cli("inbox", "dead", "drop", "d-3", "--consumer", "billing", "--json");
    expect(wrongConsumer.code).toBe(ExitCode.Failure);
    expect(JSON.parse(wrongConsumer.stdout.text)).toMatchObject({ consumer: "billing", dropped: 0, selected: 1 });
    expect((await store.stats("shipping"))[0]).toMatchObject({ dead: 1 });
  });

  it("purge --older-than deletes older processed keys of every consumer, keeps younger ones and dead letters", async () => {
    const { code, stdout } = await cli("inbox", "purge", "--older-than", "7d", "--json");
    expect(code).toBe(ExitCode.Ok);
    const report = JSON.parse(stdout.text);
    expect(report).toMatchObject({ deleted: 3, steps: 100 });
    expect(Date.parse(report.olderThan) - Date.parse(report.from)).toBe(7 * day);
    expect(await store.stats()).toEqual([
      expect.objectContaining({ consumer: "billing", processed: 1 }),
      expect.objectContaining({ consumer: "shipping", processed: 2, dead: 3, failing: 1 }),
    ]);
    expect((await shipping.handle({ id: "old-1" }, async () => "ran")).status, "a purged key is handled again").toBe(
      "handled",
    );
    expect((await cli("inbox", "purge")).code, "--older-than is required").toBe(ExitCode.Usage);
    expect((await cli("inbox", "purge", "--older-than", "soon")).code).toBe(ExitCode.Usage);
  });

  it("purge draws its bar in time slices on a terminal (stderr), and none with --no-progress", async () => {
    const running = runInProcess([
      "--config",
      globalConfigPath,
      "inbox",
      "purge",
      "--older-than",
      "7d",
      "--steps",
      "4",
    ]);
    running.stderr.isTTY = true;
    expect(await running.code).toBe(ExitCode.Ok);
    expect(running.stderr.text).toMatch(/inbox purge \|[█░]+\| 100% of the time range \| 3 rows \| recorded before /);
    const quiet = runInProcess(["--config", globalConfigPath, "inbox", "purge", "--older-than", "7d", "--no-progress"]);
    quiet.stderr.isTTY = true;
    expect(await quiet.code).toBe(ExitCode.Ok);
    expect(quiet.stderr.text).toBe("");
  });

  it("a store failure is a runtime failure (exit 1) with the store's code", async () => {
    setTestConfig({
      inbox: asConfigured(store, {
        stats: async () => {
          throw Object.assign(new Error("connect ECONNREFUSED"), { code: OutboxErrorCode.StoreUnavailable });
        },
      }),
    });
    const { code, stderr } = await cli("inbox", "status", "--json");
    expect(code).toBe(ExitCode.Failure);
    expect(errorOf(stderr).code).toBe(OutboxErrorCode.StoreUnavailable);
  });
});

describe("outbox inbox: configuration", () => {
  const inbox = new MemoryInboxStore();

  it("a config may have an inbox and no outbox store (a consumer's service), but not neither", () => {
    expect(() => validateConfig({ inbox })).not.toThrow();
    expect(() => validateConfig({ store: new MemoryStore(), inbox: () => inbox })).not.toThrow();
    for (const [config, field] of [
      [{}, "store"],
      [{ inbox: "postgres://x" }, "inbox"],
    ] as const) {
      let caught: unknown;
      try {
        validateConfig(config);
      } catch (error) {
        caught = error;
      }
      expect(caught).toMatchObject({ code: OutboxErrorCode.InvalidOptions, details: { field } });
    }
  });

  it("inbox commands without an inbox, and outbox commands without a store, exit 2 naming the field", async () => {
    setTestConfig({ store: new MemoryStore() });
    const noInbox = await cli("inbox", "status", "--json");
    expect(noInbox.code).toBe(ExitCode.Usage);
    expect(errorOf(noInbox.stderr)).toMatchObject({
      code: OutboxErrorCode.InvalidOptions,
      details: { field: "inbox" },
    });

    setTestConfig({ inbox: asConfigured(inbox) });
    const noStore = await cli("status", "--json");
    expect(noStore.code).toBe(ExitCode.Usage);
    expect(errorOf(noStore.stderr)).toMatchObject({
      code: OutboxErrorCode.InvalidOptions,
      details: { field: "store" },
    });
  });

  it("an inbox store without stats() (an older or hand-written one) exits 2 naming `inbox`", async () => {
    const { stats: _stats, ...withoutStats } = wrapInboxStore(inbox, {});
    setTestConfig({ inbox: withoutStats });
    const result = await cli("inbox", "status", "--json");
    expect(result.code).toBe(ExitCode.Usage);
    expect(errorOf(result.stderr)).toMatchObject({ code: OutboxErrorCode.InvalidOptions, details: { field: "inbox" } });
  });
});
