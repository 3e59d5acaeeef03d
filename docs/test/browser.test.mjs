// The built docs site in a real browser: Debian's chromium, headless, driven by playwright-core.
// Every page renders without console errors or failed requests; navigation, search and the stack
// picker work. Screenshots go to docs/.screenshots/ (kept by CI). Needs `pnpm docs:build` first.
// Run: pnpm docs:test   (CHROMIUM_PATH overrides /usr/bin/chromium)
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, relative, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const docs = resolve(fileURLToPath(new URL("..", import.meta.url)));
const dist = join(docs, ".vitepress", "dist");
const repoRoot = resolve(docs, "..");
const shots = join(docs, ".screenshots");
const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".css": "text/css",
  ".svg": "image/svg+xml",
  ".json": "application/json",
  ".woff2": "font/woff2",
  ".png": "image/png",
  ".ico": "image/x-icon",
};

function htmlPages(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === "assets" ? [] : htmlPages(path);
    return entry.name.endsWith(".html") && entry.name !== "404.html" ? [path] : [];
  });
}

/** A static server for dist/ on loopback: what any static host does with VitePress output. */
function serve() {
  const server = createServer((request, response) => {
    const url = new URL(request.url ?? "/", "http://localhost");
    let file = join(dist, decodeURIComponent(url.pathname));
    if (!file.startsWith(dist)) file = join(dist, "404.html");
    if (existsSync(file) && statSync(file).isDirectory()) file = join(file, "index.html");
    if (!existsSync(file) && existsSync(`${file}.html`)) file = `${file}.html`;
    const found = existsSync(file);
    response.writeHead(found ? 200 : 404, { "content-type": types[extname(file)] ?? "application/octet-stream" });
    response.end(readFileSync(found ? file : join(dist, "404.html")));
  });
  return new Promise((done) => server.listen(0, "127.0.0.1", () => done(server)));
}

const shotName = (path) => `${path.replace(/\.html$/, "").replace(/[^a-z0-9]+/gi, "_")}.png`;

describe("docs site in chromium", () => {
  let server;
  let browser;
  let base;

  before(async () => {
    assert.ok(existsSync(join(dist, "index.html")), "docs/.vitepress/dist is missing: run `pnpm docs:build` first");
    assert.ok(existsSync(executablePath), `${executablePath} is missing: apt-get install chromium`);
    rmSync(shots, { recursive: true, force: true });
    mkdirSync(shots, { recursive: true });
    server = await serve();
    base = `http://127.0.0.1:${server.address().port}`;
    browser = await chromium.launch({
      executablePath,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
      ],
    });
  });

  after(async () => {
    await browser?.close();
    await new Promise((done) => (server ? server.close(done) : done()));
  });

  /** A page that records console errors, uncaught exceptions and failed requests. */
  async function open(viewport = { width: 1280, height: 900 }) {
    const page = await browser.newPage({ viewport });
    const problems = [];
    page.on("console", (message) => {
      if (message.type() === "error" || message.type() === "warning")
        problems.push(`console.${message.type()}: ${message.text()}`);
    });
    page.on("pageerror", (error) => problems.push(`uncaught: ${error.message}`));
    page.on("requestfailed", (request) => {
      // ERR_ABORTED: a prefetch of a linked page cut short by the next navigation, not a failure.
      const reason = request.failure()?.errorText ?? "";
      if (!reason.includes("ERR_ABORTED")) problems.push(`request failed: ${request.url()} ${reason}`);
    });
    page.on("response", (response) => {
      if (response.status() >= 400) problems.push(`HTTP ${response.status()}: ${response.url()}`);
    });
    return { page, problems };
  }

  it("every page renders, without console errors or failed requests, and every #anchor link has its target", async () => {
    const pages = htmlPages(dist).map((file) => `/${relative(dist, file).split("\\").join("/")}`);
    assert.ok(pages.length > 20, `only ${pages.length} pages built`);
    const all = process.env.DOCS_SCREENSHOT_FULL === "1";
    const failures = [];
    const ids = new Map(); // page key -> ids on it
    const anchors = []; // { from, key, id }
    const key = (url) => url.pathname.replace(/\.html$/, "").replace(/\/$/, "/index");
    const queue = [...pages];
    // Two browser tabs at a time: the machine has two cores.
    const worker = async () => {
      const { page, problems } = await open();
      for (let path = queue.shift(); path !== undefined; path = queue.shift()) {
        problems.length = 0;
        const url = new URL(`${base}${path}`);
        await page.goto(url.href, { waitUntil: "load" });
        // Hydration mismatches and render errors are reported while Vue mounts: wait until it has.
        await page.waitForFunction(() => Boolean(document.querySelector("#app")?.__vue_app__), null, {
          timeout: 15_000,
        });
        await page.waitForSelector("#app .VPContent", { timeout: 15_000 });
        const found = await page.evaluate(() => ({
          heading: document.querySelector(".VPContent h1, .VPHero .name")?.textContent?.trim() ?? "",
          ids: [...document.querySelectorAll("[id]")].map((element) => element.id),
          links: [...document.querySelectorAll(".VPContent a[href*='#']")].map((a) => a.href),
          edit: document.querySelector(".VPDocFooter a.edit-link-button")?.href ?? null,
          // Code that needs a sideways scrollbar at 1280 px (lines wrap: none should).
          wideCode: [...document.querySelectorAll(".vp-doc pre")]
            .filter((pre) => pre.scrollWidth > pre.clientWidth + 1)
            .map((pre) => pre.textContent?.split("\n").find((line) => line.length > 70) ?? ""),
        }));
        if (!found.heading) failures.push(`${path}: no heading`);
        // "Edit this page" leads to a file of the repository (generated pages: their source).
        if (found.edit) {
          const file = new URL(found.edit).pathname.replace(/^\/outbox-ts\/outbox\/(edit|blob)\/main\//, "");
          if (!existsSync(join(repoRoot, file)))
            failures.push(`${path}: "Edit this page" links to ${file}, no such file`);
        }
        for (const line of found.wideCode) failures.push(`${path}: a code block scrolls sideways at 1280 px: ${line}`);
        ids.set(key(url), new Set(found.ids));
        for (const href of found.links) {
          const target = new URL(href);
          if (target.origin === url.origin && target.hash.length > 1) {
            anchors.push({ from: path, key: key(target), id: decodeURIComponent(target.hash.slice(1)) });
          }
        }
        if (problems.length > 0) failures.push(`${path}:\n    ${problems.join("\n    ")}`);
        // Full-page screenshots; the API reference pages are very long: their first screen is enough.
        await page.screenshot({ path: join(shots, shotName(path)), fullPage: all || !path.startsWith("/api/") });
      }
      await page.close();
    };
    await Promise.all([worker(), worker()]);
    for (const anchor of anchors) {
      const onPage = ids.get(anchor.key);
      if (!onPage) failures.push(`${anchor.from}: links to ${anchor.key}#${anchor.id}, a page that was not built`);
      else if (!onPage.has(anchor.id))
        failures.push(`${anchor.from}: links to ${anchor.key}#${anchor.id}, no such anchor`);
    }
    assert.deepEqual(failures, [], `pages with problems:\n${failures.join("\n")}`);
    console.log(
      `# checked ${pages.length} pages and ${anchors.length} anchor links; screenshots in ${relative(process.cwd(), shots)}`,
    );
  });

  it("navigation: hero, top nav, sidebar and next-page links lead where they say", async () => {
    const { page, problems } = await open();
    await page.goto(`${base}/`, { waitUntil: "networkidle" });
    await page.getByRole("link", { name: "Get started" }).first().click();
    await page.waitForURL(/\/getting-started(\.html)?$/);
    // The URL changes before the page's content is swapped in: wait for the heading, not a moment.
    await page.locator(".VPContent h1", { hasText: /^Getting started\b/ }).waitFor();

    await page.locator(".VPSidebar").getByRole("link", { name: "Guarantees", exact: true }).click();
    await page.waitForURL(/\/guarantees(\.html)?$/);
    await page.locator(".VPContent h1", { hasText: "Guarantees" }).waitFor();

    await page.locator(".VPNavBar").getByRole("link", { name: "Packages" }).click();
    await page.waitForURL(/\/adapters\/(index\.html)?$/);
    await page.locator(".VPContent").getByRole("link", { name: "@outbox/store-postgres" }).click();
    await page.waitForURL(/\/adapters\/store-postgres(\.html)?$/);
    // The URL changes before the page's content is swapped in: wait for its heading, not a moment.
    await page.locator(".VPContent h1", { hasText: "@outbox/store-postgres" }).waitFor();

    await page.locator(".VPNavBar").getByRole("link", { name: "API" }).click();
    await page.waitForURL(/\/api\/(index\.html)?$/);
    await page.locator(".VPContent").getByRole("link", { name: "@outbox/core" }).click();
    await page.waitForURL(/\/api\/@outbox\/core(\.html)?$/);
    await page.locator(".VPContent h1", { hasText: "@outbox/core" }).waitFor();
    await page.locator(".VPDocAside").getByRole("link", { name: "OutboxRelay", exact: true }).first().click();
    await page.waitForURL(/\/api\/@outbox\/core(\.html)?#outboxrelay$/i);

    await page.goto(`${base}/concepts.html`, { waitUntil: "networkidle" });
    await page.locator(".pager-link.next").click();
    await page.waitForURL(/\/guarantees(\.html)?$/);
    await page.screenshot({ path: join(shots, "nav-guarantees.png") });
    assert.deepEqual(problems, []);
    await page.close();
  });

  it("search finds pages and opens the chosen result", async () => {
    const { page, problems } = await open();
    await page.goto(`${base}/`, { waitUntil: "networkidle" });
    await page.locator(".VPNavBarSearch button").click();
    const input = page.locator(".VPLocalSearchBox input");
    await input.waitFor();
    await input.fill("fencing token");
    const results = page.locator(".VPLocalSearchBox .result");
    await results.first().waitFor({ timeout: 10_000 });
    assert.ok((await results.count()) >= 3, "few search results for 'fencing token'");
    await page.screenshot({ path: join(shots, "search-fencing-token.png") });
    await input.fill("dead letters runbook");
    await page.locator(".VPLocalSearchBox .result", { hasText: "runbook" }).first().waitFor({ timeout: 10_000 });
    await page.locator(".VPLocalSearchBox .result", { hasText: "runbook" }).first().click();
    await page.waitForURL(/\/operations(\.html)?#dead-letters/);
    await page.locator(".VPContent h1", { hasText: "Operations" }).waitFor();
    assert.deepEqual(problems, []);
    await page.close();
  });

  it("stack picker: each choice shows its install line and program", async () => {
    const { page, problems } = await open();
    await page.goto(`${base}/stack-picker.html`, { waitUntil: "networkidle" });
    assert.equal(await page.locator(".stack:visible").count(), 1);
    assert.match(
      (await page.locator('[data-stack="postgres-kafka-none"]').textContent()) ?? "",
      /createKafkaPublisher/,
    );
    await page.selectOption('select[data-test="store"]', "mysql");
    await page.selectOption('select[data-test="publisher"]', "redis");
    await page.selectOption('select[data-test="lock"]', "etcd");
    const stack = page.locator('[data-stack="mysql-redis-etcd"]');
    await stack.waitFor();
    const text = (await stack.textContent()) ?? "";
    assert.match(
      text,
      /npm install @outbox\/core @outbox\/store-mysql mysql2 @outbox\/publisher-redis ioredis @outbox\/lock-etcd etcd3/,
    );
    assert.match(text, /createMySqlStore/);
    assert.match(text, /createRedisStreamPublisher/);
    assert.match(text, /createEtcdLockBackend/);
    assert.equal(await page.locator(".stack:visible").count(), 1);
    await page.screenshot({ path: join(shots, "stack-picker-mysql-redis-etcd.png"), fullPage: true });
    assert.deepEqual(problems, []);
    await page.close();
  });

  it("benchmarks: a chart per package with figures, drawn with bars", async () => {
    const { page, problems } = await open();
    await page.goto(`${base}/benchmarks.html`, { waitUntil: "networkidle" });
    const charts = page.locator("figure.bench-chart svg");
    assert.ok((await charts.count()) >= 3, "fewer than 3 charts");
    assert.ok((await page.locator("figure.bench-chart svg rect").count()) > 10, "charts without bars");
    assert.deepEqual(problems, []);
    await page.close();
  });

  it("mobile width: the menu opens and navigates", async () => {
    const { page, problems } = await open({ width: 390, height: 844 });
    await page.goto(`${base}/concepts.html`, { waitUntil: "networkidle" });
    await page.locator(".VPLocalNav .menu").click();
    await page.locator(".VPSidebar").getByRole("link", { name: "Troubleshooting & FAQ" }).click();
    await page.waitForURL(/\/troubleshooting(\.html)?$/);
    await page.screenshot({ path: join(shots, "mobile-troubleshooting.png") });
    assert.deepEqual(problems, []);
    await page.close();
  });
});
