import { createServer, type Server, Socket } from "node:net";
import { Redis, type RedisOptions } from "ioredis";
import { redisUrl, services } from "./services.js";
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
 * A TCP proxy in front of Redis, to cut a client off without touching the server:
 * - "refuse": drops every connection and new ones at once (connection reset);
 * - "blackhole": keeps connections open but forwards nothing either way (a partition).
 */
export class RedisProxy {
  readonly #server: Server;
  readonly #pairs = new Set<[Socket, Socket]>();
  #mode: "open" | "refuse" | "blackhole" = "open";
  port = 0;

  private constructor() {
    this.#server = createServer((inbound) => this.#accept(inbound));
  }

  static async start(): Promise<RedisProxy> {
    const proxy = new RedisProxy();
    await new Promise<void>((resolve) => proxy.#server.listen(0, "127.0.0.1", resolve));
    const address = proxy.#server.address();
    proxy.port = typeof address === "object" && address ? address.port : 0;
    return proxy;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  cut(mode: "refuse" | "blackhole"): void {
    this.#mode = mode;
    for (const [inbound, outbound] of this.#pairs) {
      if (mode === "refuse") {
        inbound.destroy();
        outbound.destroy();
      } else {
        inbound.unpipe(outbound);
        outbound.unpipe(inbound);
        inbound.pause();
        outbound.pause();
      }
    }
    if (mode === "refuse") this.#pairs.clear();
  }

  /** Lets traffic through again. Blackholed connections stay dead (as after a real partition). */
  restore(): void {
    for (const [inbound, outbound] of this.#pairs) {
      inbound.destroy();
      outbound.destroy();
    }
    this.#pairs.clear();
    this.#mode = "open";
  }

  async close(): Promise<void> {
    this.restore();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(inbound: Socket): void {
    if (this.#mode === "refuse") {
      inbound.destroy();
      return;
    }
    if (this.#mode === "blackhole") {
      inbound.pause();
      this.#pairs.add([inbound, new Socket()]);
      return;
    }
    const outbound = new Socket();
    const pair: [Socket, Socket] = [inbound, outbound];
    this.#pairs.add(pair);
    const drop = () => {
      inbound.destroy();
      outbound.destroy();
      this.#pairs.delete(pair);
    };
    inbound.on("error", drop).on("close", drop);
    outbound.on("error", drop).on("close", drop);
    outbound.connect(redisPort, redisHost, () => {
      inbound.pipe(outbound);
      outbound.pipe(inbound);
    });
  }
}
