import {
  checkLockCall,
  type LockBackend,
  type LockBackendCapabilities,
  OutboxError,
  OutboxErrorCode,
} from "@outbox/core";
import type { Redis } from "ioredis";
import { acquireScript, type LuaScript, releaseScript, renewScript, script } from "./scripts.js";

export interface RedisLockBackendOptions {
  /**
   * The caller's ioredis client (standalone server or a Sentinel-managed primary). The backend
   * never closes it. Recommended options: see the README ("Client options").
   */
  client: Redis;
  /** Prefix of every key. Default "outbox:lock:". Keys: `<prefix>{<name>}` and `<prefix>{<name>}:fence`. */
  keyPrefix?: string;
  /**
   * Longest wait for one Redis call before it counts as failed ("could not tell": the lock
   * helper treats it as not held). Default: a third of the lock's TTL (the renewal interval)
   * for acquire/renew, 5 s for release. Keeps a blackholed connection from stalling renewals
   * and the relay; ioredis' own `commandTimeout` works too.
   */
  timeoutMs?: number;
}

/** A `LockBackend` on Redis, plus the key names it uses (for monitoring and tests). */
export interface RedisLockBackend extends LockBackend {
  readonly keyPrefix: string;
  /** The key holding `<token>:<holder>` while the lock is held. */
  lockKey(name: string): string;
  /** The fencing counter of the lock. */
  fenceKey(name: string): string;
  /** Marks the backend closed (later calls fail with OUTBOX_CLOSED). Never closes the caller's client. */
  close(): Promise<void>;
}

const defaultReleaseTimeoutMs = 5_000;
/** DistributedLock renews every ttl/3: a call should not outlive the next renewal. */
const renewalInterval = (ttlMs: number) => Math.max(1, Math.floor(ttlMs / 3));

/**
 * Leader lock on Redis:
 * - acquire: one Lua script: `SET <lock> <token>:<holder> PX ttl` unless another holder has it,
 *   and the next fencing token, `max(counter + 1, server time in µs)`, in the same round trip;
 * - renew: compare-holder-and-PEXPIRE; release: compare-holder-and-token-and-DEL.
 * The same holder acquiring again gets a fresh, higher token and a fresh TTL (like the reference
 * backend), so a relay whose reply got lost can take its own lock back at once.
 */
class RedisLock implements RedisLockBackend {
  readonly capabilities: LockBackendCapabilities = { tokensSurviveRestart: true };
  readonly keyPrefix: string;
  readonly #client: Redis;
  readonly #timeoutMs: number | undefined;
  readonly #acquire = script(acquireScript);
  readonly #renew = script(renewScript);
  readonly #release = script(releaseScript);
  /** The last token this backend handed to each (name, holder), so release deletes only that grant. */
  readonly #tokens = new Map<string, string>();
  #closed = false;

  constructor(options: RedisLockBackendOptions) {
    if (!options?.client || typeof options.client.evalsha !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "createRedisLockBackend needs an ioredis client");
    }
    if (options.timeoutMs !== undefined && !(options.timeoutMs > 0)) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, `timeoutMs must be positive, got ${options.timeoutMs}`);
    }
    this.#client = options.client;
    this.keyPrefix = options.keyPrefix ?? "outbox:lock:";
    this.#timeoutMs = options.timeoutMs;
  }

  lockKey(name: string): string {
    return `${this.keyPrefix}{${name}}`;
  }

  fenceKey(name: string): string {
    return `${this.keyPrefix}{${name}}:fence`;
  }

  async tryAcquire(name: string, holder: string, ttlMs: number): Promise<bigint | null> {
    const ttl = this.#check(name, holder, ttlMs);
    const reply = await this.#eval(
      this.#acquire,
      [this.lockKey(name), this.fenceKey(name)],
      [holder, ttl],
      renewalInterval(ttlMs),
    );
    if (reply === null) return null;
    if (typeof reply !== "string" || !/^\d+$/.test(reply)) {
      throw new OutboxError(OutboxErrorCode.LockUnavailable, `unexpected reply from the acquire script: ${reply}`);
    }
    this.#tokens.set(`${name}\0${holder}`, reply);
    return BigInt(reply);
  }

  async renew(name: string, holder: string, ttlMs: number): Promise<boolean> {
    const ttl = this.#check(name, holder, ttlMs);
    return (await this.#eval(this.#renew, [this.lockKey(name)], [holder, ttl], renewalInterval(ttlMs))) === 1;
  }

  async release(name: string, holder: string): Promise<boolean> {
    this.#check(name, holder);
    const id = `${name}\0${holder}`;
    const token = this.#tokens.get(id) ?? "";
    this.#tokens.delete(id);
    return (await this.#eval(this.#release, [this.lockKey(name)], [holder, token], defaultReleaseTimeoutMs)) === 1;
  }

  /** Marks the backend closed. The ioredis client belongs to the caller and stays open. */
  async close(): Promise<void> {
    this.#closed = true;
  }

  #check(name: string, holder: string, ttlMs?: number): string {
    if (this.#closed) throw new OutboxError(OutboxErrorCode.Closed, "the Redis lock backend is closed");
    checkLockCall(name, holder, ttlMs);
    if (ttlMs === undefined) return "";
    // PX takes whole milliseconds. Rounding up only makes the server hold longer than the
    // holder assumes, which is the safe direction.
    return String(Math.ceil(ttlMs));
  }

  /** EVALSHA, falling back to EVAL when the server lost its script cache (restart, failover). */
  async #eval(lua: LuaScript, keys: string[], args: string[], defaultTimeoutMs: number): Promise<unknown> {
    const run = async (): Promise<unknown> => {
      try {
        return await this.#client.evalsha(lua.sha, keys.length, ...keys, ...args);
      } catch (error) {
        if (!(error instanceof Error) || !error.message.startsWith("NOSCRIPT")) throw error;
        return await this.#client.eval(lua.source, keys.length, ...keys, ...args);
      }
    };
    const timeoutMs = this.#timeoutMs ?? defaultTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new OutboxError(OutboxErrorCode.LockUnavailable, `Redis did not answer within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([run(), timeout]);
    } catch (error) {
      if (OutboxError.is(error)) throw error;
      throw new OutboxError(OutboxErrorCode.LockUnavailable, "Redis lock command failed", { cause: error });
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Creates a Redis lock backend for `OutboxRelay`'s `leader` option or `DistributedLock`. */
export function createRedisLockBackend(options: RedisLockBackendOptions): RedisLockBackend {
  return new RedisLock(options);
}
