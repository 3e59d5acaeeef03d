import {
  describeLockConformance,
  describeRelayConformance,
  memoryStoreHarness,
  type RealTimeLockBackend,
  type StoreHarness,
  wrapLockBackend,
} from "@outbox/conformance";
import type { ManualClock } from "@outbox/core";
import { createPostgresStore, migrate, type Queryable } from "@outbox/store-postgres";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
import { sleep } from "@outbox/test-support/wait";
import type { Etcd3 } from "etcd3";
import pg from "pg";
import { afterAll } from "vitest";
import { createEtcdLockBackend } from "../src/index.js";
import { closeClient, closeClients, newClient, restartEtcd } from "./support.js";

const pool = new pg.Pool({ connectionString: pgUrl, max: 8 });
pool.on("error", () => undefined);
afterAll(async () => {
  closeClients();
  await pool.end();
});

/**
 * etcd's lessor revokes expired leases on a 500 ms tick, then through raft: a lease outlives its
 * TTL by up to about half a second. The kit waits that out where a TTL must have run out
 * (`expiryLagMs`); `elapse` is plain real time, so "still held" is probed across the whole TTL.
 * (TTLs are whole seconds, and etcd raises any lease under its minimum, 2 s with the default
 * election timeout, to that minimum: a lock lapsing at half its TTL only shows at 4 s and up, so
 * the checks use 4 s.)
 */
const expiryLagMs = 600;

describeLockConformance({
  name: "lock-etcd (etcd3, real etcd 3.4)",
  ttlMs: 4_000,
  expiryLagMs,
  // Test suites run one package at a time: restarting etcd here touches no other suite.
  allowServerRestarts: true,
  async create() {
    const owned: Etcd3[] = [];
    const connect = async () => {
      const client = newClient();
      owned.push(client);
      return createEtcdLockBackend({ client });
    };
    const backend = await connect();
    return {
      backend,
      elapse: sleep,
      // On its own data, as a production etcd restarts: revisions (the tokens) survive.
      restart: () => restartEtcd({ keepData: true }),
      peer: connect,
      // The key gone (deleted by an operator, or its lease revoked).
      async expire(name: string) {
        await (owned[0] as Etcd3).delete().key(backend.lockKey(name));
      },
      // The key gone while its lease (the holder's "session") lives on.
      async dropHolding(name: string) {
        await (owned[0] as Etcd3).delete().key(backend.lockKey(name));
      },
      async teardown() {
        for (const client of owned) closeClient(client);
      },
    };
  },
});

/** The PostgreSQL store on a fresh schema, driven by the kit's manual clock. */
async function postgresStore(clock: ManualClock): Promise<StoreHarness<Queryable>> {
  const schema = freshIdentifier("etcdrelay");
  await migrate(pool, { schema });
  const store = createPostgresStore({ pool, schema, clock, listen: false, onError: () => undefined });
  return {
    store,
    clock,
    transaction: (work) => inTransaction(pool, work),
    async teardown() {
      await store.close();
      await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    },
  };
}

/** The etcd lock for the relay suite: the kit lets TTLs pass on its manual clock, etcd on real time. */
async function etcdLeaderLock(): Promise<RealTimeLockBackend> {
  const client = newClient();
  const backend = createEtcdLockBackend({ client });
  return {
    backend: wrapLockBackend(backend, {
      async close() {
        await backend.close();
        closeClient(client);
      },
    }),
    // End the holding now, as the lease's expiry would: delete the key.
    async expire(name: string) {
      await client.delete().key(backend.lockKey(name));
    },
  };
}

describeRelayConformance({
  name: "store-postgres + lock-etcd (real PostgreSQL, real etcd)",
  createStore: postgresStore,
  createLockBackend: etcdLeaderLock,
});

describeRelayConformance({
  name: "MemoryStore + lock-etcd (real etcd)",
  createStore: memoryStoreHarness,
  createLockBackend: etcdLeaderLock,
});
