// Screenshots of `outbox dashboard` for the docs' operations page: docs/public/dashboard-desktop.png (1280 wide)
// and docs/public/dashboard-phone.png (390 wide), taken by Debian's chromium driven by playwright-core, as the
// browser tests do, against a real PostgreSQL store with entries in every state (dead, in flight, waiting for a
// retry, pending on a few hot keys) and a chart with some minutes of history.
//
// Run it after changing the page (it needs the loopback PostgreSQL of scripts/services.sh):
//
//   cd packages/cli && pnpm screenshots
//
// OUTBOX_PG_URL picks another server (default: scripts/services.env's), CHROMIUM_PATH another browser
// (default /usr/bin/chromium). It works on a fresh table of its own and drops it at the end; the dashboard runs
// in-process (createDashboardHandler) on 127.0.0.1, port 0.
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import type { OutboxMessage } from "@outbox/core";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import pg from "pg";
import { chromium } from "playwright-core";
import { createDashboardHandler } from "../src/dashboard/handler.js";

const root = new URL("../../../", import.meta.url);
const outDir = new URL("docs/public/", root);

/** scripts/services.env's value, unless the environment has one. */
function serviceEnv(name: string): string | undefined {
  if (process.env[name]) return process.env[name];
  const file = fileURLToPath(new URL("scripts/services.env", root));
  if (!existsSync(file)) return undefined;
  const line = readFileSync(file, "utf8")
    .split("\n")
    .find((candidate) => candidate.startsWith(`${name}=`));
  return line?.slice(name.length + 1);
}

const pgUrl = serviceEnv("OUTBOX_PG_URL") ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
if (!existsSync(executablePath)) throw new Error(`${executablePath} is missing: apt-get install chromium`);

const pool = new pg.Pool({ connectionString: pgUrl });
const table = `dashboard_screenshots_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 8)}`;
await migrate(pool, { table });
const store = createPostgresStore({ pool, table, listen: false });

async function enqueue(messages: OutboxMessage[]): Promise<string[]> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    const ids = await store.enqueue(client, messages);
    await client.query("COMMIT");
    return ids;
  } catch (error) {
    await client.query("ROLLBACK");
    throw error;
  } finally {
    client.release();
  }
}

const json = (value: unknown) => JSON.stringify(value);
const order = (n: number) => ({
  topic: "orders.created",
  key: `order-${1000 + n}`,
  payload: json({ id: `order-${1000 + n}`, customerId: `customer-${n % 17}`, total: 20 + ((n * 37) % 180) }),
});

const server = createServer();
const handler = createDashboardHandler({ store, sampleIntervalMs: 500, historyMs: 5 * 60_000 });
server.on("request", handler);
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
handler.start();

try {
  // Dead letters: refused by the broker, or out of attempts.
  const errors = [
    "KafkaJSProtocolError: This server does not host this topic-partition (UNKNOWN_TOPIC_OR_PARTITION)",
    "KafkaJSProtocolError: The request included a message larger than the max message size the server will accept",
    "retry.maxAttempts (10) reached: KafkaJSConnectionError: Connection timeout",
    "KafkaJSProtocolError: Not authorized to access topics: [Topic authorization failed]",
  ];
  const dead = await enqueue([
    ...Array.from({ length: 9 }, (_, n) => order(n)),
    ...Array.from({ length: 4 }, (_, n) => ({
      topic: "invoices.issued",
      key: `invoice-${500 + n}`,
      payload: json({ invoice: 500 + n, lines: n + 1 }),
    })),
  ]);
  await store.claim({ claimer: "seed", limit: 100, leaseMs: 60_000 });
  await store.deadLetter(
    dead.map((id, n) => ({ id, error: errors[n % errors.length] as string })),
    { claimer: "seed" },
  );
  // Waiting for a retry: a few entries whose publish failed a moment ago.
  const retrying = await enqueue(Array.from({ length: 3 }, (_, n) => order(40 + n)));
  await store.claim({ claimer: "seed", limit: 100, leaseMs: 60_000 });
  await store.retry(
    retrying.map((id, n) => ({
      id,
      error: "KafkaJSConnectionError: Connection timeout",
      availableAt: new Date(Date.now() + (n + 1) * 60_000),
    })),
    { claimer: "seed" },
  );
  // A backlog building up over a few samples, on a few hot keys, part of it claimed by a relay.
  const keys = ["customer-17", "customer-17", "customer-17", "customer-4", "customer-4", "tenant-acme"];
  for (let step = 0; step < 16; step++) {
    await enqueue(
      Array.from({ length: 3 + ((step * 5) % 7) }, (_, n) => ({
        topic: step % 3 === 0 ? "payments.captured" : "orders.created",
        key: n < keys.length ? (keys[(n + step) % keys.length] as string) : `order-${2000 + step * 10 + n}`,
        payload: json({ step, n }),
      })),
    );
    if (step % 4 === 3) {
      // As a leading relay claims: its id, a claim number, its lock's fencing token.
      const context = { claimer: `relay-7f3a#${step}`, fence: { lock: "outbox-relay", token: 41n } };
      const claimed = await store.claim({ ...context, limit: 6, leaseMs: 10 * 60_000 });
      if (step < 12) await store.ack(claimed.map((entry) => entry.id).slice(0, 4), context);
    }
    await new Promise((resolve) => setTimeout(resolve, 520));
  }

  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"],
  });
  try {
    // The desktop shot is the whole page; the phone one its first two screens (the dead letters scroll sideways).
    for (const [name, viewport, height] of [
      ["dashboard-desktop.png", { width: 1280, height: 900 }, undefined],
      ["dashboard-phone.png", { width: 390, height: 844 }, 2 * 844],
    ] as const) {
      const page = await browser.newPage({ viewport, colorScheme: "light", deviceScaleFactor: 1 });
      await page.goto(url);
      // Two state updates (numbers and chart drawn) and the dead letters listed.
      await page.waitForFunction(() => {
        const body = (globalThis as unknown as { document: { body: { dataset: Record<string, string> } } }).document
          .body;
        return Number(body.dataset.stateUpdates ?? 0) >= 2 && Number(body.dataset.deadLoaded ?? 0) >= 1;
      });
      await page.locator("#backlog-chart canvas").waitFor();
      await page.locator(`#dead tbody tr[data-id="${dead[1]}"]`).click();
      await page.locator("#detail:not([hidden])").waitFor();
      await page.evaluate(() => (globalThis as unknown as { scrollTo(x: number, y: number): void }).scrollTo(0, 0));
      const path = fileURLToPath(new URL(name, outDir));
      const clip = height === undefined ? undefined : { x: 0, y: 0, width: viewport.width, height };
      await page.screenshot({ path, fullPage: true, ...(clip ? { clip } : {}) });
      console.log(`wrote ${path}`);
      await page.close();
    }
  } finally {
    await browser.close();
  }
} finally {
  handler.close();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await store.close();
  await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`);
  await pool.end();
}
