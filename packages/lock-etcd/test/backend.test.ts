import { uniqueName } from "@outbox/conformance";
import { DistributedLock, OutboxError, OutboxErrorCode } from "@outbox/core";
import { TcpProxy } from "@outbox/test-support/tcp-proxy";
import { waitFor } from "@outbox/test-support/wait";
import type { Etcd3 } from "etcd3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createEtcdLockBackend } from "../src/index.js";
import { closeClients, etcdEndpoint, freezeEtcd, newClient } from "./support.js";

let client: Etcd3;
let admin: Etcd3;

beforeAll(() => {
  client = newClient();
  admin = newClient();
});
afterAll(closeClients);

async function code(promise: Promise<unknown>): Promise<string | null> {
  const error = await promise.then(
    () => null,
    (caught: unknown) => caught,
  );
  return OutboxError.is(error) ? error.code : `not an OutboxError: ${String(error)}`;
}

/** The lock key as etcd holds it: value, revisions and lease. */
async function keyOf(key: string) {
  const range = await admin.kv.range({ key: Buffer.from(key) });
  const kv = range.kvs[0];
  return kv
    ? {
        value: kv.value.toString(),
        createRevision: BigInt(kv.create_revision),
        modRevision: BigInt(kv.mod_revision),
        lease: kv.lease,
      }
    : null;
}

/** Remaining and granted TTL of a lease in seconds; `ttl` is -1 once it is gone. */
async function leaseTtl(lease: string) {
  const reply = await admin.leaseClient.leaseTimeToLive({ ID: lease });
  return { ttl: Number(reply.TTL), granted: Number(reply.grantedTTL) };
}

async function leaseIds(): Promise<Set<string>> {
  const reply = await admin.leaseClient.leaseLeases();
  return new Set(reply.leases.map((lease) => lease.ID));
}

describe("createEtcdLockBackend", () => {
  it("puts the holder under <prefix><name>, on a lease of the TTL; the token is the revision of that put", async () => {
    const backend = createEtcdLockBackend({ client });
    const name = uniqueName("lock");
    expect(backend.lockKey(name)).toBe(`outbox/lock/${name}`);
    const token = await backend.tryAcquire(name, "holder-a", 5_000);
    const kv = await keyOf(backend.lockKey(name));
    expect(kv).toMatchObject({ value: "holder-a", createRevision: token, modRevision: token });
    const lease = await leaseTtl(kv?.lease as string);
    expect(lease.granted).toBe(5);
    expect(lease.ttl).toBeGreaterThanOrEqual(4);
  });

  it("honours keyPrefix", async () => {
    const backend = createEtcdLockBackend({ client, keyPrefix: "custom/" });
    const name = uniqueName("lock");
    await backend.tryAcquire(name, "h", 5_000);
    expect((await keyOf(`custom/${name}`))?.value).toBe("h");
  });

  it("tokens are etcd revisions: above every earlier write in the cluster, whatever the key", async () => {
    const backend = createEtcdLockBackend({ client });
    const before = await admin.put(uniqueName("unrelated")).value("x").exec();
    const token = (await backend.tryAcquire(uniqueName("lock"), "a", 5_000)) as bigint;
    expect(token > BigInt(before.header.revision)).toBe(true);
  });

  it("rounds the TTL up to whole seconds (etcd leases): the server never holds for less than asked", async () => {
    const backend = createEtcdLockBackend({ client });
    const name = uniqueName("lock");
    expect(await backend.tryAcquire(name, "a", 2_000.2)).not.toBeNull();
    const lease = await leaseTtl((await keyOf(backend.lockKey(name)))?.lease as string);
    expect(lease.granted).toBe(3);
  });

  it("a contender that finds the lock held costs one read: no lease is granted", async () => {
    const backend = createEtcdLockBackend({ client });
    const name = uniqueName("lock");
    await backend.tryAcquire(name, "a", 5_000);
    const before = await leaseIds();
    for (let i = 0; i < 5; i++) expect(await backend.tryAcquire(name, "b", 5_000)).toBeNull();
    const after = await leaseIds();
    expect([...after].filter((id) => !before.has(id))).toEqual([]);
  });

  it("re-acquiring by the same holder returns a fresh, higher token on a fresh lease and revokes the old one", async () => {
    const backend = createEtcdLockBackend({ client });
    const name = uniqueName("lock");
    const first = (await backend.tryAcquire(name, "a", 2_000)) as bigint;
    const oldLease = (await keyOf(backend.lockKey(name)))?.lease as string;
    const again = (await backend.tryAcquire(name, "a", 5_000)) as bigint;
    expect(again > first).toBe(true);
    const kv = await keyOf(backend.lockKey(name));
    expect(kv?.lease).not.toBe(oldLease);
    expect((await leaseTtl(kv?.lease as string)).granted).toBe(5);
    // The old lease is revoked in the background.
    await expect.poll(async () => (await leaseTtl(oldLease)).ttl, { timeout: 5_000 }).toBe(-1);
    expect(await backend.tryAcquire(name, "b", 5_000)).toBeNull();
  });

  it("renew keeps the lease alive only while the key holds the holder, and refuses a lease shorter than the TTL", async () => {
    const backend = createEtcdLockBackend({ client });
    const name = uniqueName("lock");
    await backend.tryAcquire(name, "a", 3_000);
    const lease = (await keyOf(backend.lockKey(name)))?.lease as string;
    expect(await backend.renew(name, "a", 3_000)).toBe(true);
    expect(await backend.renew(name, "b", 3_000)).toBe(false);
    // A 3 s lease cannot back a 10 s TTL: the holder must re-acquire rather than trust it.
    expect(await backend.renew(name, "a", 10_000)).toBe(false);
    // The lease ends (expiry, or revoked by an operator): the key goes with it.
    await admin.leaseClient.leaseRevoke({ ID: lease });
    expect(await backend.renew(name, "a", 3_000)).toBe(false);
    expect(await keyOf(backend.lockKey(name))).toBeNull();
  });

  it("release deletes the key and revokes its lease", async () => {
    const backend = createEtcdLockBackend({ client });
    const name = uniqueName("lock");
    await backend.tryAcquire(name, "a", 5_000);
    const lease = (await keyOf(backend.lockKey(name)))?.lease as string;
    expect(await backend.release(name, "a")).toBe(true);
    expect(await keyOf(backend.lockKey(name))).toBeNull();
    expect((await leaseTtl(lease)).ttl).toBe(-1);
  });

  it("a late release of an older grant does not delete the same holder's newer grant", async () => {
    const name = uniqueName("lock");
    const first = createEtcdLockBackend({ client });
    const second = createEtcdLockBackend({ client });
    await first.tryAcquire(name, "relay-1", 5_000);
    // The holder took its lock back (say the first reply was lost) through another instance.
    await second.tryAcquire(name, "relay-1", 5_000);
    expect(await first.release(name, "relay-1")).toBe(false);
    expect((await keyOf(first.lockKey(name)))?.value).toBe("relay-1");
    expect(await second.release(name, "relay-1")).toBe(true);
    expect(await keyOf(first.lockKey(name))).toBeNull();
  });

  it("never takes over, renews or deletes a key it did not write", async () => {
    const backend = createEtcdLockBackend({ client });
    const name = uniqueName("lock");
    await admin.put(backend.lockKey(name)).value("something else");
    expect(await backend.tryAcquire(name, "a", 5_000)).toBeNull();
    // Same value, but no lease: not a grant of this backend.
    expect(await backend.renew(name, "something else", 5_000)).toBe(false);
    expect(await backend.release(name, "b")).toBe(false);
    expect((await keyOf(backend.lockKey(name)))?.value).toBe("something else");
  });

  it("etcd errors surface as OUTBOX_LOCK_UNAVAILABLE; DistributedLock treats them as not held", async () => {
    const nowhere = newClient({}, ["127.0.0.1:1"]);
    const backend = createEtcdLockBackend({ client: nowhere, timeoutMs: 2_000 });
    const name = uniqueName("lock");
    expect(await code(backend.tryAcquire(name, "a", 5_000))).toBe(OutboxErrorCode.LockUnavailable);
    const errors: unknown[] = [];
    const lock = new DistributedLock(backend, { name, ttlMs: 5_000, onError: (error) => errors.push(error) });
    expect(await lock.tryAcquire()).toBeNull();
    expect(errors).toHaveLength(1);
    expect(OutboxError.is(errors[0], OutboxErrorCode.LockUnavailable)).toBe(true);
  });

  it("rejects bad options and arguments with OUTBOX_INVALID_OPTIONS", async () => {
    const backend = createEtcdLockBackend({ client });
    expect(() => createEtcdLockBackend({} as never)).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
    expect(() => createEtcdLockBackend({ client: { kv: {} } as never })).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
    expect(() => createEtcdLockBackend({ client, timeoutMs: 0 })).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
    expect(await code(backend.tryAcquire("", "a", 1_000))).toBe(OutboxErrorCode.InvalidOptions);
    expect(await code(backend.tryAcquire("n", "", 1_000))).toBe(OutboxErrorCode.InvalidOptions);
    expect(await code(backend.tryAcquire("n", "a", 0))).toBe(OutboxErrorCode.InvalidOptions);
    expect(await code(backend.renew("n", "a", Number.NaN))).toBe(OutboxErrorCode.InvalidOptions);
  });

  it("declares tokensSurviveRestart (true unless told the data may be lost)", () => {
    expect(createEtcdLockBackend({ client }).capabilities).toEqual({ tokensSurviveRestart: true });
    expect(createEtcdLockBackend({ client, tokensSurviveRestart: false }).capabilities).toEqual({
      tokensSurviveRestart: false,
    });
  });

  it("after close, calls fail with OUTBOX_CLOSED and the caller's client stays open", async () => {
    const backend = createEtcdLockBackend({ client });
    await backend.close();
    expect(await code(backend.tryAcquire(uniqueName("lock"), "a", 1_000))).toBe(OutboxErrorCode.Closed);
    expect(await code(backend.release(uniqueName("lock"), "a"))).toBe(OutboxErrorCode.Closed);
    expect(await client.get("anything").string()).toBeNull();
  });

  it("a call that a cut-off etcd never answers fails after timeoutMs instead of hanging (partition)", async () => {
    const proxy = await TcpProxy.start(etcdEndpoint);
    const cutOff = newClient({}, [proxy.endpoint]);
    try {
      const backend = createEtcdLockBackend({ client: cutOff, timeoutMs: 300 });
      const name = uniqueName("lock");
      expect(await backend.tryAcquire(name, "a", 5_000)).not.toBeNull();
      proxy.blackhole();
      const started = Date.now();
      expect(await code(backend.renew(name, "a", 5_000))).toBe(OutboxErrorCode.LockUnavailable);
      expect(await code(backend.tryAcquire(name, "a", 5_000))).toBe(OutboxErrorCode.LockUnavailable);
      expect(Date.now() - started).toBeLessThan(2_000);
    } finally {
      await proxy.close();
    }
  });

  it("a frozen etcd (SIGSTOP) fails renewals within the default timeout (a third of the TTL)", async () => {
    const backend = createEtcdLockBackend({ client });
    const name = uniqueName("lock");
    const first = (await backend.tryAcquire(name, "a", 3_000)) as bigint;
    expect(first).not.toBeNull();
    const resume = freezeEtcd(); // returns once etcd is stopped
    try {
      const started = Date.now();
      expect(await code(backend.renew(name, "a", 3_000))).toBe(OutboxErrorCode.LockUnavailable);
      const took = Date.now() - started;
      expect(took).toBeGreaterThanOrEqual(900); // the timeout, not an early failure
      expect(took).toBeLessThan(1_000 + 1_000); // the timeout plus room for a loaded machine
    } finally {
      resume();
    }
    // Back to normal once etcd runs again: the client reconnects by itself. The renewal's calls
    // ran into their deadline, and etcd3 retries them (at once, past the deadline): 3 failures
    // in a row may open its circuit breaker for 5 s (see the README), by when the 3 s lease can
    // have run out on etcd's clock. Whether it did is a race with SIGCONT; either way the holder
    // takes its lock back with a fresh, higher token, which renews and releases as usual.
    const again = await waitFor(
      () => backend.tryAcquire(name, "a", 3_000),
      15_000,
      "the holder to take its lock back after SIGCONT",
    );
    expect(again > first).toBe(true);
    expect(await backend.renew(name, "a", 3_000)).toBe(true);
    expect(await backend.release(name, "a")).toBe(true);
  });
});
