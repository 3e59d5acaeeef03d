/**
 * Test helpers for the real etcd 3.4 that scripts/services.sh starts. (Candidates for
 * @outbox/test-support once another package needs etcd; TcpProxy generalises its RedisProxy.)
 */
import { readFileSync } from "node:fs";
import { createServer, type Server, Socket } from "node:net";
import { services } from "@outbox/test-support/services";
import { waitFor } from "@outbox/test-support/wait";
import { Etcd3, type IOptions } from "etcd3";

/** `host:port[,host:port]` of the etcd that scripts/services.sh starts (scripts/services.env). */
export const etcdHosts = (process.env.OUTBOX_ETCD_HOSTS ?? "127.0.0.1:2379").split(",");
const [etcdHost = "127.0.0.1", etcdPortText = "2379"] = (etcdHosts[0] as string).split(":");
const etcdPort = Number(etcdPortText);

const stateDir = process.env.OUTBOX_STATE ?? "/tmp/outbox-services";

const clients = new Set<Etcd3>();

/** An etcd3 client; `closeClients()` closes every client made here. */
export function newClient(options: Partial<IOptions> = {}, hosts: string[] = etcdHosts): Etcd3 {
  const client = new Etcd3({ hosts, ...options });
  clients.add(client);
  return client;
}

export function closeClient(client: Etcd3): void {
  clients.delete(client);
  client.close();
}

export function closeClients(): void {
  for (const client of clients) client.close();
  clients.clear();
}

/** True when a fresh client gets an answer within a second. */
async function answers(): Promise<boolean> {
  const probe = new Etcd3({ hosts: etcdHosts });
  try {
    await probe.get("outbox-probe").options({ deadline: Date.now() + 1_000 });
    return true;
  } finally {
    probe.close();
  }
}

/**
 * Restarts etcd with scripts/services.sh. `keepData`: on its own data dir (revisions and leases
 * survive); otherwise on a fresh one (every key, lease and the revision counter are gone).
 */
export async function restartEtcd(options: { keepData: boolean }): Promise<void> {
  await services("restart", "etcd", ...(options.keepData ? ["--keep-data"] : []));
  await waitFor(answers, 30_000, "etcd to answer after a restart");
}

/** The etcd server's pid (scripts/services.sh records it). */
export function etcdPid(): number {
  return Number(readFileSync(`${stateDir}/etcd.pid`, "utf8").trim());
}

/** Freezes the etcd server (SIGSTOP): connections stay open, nothing answers. Returns `resume`. */
export function freezeEtcd(): () => void {
  const pid = etcdPid();
  process.kill(pid, "SIGSTOP");
  let resumed = false;
  return () => {
    if (resumed) return;
    resumed = true;
    process.kill(pid, "SIGCONT");
  };
}

/**
 * A TCP proxy in front of etcd, to cut one client off without touching the server:
 * - "refuse": drops every connection and new ones at once (connection reset);
 * - "blackhole": keeps connections open but forwards nothing either way (a partition).
 */
export class TcpProxy {
  readonly #server: Server;
  readonly #pairs = new Set<[Socket, Socket]>();
  #mode: "open" | "refuse" | "blackhole" = "open";
  port = 0;

  private constructor(
    readonly targetHost: string,
    readonly targetPort: number,
  ) {
    this.#server = createServer((inbound) => this.#accept(inbound));
  }

  static async start(targetHost = etcdHost, targetPort = etcdPort): Promise<TcpProxy> {
    const proxy = new TcpProxy(targetHost, targetPort);
    await new Promise<void>((resolve) => proxy.#server.listen(0, "127.0.0.1", resolve));
    const address = proxy.#server.address();
    proxy.port = typeof address === "object" && address ? address.port : 0;
    return proxy;
  }

  /** `host:port` for an etcd3 client. */
  get host(): string {
    return `127.0.0.1:${this.port}`;
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
    outbound.connect(this.targetPort, this.targetHost, () => {
      inbound.pipe(outbound);
      outbound.pipe(inbound);
    });
  }
}
