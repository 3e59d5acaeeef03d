import { type LockBackend, ManualClock } from "@outbox/core";
import { MemoryLockBackend } from "@outbox/memory";
import { describe, expect, it } from "vitest";
import { type LockHarness, lockChecks, runChecks, wrapLockBackend } from "../src/index.js";
import { type LockContextExtras, type LockPatch, lockResults, memoryLockHarness } from "./support.js";

// The lock checks for re-acquire tokens, grant-carrying releases and TTLs the server may round:
// each broken variant of the reference lock below must fail the named check, and the sound
// variants next to them must pass it (so the check fails for the bug, not for the harness).

/**
 * Clients of one in-memory lock "server" that remember the token of their last grant per
 * (name, holder), as lock-redis and lock-etcd do. The server side keeps the newest token of each
 * name; a release checks it against the client's grant unless `ignoreGrant`.
 */
function grantServer(clock: ManualClock, ignoreGrant: boolean) {
  const inner = new MemoryLockBackend({ clock });
  const newest = new Map<string, bigint>();
  const client = (): LockBackend => {
    const grants = new Map<string, bigint>();
    return wrapLockBackend(inner, {
      async tryAcquire(name, holder, ttl) {
        const token = await inner.tryAcquire(name, holder, ttl);
        if (token !== null) {
          newest.set(name, token);
          grants.set(`${name}\0${holder}`, token);
        }
        return token;
      },
      async release(name, holder) {
        const grant = grants.get(`${name}\0${holder}`);
        grants.delete(`${name}\0${holder}`);
        if (!ignoreGrant && grant !== undefined && grant !== newest.get(name)) return false;
        return inner.release(name, holder);
      },
    });
  };
  return { inner, client };
}

async function grantResults(ignoreGrant: boolean) {
  const clock = new ManualClock();
  return runChecks(
    lockChecks,
    async (): Promise<LockHarness & LockContextExtras> => {
      const { inner, client } = grantServer(clock, ignoreGrant);
      return { ...memoryLockHarness(inner, clock, client()), peer: async () => client() };
    },
    (h) => h.teardown(),
  );
}

describe("the kit catches broken re-acquires, releases and TTLs", () => {
  it("the reference lock passes the new checks, with a 1 s and a 4 s TTL", async () => {
    for (const ttlMs of [1_000, 4_000]) {
      const { failed, passed } = await lockResults(() => ({}), ttlMs);
      expect(failed, `TTL ${ttlMs} ms`).toEqual([]);
      expect(passed).toEqual(expect.arrayContaining(["reacquire-token", "odd-ttl", "renew-longer-ttl"]));
    }
  });

  it("a lock whose re-acquire returns the token of the grant it replaces fails reacquire-token", async () => {
    const { failed } = await lockResults((inner) => {
      // The holder's current grant, kept until it is released (lock-etcd's LE1, lock-postgres' LP1).
      const current = new Map<string, { holder: string; token: bigint }>();
      return {
        async tryAcquire(name, holder, ttl) {
          const token = await inner.tryAcquire(name, holder, ttl);
          if (token === null) return null;
          const held = current.get(name);
          if (held?.holder === holder) return held.token;
          current.set(name, { holder, token });
          return token;
        },
        async release(name, holder) {
          current.delete(name);
          return inner.release(name, holder);
        },
      };
    });
    expect(failed).toContain("reacquire-token");
  });

  it("a lock whose tokens are the server's time fails reacquire-token when acquires share a tick", async () => {
    // Time only, no counter for calls within one tick (lock-redis' LR1): the manual clock stands
    // still between the re-acquires, as a real one can between two calls.
    const { failed } = await lockResults((inner, clock) => ({
      tryAcquire: async (name, holder, ttl) =>
        (await inner.tryAcquire(name, holder, ttl)) === null ? null : BigInt(clock.now()),
    }));
    expect(failed).toContain("reacquire-token");
  });

  it("a lock whose release ignores the grant fails release-own-grant; one that compares it passes", async () => {
    const sound = await grantResults(false);
    expect(sound.failed).toEqual([]);
    expect(sound.passed).toContain("release-own-grant");
    const { failed } = await grantResults(true);
    expect(failed).toEqual(["release-own-grant"]);
  });

  it("a lock that rounds TTLs down to whole seconds (at least 1 s) fails odd-ttl, also with a 4 s TTL", async () => {
    // Rounding down, but never under a second (lock-etcd's LE4): a 500 ms TTL still holds. Invalid
    // TTLs go through as they are, to be refused.
    const seconds = (ttl: number) => (ttl > 0 ? Math.max(1_000, Math.floor(ttl / 1_000) * 1_000) : ttl);
    for (const ttlMs of [1_000, 4_000]) {
      const { failed } = await lockResults(
        (inner) => ({
          tryAcquire: (name, holder, ttl) => inner.tryAcquire(name, holder, seconds(ttl)),
          renew: (name, holder, ttl) => inner.renew(name, holder, seconds(ttl)),
        }),
        ttlMs,
      );
      expect(failed, `TTL ${ttlMs} ms`).toEqual(["odd-ttl"]);
    }
  });

  it("a lock whose renew succeeds with less than the TTL asked for fails renew-longer-ttl; refusing passes", async () => {
    // A lease keeps the length it was granted with; keeping it alive cannot make it longer.
    const leases = (refuse: boolean): LockPatch => {
      return (inner) => {
        const granted = new Map<string, number>();
        return {
          async tryAcquire(name, holder, ttl) {
            const token = await inner.tryAcquire(name, holder, ttl);
            if (token !== null) granted.set(name, ttl);
            return token;
          },
          async renew(name, holder, ttl) {
            const lease = granted.get(name) ?? ttl;
            if (refuse && lease < ttl) return false;
            return inner.renew(name, holder, Math.min(lease, ttl));
          },
        };
      };
    };
    const refusing = await lockResults(leases(true));
    expect(refusing.failed).toEqual([]);
    expect(refusing.passed).toContain("renew-longer-ttl");
    // Accepting the shorter lease (lock-etcd's LE2).
    expect((await lockResults(leases(false))).failed).toEqual(["renew-longer-ttl"]);
  });
});
