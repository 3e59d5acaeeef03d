/**
 * Test helpers for the real etcd 3.4 that scripts/services.sh starts. (Candidates for
 * @outbox/test-support once another package needs etcd.) The TCP proxy that cuts a client off
 * is @outbox/test-support/tcp-proxy.
 */
import { readFileSync } from "node:fs";
import { services } from "@outbox/test-support/services";
import { waitFor } from "@outbox/test-support/wait";
import { Etcd3, type IOptions } from "etcd3";

/** `host:port[,host:port]` of the etcd that scripts/services.sh starts (scripts/services.env). */
export const etcdHosts = (process.env.OUTBOX_ETCD_HOSTS ?? "127.0.0.1:2379").split(",");
/** The first etcd endpoint (`host:port`): what a TcpProxy stands in front of. */
export const etcdEndpoint = etcdHosts[0] as string;

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

/** A process's state letter from /proc/<pid>/stat ("T": stopped), or null when it is gone. */
export function processState(pid: number): string | null {
  try {
    // "pid (comm) state ...": comm may contain spaces, the state follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0] ?? null;
  } catch {
    return null;
  }
}

/**
 * Freezes the etcd server (SIGSTOP): connections stay open, nothing answers. Returns `resume`
 * once the kernel shows the process stopped, so a caller's clock starts with etcd frozen.
 */
export function freezeEtcd(): () => void {
  const pid = etcdPid();
  process.kill(pid, "SIGSTOP");
  // The signal is queued at once and takes effect as soon as the kernel gets to it (microseconds):
  // a short synchronous wait, bounded in case the process is gone or traced.
  const until = Date.now() + 2_000;
  while (processState(pid) !== "T") {
    if (Date.now() > until) {
      process.kill(pid, "SIGCONT");
      throw new Error(`etcd (pid ${pid}) did not stop within 2 s of SIGSTOP (state ${processState(pid)})`);
    }
  }
  let resumed = false;
  return () => {
    if (resumed) return;
    resumed = true;
    process.kill(pid, "SIGCONT");
  };
}
