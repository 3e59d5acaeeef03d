// `outbox dashboard` in a real browser (Debian's chromium, headless, driven by playwright-core, as
// docs/test/browser.test.mjs does) against the real PostgreSQL store with entries in every state:
// the numbers shown are the store's, an HTML payload renders as text, drop asks first, requeue
// makes a dead entry pending again, read-only hides the actions and the server refuses them.
// The dashboard runs in-process through the CLI (`main`), on loopback, port 0.
// Deterministic: every wait is for a DOM state or a store state, never a fixed sleep.
import { existsSync } from "node:fs";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
import { waitFor } from "@outbox/test-support/wait";
import pg from "pg";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExitCode } from "../src/errors.js";
import { globalConfigPath, type InProcessRun, runInProcess, setTestConfig } from "./support.js";

const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const htmlPayload = `<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><b>bold</b>`;
const htmlError = "<i>italic</i> refused by the broker";

let pool: pg.Pool;
let browser: Browser;
let table: string;
/** The store the test checks with (one: each store adds a listener to the pool). */
let check: ReturnType<typeof createPostgresStore>;
const dashboards: InProcessRun[] = [];
const ids = { html: "", drop: "", requeue: "" };

const storeOn = () => createPostgresStore({ pool, table, listen: false });

/** Starts `outbox dashboard` in-process and returns its URL (from the `dashboard started` log line). */
async function startDashboard(...flags: string[]): Promise<string> {
  setTestConfig({ store: storeOn });
  const running = runInProcess([
    "dashboard",
    "--config",
    globalConfigPath,
    "--port",
    "0",
    "--sample-interval",
    "500ms",
    ...flags,
  ]);
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
  pool = new pg.Pool({ connectionString: pgUrl });
  table = freshIdentifier("dash");
  await migrate(pool, { table });
  const store = storeOn();
  check = store;
  // Dead: three entries (one with HTML in its payload and its error).
  [ids.html, ids.drop, ids.requeue] = (await inTransaction(pool, (tx) =>
    store.enqueue(tx, [
      { topic: "orders", key: "a", payload: htmlPayload },
      { topic: "orders", key: "b", payload: "drop me" },
      { topic: "invoices", key: "c", payload: "requeue me" },
    ]),
  )) as [string, string, string];
  const toKill = await store.claim({ claimer: "seed", limit: 10, leaseMs: 60_000 });
  await store.deadLetter(
    toKill.map((entry) => ({ id: entry.id, error: entry.id === ids.html ? htmlError : "permanent failure" })),
    { claimer: "seed" },
  );
  // In flight: two entries under a long lease.
  await inTransaction(pool, (tx) =>
    store.enqueue(tx, [
      { topic: "orders", key: "d", payload: "{}" },
      { topic: "orders", key: "e", payload: "{}" },
    ]),
  );
  expect(await store.claim({ claimer: "seed", limit: 10, leaseMs: 600_000 })).toHaveLength(2);
  // Pending, not claimed: three entries.
  await inTransaction(pool, (tx) =>
    store.enqueue(
      tx,
      ["f", "g", "h"].map((key) => ({ topic: "orders", key, payload: "{}" })),
    ),
  );
  expect(await store.stats()).toMatchObject({ pending: 5, inFlight: 2, dead: 3 });
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
  if (table) await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`);
  await pool?.end();
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

async function expectStats(page: Page) {
  const stats = await check.stats();
  await expect.poll(() => statText(page, "pending").textContent()).toBe(String(stats.pending));
  await expect.poll(() => statText(page, "inFlight").textContent()).toBe(String(stats.inFlight));
  await expect.poll(() => statText(page, "dead").textContent()).toBe(String(stats.dead));
  return stats;
}

const deadIds = async () => (await check.listDead({ limit: 100 })).map((entry) => entry.id);

describe("outbox dashboard in chromium, on PostgreSQL", () => {
  it("shows the store's numbers and lag, draws the chart from the bundled uPlot, and renders HTML as text", async () => {
    const url = await startDashboard();
    expect(new URL(url).hostname).toBe("127.0.0.1");
    const { page, problems } = await open(url);
    const stats = await expectStats(page);
    expect(stats).toMatchObject({ pending: 5, inFlight: 2, dead: 3 });
    expect(Number(await statText(page, "lag").getAttribute("data-seconds"))).toBeGreaterThan(0);
    await page.locator("#backlog-chart canvas").waitFor();

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

    // The filter narrows the page client-side.
    await page.locator("#filter").fill("invoices");
    await expect.poll(() => page.locator("#dead tbody tr[data-id]").count()).toBe(1);
    await page.locator("#filter").fill("");
    await expect.poll(() => page.locator("#dead tbody tr[data-id]").count()).toBe(3);
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
    const requeued = await pool.query(`SELECT status, attempts FROM "${table}" WHERE id = $1`, [ids.requeue]);
    expect(requeued.rows[0]).toMatchObject({ status: "pending", attempts: 0 });
    expect(problems).toEqual([]);
    await page.close();
  });

  it("read-only: the actions are not on the page, and the server refuses them", async () => {
    const url = await startDashboard("--read-only");
    const { page, problems } = await open(url);
    await expectStats(page);
    await page.locator(`#dead tbody tr[data-id="${ids.html}"]`).waitFor();
    expect(await page.locator("#mode").isVisible()).toBe(true);
    for (const selector of ["#requeue-selected", "#drop-selected", "#detail-requeue", "#detail-drop", "#select-all"]) {
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
    // The refused request logs a console error for the 403; nothing else may.
    expect(problems.filter((problem) => !problem.includes("403"))).toEqual([]);
    await page.close();
  });
});
