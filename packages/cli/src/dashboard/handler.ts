import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import {
  type DeadLetterFilter,
  deadLetterFilter,
  matchesDeadLetterFilter,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxStore,
  type RelayActivity,
} from "@outbox/core";
import { entryJson } from "../commands/dead.js";
import { redactText } from "../redact.js";
import { Sampler } from "./history.js";

type AnyStore = OutboxStore<never>;

export interface DashboardOptions {
  /** The store to show: an instance, or a (sync or async) function making it on first use. */
  readonly store: AnyStore | (() => AnyStore | Promise<AnyStore>);
  /** No requeue or drop: the page hides the actions and the server refuses them (403). */
  readonly readOnly?: boolean;
  /**
   * Every request must carry this token: `Authorization: Bearer <token>`, or the cookie the
   * page sets after it was opened once with `?token=<token>`. Compared in constant time.
   */
  readonly token?: string;
  /**
   * Host header values accepted (`127.0.0.1:9465`, ...); others get 421. Against DNS rebinding
   * when no token is set. Undefined: any host.
   */
  readonly allowedHosts?: readonly string[];
  /** Running relays' base URLs (`http://host:9464`): their /readyz `published` counters give throughput. */
  readonly relays?: readonly string[];
  /** How often stats() is sampled for the chart. Default 2 s. */
  readonly sampleIntervalMs?: number;
  /** How far back the chart goes. Default 10 minutes. */
  readonly historyMs?: number;
  /**
   * Dead entries searched (oldest first) to find one by id for its detail, and read per page of the list
   * at most when a filter is set and the store does not filter itself (no `capabilities.deadLetterFilters`).
   * Default 10,000.
   */
  readonly scanLimit?: number;
  /**
   * Pending entries the store's optional `pendingSummary()` looks at (oldest first) for the
   * retry-waiting count and the hot keys, and its optional `relayActivity()` for the relays' leases.
   * Default 10,000: a bounded read, however deep the backlog.
   */
  readonly pendingScanLimit?: number;
  /** Hot keys shown, and blocked keys. Default 10 each. */
  readonly hotKeys?: number;
  /** Recent errors shown in the relays' panel, from the store's optional `relayActivity()`. Default 10. */
  readonly recentErrors?: number;
  /** Payload bytes in the detail's preview. Default 4 KiB (the download has all of it). */
  readonly previewBytes?: number;
  readonly now?: () => number;
}

/** A Node `(req, res)` handler: mount it in `http.createServer`, Express (`app.use("/outbox", handler)`), ... */
export interface DashboardHandler {
  (request: IncomingMessage, response: ServerResponse, next?: (error?: unknown) => void): void;
  /** Starts sampling the store for the chart (the first request does too). */
  start(): void;
  /** Stops sampling. The store is the caller's to close. */
  close(): void;
}

/** Header that carries the per-process CSRF token on every POST. */
export const csrfHeader = "x-outbox-csrf";
export const tokenCookie = "outbox_dashboard_token";
const maxBody = 64 * 1024;
const maxIds = 1_000;

const assetsDir = new URL("../../assets/dashboard/", import.meta.url);
const require = createRequire(import.meta.url);
const assets: Record<string, { path: () => string; type: string }> = {
  "app.js": { path: () => fileURLToPath(new URL("app.js", assetsDir)), type: "text/javascript; charset=utf-8" },
  "app.css": { path: () => fileURLToPath(new URL("app.css", assetsDir)), type: "text/css; charset=utf-8" },
  "uPlot.min.js": { path: () => require.resolve("uplot/dist/uPlot.iife.min.js"), type: "text/javascript" },
  "uPlot.min.css": { path: () => require.resolve("uplot/dist/uPlot.min.css"), type: "text/css" },
};

const securityHeaders = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
  "cross-origin-resource-policy": "same-origin",
};

class HttpError extends Error {
  readonly status: number;
  readonly code: string;

  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const digest = (text: string) => createHash("sha256").update(text).digest();
/** Constant-time equality of two secrets (of any lengths: their SHA-256 digests are compared). */
export function sameSecret(given: string | undefined, expected: string): boolean {
  return given !== undefined && timingSafeEqual(digest(given), digest(expected));
}

function cookieOf(request: IncomingMessage, name: string): string | undefined {
  for (const part of (request.headers.cookie ?? "").split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) {
      try {
        return decodeURIComponent(rest.join("="));
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}

function bearerOf(request: IncomingMessage): string | undefined {
  const match = /^Bearer\s+(.+)$/i.exec(request.headers.authorization ?? "");
  return match?.[1]?.trim();
}

function send(response: ServerResponse, status: number, type: string, body: string | Uint8Array, extra = {}) {
  response.writeHead(status, { ...securityHeaders, "content-type": type, "cache-control": "no-store", ...extra });
  response.end(body);
}

function sendJson(response: ServerResponse, status: number, value: unknown) {
  send(response, status, "application/json; charset=utf-8", JSON.stringify(value));
}

async function readJsonBody(request: IncomingMessage): Promise<unknown> {
  const type = request.headers["content-type"] ?? "";
  if (!/^application\/json\b/i.test(type)) throw new HttpError(415, "bad-request", "expected application/json");
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += (chunk as Buffer).byteLength;
    if (size > maxBody) throw new HttpError(413, "bad-request", "request body too large");
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new HttpError(400, "bad-request", "the body is not JSON");
  }
}

function idsOf(body: unknown): string[] {
  const ids = (body as { ids?: unknown } | null)?.ids;
  if (!Array.isArray(ids) || ids.length === 0 || ids.length > maxIds || !ids.every((id) => typeof id === "string")) {
    throw new HttpError(400, "bad-request", `expected { "ids": [1 to ${maxIds} entry ids] }`);
  }
  return [...new Set(ids as string[])];
}

/**
 * The dead-letter list's filters from the query string (`topic`, `key`, `keyless=1`, `error`; an empty
 * field is no filter), checked as the stores check them: a bad one is 400.
 */
function deadFilterOf(query: URLSearchParams): DeadLetterFilter {
  const given = (name: string) => query.get(name) || undefined;
  const keyless = query.get("keyless") === "1";
  if (keyless && given("key") !== undefined) throw new HttpError(400, "bad-request", "give key or keyless, not both");
  try {
    return deadLetterFilter({
      topic: given("topic"),
      key: keyless ? null : given("key"),
      errorContains: given("error"),
    });
  } catch (error) {
    if (OutboxError.is(error, OutboxErrorCode.InvalidOptions)) throw new HttpError(400, "bad-request", error.message);
    throw error;
  }
}

const filtering = (filter: DeadLetterFilter) => Object.values(filter).some((value) => value !== undefined);

/** An entry for the page: the CLI's JSON shape, its last error redacted. */
function entryView(entry: OutboxEntry, withPayload: boolean, previewBytes?: number) {
  const json = entryJson(entry, withPayload, previewBytes);
  return { ...json, lastError: entry.lastError === null ? null : redactText(entry.lastError) };
}

/**
 * The relays as the store sees them, for the page: tokens as text (JSON has no bigint), times as ISO
 * strings, errors redacted as everywhere on the page. Leases are counted among the oldest `scanLimit`
 * pending entries.
 */
function relayActivityView(activity: RelayActivity, scanLimit: number) {
  return {
    scanned: activity.scanned,
    scanLimit,
    complete: activity.scanned < scanLimit,
    fences: activity.fences.map((fence) => ({ lock: fence.lock, token: fence.token.toString() })),
    claimers: activity.claimers.map((claimer) => ({ ...claimer, leaseUntil: claimer.leaseUntil.toISOString() })),
    lastPublishedAt: activity.lastPublishedAt?.toISOString() ?? null,
    recentErrors: activity.recentErrors.map((error) => ({
      ...error,
      error: redactText(error.error),
      at: error.at.toISOString(),
    })),
  };
}

/**
 * The operator dashboard as a Node request handler: one page (backlog, lag, a live chart, dead
 * letters with requeue and drop) and the JSON API it polls. It serves relative URLs, so it
 * works at any mount path.
 */
export function createDashboardHandler(options: DashboardOptions): DashboardHandler {
  const readOnly = options.readOnly === true;
  const csrfToken = randomBytes(32).toString("hex");
  const now = options.now ?? Date.now;
  const sampleIntervalMs = options.sampleIntervalMs ?? 2_000;
  const historyMs = options.historyMs ?? 10 * 60_000;
  const scanLimit = options.scanLimit ?? 10_000;
  const previewBytes = options.previewBytes ?? 4_096;
  const pendingScanLimit = options.pendingScanLimit ?? 10_000;
  const hotKeys = options.hotKeys ?? 10;
  const recentErrors = options.recentErrors ?? 10;
  if (options.token !== undefined && options.token.length < 16) {
    throw new RangeError("the dashboard token must be at least 16 characters");
  }
  let storePromise: Promise<AnyStore> | undefined;
  const store = () => {
    storePromise ??= Promise.resolve(typeof options.store === "function" ? options.store() : options.store);
    return storePromise;
  };
  const sampler = new Sampler({
    store,
    intervalMs: sampleIntervalMs,
    capacity: Math.max(2, Math.ceil(historyMs / sampleIntervalMs)),
    relays: options.relays ?? [],
    now,
  });
  const files = new Map<string, Promise<Buffer>>();
  const file = (path: string) => {
    let read = files.get(path);
    if (!read) {
      read = readFile(path);
      read.catch(() => files.delete(path));
      files.set(path, read);
    }
    return read;
  };

  /** Finds a dead entry by id among the oldest `scanLimit` (listDead pages; no store has a get-by-id). */
  async function findDead(id: string): Promise<OutboxEntry | undefined> {
    const s = await store();
    let after: string | undefined;
    for (let scanned = 0; scanned < scanLimit; ) {
      const limit = Math.min(1_000, scanLimit - scanned);
      const page = await s.listDead(after === undefined ? { limit } : { limit, after });
      const found = page.find((entry) => entry.id === id);
      if (found) return found;
      if (page.length < limit) return undefined;
      scanned += page.length;
      after = page.at(-1)?.id;
    }
    return undefined;
  }

  /**
   * One page of the dead-letter list: up to `limit` entries matching `filter` after `after`, and the cursor
   * of the next page (null at the end). A store that declares `capabilities.deadLetterFilters` filters
   * itself; for one that does not, the handler reads on (1,000 at a time, at most `scanLimit`) and filters
   * what it reads, so the page is not cut to the matches of `limit` entries either.
   */
  async function deadPage(filter: DeadLetterFilter, limit: number, after: string | undefined) {
    const s = await store();
    const from = after === undefined ? {} : { after };
    const storeFilters = (s.capabilities as AnyStore["capabilities"] | undefined)?.deadLetterFilters === true;
    if (storeFilters || !filtering(filter)) {
      const page = await s.listDead({ ...filter, limit, ...from });
      const next = page.length === limit ? (page.at(-1)?.id ?? null) : null;
      return { entries: page, next, filteredBy: filtering(filter) ? "store" : null };
    }
    const entries: OutboxEntry[] = [];
    let cursor = after;
    for (let scanned = 0; scanned < scanLimit; ) {
      const size = Math.min(1_000, scanLimit - scanned);
      const page = await s.listDead(cursor === undefined ? { limit: size } : { limit: size, after: cursor });
      scanned += page.length;
      for (const entry of page) {
        cursor = entry.id;
        if (!matchesDeadLetterFilter(entry, filter)) continue;
        entries.push(entry);
        if (entries.length === limit) return { entries, next: entry.id, filteredBy: "dashboard" };
      }
      if (page.length < size) return { entries, next: null, filteredBy: "dashboard" };
    }
    // scanLimit read without filling the page: the next page goes on where this one stopped.
    return { entries, next: cursor ?? null, filteredBy: "dashboard" };
  }

  const originalPathOf = (request: IncomingMessage) =>
    ((request as { originalUrl?: string }).originalUrl ?? request.url ?? "/").split("?")[0] || "/";

  function authorize(request: IncomingMessage, url: URL, response: ServerResponse): boolean {
    const token = options.token;
    if (token === undefined) return true;
    if (sameSecret(bearerOf(request), token) || sameSecret(cookieOf(request, tokenCookie), token)) return true;
    const queryToken = url.searchParams.get("token") ?? undefined;
    if (request.method === "GET" && sameSecret(queryToken, token)) {
      // Opened with ?token=: remember it in an HttpOnly cookie and drop it from the address bar.
      url.searchParams.delete("token");
      const location = `${originalPathOf(request)}${url.search}`;
      send(response, 303, "text/plain; charset=utf-8", "", {
        location,
        "set-cookie": `${tokenCookie}=${encodeURIComponent(token)}; HttpOnly; SameSite=Strict; Path=/`,
      });
      return false;
    }
    throw new HttpError(401, "unauthorized", "a valid dashboard token is required (open the page with ?token=...)");
  }

  function checkCsrf(request: IncomingMessage): void {
    const site = request.headers["sec-fetch-site"];
    if (site !== undefined && site !== "same-origin") {
      throw new HttpError(403, "csrf", `cross-site request refused (Sec-Fetch-Site: ${site})`);
    }
    const origin = request.headers.origin;
    if (origin !== undefined) {
      let host: string | undefined;
      try {
        host = new URL(origin).host;
      } catch {
        host = undefined;
      }
      if (host !== request.headers.host) throw new HttpError(403, "csrf", "cross-origin request refused");
    }
    const given = request.headers[csrfHeader];
    if (!sameSecret(typeof given === "string" ? given : undefined, csrfToken)) {
      throw new HttpError(403, "csrf", `missing or wrong ${csrfHeader} header (reload the page)`);
    }
  }

  async function index(request: IncomingMessage, response: ServerResponse, pathname: string) {
    // Relative asset URLs need the page's URL to end with "/" (e.g. mounted at /outbox).
    const originalPath = originalPathOf(request);
    if (pathname === "/" && !originalPath.endsWith("/")) {
      send(response, 308, "text/plain; charset=utf-8", "", { location: `${originalPath}/` });
      return;
    }
    const template = (await file(fileURLToPath(new URL("index.html", assetsDir)))).toString("utf8");
    const html = template
      .replace("%CSRF%", csrfToken)
      .replace("%READ_ONLY%", String(readOnly))
      .replace("%HISTORY_SECONDS%", String(Math.round(historyMs / 1000)))
      .replace("%INTERVAL_MS%", String(sampleIntervalMs));
    send(response, 200, "text/html; charset=utf-8", html);
  }

  async function route(request: IncomingMessage, response: ServerResponse, url: URL) {
    const { pathname } = url;
    const method = request.method ?? "GET";
    const isPost = pathname === "/api/dead/requeue" || pathname === "/api/dead/drop";
    if (isPost) {
      if (method !== "POST") throw new HttpError(405, "method", "use POST");
      if (readOnly) throw new HttpError(403, "read-only", "the dashboard is read-only");
      checkCsrf(request);
      const ids = idsOf(await readJsonBody(request));
      const s = await store();
      try {
        if (pathname === "/api/dead/requeue") {
          sendJson(response, 200, { requeued: await s.requeueDead(ids), selected: ids.length });
          return;
        }
        if (!s.dropDead) throw new HttpError(501, "unsupported", "this store has no dropDead(): requeue, or purge");
        sendJson(response, 200, { dropped: await s.dropDead(ids), selected: ids.length });
        return;
      } finally {
        // The page asks for the state right after: it must see the requeue or the drop.
        sampler.changed();
      }
    }
    if (method !== "GET" && method !== "HEAD") throw new HttpError(405, "method", "use GET");
    if (pathname === "/" || pathname === "/index.html") return index(request, response, pathname);
    if (pathname.startsWith("/assets/")) {
      const asset = assets[pathname.slice("/assets/".length)];
      if (!asset) throw new HttpError(404, "not-found", "no such asset");
      send(response, 200, asset.type, await file(asset.path()), { "cache-control": "no-cache" });
      return;
    }
    if (pathname === "/api/state") {
      const s = await store();
      const [{ sample, stats }, summary, activity] = await Promise.all([
        sampler.recent(sampleIntervalMs),
        s.pendingSummary ? s.pendingSummary({ scanLimit: pendingScanLimit, hotKeys, blockedKeys: hotKeys }) : null,
        s.relayActivity ? s.relayActivity({ scanLimit: pendingScanLimit, recentErrors }) : null,
      ]);
      sendJson(response, 200, {
        at: new Date(sample.t * 1000).toISOString(),
        readOnly,
        canDrop: typeof s.dropDead === "function",
        stats: {
          pending: stats.pending,
          inFlight: stats.inFlight,
          dead: stats.dead,
          oldestPendingAt: stats.oldestPendingAt?.toISOString() ?? null,
          lagSeconds: sample.lagSeconds,
          // Log-capture stores only (the page shows the slot's line when present).
          capture: stats.capture ?? null,
        },
        // Null when the store has no pendingSummary() (the page says so).
        pending:
          summary === null
            ? null
            : {
                scanned: summary.scanned,
                scanLimit: pendingScanLimit,
                complete: summary.scanned < pendingScanLimit,
                retryWaiting: summary.retryWaiting,
                hotKeys: summary.hotKeys,
                blockedKeys: summary.blockedKeys.map((blocked) => ({
                  ...blocked,
                  lastError: blocked.lastError === null ? null : redactText(blocked.lastError),
                  availableAt: blocked.availableAt.toISOString(),
                })),
              },
        history: sampler.history.toArray(),
        throughput: (options.relays ?? []).length > 0 ? "relays" : null,
        // What each relay given with --relay said on /readyz at the last sample (empty without).
        relays: sampler.relays,
        // The relays as the store sees them; null when the store has no relayActivity() (the page says so).
        storeRelays: activity === null ? null : relayActivityView(activity, pendingScanLimit),
      });
      return;
    }
    if (pathname === "/api/dead") {
      const limit = Math.min(500, Math.max(1, Number(url.searchParams.get("limit") ?? 50) || 50));
      const after = url.searchParams.get("after") || undefined;
      const page = await deadPage(deadFilterOf(url.searchParams), limit, after);
      sendJson(response, 200, { ...page, entries: page.entries.map((entry) => entryView(entry, false)) });
      return;
    }
    const detail = /^\/api\/dead\/([^/]+)(\/payload)?$/.exec(pathname);
    if (detail?.[1]) {
      const id = decodeURIComponent(detail[1]);
      const entry = await findDead(id);
      if (!entry) throw new HttpError(404, "not-found", `no dead entry ${id} among the ${scanLimit} oldest`);
      if (detail[2]) {
        send(response, 200, "application/octet-stream", entry.payload, {
          "content-disposition": `attachment; filename="outbox-${id.replaceAll(/[^A-Za-z0-9_.-]/g, "_")}.bin"`,
        });
        return;
      }
      sendJson(response, 200, entryView(entry, true, previewBytes));
      return;
    }
    throw new HttpError(404, "not-found", "not found");
  }

  const handler = ((request: IncomingMessage, response: ServerResponse) => {
    sampler.start();
    void (async () => {
      try {
        if (options.allowedHosts && !options.allowedHosts.includes(request.headers.host ?? "")) {
          throw new HttpError(421, "host", "unexpected Host header");
        }
        const url = new URL(request.url ?? "/", "http://dashboard.invalid");
        if (!authorize(request, url, response)) return;
        await route(request, response, url);
      } catch (error) {
        if (response.headersSent) {
          response.destroy();
          return;
        }
        if (error instanceof HttpError) {
          sendJson(response, error.status, { error: { code: error.code, message: error.message } });
          return;
        }
        sendJson(response, 500, {
          error: { code: "store-failed", message: redactText(error instanceof Error ? error.message : String(error)) },
        });
      }
    })();
  }) as DashboardHandler;
  handler.start = () => sampler.start();
  handler.close = () => sampler.stop();
  return handler;
}
