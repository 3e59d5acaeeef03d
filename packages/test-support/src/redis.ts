import { Redis, type RedisOptions } from "ioredis";
import { redisUrl, services } from "./services.js";
import { TcpProxy } from "./tcp-proxy.js";
import { waitFor } from "./wait.js";

export { redisUrl };
const target = new URL(redisUrl);
export const redisHost = target.hostname;
export const redisPort = Number(target.port || 6379);

/** The client options the lock-redis README recommends: fail fast while Redis is unreachable. */
export const failFast: RedisOptions = {
  maxRetriesPerRequest: 1,
  enableOfflineQueue: false,
  commandTimeout: 1_000,
  connectTimeout: 1_000,
  retryStrategy: (times) => Math.min(times * 50, 500),
};

const clients = new Set<Redis>();

/** A connected client; `closeClients()` quits every client made here. */
export async function newClient(options: RedisOptions = failFast, url = redisUrl): Promise<Redis> {
  const client = new Redis(url, { ...options, lazyConnect: true });
  client.on("error", () => {}); // reconnects are expected in these tests
  clients.add(client);
  await client.connect();
  return client;
}

export async function closeClients(): Promise<void> {
  const all = [...clients];
  clients.clear();
  await Promise.all(all.map((client) => client.quit().catch(() => client.disconnect())));
}

export function closeClient(client: Redis): Promise<unknown> {
  clients.delete(client);
  return client.quit().catch(() => client.disconnect());
}

/** Restarts the Redis server with scripts/services.sh (no persistence: every key is gone). */
export function restartRedis(): Promise<void> {
  return services("restart", "redis");
}

/** Waits until the client answers again (after a restart or a cut). */
export function waitReady(client: Redis, timeoutMs = 15_000): Promise<boolean> {
  return waitFor(async () => (await client.ping()) === "PONG", timeoutMs, "Redis to answer");
}

/**
 * The TCP proxy (./tcp-proxy.ts) in front of Redis, to cut a client off without touching the server:
 * - "refuse": drops every connection and new ones at once (connection reset);
 * - "blackhole": keeps connections open but forwards nothing either way (a partition).
 */
export class RedisProxy {
  readonly #proxy: TcpProxy;

  private constructor(proxy: TcpProxy) {
    this.#proxy = proxy;
  }

  static async start(): Promise<RedisProxy> {
    return new RedisProxy(await TcpProxy.start(`${redisHost}:${redisPort}`));
  }

  get url(): string {
    return `redis://${this.#proxy.endpoint}`;
  }

  cut(mode: "refuse" | "blackhole"): void {
    if (mode === "refuse") this.#proxy.cut();
    else this.#proxy.blackhole();
  }

  /** Lets traffic through again. Blackholed connections stay dead (as after a real partition). */
  restore(): void {
    this.#proxy.restore();
  }

  close(): Promise<void> {
    return this.#proxy.close();
  }
}
