import type { LockBackend } from "@outbox/core";
import { expect } from "vitest";
import { type Check, registerSuite, type SkipReasons } from "./suite.js";
import { uniqueName } from "./util.js";

export interface LockHarness {
  readonly backend: LockBackend;
  /** Lets `ms` of lock time pass: a manual clock advances, a real backend really waits. */
  elapse(ms: number): Promise<void>;
  /** Restarts the backend server (locks may be lost; tokens must survive if promised). */
  restart?(): Promise<void>;
  /** A second, independent backend instance on the same server (another relay's client). */
  peer?(): Promise<LockBackend>;
  teardown(): Promise<void>;
}

export interface LockConformanceOptions {
  name: string;
  create(): Promise<LockHarness>;
  skip?: SkipReasons<LockCheckId>;
  timeoutMs?: number;
  /** TTL used by the checks. Default 1000 ms; real backends may need more headroom. */
  ttlMs?: number;
}

type Context = LockHarness & { ttlMs: number };

async function strictlyIncreasing(tokens: bigint[]): Promise<void> {
  for (let i = 1; i < tokens.length; i++) {
    expect((tokens[i] as bigint) > (tokens[i - 1] as bigint), `token ${tokens[i]} after ${tokens[i - 1]}`).toBe(true);
  }
}

export const lockChecks = {
  "mutual-exclusion": {
    title: "under contention exactly one holder acquires",
    async run(h) {
      const name = uniqueName("lock");
      const backends = [h.backend, ...(h.peer ? [await h.peer(), await h.peer()] : [])];
      const attempts = Array.from({ length: 12 }, (_, i) =>
        (backends[i % backends.length] as LockBackend).tryAcquire(name, `holder-${i}`, h.ttlMs),
      );
      const tokens = await Promise.all(attempts);
      expect(tokens.filter((token) => token !== null)).toHaveLength(1);
    },
  },
  "holder-only": {
    title: "renew and release succeed only for the holder",
    async run(h) {
      const name = uniqueName("lock");
      expect(await h.backend.tryAcquire(name, "a", h.ttlMs)).not.toBeNull();
      expect(await h.backend.renew(name, "b", h.ttlMs)).toBe(false);
      expect(await h.backend.release(name, "b")).toBe(false);
      expect(await h.backend.tryAcquire(name, "c", h.ttlMs)).toBeNull();
      expect(await h.backend.renew(name, "a", h.ttlMs)).toBe(true);
      expect(await h.backend.release(name, "a")).toBe(true);
      expect(await h.backend.release(name, "a")).toBe(false);
      expect(await h.backend.renew(name, "a", h.ttlMs)).toBe(false);
      expect(await h.backend.tryAcquire(name, "c", h.ttlMs)).not.toBeNull();
    },
  },
  expiry: {
    title: "an unrenewed lock expires after its TTL and another holder gets it",
    requires: (h) =>
      h.backend.capabilities.sessionBound ? "session-bound lock: no TTL expiry while the session lives" : null,
    async run(h) {
      const name = uniqueName("lock");
      expect(await h.backend.tryAcquire(name, "a", h.ttlMs)).not.toBeNull();
      // A quarter, not a half: on real time a loaded machine may oversleep, and only the
      // "still held" side of this check can be broken by oversleeping.
      const early = Math.floor(h.ttlMs / 4);
      await h.elapse(early);
      expect(await h.backend.tryAcquire(name, "b", h.ttlMs)).toBeNull();
      await h.elapse(h.ttlMs - early + 50);
      expect(await h.backend.tryAcquire(name, "b", h.ttlMs)).not.toBeNull();
      expect(await h.backend.renew(name, "a", h.ttlMs)).toBe(false);
    },
  },
  "renew-extends": {
    title: "renewing keeps the lock past its original TTL",
    requires: (h) => (h.backend.capabilities.sessionBound ? "session-bound lock: no TTL to extend" : null),
    async run(h) {
      const name = uniqueName("lock");
      expect(await h.backend.tryAcquire(name, "a", h.ttlMs)).not.toBeNull();
      // Five renewals a quarter TTL apart outlast the original TTL, with room for oversleeping.
      for (let i = 0; i < 5; i++) {
        await h.elapse(Math.floor(h.ttlMs / 4));
        expect(await h.backend.renew(name, "a", h.ttlMs)).toBe(true);
      }
      expect(await h.backend.tryAcquire(name, "b", h.ttlMs)).toBeNull();
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
        expect(token).not.toBeNull();
        tokens.push(token as bigint);
        expect(await h.backend.release(name, holder)).toBe(true);
      }
      await strictlyIncreasing(tokens);
    },
  },
  "tokens-survive-restart": {
    title: "fencing tokens keep increasing across a backend restart",
    requires: (h) =>
      !h.backend.capabilities.tokensSurviveRestart
        ? "backend does not promise tokens across restarts"
        : h.restart
          ? null
          : "harness provides no restart()",
    async run(h) {
      const name = uniqueName("lock");
      const before = await h.backend.tryAcquire(name, "a", h.ttlMs);
      expect(before).not.toBeNull();
      await (h.restart as NonNullable<LockHarness["restart"]>)();
      let after: bigint | null = null;
      // After a restart the old holding may or may not survive; wait it out if it did.
      for (let i = 0; i < 20 && after === null; i++) {
        after = await h.backend.tryAcquire(name, "b", h.ttlMs).catch(() => null);
        if (after === null) await h.elapse(Math.ceil(h.ttlMs / 4));
      }
      expect(after).not.toBeNull();
      await strictlyIncreasing([before as bigint, after as bigint]);
    },
  },
} satisfies Record<string, Check<Context>>;

export type LockCheckId = keyof typeof lockChecks;

export function describeLockConformance(options: LockConformanceOptions): void {
  registerSuite<Context, LockCheckId>("lock conformance", lockChecks, {
    name: options.name,
    create: async () => Object.assign(await options.create(), { ttlMs: options.ttlMs ?? 1_000 }),
    dispose: (h) => h.teardown(),
    skip: options.skip,
    timeoutMs: options.timeoutMs ?? 60_000,
  });
}
