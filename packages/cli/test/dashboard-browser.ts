// The body of the dashboard's browser tests, shared by every store they run on
// (dashboard.browser.pg.test.ts, dashboard.browser.mysql.test.ts): `outbox dashboard` in a real
// browser (Debian's chromium, headless, driven by playwright-core, as docs/test/browser.test.mjs
// does) against a real store with entries in every state. The numbers shown are the store's (the
// relays' panel without --relay too: its fencing token and in-flight counts), an HTML payload and
// an HTML error render as text, drop asks first, requeue makes a dead entry pending again and a
// relay on the same store then publishes it to the real Kafka broker (read back with a kafkajs
// consumer), read-only hides the actions and the server refuses them, the token gate refuses
// requests without the token. The dashboard runs in-process through the CLI (`main`), on
// loopback, port 0. Deterministic: every wait is for a DOM, store or broker state, never a sleep.
import { existsSync } from "node:fs";
import { type OutboxMessage, OutboxRelay, type OutboxStore } from "@outbox/core";
import { createKafkaPublisher } from "@outbox/publisher-kafka";
import { waitFor } from "@outbox/test-support/wait";
import type { Admin, Kafka } from "kafkajs";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
// Shared with @outbox/publisher-kafka's tests (a real consumer, fresh group, from the beginning).
import { consume, createTopic, newKafka } from "../../publisher-kafka/test/support/kafka.js";
import { dashboardTokenEnv } from "../src/commands/dashboard.js";
import { ExitCode } from "../src/errors.js";
import { globalConfigPath, type InProcessRun, runInProcess, setTestConfig } from "./support.js";

type AnyStore = OutboxStore<never>;

/** One store under test: a fresh table, a way to enqueue in a transaction, and a look at one row. */
export interface BrowserTestBackend {
  /** Shown in the describe title: "PostgreSQL", "MySQL/MariaDB". */
  readonly name: string;
  /** Creates the fresh table (migrated) the test uses. */
  setup(): Promise<void>;
  /** A new store on that table (the dashboard makes its own; the test checks with another). */
  store(): AnyStore;
  /** Enqueues in a transaction of its own; returns the ids. */
  enqueue(store: AnyStore, messages: readonly OutboxMessage[]): Promise<string[]>;
  /** The row's status as the table says it ("pending" | "published" | "dead") and its attempts. */
  row(id: string): Promise<{ status: string; attempts: number } | undefined>;
  /** Drops the table, ends the pool. */
  teardown(): Promise<void>;
}

const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const htmlPayload = `<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><b>bold</b>`;
const htmlError = "<i>italic</i> refused by the broker";
const token = "a-dashboard-token-for-the-browser-test";
const hotKey = "<u>hot</u>";
const relayId = "dash-relay";
const leaderLock = "dash-leader";
const idsOf = (entries: readonly { id: string }[]) => entries.map((entry) => entry.id);

export function dashboardBrowserSuite(backend: BrowserTestBackend): void {
  let browser: Browser;
  let kafka: Kafka;
  let admin: Admin;
  /** The store the test checks with. */
  let check: AnyStore;
  const topics = { orders: "", invoices: "" };
  /** Every topic this suite created (deleted at the end). */
  const created: string[] = [];
  const newTopic = async (prefix: string) => {
    const topic = await createTopic(admin, { name: `${prefix}-${crypto.randomUUID()}`, partitions: 1 });
    created.push(topic);
    return topic;
  };
  const dashboards: InProcessRun[] = [];
  const ids = { html: "", drop: "", requeue: "" };

  /** Starts `outbox dashboard` in-process and returns its URL (from the `dashboard started` log line). */
  async function startDashboard(flags: string[] = [], env: Record<string, string> = {}): Promise<string> {
    setTestConfig({ store: () => backend.store() });
    const running = runInProcess(
      ["dashboard", "--config", globalConfigPath, "--port", "0", "--sample-interval", "500ms", ...flags],
      env,
    );
    dashboards.push(running);
    const started = await waitFor(
      () => running.stdout.json<{ msg: string; url?: string }>().find((line) => line.msg === "dashboard started"),
      15_000,
      "the dashboard to start",
    );
    return started.url as string;
  }

  beforeAll(async () => {
    expect(existsSync(executablePath), `${executablePath} is missing: apt-get install chromium`).toBe(true);
    kafka = newKafka();
    admin = kafka.admin();
    await admin.connect();
    // Real topics: the relay of the last test publishes every pending entry.
    topics.orders = await newTopic("dash-orders");
    topics.invoices = await newTopic("dash-invoices");
    await backend.setup();
    const store = backend.store();
    check = store;
    // Dead: three entries (one with HTML in its payload and its error).
    [ids.html, ids.drop, ids.requeue] = (await backend.enqueue(store, [
      { topic: topics.orders, key: "a", payload: htmlPayload },
      { topic: topics.orders, key: "b", payload: "drop me" },
      { topic: topics.invoices, key: "c", payload: "requeue me" },
    ])) as [string, string, string];
    const toKill = await store.claim({ claimer: "seed", limit: 10, leaseMs: 60_000 });
    await store.deadLetter(
      toKill.map((entry) => ({ id: entry.id, error: entry.id === ids.html ? htmlError : "permanent failure" })),
      { claimer: "seed" },
    );
    // Waiting for a retry: one entry, due in an hour.
    const [waiting] = await backend.enqueue(store, [{ topic: topics.orders, key: "r", payload: "{}" }]);
    expect(idsOf(await store.claim({ claimer: "seed", limit: 10, leaseMs: 60_000 }))).toEqual([waiting]);
    await store.retry(
      [{ id: waiting as string, error: "broker down", availableAt: new Date(Date.now() + 3_600_000) }],
      {
        claimer: "seed",
      },
    );
    // In flight: two entries under a long lease, claimed as a leading relay claims (fenced, `<relayId>#<n>`).
    await backend.enqueue(store, [
      { topic: topics.orders, key: "d", payload: "{}" },
      { topic: topics.orders, key: "e", payload: "{}" },
    ]);
    expect(
      await store.claim({
        claimer: `${relayId}#1`,
        limit: 10,
        leaseMs: 600_000,
        fence: { lock: leaderLock, token: 7n },
      }),
    ).toHaveLength(2);
    // Pending, not claimed: six entries, three of them on one (hot) key whose name is markup.
    await backend.enqueue(store, [
      ...["f", "g", "h"].map((key) => ({ topic: topics.orders, key, payload: "{}" })),
      ...[1, 2, 3].map(() => ({ topic: topics.orders, key: hotKey, payload: "{}" })),
    ]);
    expect(await store.stats()).toMatchObject({ pending: 9, inFlight: 2, dead: 3 });
    expect(await store.pendingSummary?.()).toMatchObject({
      scanned: 9,
      retryWaiting: 1,
      hotKeys: [{ key: hotKey, pending: 3 }, ...["d", "e", "f", "g", "h", "r"].map((key) => ({ key, pending: 1 }))],
      // Key "r" waits behind its failed entry.
      blockedKeys: [{ key: "r", pending: 1, entryId: waiting, attempts: 1, lastError: "broker down" }],
    });
    browser = await chromium.launch({
      executablePath,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
      ],
    });
  });

  afterAll(async () => {
    await browser?.close();
    for (const dashboard of dashboards) dashboard.signal("SIGTERM");
    for (const dashboard of dashboards) expect(await dashboard.code).toBe(ExitCode.Ok);
    await check?.close();
    if (admin) {
      await admin.deleteTopics({ topics: created }).catch(() => undefined);
      await admin.disconnect();
    }
    await backend.teardown();
  });

  /** A page that records console errors (CSP violations among them), uncaught exceptions and failed requests. */
  async function open(url: string): Promise<{ page: Page; problems: string[] }> {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const problems: string[] = [];
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console: ${message.text()}`);
    });
    page.on("pageerror", (error) => problems.push(`uncaught: ${error.message}`));
    page.on("requestfailed", (request) => problems.push(`failed: ${request.url()}`));
    // Offline: every request stays on the dashboard's origin.
    const origin = new URL(url).origin;
    page.on("request", (request) => {
      if (!request.url().startsWith(origin)) problems.push(`off-origin request: ${request.url()}`);
    });
    await page.goto(url);
    return { page, problems };
  }

  const statText = (page: Page, name: string) => page.locator(`[data-stat="${name}"]`);

  /** The page shows the store's numbers: stats(), and pendingSummary()'s retry-waiting count and hot keys. */
  async function expectStats(page: Page) {
    const stats = await check.stats();
    await expect.poll(() => statText(page, "pending").textContent()).toBe(String(stats.pending));
    await expect.poll(() => statText(page, "inFlight").textContent()).toBe(String(stats.inFlight));
    await expect.poll(() => statText(page, "dead").textContent()).toBe(String(stats.dead));
    const summary = await check.pendingSummary?.();
    expect(summary, "the store under test has pendingSummary()").toBeDefined();
    if (summary) {
      // Under the 10,000 the dashboard scans: the whole backlog, the number shown as it is.
      await expect.poll(() => statText(page, "retryWaiting").textContent()).toBe(String(summary.retryWaiting));
      const shownKeys = () =>
        page
          .locator("#hot-keys tbody tr[data-key]")
          .evaluateAll((rows) => rows.map((row) => ({ key: row.getAttribute("data-key"), text: row.textContent })));
      await expect
        .poll(shownKeys)
        .toEqual(summary.hotKeys.map((hot) => ({ key: hot.key, text: `${hot.key}${hot.pending}` })));
      const shownBlocked = () =>
        page.locator("#blocked-keys tbody tr[data-key]").evaluateAll((rows) =>
          rows.map((row) => ({
            key: row.getAttribute("data-key"),
            pending: row.children[1]?.textContent,
            entryId: row.children[2]?.textContent,
            lastError: row.children[5]?.textContent,
          })),
        );
      await expect.poll(shownBlocked).toEqual(
        summary.blockedKeys.map((blocked) => ({
          key: blocked.key,
          pending: String(blocked.pending),
          entryId: blocked.entryId,
          lastError: blocked.lastError,
        })),
      );
    }
    return stats;
  }

  /**
   * Without --relay: the relays' panel shows the store's relayActivity(): the leader's fencing token and each
   * relay's in-flight count as the store says, its errors as text.
   */
  async function expectStoreRelays(page: Page) {
    const activity = await check.relayActivity?.();
    expect(activity, "the store under test has relayActivity()").toBeDefined();
    if (!activity) return;
    await page.locator("#store-relays:not([hidden])").waitFor();
    expect(await page.locator("#store-relays-title").textContent()).toBe("As the store sees them");
    expect(await page.locator("#relays").isHidden()).toBe(true);
    const shownFences = () =>
      page
        .locator("#store-fences tbody tr[data-lock]")
        .evaluateAll((rows) =>
          rows.map((row) => ({ lock: row.getAttribute("data-lock"), token: row.children[1]?.textContent })),
        );
    expect(activity.fences).toEqual([{ lock: leaderLock, token: 7n }]);
    await expect
      .poll(shownFences)
      .toEqual(activity.fences.map((fence) => ({ lock: fence.lock, token: fence.token.toString() })));
    const shownClaimers = () =>
      page
        .locator("#store-claimers tbody tr[data-relay]")
        .evaluateAll((rows) =>
          rows.map((row) => ({ relay: row.getAttribute("data-relay"), inFlight: row.children[1]?.textContent })),
        );
    expect(activity.claimers.map((claimer) => [claimer.relay, claimer.inFlight])).toEqual([[relayId, 2]]);
    await expect
      .poll(shownClaimers)
      .toEqual(activity.claimers.map((claimer) => ({ relay: claimer.relay, inFlight: String(claimer.inFlight) })));
    const shownErrors = () =>
      page
        .locator("#recent-errors tbody tr[data-id]")
        .evaluateAll((rows) =>
          rows.map((row) => ({ id: row.getAttribute("data-id"), error: row.children[6]?.textContent })),
        );
    await expect
      .poll(shownErrors)
      .toEqual(activity.recentErrors.map((error) => ({ id: error.id, error: error.error })));
    expect(activity.recentErrors.map((error) => error.id)).toContain(ids.html);
    // The HTML in an error is text: no element made.
    expect(await page.locator("#recent-errors tbody i").count()).toBe(0);
  }

  const deadIds = async () => (await check.listDead({ limit: 100 })).map((entry) => entry.id);

  describe(`outbox dashboard in chromium, on ${backend.name}`, () => {
    it("shows the store's numbers and lag, draws the chart from the bundled uPlot, and renders HTML as text", async () => {
      const url = await startDashboard();
      expect(new URL(url).hostname).toBe("127.0.0.1");
      const { page, problems } = await open(url);
      const stats = await expectStats(page);
      expect(stats).toMatchObject({ pending: 9, inFlight: 2, dead: 3 });
      // Hot keys: the markup in a key is text too.
      expect(await statText(page, "retryWaiting").textContent()).toBe("1");
      expect(await page.locator("#hot-keys tbody tr").first().getAttribute("data-key")).toBe(hotKey);
      expect(await page.locator("#hot-keys tbody u").count()).toBe(0);
      expect(await page.locator("#hot-note").textContent()).toContain("among all 9 pending entries");
      expect(Number(await statText(page, "lag").getAttribute("data-seconds"))).toBeGreaterThan(0);
      await page.locator("#backlog-chart canvas").waitFor();
      await expectStoreRelays(page);

      // The dead letters, the HTML one among them: its error is text in the table...
      const row = page.locator(`#dead tbody tr[data-id="${ids.html}"]`);
      await row.waitFor();
      await expect.poll(() => row.locator("td.error-text").textContent()).toBe(htmlError);
      expect(await page.locator("#dead tbody i").count()).toBe(0);
      // ... and its payload is text in the detail: no element made, no script run.
      await row.click();
      await page.locator("#detail:not([hidden])").waitFor();
      expect(await page.locator("#payload").textContent()).toBe(htmlPayload);
      expect(await page.locator("#payload *").count()).toBe(0);
      expect(await page.evaluate(() => (globalThis as { __pwned?: unknown }).__pwned)).toBeUndefined();
      expect(await page.locator("#download").getAttribute("href")).toBe(`api/dead/${ids.html}/payload`);

      // The filters go to the store (api/dead?topic=...&error=...): a topic exactly, an error text in any case.
      const shownIds = () =>
        page.locator("#dead tbody tr[data-id]").evaluateAll((rows) => rows.map((row) => row.getAttribute("data-id")));
      await page.locator("#filter-topic").fill(topics.invoices);
      await page.locator("#filter-apply").click();
      await expect.poll(shownIds).toEqual([ids.requeue]);
      expect(await page.locator("#page-info").textContent()).toBe("page 1: 1 matching entry");
      await page.locator("#filter-topic").fill("");
      await page.locator("#filter-error").fill("ITALIC");
      await page.locator("#filter-apply").click();
      await expect.poll(shownIds).toEqual([ids.html]);
      await page.locator("#filter-key").fill("no-such-key");
      await page.locator("#filter-apply").click();
      await expect
        .poll(() => page.locator("#dead tbody td").first().textContent())
        .toBe("No dead entry matches the filters.");
      await page.locator("#filter-clear").click();
      await expect.poll(shownIds).toEqual([ids.html, ids.drop, ids.requeue]);
      expect(problems).toEqual([]);
      await page.close();
    });

    it("drop asks for confirmation (cancel keeps the entry), then drops; requeue makes a dead entry pending", async () => {
      const url = await startDashboard();
      const { page, problems } = await open(url);
      await expectStats(page);
      const dialog = page.locator("dialog#confirm");

      // Drop: select, ask, cancel: nothing changes.
      await page.locator(`#dead tbody tr[data-id="${ids.drop}"] input[type=checkbox]`).check();
      await page.locator("#drop-selected").click();
      await dialog.waitFor({ state: "visible" });
      expect(await page.locator("#confirm-text").textContent()).toContain("cannot be undone");
      await page.locator("#confirm-cancel").click();
      await dialog.waitFor({ state: "hidden" });
      await expect.poll(() => page.locator("#result").textContent()).toBe("Drop cancelled.");
      expect(await deadIds()).toContain(ids.drop);

      // Drop, confirmed.
      await page.locator(`#dead tbody tr[data-id="${ids.drop}"] input[type=checkbox]`).check();
      await page.locator("#drop-selected").click();
      await dialog.waitFor({ state: "visible" });
      await page.locator("#confirm-ok").click();
      await expect.poll(() => page.locator("#result").textContent()).toBe("Dropped 1 of 1 selected.");
      expect(await deadIds()).not.toContain(ids.drop);
      expect(await backend.row(ids.drop)).toBeUndefined();
      await page.locator(`#dead tbody tr[data-id="${ids.drop}"]`).waitFor({ state: "detached" });

      // Requeue from the entry's detail.
      const before = await check.stats();
      await page.locator(`#dead tbody tr[data-id="${ids.requeue}"]`).click();
      await page.locator("#detail:not([hidden])").waitFor();
      expect(await page.locator("#payload").textContent()).toBe("requeue me");
      await page.locator("#detail-requeue").click();
      await dialog.waitFor({ state: "visible" });
      expect(await page.locator("#confirm-text").textContent()).toContain("Requeue");
      await page.locator("#confirm-ok").click();
      await expect.poll(() => page.locator("#result").textContent()).toBe("Requeued 1 of 1 selected.");
      expect(await deadIds()).not.toContain(ids.requeue);
      const after = await expectStats(page);
      expect(after.pending).toBe(before.pending + 1);
      expect(after.dead).toBe(before.dead - 1);
      expect(await backend.row(ids.requeue)).toEqual({ status: "pending", attempts: 0 });
      expect(problems).toEqual([]);
      await page.close();
    });

    it("read-only: the actions are not on the page, and the server refuses them", async () => {
      const url = await startDashboard(["--read-only"]);
      const { page, problems } = await open(url);
      await expectStats(page);
      await page.locator(`#dead tbody tr[data-id="${ids.html}"]`).waitFor();
      expect(await page.locator("#mode").isVisible()).toBe(true);
      for (const selector of [
        "#requeue-selected",
        "#drop-selected",
        "#detail-requeue",
        "#detail-drop",
        "#select-all",
      ]) {
        expect(await page.locator(selector).count(), selector).toBe(0);
      }
      expect(await page.locator("#dead input[type=checkbox]").count()).toBe(0);
      // The page's own CSRF token does not help: the server refuses.
      const status = await page.evaluate(async (id) => {
        // Runs in the page (this file is typed without the DOM library).
        const { document } = globalThis as unknown as {
          document: { querySelector(selector: string): { getAttribute(name: string): string | null } | null };
        };
        const csrf = document.querySelector('meta[name="outbox-csrf"]')?.getAttribute("content") ?? "";
        const response = await fetch("api/dead/requeue", {
          method: "POST",
          headers: { "content-type": "application/json", "x-outbox-csrf": csrf },
          body: JSON.stringify({ ids: [id] }),
        });
        return response.status;
      }, ids.html);
      expect(status).toBe(403);
      expect(await deadIds()).toContain(ids.html);
      expect(await backend.row(ids.html)).toMatchObject({ status: "dead" });
      // The refused request logs a console error for the 403; nothing else may.
      expect(problems.filter((problem) => !problem.includes("403"))).toEqual([]);
      await page.close();
    });

    it("token gate: refuses the page and the API without the token, opens with ?token= once", async () => {
      const url = await startDashboard([], { [dashboardTokenEnv]: token });
      const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
      try {
        const page = await context.newPage();
        const refused = await page.goto(url);
        expect(refused?.status()).toBe(401);
        expect(await page.locator("[data-stat]").count()).toBe(0);
        const api = await context.request.get(new URL("api/state", url).href);
        expect(api.status()).toBe(401);
        const wrong = await page.goto(`${url}?token=not-the-token-at-all`);
        expect(wrong?.status()).toBe(401);

        // Opened once with the token: redirected to the bare URL, the cookie carries it from then on.
        const opened = await page.goto(`${url}?token=${encodeURIComponent(token)}`);
        expect(opened?.status()).toBe(200);
        expect(new URL(page.url()).search).toBe("");
        await expectStats(page);
        await page.locator(`#dead tbody tr[data-id="${ids.html}"]`).waitFor();
        expect((await context.request.get(new URL("api/state", url).href)).status()).toBe(200);
        // Another browser (no cookie) is still refused.
        const other = await browser.newContext();
        expect((await other.request.get(new URL("api/state", url).href)).status()).toBe(401);
        await other.close();
      } finally {
        await context.close();
      }
    });

    // Last: the relay publishes every pending entry of the table.
    it("requeue from the page publishes the entry: a relay on the same store delivers it to Kafka", async () => {
      // A fresh dead entry on a topic of its own (the relay below also publishes the other pending entries).
      const topic = await newTopic("dash-requeued");
      const [deadId] = (await backend.enqueue(check, [
        { topic, key: "requeued-key", payload: "published after requeue", headers: { "x-test": "dashboard" } },
      ])) as [string];
      const claimed = await check.claim({ claimer: "seed-2", limit: 100, leaseMs: 60_000 });
      expect(claimed.map((entry) => entry.id)).toContain(deadId);
      await check.deadLetter([{ id: deadId, error: "unknown topic (then created)" }], { claimer: "seed-2" });
      await check.release(
        claimed.filter((entry) => entry.id !== deadId).map((entry) => entry.id),
        { claimer: "seed-2" },
      );
      expect(await backend.row(deadId)).toMatchObject({ status: "dead" });

      // The relay runs on the same table, with the Kafka publisher.
      const relayStore = backend.store();
      const publisher = createKafkaPublisher({ kafka: newKafka({ clientId: "dashboard-test-relay" }) });
      const relay = new OutboxRelay({ store: relayStore, publisher, pollMs: 100 });
      const errors: unknown[] = [];
      relay.on("error", ({ error }) => errors.push(error));
      relay.start();
      try {
        // It drains what is pending (the dead entry stays dead: nothing publishes it yet).
        // Left: the two in flight and the one waiting for its retry.
        await waitFor(
          async () => ((await check.stats()).pending === 3 ? true : undefined),
          20_000,
          "the relay to drain",
        ).catch(async (error: Error) => {
          const stats = JSON.stringify(await check.stats());
          throw new Error(`${error.message}: ${stats}; relay errors: ${errors.map(String).join("; ")}`);
        });
        expect(await backend.row(deadId)).toMatchObject({ status: "dead" });

        const url = await startDashboard();
        const { page, problems } = await open(url);
        await expectStats(page);
        await page.locator(`#dead tbody tr[data-id="${deadId}"] input[type=checkbox]`).check();
        await page.locator("#requeue-selected").click();
        await page.locator("dialog#confirm").waitFor({ state: "visible" });
        await page.locator("#confirm-ok").click();
        await expect.poll(() => page.locator("#result").textContent()).toBe("Requeued 1 of 1 selected.");

        // On the broker: the entry, read back by a real consumer.
        const received = await consume(kafka, topic, (records) => records.length >= 1, 30_000);
        expect(received).toHaveLength(1);
        const [record] = received;
        expect(record?.key).toBe("requeued-key");
        expect(new TextDecoder().decode(record?.payload)).toBe("published after requeue");
        expect(record?.headers).toMatchObject({ "x-test": "dashboard", "outbox-id": deadId });
        // In the store: published; the page follows.
        await waitFor(
          async () => ((await backend.row(deadId))?.status === "published" ? true : undefined),
          15_000,
          "the requeued entry to be acked",
        );
        const stats = await expectStats(page);
        expect(stats).toMatchObject({ pending: 3, inFlight: 2 });
        expect(await deadIds()).not.toContain(deadId);
        expect(problems).toEqual([]);
        await page.close();
      } finally {
        await relay.stop();
        await publisher.close();
        await relayStore.close();
      }
      expect(errors).toEqual([]);
    }, 90_000);
  });
}
