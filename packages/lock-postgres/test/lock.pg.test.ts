import {
  describeLockConformance,
  describeRelayConformance,
  memoryStoreHarness,
  wrapLockBackend,
} from "@outbox/conformance";
import { DistributedLock, type LockGrant, OutboxError, OutboxErrorCode, OutboxRelay } from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { freshIdentifier as fresh, pgUrl, restartPostgres } from "@outbox/test-support/postgres";
import { sleep, waitFor } from "@outbox/test-support/wait";
import pg from "pg";
import pgMin from "pg-min";
import { afterAll, describe, expect, it } from "vitest";
import { createPostgresLockBackend, type PostgresLockBackend } from "../src/index.js";

const admin = new pg.Pool({ connectionString: pgUrl, max: 3 });
admin.on("error", () => undefined);
afterAll(() => admin.end());

function backend(schema: string, Client?: typeof pg.Client): PostgresLockBackend {
  return createPostgresLockBackend({ connectionString: pgUrl, schema, Client });
}

// The relay suite with this lock as the leader lock (store: the kit's in-memory one). The kit lets
// the TTL pass on its manual clock; a session-bound lock ends when its session does, so `expire`
// terminates the session.
describeRelayConformance({
  name: "MemoryStore + lock-postgres (real PostgreSQL)",
  createStore: memoryStoreHarness,
  async createLockBackend() {
    const schema = fresh("relaylock");
    await admin.query(`CREATE SCHEMA "${schema}"`);
    const lock = backend(schema);
    return {
      backend: wrapLockBackend(lock, {
        async close() {
          await lock.close();
          await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
        },
      }),
      async expire() {
        const pid = await lock.backendPid();
        if (pid === null) return;
        await admin.query("SELECT pg_terminate_backend($1)", [pid]);
        // The backend learns of its session's end from the connection's error/end event.
        await waitFor(() => !lock.connected, 10_000, "the lock session to be gone");
      },
    };
  },
});

for (const [name, Client] of [
  ["lock-postgres (advisory locks, PostgreSQL 15, pg 8.23)", pg.Client],
  ["lock-postgres (advisory locks, PostgreSQL 15, pg 8.11: oldest supported)", pgMin.Client],
] as const) {
  describeLockConformance({
    name,
    // Test suites run one package at a time: the restart touches no other suite.
    allowServerRestarts: true,
    async create() {
      const schema = fresh("lock");
      await admin.query(`CREATE SCHEMA "${schema}"`);
      // The first backend's session, kept to run statements on it (dropHolding).
      let session: InstanceType<typeof Client> | null = null;
      const first = createPostgresLockBackend({
        schema,
        async connect() {
          const client = new Client({ connectionString: pgUrl, application_name: "outbox-lock" });
          client.on("error", () => undefined);
          await client.connect();
          session = client;
          return client;
        },
      });
      const backends: PostgresLockBackend[] = [first];
      return {
        backend: first,
        // The advisory lock gone while its session lives: what a pooler's DISCARD ALL does.
        async dropHolding() {
          await (session as InstanceType<typeof Client> | null)?.query("SELECT pg_advisory_unlock_all()");
        },
        // A session-bound lock is gone when its session is: terminate it server-side.
        async expire() {
          const pid = await first.backendPid();
          if (pid === null) return;
          await admin.query("SELECT pg_terminate_backend($1)", [pid]);
          await waitFor(() => !first.connected, 10_000, "the lock session to be gone");
        },
        // Session-bound locks have no TTL to wait out; real time passes for the restart retry loop.
        elapse: async (ms) => {
          await sleep(ms);
        },
        restart: restartPostgres,
        async peer() {
          const peer = backend(schema, Client);
          backends.push(peer);
          return peer;
        },
        async teardown() {
          await Promise.all(backends.map((b) => b.close()));
          await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
        },
      };
    },
  });
}

describe("lock-postgres specifics", () => {
  it("reports the lock lost when its session is killed, and a peer takes over with a higher token", async () => {
    const schema = fresh("lock");
    await admin.query(`CREATE SCHEMA "${schema}"`);
    const a = backend(schema);
    const b = backend(schema);
    try {
      const lost: Array<{ grant: LockGrant; reason: unknown }> = [];
      const lockA = new DistributedLock(a, {
        name: "leader",
        ttlMs: 600,
        onLost: (grant, reason) => lost.push({ grant, reason }),
      });
      const grantA = await lockA.tryAcquire();
      expect(grantA).not.toBeNull();
      expect(await b.tryAcquire("leader", "b", 600)).toBeNull();
      const pid = await a.backendPid();
      await admin.query("SELECT pg_terminate_backend($1)", [pid]);
      // Renewal runs every ttl/3 (200 ms): the loss is reported within about that. The bound
      // is a TTL plus room for a loaded CI machine's late timers.
      const killedAt = Date.now();
      await waitFor(() => lost.length === 1, 5_000, "the loss report");
      expect(Date.now() - killedAt).toBeLessThan(600 + 1_000);
      expect(lockA.grant).toBeNull();
      const tokenB = await b.tryAcquire("leader", "b", 600);
      expect(tokenB).not.toBeNull();
      expect((tokenB as bigint) > (grantA as LockGrant).token).toBe(true);
      // A reconnects on its next call; the lock is b's now.
      expect(await a.tryAcquire("leader", "a", 600)).toBeNull();
      await lockA.close();
    } finally {
      await a.close();
      await b.close();
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });

  it("lets the same holder re-acquire its own lock with a new token, and refuses other holders on the same backend", async () => {
    const schema = fresh("lock");
    await admin.query(`CREATE SCHEMA "${schema}"`);
    const a = backend(schema);
    try {
      const first = await a.tryAcquire("l", "h1", 1_000);
      const again = await a.tryAcquire("l", "h1", 1_000);
      expect(first).not.toBeNull();
      expect((again as bigint) > (first as bigint)).toBe(true);
      expect(await a.tryAcquire("l", "h2", 1_000)).toBeNull();
      expect(await a.renew("l", "h2", 1_000)).toBe(false);
      expect(await a.release("l", "h2")).toBe(false);
      // One release frees it (pg_try_advisory_lock was taken once, not twice).
      expect(await a.release("l", "h1")).toBe(true);
      const { rows } = await admin.query(
        "SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND objid = (hashtextextended('l', 0) & 4294967295)::oid",
      );
      expect(rows[0].n).toBe(0);
    } finally {
      await a.close();
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });

  it("closing the backend releases its locks at once", async () => {
    const schema = fresh("lock");
    await admin.query(`CREATE SCHEMA "${schema}"`);
    const a = backend(schema);
    const b = backend(schema);
    try {
      expect(await a.tryAcquire("l", "a", 1_000)).not.toBeNull();
      await a.close();
      expect(await b.tryAcquire("l", "b", 1_000)).not.toBeNull();
      const error = await a.tryAcquire("l", "a", 1_000).catch((caught: unknown) => caught);
      expect(OutboxError.is(error, OutboxErrorCode.Closed)).toBe(true);
    } finally {
      await b.close();
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });

  it("fails with OUTBOX_LOCK_UNAVAILABLE when the server cannot be reached (DistributedLock: not held)", async () => {
    const a = createPostgresLockBackend({ connectionString: "postgres://postgres:postgres@127.0.0.1:1/none" });
    const error = await a.tryAcquire("l", "a", 1_000).catch((caught: unknown) => caught);
    expect(OutboxError.is(error, OutboxErrorCode.LockUnavailable)).toBe(true);
    const errors: unknown[] = [];
    const lock = new DistributedLock(a, { name: "l", onError: (e) => errors.push(e) });
    expect(await lock.tryAcquire()).toBeNull();
    expect(errors).toHaveLength(1);
    await a.close();
  });

  it("rejects unsafe identifiers", () => {
    expect(() => createPostgresLockBackend({ connectionString: pgUrl, table: 'x"; drop' })).toThrow(
      expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
    );
    expect(() => createPostgresLockBackend({})).toThrow(
      expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
    );
  });

  it("fails over between two relays on PostgreSQL: the deposed leader is fenced by the store", async () => {
    const schema = fresh("relay");
    await migrate(admin, { schema });
    const poolA = new pg.Pool({ connectionString: pgUrl, max: 3 });
    const poolB = new pg.Pool({ connectionString: pgUrl, max: 3 });
    const storeA = createPostgresStore({ pool: poolA, schema, onError: () => undefined });
    const storeB = createPostgresStore({ pool: poolB, schema, onError: () => undefined });
    // A's process gets cut off from PostgreSQL: its lock session dies and it cannot reconnect.
    let aCutOff = false;
    const lockA = createPostgresLockBackend({
      schema,
      async connect() {
        if (aCutOff) throw new Error("network partition");
        const client = new pg.Client({ connectionString: pgUrl });
        await client.connect();
        return client;
      },
    });
    const lockB = backend(schema);
    const broker = new MemoryPublisher();
    const leader = (backend: PostgresLockBackend) => ({ backend, name: "outbox-relay", ttlMs: 900 });
    const relayA = new OutboxRelay({ store: storeA, publisher: broker, pollMs: 20, leader: leader(lockA) });
    const relayB = new OutboxRelay({ store: storeB, publisher: broker, pollMs: 20, leader: leader(lockB) });
    const events: string[] = [];
    relayA.on("leadershipGained", () => events.push("A gained"));
    relayB.on("leadershipGained", () => events.push("B gained"));
    relayA.on("error", () => undefined);
    relayB.on("error", () => undefined);
    try {
      relayA.start();
      await waitFor(() => events.includes("A gained"), 5_000, "A to lead");
      relayB.start();
      const enqueue = async (from: number) => {
        const client = await poolA.connect();
        try {
          await client.query("BEGIN");
          await storeA.enqueue(
            client,
            Array.from({ length: 50 }, (_, i) => ({ topic: "t", key: `k${i % 5}`, payload: String(from + i) })),
          );
          await client.query("COMMIT");
        } finally {
          client.release();
        }
      };
      await enqueue(0);
      await waitFor(() => broker.messages.length >= 50, 5_000, "A to publish");
      const pid = await lockA.backendPid();
      aCutOff = true;
      await admin.query("SELECT pg_terminate_backend($1)", [pid]);
      // A steps down either on its failed renewal (leadershipLost) or on the store's OUTBOX_FENCED
      // answer to its next claim (the relay then drops the lock without a leadershipLost event).
      await waitFor(
        () => events.includes("B gained") && !relayA.metrics().leader,
        5_000,
        "B to take over and A to step down",
      );
      await enqueue(50);
      await waitFor(
        () => new Set(broker.messages.map((m) => m.payload.toString())).size >= 100,
        10_000,
        "B to publish",
      );
      // A's token is older than B's: the store refuses it.
      const { rows } = await admin.query(`SELECT token::text AS token FROM "${schema}".outbox_lock_tokens`);
      const newest = BigInt(rows[0].token);
      const error = await storeA
        .claim({ claimer: relayA.id, limit: 1, leaseMs: 1_000, fence: { lock: "outbox-relay", token: newest - 1n } })
        .catch((caught: unknown) => caught);
      expect(OutboxError.is(error, OutboxErrorCode.Fenced)).toBe(true);
    } finally {
      await relayA.stop();
      await relayB.stop();
      await Promise.all([storeA.close(), storeB.close(), lockA.close(), lockB.close()]);
      await Promise.all([poolA.end(), poolB.end()]);
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });
});
