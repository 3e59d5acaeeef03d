import { type LockBackend, OutboxErrorCode } from "@outbox/core";
import { expect } from "vitest";
import { type Check, registerSuite, type SkipReasons } from "./suite.js";
import { expectCode, uniqueName } from "./util.js";

export interface LockHarness {
  readonly backend: LockBackend;
  /** Lets `ms` of lock time pass: a manual clock advances, a real backend really waits. */
  elapse(ms: number): Promise<void>;
  /**
   * Restarts the backend server (locks may be lost; tokens must survive if promised). Called
   * only when the options say `allowServerRestarts: true`.
   */
  restart?(): Promise<void>;
  /**
   * Ends a holding at once from outside, as the backend itself would lose it: delete the key,
   * revoke the lease, terminate the session of a session-bound lock.
   */
  expire?(name: string): Promise<void>;
  /** A second, independent backend instance on the same server (another relay's client). */
  peer?(): Promise<LockBackend>;
  /**
   * Ends a holding on the server **while the backend's session (connection) stays open**: for a
   * session-bound lock, e.g. `pg_advisory_unlock_all()` run on the lock's own session (what a
   * pooler's `DISCARD ALL` does). Without it, `lock-gone-session-lives` is skipped.
   */
  dropHolding?(name: string): Promise<void>;
  /**
   * Steps the lock server's clock back by `ms` (an NTP correction). Only for backends whose
   * server clock the harness owns (a manual clock); without it, `tokens-clock-step-back` is skipped
   * and the backend documents why its tokens do not depend on the clock.
   */
  stepClockBack?(ms: number): Promise<void>;
  teardown(): Promise<void>;
}

export interface LockConformanceOptions {
  name: string;
  create(): Promise<LockHarness>;
  skip?: SkipReasons<LockCheckId>;
  /** Time per check, harness setup included. Default 60 s; a check past it fails, named. */
  timeoutMs?: number;
  /** TTL used by the checks. Default 1000 ms; real backends may need more headroom. */
  ttlMs?: number;
  /**
   * How long the server may keep a lock past its TTL (etcd revokes expired leases on a 500 ms
   * tick): the checks wait it out where a TTL must have run out, and `elapse` adds nothing. Default 0.
   */
  expiryLagMs?: number;
  /**
   * Lets `tokens-survive-restart` call the harness's `restart()`. Off by default: restarting a
   * server other tests use at the same time breaks them. Opt in only where this suite owns the server.
   */
  allowServerRestarts?: boolean;
}

type Context = LockHarness & { ttlMs: number; allowServerRestarts: boolean; expiryLagMs?: number };

/** Lock time to wait past a TTL for it to have run out for sure: 50 ms plus the server's expiry lag. */
const pastTtl = (h: Context) => 50 + (h.expiryLagMs ?? 0);

/** Where in a TTL "still held" is probed: across the whole TTL, not only its start. */
const heldProbes = [0.25, 0.5, 0.75, 0.9];

/**
 * Probes that `name` refuses other holders across the TTL that a call sent at `startedAt`
 * (performance.now() before an acquire or renew) started: at a quarter, half, three quarters and
 * nine tenths of it. A probe that got the lock fails the check unless more than the TTL may have
 * passed by then (a loaded machine oversleeping on a real server): the lock time passed is at most
 * the real time since `startedAt`, or the time the harness let pass when that is more (a manual
 * clock). After an overslept probe nothing more can be judged; returns false then.
 */
async function refusesAcross(
  h: Context,
  name: string,
  startedAt: number,
  rule: string,
  ttlMs = h.ttlMs,
  extraProbesAt: number[] = [],
): Promise<boolean> {
  const probesAt = [...heldProbes.map((fraction) => Math.floor(ttlMs * fraction)), ...extraProbesAt].sort(
    (a, b) => a - b,
  );
  let passed = 0;
  for (const at of probesAt) {
    await h.elapse(at - passed);
    passed = at;
    const probe = await h.backend.tryAcquire(name, `probe-${at}`, h.ttlMs);
    if (probe === null) continue;
    const upTo = Math.max(passed, performance.now() - startedAt);
    expect(
      upTo >= ttlMs,
      `${rule}: another holder took the lock ${Math.round(upTo)} ms (at most) into its ${ttlMs} ms TTL`,
    ).toBe(true);
    return false;
  }
  return true;
}

/** A TTL well under the suite's: backends that round TTLs to whole seconds lose these. */
const shortTtlMs = 500;

/**
 * Where `odd-ttl` probes: the suite's TTL rounded up to whole seconds, plus the server's expiry lag.
 * A lock whose TTL was rounded down to whole seconds is gone by then.
 */
const pastWholeSeconds = (h: Context) => Math.ceil(h.ttlMs / 1_000) * 1_000 + pastTtl(h);
/** A TTL that is not a whole number of seconds and still runs 300 ms past `pastWholeSeconds`. */
const oddTtl = (h: Context) => pastWholeSeconds(h) + 300;

/** How many acquires `reacquire-token` sends at once: a retried request racing the original. */
const reacquireBurst = 8;

async function strictlyIncreasing(tokens: bigint[], rule: string): Promise<void> {
  for (let i = 1; i < tokens.length; i++) {
    expect(
      (tokens[i] as bigint) > (tokens[i - 1] as bigint),
      `${rule} (token ${tokens[i]} after ${tokens[i - 1]})`,
    ).toBe(true);
  }
}

const ttlBound = (h: Context) =>
  h.backend.capabilities.sessionBound ? "session-bound lock: no TTL expiry while the session lives" : null;

export const lockChecks = {
  "bad-arguments": {
    title: "an empty name or holder, or a TTL that is not a positive number, is OUTBOX_INVALID_OPTIONS",
    async run(h) {
      const name = uniqueName("lock");
      const invalid = OutboxErrorCode.InvalidOptions;
      await expectCode(h.backend.tryAcquire("", "a", h.ttlMs), invalid, "tryAcquire must refuse an empty lock name");
      await expectCode(h.backend.tryAcquire(name, "", h.ttlMs), invalid, "tryAcquire must refuse an empty holder");
      for (const ttl of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
        await expectCode(h.backend.tryAcquire(name, "a", ttl), invalid, `tryAcquire must refuse ttlMs ${ttl}`);
      }
      expect(await h.backend.tryAcquire(name, "a", h.ttlMs), "refused calls must not take the lock").not.toBeNull();
      await expectCode(h.backend.renew(name, "a", 0), invalid, "renew must refuse ttlMs 0");
      await expectCode(h.backend.release(name, ""), invalid, "release must refuse an empty holder");
      expect(await h.backend.release(name, "a"), "the holder can still release after refused calls").toBe(true);
    },
  },
  "mutual-exclusion": {
    title: "under contention exactly one holder acquires",
    async run(h) {
      const name = uniqueName("lock");
      const backends = [h.backend, ...(h.peer ? [await h.peer(), await h.peer()] : [])];
      const attempts = Array.from({ length: 12 }, (_, i) =>
        (backends[i % backends.length] as LockBackend).tryAcquire(name, `holder-${i}`, h.ttlMs),
      );
      const tokens = await Promise.all(attempts);
      expect(
        tokens.filter((token) => token !== null),
        "of concurrent tryAcquire calls for one free lock exactly one may succeed",
      ).toHaveLength(1);
    },
  },
  "holder-only": {
    title: "renew and release succeed only for the holder",
    async run(h) {
      const name = uniqueName("lock");
      expect(await h.backend.tryAcquire(name, "a", h.ttlMs), "a free lock must be acquirable").not.toBeNull();
      expect(await h.backend.renew(name, "b", h.ttlMs), "only the current holder may renew").toBe(false);
      expect(await h.backend.release(name, "b"), "only the current holder may release").toBe(false);
      expect(
        await h.backend.tryAcquire(name, "c", h.ttlMs),
        "a held lock must not be acquirable by another holder (also after a refused release)",
      ).toBeNull();
      expect(await h.backend.renew(name, "a", h.ttlMs), "the holder must be able to renew").toBe(true);
      expect(await h.backend.release(name, "a"), "the holder must be able to release").toBe(true);
      expect(
        await h.backend.release(name, "a"),
        "a released lock is no longer held: a second release returns false",
      ).toBe(false);
      expect(await h.backend.renew(name, "a", h.ttlMs), "a released lock is no longer held: renew returns false").toBe(
        false,
      );
      expect(
        await h.backend.tryAcquire(name, "c", h.ttlMs),
        "a released lock must be acquirable at once",
      ).not.toBeNull();
    },
  },
  expiry: {
    title: "an unrenewed lock refuses others across its whole TTL and expires after it",
    requires: ttlBound,
    async run(h) {
      const name = uniqueName("lock");
      const startedAt = performance.now();
      expect(await h.backend.tryAcquire(name, "a", h.ttlMs), "a free lock must be acquirable").not.toBeNull();
      const judged = await refusesAcross(
        h,
        name,
        startedAt,
        "no other holder may acquire while the holder's TTL runs (the whole TTL, not part of it)",
      );
      if (!judged) return;
      await h.elapse(h.ttlMs - Math.floor(h.ttlMs * (heldProbes.at(-1) as number)) + pastTtl(h));
      expect(
        await h.backend.tryAcquire(name, "b", h.ttlMs),
        "an unrenewed lock must expire after its TTL and be acquirable by another holder",
      ).not.toBeNull();
      expect(await h.backend.renew(name, "a", h.ttlMs), "the former holder of an expired lock must not renew it").toBe(
        false,
      );
    },
  },
  "renew-extends": {
    title: "a renewal extends the lock by the full TTL, past its original TTL",
    requires: (h) => (h.backend.capabilities.sessionBound ? "session-bound lock: no TTL to extend" : null),
    async run(h) {
      const name = uniqueName("lock");
      expect(await h.backend.tryAcquire(name, "a", h.ttlMs), "a free lock must be acquirable").not.toBeNull();
      await h.elapse(Math.floor(h.ttlMs / 2));
      const renewedAt = performance.now();
      expect(await h.backend.renew(name, "a", h.ttlMs), "the holder's renew within its TTL must succeed").toBe(true);
      // Held across the whole TTL after the renewal: past the original TTL, and a renewal that
      // extends by less than the TTL asked for lapses within it.
      const judged = await refusesAcross(
        h,
        name,
        renewedAt,
        "a renewal must extend the lock by the full TTL from the renewal (a renewed lock must stay held past its " +
          "original TTL)",
      );
      if (!judged) return;
      expect(await h.backend.renew(name, "a", h.ttlMs), "the holder still holds the renewed lock").toBe(true);
    },
  },
  "fencing-tokens": {
    title: "fencing tokens strictly increase across holders",
    async run(h) {
      const name = uniqueName("lock");
      const tokens: bigint[] = [];
      for (let i = 0; i < 5; i++) {
        const holder = `holder-${i}`;
        const token = await h.backend.tryAcquire(name, holder, h.ttlMs);
        expect(token, "a released lock must be acquirable at once").not.toBeNull();
        tokens.push(token as bigint);
        expect(await h.backend.release(name, holder), "the holder must be able to release").toBe(true);
      }
      await strictlyIncreasing(tokens, "every acquire must return a fencing token greater than all earlier ones");
    },
  },
  "tokens-survive-restart": {
    title: "fencing tokens keep increasing across a backend restart",
    requires: (h) =>
      !h.backend.capabilities.tokensSurviveRestart
        ? "backend does not promise tokens across restarts"
        : !h.restart
          ? "harness provides no restart()"
          : h.allowServerRestarts
            ? null
            : "restarts the server: opt in with allowServerRestarts: true where no other test uses it",
    async run(h) {
      const name = uniqueName("lock");
      const before = await h.backend.tryAcquire(name, "a", h.ttlMs);
      expect(before, "a free lock must be acquirable").not.toBeNull();
      await (h.restart as NonNullable<LockHarness["restart"]>)();
      let after: bigint | null = null;
      // After a restart the old holding may or may not survive; wait it out if it did.
      for (let i = 0; i < 20 && after === null; i++) {
        after = await h.backend.tryAcquire(name, "b", h.ttlMs).catch(() => null);
        if (after === null) await h.elapse(Math.ceil(h.ttlMs / 4));
      }
      expect(
        after,
        "the lock must be acquirable again after a restart (once any surviving holding expired)",
      ).not.toBeNull();
      await strictlyIncreasing(
        [before as bigint, after as bigint],
        "fencing tokens must keep increasing across a restart (capabilities.tokensSurviveRestart)",
      );
    },
  },
  "former-holder-cannot-renew": {
    title: "the former holder of an expired lock cannot renew or release it, before or after another holder took it",
    requires: ttlBound,
    async run(h) {
      const name = uniqueName("lock");
      expect(await h.backend.tryAcquire(name, "a", h.ttlMs), "a free lock must be acquirable").not.toBeNull();
      await h.elapse(h.ttlMs + pastTtl(h));
      expect(
        await h.backend.renew(name, "a", h.ttlMs),
        "renew after the TTL ran out must return false, even with no new holder yet: the former holder must " +
          "acquire again (and get a new token)",
      ).toBe(false);
      expect(await h.backend.tryAcquire(name, "b", h.ttlMs), "an expired lock must be acquirable").not.toBeNull();
      expect(await h.backend.renew(name, "a", h.ttlMs), "only the current holder may renew, not the former one").toBe(
        false,
      );
      expect(await h.backend.release(name, "a"), "only the current holder may release, not the former one").toBe(false);
      expect(
        await h.backend.tryAcquire(name, "c", h.ttlMs),
        "the former holder's renew or release must not have touched the new holder's lock",
      ).toBeNull();
    },
  },
  "short-ttl": {
    title: `no other holder acquires while a short TTL (${shortTtlMs} ms) runs`,
    async run(h) {
      const name = uniqueName("lock");
      const first = await h.backend.tryAcquire(name, "a", shortTtlMs);
      expect(first, `a free lock must be acquirable with a ${shortTtlMs} ms TTL`).not.toBeNull();
      expect(
        await h.backend.tryAcquire(name, "b", shortTtlMs),
        `no other holder may acquire while a ${shortTtlMs} ms TTL runs (do not round TTLs down to whole seconds)`,
      ).toBeNull();
      expect(await h.backend.renew(name, "a", shortTtlMs), `the holder must renew a ${shortTtlMs} ms lock`).toBe(true);
      expect(
        await h.backend.tryAcquire(name, "b", shortTtlMs),
        `no other holder may acquire while a renewed ${shortTtlMs} ms TTL runs`,
      ).toBeNull();
    },
  },
  "renewal-expires": {
    title: "a renewed lock still expires one TTL after its last renewal",
    requires: ttlBound,
    async run(h) {
      const name = uniqueName("lock");
      expect(await h.backend.tryAcquire(name, "a", h.ttlMs), "a free lock must be acquirable").not.toBeNull();
      const quarter = Math.floor(h.ttlMs / 4);
      await h.elapse(quarter);
      expect(await h.backend.renew(name, "a", h.ttlMs), "the holder's renew within its TTL must succeed").toBe(true);
      await h.elapse(quarter);
      expect(await h.backend.tryAcquire(name, "b", h.ttlMs), "a renewed lock must stay held").toBeNull();
      await h.elapse(h.ttlMs - quarter + pastTtl(h));
      expect(
        await h.backend.tryAcquire(name, "b", h.ttlMs),
        "a renewed lock must expire one TTL after its last renewal (renew sets the TTL again, it does not remove it)",
      ).not.toBeNull();
    },
  },
  "lost-holding": {
    title: "a lock whose key, lease or session is gone is reported not held, and another holder gets it",
    requires: (h) => (h.expire ? null : "harness provides no expire(name)"),
    async run(h) {
      const name = uniqueName("lock");
      const first = await h.backend.tryAcquire(name, "a", h.ttlMs);
      expect(first, "a free lock must be acquirable").not.toBeNull();
      await (h.expire as NonNullable<LockHarness["expire"]>)(name);
      expect(
        await h.backend.renew(name, "a", h.ttlMs),
        "a lock whose key, lease or session is gone must be reported not held: renew must return false, not what " +
          "the client remembers",
      ).toBe(false);
      const next = await (h.peer ? await h.peer() : h.backend).tryAcquire(name, "b", h.ttlMs);
      expect(next, "a lock whose holding is gone must be acquirable by another holder").not.toBeNull();
      await strictlyIncreasing(
        [first as bigint, next as bigint],
        "the next holder's fencing token must be greater than the lost holder's",
      );
    },
  },
  "lock-gone-session-lives": {
    title: "a lock whose holding is gone while its session lives is reported not held",
    requires: (h) => (h.dropHolding ? null : "harness provides no dropHolding(name)"),
    async run(h) {
      const name = uniqueName("lock");
      const first = await h.backend.tryAcquire(name, "a", h.ttlMs);
      expect(first, "a free lock must be acquirable").not.toBeNull();
      expect(await h.backend.renew(name, "a", h.ttlMs), "the holder must be able to renew").toBe(true);
      await (h.dropHolding as NonNullable<LockHarness["dropHolding"]>)(name);
      expect(
        await h.backend.renew(name, "a", h.ttlMs),
        "a lock whose holding is gone while the session lives must be reported not held: renew must ask the " +
          "server about the lock, not whether the session (connection) is alive",
      ).toBe(false);
      const next = await (h.peer ? await h.peer() : h.backend).tryAcquire(name, "b", h.ttlMs);
      expect(next, "a lock whose holding is gone must be acquirable by another holder").not.toBeNull();
      await strictlyIncreasing(
        [first as bigint, next as bigint],
        "the next holder's fencing token must be greater than the lost holder's",
      );
      expect(await h.backend.renew(name, "a", h.ttlMs), "the former holder must not renew the new holder's lock").toBe(
        false,
      );
    },
  },
  "tokens-clock-step-back": {
    title: "fencing tokens strictly increase even when the lock server's clock steps back",
    requires: (h) => (h.stepClockBack ? null : "harness cannot step the lock server's clock back"),
    async run(h) {
      const name = uniqueName("lock");
      const step = h.stepClockBack as NonNullable<LockHarness["stepClockBack"]>;
      const tokens: bigint[] = [];
      for (const back of [0, 60_000, 3_600_000, 1]) {
        if (back > 0) await step(back);
        const holder = `holder-${tokens.length}`;
        const token = await h.backend.tryAcquire(name, holder, h.ttlMs);
        expect(token, "a released lock must be acquirable at once").not.toBeNull();
        tokens.push(token as bigint);
        expect(await h.backend.release(name, holder), "the holder must be able to release").toBe(true);
      }
      await strictlyIncreasing(
        tokens,
        "fencing tokens must strictly increase when the server's clock steps back: derive them from a counter, " +
          "never from the time",
      );
    },
  },
  "reacquire-token": {
    title:
      "an acquire by the current holder succeeds with a token greater than every earlier one, also several at once",
    async run(h) {
      const name = uniqueName("lock");
      const tokens: bigint[] = [];
      for (let i = 0; i < 3; i++) {
        const token = await h.backend.tryAcquire(name, "a", h.ttlMs);
        expect(
          token,
          i === 0
            ? "a free lock must be acquirable"
            : "the current holder's acquire must succeed (null means someone else holds the lock)",
        ).not.toBeNull();
        tokens.push(token as bigint);
      }
      await strictlyIncreasing(
        tokens,
        "a re-acquire by the current holder must return a new token, greater than every token handed out before " +
          "(not the token of the grant it replaces)",
      );
      const newest = tokens.at(-1) as bigint;
      const burst = await Promise.all(
        Array.from({ length: reacquireBurst }, () => h.backend.tryAcquire(name, "a", h.ttlMs)),
      );
      const granted = burst.filter((token): token is bigint => token !== null);
      expect(granted.length, "of acquires the holder sends at once, at least one must succeed").toBeGreaterThan(0);
      expect(
        new Set(granted).size,
        `acquires sent at once must each get their own token, never the same one twice (got ${granted.join(", ")})`,
      ).toBe(granted.length);
      for (const token of granted) {
        expect(
          token > newest,
          `every acquire must return a token greater than all earlier ones (token ${token} after ${newest})`,
        ).toBe(true);
      }
      expect(await h.backend.release(name, "a"), "the holder must be able to release after re-acquiring").toBe(true);
      const next = await h.backend.tryAcquire(name, "b", h.ttlMs);
      expect(next, "a released lock must be acquirable at once").not.toBeNull();
      const highest = granted.reduce((a, b) => (b > a ? b : a), newest);
      await strictlyIncreasing(
        [highest, next as bigint],
        "the next holder's token must be greater than every token of the re-acquires before it",
      );
    },
  },
  "release-own-grant": {
    title: "a release removes only the grant its client got: an older grant's release leaves the holder's newer grant",
    requires: (h) => (h.peer ? null : "harness provides no peer()"),
    async run(h) {
      const name = uniqueName("lock");
      const peer = await (h.peer as NonNullable<LockHarness["peer"]>)();
      const older = await h.backend.tryAcquire(name, "a", h.ttlMs);
      expect(older, "a free lock must be acquirable").not.toBeNull();
      // The same holder again through another client: a newer grant. The first client's release
      // then stands for a release of the older grant that arrives late.
      const newer = await peer.tryAcquire(name, "a", h.ttlMs);
      if (newer === null) {
        // The backend keeps a holding with the client (session) that took it, so no newer grant of
        // this holder can exist elsewhere: the refused attempt must have left the first grant alone.
        expect(await h.backend.renew(name, "a", h.ttlMs), "a refused acquire must not end the holder's grant").toBe(
          true,
        );
        expect(await h.backend.release(name, "a"), "the holder must be able to release its grant").toBe(true);
        return;
      }
      await strictlyIncreasing([older as bigint, newer], "a re-acquire must return a greater token");
      expect(
        await h.backend.release(name, "a"),
        "releasing an older grant must fail once the same holder has a newer one: a release carries the grant it " +
          "releases (compare the token or revision, not only the holder)",
      ).toBe(false);
      expect(
        await h.backend.tryAcquire(name, "b", h.ttlMs),
        "the release of an older grant must not remove the same holder's newer grant",
      ).toBeNull();
      expect(await peer.release(name, "a"), "the newer grant's own release must succeed").toBe(true);
      expect(
        await h.backend.tryAcquire(name, "b", h.ttlMs),
        "a released lock must be acquirable at once",
      ).not.toBeNull();
    },
  },
  "odd-ttl": {
    title: "a TTL that is not a whole number of seconds is held for all of it, not rounded down",
    async run(h) {
      const name = uniqueName("lock");
      const ttlMs = oddTtl(h);
      const startedAt = performance.now();
      expect(
        await h.backend.tryAcquire(name, "a", ttlMs),
        `a free lock must be acquirable with a ${ttlMs} ms TTL`,
      ).not.toBeNull();
      await refusesAcross(
        h,
        name,
        startedAt,
        `no other holder may acquire while a ${ttlMs} ms TTL runs (round TTLs up to what the server can do, ` +
          "never down: a lease of whole seconds must be at least the TTL asked for)",
        ttlMs,
        [pastWholeSeconds(h)],
      );
    },
  },
  "renew-longer-ttl": {
    title: "a renewal that succeeds holds the lock for the whole TTL it asked for, also one longer than the acquire's",
    requires: (h) => (h.backend.capabilities.sessionBound ? "session-bound lock: no TTL to extend" : null),
    async run(h) {
      const name = uniqueName("lock");
      const longer = 2 * h.ttlMs;
      expect(await h.backend.tryAcquire(name, "a", h.ttlMs), "a free lock must be acquirable").not.toBeNull();
      let startedAt = performance.now();
      const renewed = await h.backend.renew(name, "a", longer);
      if (!renewed) {
        // Allowed: the backend cannot extend the lease that far. The holder counts the lock as lost
        // and acquires it again with the TTL it needs.
        startedAt = performance.now();
        expect(
          await h.backend.tryAcquire(name, "a", longer),
          `after a refused renew the holder must be able to acquire again with a ${longer} ms TTL`,
        ).not.toBeNull();
      }
      await refusesAcross(
        h,
        name,
        startedAt,
        renewed
          ? `a renew that returns true must hold the lock for the ${longer} ms it asked for, also when that is ` +
              "longer than the acquire's TTL (a lease that cannot be extended that far must make renew return false)"
          : `an acquire with a ${longer} ms TTL must hold the lock for all of it`,
        longer,
      );
    },
  },
} satisfies Record<string, Check<Context>>;

export type LockCheckId = keyof typeof lockChecks;

export function describeLockConformance(options: LockConformanceOptions): void {
  registerSuite<Context, LockCheckId>("lock conformance", lockChecks, {
    name: options.name,
    create: async () =>
      Object.assign(await options.create(), {
        ttlMs: options.ttlMs ?? 1_000,
        allowServerRestarts: options.allowServerRestarts ?? false,
        expiryLagMs: options.expiryLagMs ?? 0,
      }),
    dispose: (h) => h.teardown(),
    skip: options.skip,
    timeoutMs: options.timeoutMs ?? 60_000,
  });
}
