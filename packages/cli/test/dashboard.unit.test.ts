// The dashboard's HTTP handler against an in-memory store: the token gate, read-only refusal,
// CSRF refusal, Host checks, escaping and redaction. The browser test (dashboard.browser.pg)
// drives the page itself against PostgreSQL.
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { OutboxEntry, OutboxStore, RelayActivity, StoreStats } from "@outbox/core";
import { MemoryStore } from "@outbox/memory";
import { afterEach, describe, expect, it } from "vitest";
import { isLoopback } from "../src/commands/dashboard.js";
import { createDashboardHandler, csrfHeader, type DashboardOptions, tokenCookie } from "../src/dashboard/handler.js";
import { RingBuffer } from "../src/dashboard/history.js";
import { ExitCode } from "../src/errors.js";
import { globalConfigPath, run, setTestConfig } from "./support.js";

function deadEntry(id: string, payload: string, lastError = "boom"): OutboxEntry {
  return {
    id,
    topic: "orders",
    key: `k${id}`,
    payload: new TextEncoder().encode(payload),
    headers: {},
    attempts: 3,
    createdAt: new Date("2025-01-01T00:00:00Z"),
    availableAt: new Date("2025-01-01T00:00:00Z"),
    idempotencyKey: id,
    lastError,
  } as OutboxEntry;
}

/** What the handler calls, recorded. */
class FakeStore {
  dead = [
    deadEntry("1", "<script>alert(1)</script>"),
    deadEntry("2", "plain", "connect failed: postgres://app:s3cret-pw@db.internal:5432/orders"),
  ];
  requeued: string[][] = [];
  dropped: string[][] = [];
  summaries: unknown[] = [];
  async stats(): Promise<StoreStats> {
    return { pending: 7, inFlight: 2, dead: this.dead.length, oldestPendingAt: new Date(Date.now() - 5_000) };
  }
  async listDead(options: { limit?: number; after?: string } = {}) {
    const start = options.after === undefined ? 0 : this.dead.findIndex((entry) => entry.id === options.after) + 1;
    return this.dead.slice(start, start + (options.limit ?? 100));
  }
  async requeueDead(ids: readonly string[]) {
    this.requeued.push([...ids]);
    return ids.length;
  }
  async pendingSummary(options: unknown) {
    this.summaries.push(options);
    return {
      scanned: 7,
      retryWaiting: 3,
      hotKeys: [{ key: "<b>hot</b>", pending: 4 }],
      blockedKeys: [
        {
          key: "stuck",
          pending: 2,
          entryId: "5",
          attempts: 3,
          lastError: "connect to amqp://app:s3cret@broker failed",
          availableAt: new Date(Date.UTC(2030, 0, 1)),
        },
      ],
    };
  }
  async dropDead(ids: readonly string[]) {
    this.dropped.push([...ids]);
    return ids.length;
  }
}

const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => new Promise((done) => server.close(done))));
});

async function serve(options: Partial<DashboardOptions> = {}, store = new FakeStore()) {
  const handler = createDashboardHandler({
    store: store as unknown as OutboxStore<never>,
    sampleIntervalMs: 60_000,
    ...options,
  });
  const server = createServer(handler);
  server.on("close", () => handler.close());
  servers.push(server);
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { store, base };
}

const token = "a-long-enough-dashboard-token";

async function csrfOf(base: string, headers: Record<string, string> = {}): Promise<string> {
  const html = await (await fetch(`${base}/`, { headers })).text();
  const match = /<meta name="outbox-csrf" content="([0-9a-f]+)">/.exec(html);
  if (!match?.[1]) throw new Error("no CSRF token in the page");
  return match[1];
}

const post = (base: string, path: string, headers: Record<string, string>, body: unknown = { ids: ["1"] }) =>
  fetch(`${base}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });

describe("dashboard handler", () => {
  it("serves the page, its assets (uPlot from the package, no CDN) and the state", async () => {
    const { base } = await serve();
    const page = await fetch(`${base}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get("content-security-policy")).toContain("script-src 'self'");
    expect(page.headers.get("x-content-type-options")).toBe("nosniff");
    const html = await page.text();
    expect(html).not.toMatch(/https?:\/\//);
    for (const asset of ["app.js", "app.css", "uPlot.min.js", "uPlot.min.css"]) {
      const response = await fetch(`${base}/assets/${asset}`);
      expect(response.status, asset).toBe(200);
    }
    expect((await fetch(`${base}/assets/../package.json`)).status).toBe(404);
    const state = (await (await fetch(`${base}/api/state`)).json()) as Record<string, unknown>;
    expect(state).toMatchObject({
      readOnly: false,
      canDrop: true,
      stats: { pending: 7, inFlight: 2, dead: 2, capture: null },
    });
    expect((state.history as unknown[]).length).toBe(1);
  });

  it("relays: what each --relay said on /readyz (errors redacted), an unreachable one marked so; their counters give throughput", async () => {
    let published = 10;
    const readyz = createServer((_request, response) => {
      response.setHeader("content-type", "application/json");
      response.end(
        JSON.stringify({
          ready: false,
          reasons: [{ code: "publish-failing", message: "..." }],
          relayId: "relay-a",
          leader: true,
          leaderElection: true,
          fence: { lock: "outbox", token: "42" },
          published,
          lastPublishedAt: "2030-01-01T00:00:00.000Z",
          lastPublishError: "connect to amqp://app:s3cret@broker:5672 failed",
          lastPublishFailureAt: "2030-01-01T00:00:01.000Z",
          consecutiveFailures: 0,
        }),
      );
    });
    servers.push(readyz);
    await new Promise<void>((done) => readyz.listen(0, "127.0.0.1", done));
    const relayUrl = `http://127.0.0.1:${(readyz.address() as AddressInfo).port}`;
    // A port nothing listens on: the closed server's.
    const gone = createServer();
    await new Promise<void>((done) => gone.listen(0, "127.0.0.1", done));
    const goneUrl = `http://127.0.0.1:${(gone.address() as AddressInfo).port}`;
    await new Promise((done) => gone.close(done));
    let now = Date.UTC(2030, 0, 1);
    const { base } = await serve({ relays: [relayUrl, goneUrl], now: () => now });
    const state = (await (await fetch(`${base}/api/state`)).json()) as {
      relays: Record<string, unknown>[];
      throughput: string | null;
    };
    expect(state.throughput).toBe("relays");
    expect(state.relays[0]).toEqual({
      url: relayUrl,
      reachable: true,
      ready: false,
      reasons: ["publish-failing"],
      relayId: "relay-a",
      leader: true,
      leaderElection: true,
      fence: { lock: "outbox", token: "42" },
      published: 10,
      lastPublishedAt: "2030-01-01T00:00:00.000Z",
      lastPublishError: "connect to amqp://app:***@broker:5672 failed",
      lastPublishFailureAt: "2030-01-01T00:00:01.000Z",
      consecutiveFailures: 0,
    });
    expect(state.relays[1]).toMatchObject({ url: goneUrl, reachable: false });
    // The next sample, an interval (60 s) later, 900 more published: 15 per second.
    published = 910;
    now += 60_000;
    const later = (await (await fetch(`${base}/api/state`)).json()) as {
      history: { publishedPerSecond: number | null }[];
    };
    expect(later.history.at(-1)?.publishedPerSecond).toBe(15);
  });

  it("pages polling share the sampler's stats() reading within an interval; a requeue or drop makes the next read fresh", async () => {
    const store = new FakeStore();
    const plainStats = store.stats.bind(store);
    let reads = 0;
    store.stats = async () => {
      reads += 1;
      return plainStats();
    };
    let now = Date.UTC(2030, 0, 1);
    const { base } = await serve({ now: () => now }, store);
    const state = async () => (await (await fetch(`${base}/api/state`)).json()) as { stats: { dead: number } };
    await state();
    const afterFirst = reads;
    await state();
    await state();
    expect(reads, "two more polls inside the 60 s interval read nothing more").toBe(afterFirst);
    now += 60_000;
    await state();
    expect(reads, "a poll an interval later reads again").toBe(afterFirst + 1);
    const response = await post(base, "/api/dead/requeue", { [csrfHeader]: await csrfOf(base) }, { ids: ["1"] });
    expect(response.status).toBe(200);
    store.dead = store.dead.slice(1);
    expect((await state()).stats.dead, "the state right after a requeue is read after it").toBe(store.dead.length);
    expect(reads).toBe(afterFirst + 2);
  });

  it("a log-capture store's slot goes into the state as the store reports it", async () => {
    const capture = { source: "slot_a", active: false, state: "lost", lagBytes: 10, retainedBytes: 20 };
    const store = new FakeStore();
    const plainStats = store.stats.bind(store);
    store.stats = async () => ({ ...(await plainStats()), capture });
    const { base } = await serve({}, store);
    const state = (await (await fetch(`${base}/api/state`)).json()) as { stats: Record<string, unknown> };
    expect(state.stats.capture).toEqual(capture);
  });

  it("retry-waiting and hot keys from the store's pendingSummary (bounded by pendingScanLimit), null without it", async () => {
    const { base, store } = await serve({ pendingScanLimit: 500, hotKeys: 3 });
    const state = (await (await fetch(`${base}/api/state`)).json()) as Record<string, unknown>;
    expect(state.pending).toEqual({
      scanned: 7,
      scanLimit: 500,
      complete: true,
      retryWaiting: 3,
      hotKeys: [{ key: "<b>hot</b>", pending: 4 }],
      // The error redacted, as everywhere on the page.
      blockedKeys: [
        {
          key: "stuck",
          pending: 2,
          entryId: "5",
          attempts: 3,
          lastError: "connect to amqp://app:***@broker failed",
          availableAt: "2030-01-01T00:00:00.000Z",
        },
      ],
    });
    expect(store.summaries).toEqual([{ scanLimit: 500, hotKeys: 3, blockedKeys: 3 }]);
    // A scan that filled its limit is not the whole backlog: the page says "among the oldest".
    const full = await serve({ pendingScanLimit: 7 });
    expect(((await (await fetch(`${full.base}/api/state`)).json()) as { pending: unknown }).pending).toMatchObject({
      scanned: 7,
      complete: false,
    });
    const bare = new FakeStore() as Partial<FakeStore>;
    bare.pendingSummary = undefined;
    const without = await serve({}, bare as FakeStore);
    const plain = (await (await fetch(`${without.base}/api/state`)).json()) as Record<string, unknown>;
    expect(plain.pending).toBeNull();
    expect(plain.stats).toMatchObject({ pending: 7 });
  });

  it("relays as the store sees them: its relayActivity (tokens as text, errors redacted), null without it", async () => {
    const asked: unknown[] = [];
    const store = Object.assign(new FakeStore(), {
      async relayActivity(options: unknown): Promise<RelayActivity> {
        asked.push(options);
        return {
          scanned: 7,
          fences: [{ lock: "outbox-leader", token: 9_007_199_254_740_993n }],
          claimers: [{ relay: "relay-a", inFlight: 2, leaseUntil: new Date(Date.UTC(2030, 0, 1, 0, 1)) }],
          lastPublishedAt: new Date(Date.UTC(2030, 0, 1)),
          recentErrors: [
            {
              id: "5",
              key: null,
              topic: "orders",
              error: "<b>connect</b> to amqp://app:s3cret@broker failed",
              attempts: 3,
              at: new Date(Date.UTC(2030, 0, 1, 0, 2)),
              dead: false,
            },
          ],
        };
      },
    });
    const { base } = await serve({ pendingScanLimit: 500, recentErrors: 4 }, store);
    const state = (await (await fetch(`${base}/api/state`)).json()) as Record<string, unknown>;
    expect(state.storeRelays).toEqual({
      scanned: 7,
      scanLimit: 500,
      complete: true,
      // A token past 2^53 survives as text.
      fences: [{ lock: "outbox-leader", token: "9007199254740993" }],
      claimers: [{ relay: "relay-a", inFlight: 2, leaseUntil: "2030-01-01T00:01:00.000Z" }],
      lastPublishedAt: "2030-01-01T00:00:00.000Z",
      // Redacted; the markup stays text for the page to insert as text.
      recentErrors: [
        {
          id: "5",
          key: null,
          topic: "orders",
          error: "<b>connect</b> to amqp://app:***@broker failed",
          attempts: 3,
          at: "2030-01-01T00:02:00.000Z",
          dead: false,
        },
      ],
    });
    expect(asked).toEqual([{ scanLimit: 500, recentErrors: 4 }]);
    const without = await serve();
    expect(
      ((await (await fetch(`${without.base}/api/state`)).json()) as Record<string, unknown>).storeRelays,
    ).toBeNull();
  });

  it("refuses every request without the token; accepts a bearer header or the cookie ?token= sets", async () => {
    const { base } = await serve({ token });
    for (const path of ["/", "/api/state", "/api/dead", "/assets/app.js", "/api/dead/1/payload"]) {
      expect((await fetch(`${base}${path}`)).status, path).toBe(401);
      expect(
        (await fetch(`${base}${path}`, { headers: { authorization: "Bearer wrong-token-of-some-length" } })).status,
      ).toBe(401);
    }
    expect((await fetch(`${base}/api/state`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
    expect((await fetch(`${base}/?token=nope`, { redirect: "manual" })).status).toBe(401);
    const opened = await fetch(`${base}/?token=${token}`, { redirect: "manual" });
    expect(opened.status).toBe(303);
    expect(opened.headers.get("location")).toBe("/");
    const cookie = opened.headers.get("set-cookie") ?? "";
    expect(cookie).toMatch(/HttpOnly/);
    expect(cookie).toMatch(/SameSite=Strict/);
    const cookieHeader = cookie.split(";")[0] ?? "";
    expect(cookieHeader.startsWith(`${tokenCookie}=`)).toBe(true);
    expect((await fetch(`${base}/api/state`, { headers: { cookie: cookieHeader } })).status).toBe(200);
    // A POST needs the token too, before anything else.
    expect((await post(base, "/api/dead/requeue", {})).status).toBe(401);
  });

  it("refuses a token shorter than 16 characters", () => {
    expect(() =>
      createDashboardHandler({ store: new FakeStore() as unknown as OutboxStore<never>, token: "short" }),
    ).toThrow(RangeError);
  });

  it("read-only: the page says so and the server refuses requeue and drop", async () => {
    const { base, store } = await serve({ readOnly: true });
    const html = await (await fetch(`${base}/`)).text();
    expect(html).toContain('data-read-only="true"');
    const csrf = await csrfOf(base);
    for (const action of ["requeue", "drop"]) {
      const response = await post(base, `/api/dead/${action}`, { [csrfHeader]: csrf });
      expect(response.status).toBe(403);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe("read-only");
    }
    expect(store.requeued).toEqual([]);
    expect(store.dropped).toEqual([]);
  });

  it("CSRF: state changes need POST, the page's token header, and a same-origin request", async () => {
    const { base, store } = await serve();
    const csrf = await csrfOf(base);
    const refused = async (response: Response, status = 403) => {
      expect(response.status).toBe(status);
      return ((await response.json()) as { error: { code: string } }).error.code;
    };
    expect(await refused(await fetch(`${base}/api/dead/requeue`), 405)).toBe("method");
    expect(await refused(await post(base, "/api/dead/requeue", {}))).toBe("csrf");
    expect(await refused(await post(base, "/api/dead/requeue", { [csrfHeader]: "0".repeat(64) }))).toBe("csrf");
    expect(
      await refused(await post(base, "/api/dead/requeue", { [csrfHeader]: csrf, origin: "http://evil.example" })),
    ).toBe("csrf");
    expect(
      await refused(await post(base, "/api/dead/drop", { [csrfHeader]: csrf, "sec-fetch-site": "cross-site" })),
    ).toBe("csrf");
    expect(store.requeued).toEqual([]);
    expect(store.dropped).toEqual([]);
    // A form post (text/plain, what a cross-site form can send) is refused too.
    const form = await fetch(`${base}/api/dead/requeue`, {
      method: "POST",
      headers: { "content-type": "text/plain", [csrfHeader]: csrf },
      body: '{"ids":["1"]}',
    });
    expect(form.status).toBe(415);

    const origin = base;
    const ok = await post(base, "/api/dead/requeue", { [csrfHeader]: csrf, origin, "sec-fetch-site": "same-origin" });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ requeued: 1, selected: 1 });
    const dropped = await post(base, "/api/dead/drop", { [csrfHeader]: csrf }, { ids: ["2", "2"] });
    expect(await dropped.json()).toEqual({ dropped: 1, selected: 1 });
    expect(store.requeued).toEqual([["1"]]);
    expect(store.dropped).toEqual([["2"]]);
    expect((await post(base, "/api/dead/drop", { [csrfHeader]: csrf }, { ids: [] })).status).toBe(400);
  });

  it("refuses an unexpected Host header (DNS rebinding) when given allowedHosts", async () => {
    const { base } = await serve({ allowedHosts: ["127.0.0.1:1"] });
    expect((await fetch(`${base}/api/state`)).status).toBe(421);
  });

  it("sends entry data as JSON only, its errors redacted; the page inserts it as text", async () => {
    const { base } = await serve();
    const detail = await fetch(`${base}/api/dead/1`);
    expect(detail.headers.get("content-type")).toMatch(/^application\/json/);
    expect(((await detail.json()) as { payloadText: string }).payloadText).toBe("<script>alert(1)</script>");
    const list = await (await fetch(`${base}/api/dead?limit=10`)).text();
    expect(list).not.toContain("s3cret-pw");
    expect(list).toContain("***");
    const download = await fetch(`${base}/api/dead/1/payload`);
    expect(download.headers.get("content-type")).toBe("application/octet-stream");
    expect(download.headers.get("content-disposition")).toMatch(/^attachment; filename="outbox-1\.bin"$/);
    expect(await download.text()).toBe("<script>alert(1)</script>");
    expect((await fetch(`${base}/api/dead/404`)).status).toBe(404);
    const app = readFileSync(new URL("../assets/dashboard/app.js", import.meta.url), "utf8");
    expect(app).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write/);
  });

  it("pages dead letters with listDead's after cursor", async () => {
    const { base } = await serve();
    const first = (await (await fetch(`${base}/api/dead?limit=1`)).json()) as {
      entries: { id: string }[];
      next: string;
    };
    expect(first.entries.map((entry) => entry.id)).toEqual(["1"]);
    expect(first.next).toBe("1");
    const second = (await (await fetch(`${base}/api/dead?limit=1&after=1`)).json()) as { entries: { id: string }[] };
    expect(second.entries.map((entry) => entry.id)).toEqual(["2"]);
  });
});

interface DeadPage {
  entries: { id: string; topic: string; key: string | null; lastError: string }[];
  next: string | null;
  filteredBy: string | null;
}

/** Every page of `query`, following `next`, `limit` at a time. */
async function allPages(base: string, query: string, limit: number): Promise<DeadPage[]> {
  const pages: DeadPage[] = [];
  let after: string | null = null;
  do {
    const url = `${base}/api/dead?limit=${limit}&${query}${after === null ? "" : `&after=${after}`}`;
    const response = await fetch(url);
    expect(response.status, url).toBe(200);
    const page = (await response.json()) as DeadPage;
    pages.push(page);
    after = page.next;
  } while (after !== null && pages.length < 100);
  return pages;
}

describe("dashboard dead-letter filters", () => {
  it("are applied by a store that filters: full pages of matches, however many entries lie between them", async () => {
    const store = new MemoryStore();
    // 300 dead entries; the rare ones (every 50th) are the only matches, one page of 50 apart.
    await store.transaction((tx) =>
      store.enqueue(
        tx,
        Array.from({ length: 300 }, (_, n) => ({
          topic: n % 50 === 7 ? "rare" : "bulk",
          key: n % 50 === 7 && n > 100 ? null : `k${n % 3}`,
          payload: String(n),
        })),
      ),
    );
    const claimed = await store.claim({ claimer: "t", limit: 300, leaseMs: 60_000 });
    await store.deadLetter(
      claimed.map((entry, n) => ({ id: entry.id, error: n % 50 === 7 ? `Broker TIMEOUT ${n}` : "boom" })),
      { claimer: "t" },
    );
    const rare = [7, 57, 107, 157, 207, 257].map((n) => claimed[n]?.id);
    const { base } = await serve({}, store as unknown as FakeStore);
    const pages = await allPages(base, "topic=rare", 2);
    expect(pages.map((page) => page.entries.map((entry) => entry.id))).toEqual([
      rare.slice(0, 2),
      rare.slice(2, 4),
      rare.slice(4, 6),
      [],
    ]);
    expect(pages.every((page) => page.filteredBy === "store")).toBe(true);
    const byError = await allPages(base, "error=timeout&keyless=1", 50);
    expect(byError.flatMap((page) => page.entries.map((entry) => entry.id))).toEqual(rare.slice(2));
    const byKey = await allPages(base, `key=k1&topic=rare`, 50);
    expect(byKey.flatMap((page) => page.entries.map((entry) => entry.id))).toEqual([claimed[7]?.id]);
    // Empty fields are no filter.
    const unfiltered = (await (await fetch(`${base}/api/dead?limit=5&topic=&error=`)).json()) as DeadPage;
    expect(unfiltered.entries).toHaveLength(5);
    expect(unfiltered.filteredBy).toBeNull();
  });

  it("are applied by the dashboard for a store that does not filter, reading on at most scanLimit per page", async () => {
    const fake = new FakeStore();
    fake.dead = Array.from({ length: 30 }, (_, i) =>
      deadEntry(String(i + 1), "x", [4, 12, 13, 29].includes(i + 1) ? `needle ${i + 1}` : "boom"),
    );
    const { base } = await serve({ scanLimit: 10 }, fake);
    const pages = await allPages(base, "error=NEEDLE", 2);
    // 10 read per page at most: [4] (scanLimit reached), [12, 13], [] up to 26, [29].
    expect(pages.map((page) => page.entries.map((entry) => entry.id))).toEqual([["4"], ["12", "13"], [], ["29"]]);
    expect(pages.map((page) => page.next)).toEqual(["10", "13", "23", null]);
    expect(pages.every((page) => page.filteredBy === "dashboard")).toBe(true);
  });

  it("refuses bad filters with 400", async () => {
    const { base } = await serve();
    for (const query of ["key=a&keyless=1", `topic=${"t".repeat(4_097)}`, `key=${"k".repeat(4_097)}`]) {
      const response = await fetch(`${base}/api/dead?${query}`);
      expect(response.status, query.slice(0, 40)).toBe(400);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe("bad-request");
    }
  });
});

describe("dashboard pieces", () => {
  it("a ring buffer keeps the newest items, oldest first", () => {
    const ring = new RingBuffer<number>(3);
    for (let n = 1; n <= 5; n++) ring.push(n);
    expect(ring.toArray()).toEqual([3, 4, 5]);
  });

  it("loopback addresses", () => {
    for (const host of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
      expect(isLoopback(host), host).toBe(true);
    for (const host of ["0.0.0.0", "::", "10.0.0.1", "example.com"]) expect(isLoopback(host), host).toBe(false);
  });

  it("outbox dashboard refuses a non-loopback bind without --allow-remote, and --allow-remote without a token", async () => {
    setTestConfig({ store: new FakeStore() });
    const args = ["dashboard", "--config", globalConfigPath, "--port", "0", "--host", "0.0.0.0"];
    const bare = await run(args);
    expect(bare.code).toBe(ExitCode.Usage);
    expect(bare.stderr.text).toContain("--allow-remote");
    const noToken = await run([...args, "--allow-remote"]);
    expect(noToken.code).toBe(ExitCode.Usage);
    expect(noToken.stderr.text).toContain("OUTBOX_DASHBOARD_TOKEN");
  });
});
