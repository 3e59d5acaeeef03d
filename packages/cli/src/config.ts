import { existsSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import {
  type LockBackend,
  OutboxError,
  OutboxErrorCode,
  type OutboxPublisher,
  type OutboxRelayOptions,
  type OutboxStore,
} from "@outbox/core";
import type { InboxStore } from "@outbox/inbox";
import { configError } from "./errors.js";

/** A value, or a function (sync or async) that makes it when a command first needs it. */
export type Factory<T> = T | (() => T | Promise<T>);

/** Relay settings; `OutboxRelayOptions` without the adapters, plus the leader lock's naming. */
export type RelaySettings = Pick<
  OutboxRelayOptions,
  "pollMs" | "batchSize" | "maxInFlightBatches" | "leaseMs" | "retry" | "drainTimeoutMs" | "id"
> & {
  /** Leader election (only with `lock`): lock name (also the store's fence name), TTL, margin. */
  leader?: { name?: string; ttlMs?: number; safetyMarginMs?: number; stepDownAfterMs?: number };
};

/** What `outbox purge` may know ahead of deleting, to draw an accurate progress bar. */
export interface PurgeEstimate {
  /** Rows a purge with this cutoff would delete. */
  readonly rows: number;
  /** The oldest settle time among them, or null when there are none. */
  readonly oldest: Date | null;
}

/**
 * The configuration file's default export (`outbox.config.ts`): your adapters, wired with your
 * own clients. `store` or `inbox` is required (the commands of the other one then refuse to run);
 * `outbox relay` also needs `publisher`.
 */
export interface OutboxCliConfig {
  /** The outbox store: what every command but `outbox inbox ...` uses. */
  store?: Factory<OutboxStore<never>>;
  /** An inbox store (@outbox/inbox): what `outbox inbox status|dead|purge` use. */
  inbox?: Factory<InboxStore<unknown>>;
  publisher?: Factory<OutboxPublisher>;
  /** A lock backend turns on leader election: one relay of many drains, fenced. */
  lock?: Factory<LockBackend>;
  relay?: RelaySettings;
  /** What `outbox migrate` runs, e.g. `() => migrate(pool)` from @outbox/store-postgres. */
  migrate?: () => Promise<unknown>;
  /** Optional: lets `outbox purge` show rows (not only time) in its progress bar. */
  purgeEstimate?: (olderThan: Date) => Promise<PurgeEstimate>;
  /** Closes your own clients (pool.end(), ...) after the CLI closed the adapters. */
  close?: () => Promise<unknown>;
}

/** Identity, for types: `export default defineConfig({ store, publisher })`. */
export function defineConfig<const T extends OutboxCliConfig>(config: T): T;
export function defineConfig<const T extends OutboxCliConfig>(config: () => T | Promise<T>): () => T | Promise<T>;
export function defineConfig(config: unknown): unknown {
  return config;
}

/** File names looked for in the working directory when neither --config nor OUTBOX_CONFIG is given. */
export const configFileNames = ["outbox.config.ts", "outbox.config.mts", "outbox.config.js", "outbox.config.mjs"];

const topLevelKeys = new Set(["store", "inbox", "publisher", "lock", "relay", "migrate", "purgeEstimate", "close"]);
const relayKeys = new Set([
  "pollMs",
  "batchSize",
  "maxInFlightBatches",
  "leaseMs",
  "retry",
  "drainTimeoutMs",
  "id",
  "leader",
]);
const leaderKeys = new Set(["name", "ttlMs", "safetyMarginMs", "stepDownAfterMs"]);

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : `${typeof value} ${JSON.stringify(value) ?? String(value)}`;
}

function checkKeys(value: Record<string, unknown>, allowed: Set<string>, where: string): void {
  for (const key of Object.keys(value)) {
    if (!allowed.has(key)) {
      throw configError(
        where ? `${where}.${key}` : key,
        `unknown setting (expected one of ${[...allowed].join(", ")})`,
      );
    }
  }
}

function checkPositive(value: unknown, field: string): void {
  if (value === undefined) return;
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw configError(field, `must be a positive number, got ${describe(value)}`);
  }
}

function checkAdapterSlot(value: unknown, field: string, required: boolean): void {
  if (value === undefined || value === null) {
    if (required) throw configError(field, "is required");
    return;
  }
  if (typeof value !== "object" && typeof value !== "function") {
    throw configError(field, `must be an adapter instance or a function returning one, got ${describe(value)}`);
  }
}

/**
 * Checks a loaded configuration's shape (the adapters themselves are checked when resolved).
 * Unknown keys are errors: a typo must not silently fall back to a default.
 */
export function validateConfig(config: unknown): OutboxCliConfig {
  if (!isObject(config)) {
    throw configError(
      "(root)",
      `the config must export an object (defineConfig({ store, ... })), got ${describe(config)}`,
    );
  }
  checkKeys(config, topLevelKeys, "");
  // A consumer's service may have an inbox and no outbox of its own.
  checkAdapterSlot(config.store, "store", config.inbox === undefined || config.inbox === null);
  checkAdapterSlot(config.inbox, "inbox", false);
  checkAdapterSlot(config.publisher, "publisher", false);
  checkAdapterSlot(config.lock, "lock", false);
  for (const hook of ["migrate", "purgeEstimate", "close"] as const) {
    if (config[hook] !== undefined && typeof config[hook] !== "function") {
      throw configError(hook, `must be a function, got ${describe(config[hook])}`);
    }
  }
  const relay = config.relay;
  if (relay !== undefined) {
    if (!isObject(relay)) throw configError("relay", `must be an object, got ${describe(relay)}`);
    checkKeys(relay, relayKeys, "relay");
    for (const key of ["pollMs", "batchSize", "maxInFlightBatches", "leaseMs", "drainTimeoutMs"]) {
      checkPositive(relay[key], `relay.${key}`);
    }
    if (relay.batchSize !== undefined && !Number.isInteger(relay.batchSize)) {
      throw configError("relay.batchSize", `must be an integer, got ${describe(relay.batchSize)}`);
    }
    if (relay.id !== undefined && (typeof relay.id !== "string" || relay.id.length === 0)) {
      throw configError("relay.id", `must be a non-empty string, got ${describe(relay.id)}`);
    }
    if (relay.retry !== undefined && !isObject(relay.retry)) {
      throw configError("relay.retry", `must be an object, got ${describe(relay.retry)}`);
    }
    const leader = relay.leader;
    if (leader !== undefined) {
      if (!isObject(leader)) throw configError("relay.leader", `must be an object, got ${describe(leader)}`);
      checkKeys(leader, leaderKeys, "relay.leader");
      if (leader.name !== undefined && (typeof leader.name !== "string" || leader.name.length === 0)) {
        throw configError("relay.leader.name", `must be a non-empty string, got ${describe(leader.name)}`);
      }
      checkPositive(leader.ttlMs, "relay.leader.ttlMs");
      checkPositive(leader.safetyMarginMs, "relay.leader.safetyMarginMs");
      checkPositive(leader.stepDownAfterMs, "relay.leader.stepDownAfterMs");
      if (config.lock === undefined) throw configError("relay.leader", "needs `lock` (a lock backend)");
    }
  }
  return config as unknown as OutboxCliConfig;
}

/** The methods each adapter slot must have (what the commands call). */
const adapterMethods = {
  store: ["claim", "ack", "retry", "deadLetter", "release", "listDead", "requeueDead", "purge", "stats"],
  inbox: ["listDead", "requeueDead", "dropDead", "purge", "stats"],
  publisher: ["publish"],
  lock: ["tryAcquire", "renew", "release"],
} as const;

const adapterNames = { store: "store", inbox: "inbox store", publisher: "publisher", lock: "lock backend" };

/** Resolves a factory slot and checks that the result has the contract's methods. */
export async function resolveAdapter<T>(
  slot: Factory<T> | undefined,
  field: keyof typeof adapterMethods,
): Promise<T | undefined> {
  if (slot === undefined || slot === null) return undefined;
  let value: unknown;
  try {
    value = typeof slot === "function" ? await (slot as () => T | Promise<T>)() : slot;
  } catch (error) {
    // A configuration error that names its field (OUTBOX_KAFKA_BROKERS, ...) stays as it is.
    if (OutboxError.is(error, OutboxErrorCode.InvalidOptions) && (error.details as { field?: unknown }).field) {
      throw error;
    }
    // A factory that throws is the configuration's fault (bad option), or the environment's.
    throw configError(field, "its factory threw", error);
  }
  const methods: readonly string[] = adapterMethods[field];
  const missing = methods.filter((name) => typeof (value as Record<string, unknown> | null)?.[name] !== "function");
  if (missing.length > 0) {
    throw configError(field, `is not a ${adapterNames[field]}: missing ${missing.join(", ")}()`);
  }
  return value as T;
}

/** The config file to load: --config, else OUTBOX_CONFIG, else outbox.config.* in the working directory. */
export function findConfigFile(explicit: string | undefined, env: Record<string, string | undefined>, cwd: string) {
  const given = explicit ?? env.OUTBOX_CONFIG;
  if (given) {
    const path = isAbsolute(given) ? given : resolve(cwd, given);
    if (!existsSync(path)) throw configError("--config", `file not found: ${path}`);
    return path;
  }
  for (const name of configFileNames) {
    const path = resolve(cwd, name);
    if (existsSync(path)) return path;
  }
  return undefined;
}

/**
 * Loads a config file with jiti (TypeScript, ESM or CommonJS; Node's own loader first, so
 * package export conditions apply). The default export may be the config or a function returning it.
 */
export async function loadConfigFile(path: string): Promise<OutboxCliConfig> {
  const { createJiti } = await import("jiti");
  const jiti = createJiti(pathToFileURL(path).href, { tryNative: true, moduleCache: false });
  let loaded: unknown;
  try {
    loaded = await jiti.import(path, { default: true });
    if (typeof loaded === "function") loaded = await (loaded as () => unknown)();
  } catch (error) {
    throw configError(path, "could not be loaded", error);
  }
  return validateConfig(loaded);
}
