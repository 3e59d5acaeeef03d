import { describe, it } from "vitest";

/** One named check of a suite. `requires` returns a reason to skip when a declared capability is absent. */
export interface Check<Context> {
  readonly title: string;
  requires?(context: Context): string | null;
  run(context: Context): Promise<void>;
}

export type SkipReasons<Id extends string> = Partial<Record<Id, string>>;

export interface SuiteOptions<Context, Id extends string> {
  /** Shown in the describe block, e.g. "store-postgres (pg)". */
  name: string;
  /** A fresh context per test: keyv-style isolation, no shared state between tests. */
  create(): Promise<Context>;
  /** Called after every test with that test's context. */
  dispose(context: Context): Promise<void>;
  /** Tests this adapter cannot pass, each with the reason (printed in the test name). */
  skip?: SkipReasons<Id>;
  /** Time one check may take, its harness setup included; past it the check fails, named. */
  timeoutMs?: number;
}

/** How long `dispose` may take after a check, on top of the check's own time. */
const disposeGraceMs = 15_000;

/** Raised when a check (or its setup or teardown) does not finish in time. */
export class CheckTimeoutError extends Error {
  readonly checkId: string;
  readonly phase: "check" | "dispose";
  readonly timeoutMs: number;

  constructor(checkId: string, phase: "check" | "dispose", timeoutMs: number) {
    super(
      phase === "check"
        ? `check "${checkId}" did not finish within ${timeoutMs} ms: it hangs (a store call that waits for a lock ` +
            "it never gets, a receive that never returns, a deadlock between two transactions). If the adapter " +
            "cannot do what this check needs, declare the capability (see docs/conformance.md) or skip it with a reason."
        : `teardown after check "${checkId}" did not finish within ${timeoutMs} ms (harness teardown or close hangs)`,
    );
    this.checkId = checkId;
    this.phase = phase;
    this.timeoutMs = timeoutMs;
    this.name = "CheckTimeoutError";
  }
}

/** Resolves or rejects like `work`, or rejects with CheckTimeoutError after `ms`. */
export async function withTimeout<T>(
  work: Promise<T>,
  ms: number,
  checkId: string,
  phase: "check" | "dispose" = "check",
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CheckTimeoutError(checkId, phase, ms)), ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function validateSkips<Id extends string>(
  suiteName: string,
  checks: Record<Id, Check<unknown>>,
  skip: SkipReasons<Id> | undefined,
): void {
  for (const [id, reason] of Object.entries(skip ?? {})) {
    if (!(id in checks)) throw new Error(`${suiteName}: skip names unknown check "${id}"`);
    if (typeof reason !== "string" || reason.trim().length < 10) {
      throw new Error(`${suiteName}: skipping "${id}" needs a real reason, got ${JSON.stringify(reason)}`);
    }
  }
}

/** Registers one vitest test per check. Skips only with a stated reason. */
export function registerSuite<Context, Id extends string>(
  suiteName: string,
  checks: Record<Id, Check<Context>>,
  options: SuiteOptions<Context, Id>,
): void {
  validateSkips(suiteName, checks as Record<Id, Check<unknown>>, options.skip);
  const timeoutMs = options.timeoutMs ?? 60_000;
  describe(`${suiteName}: ${options.name}`, () => {
    for (const [id, check] of Object.entries(checks) as Array<[Id, Check<Context>]>) {
      const reason = options.skip?.[id];
      if (reason) {
        it.skip(`${id}: ${check.title} (skipped: ${reason})`, () => {});
        continue;
      }
      it(
        `${id}: ${check.title}`,
        async (testContext) => {
          let context: Context | undefined;
          try {
            await withTimeout(
              (async () => {
                context = await options.create();
                const missing = check.requires?.(context) ?? null;
                if (missing) {
                  testContext.skip(missing);
                  return;
                }
                await check.run(context);
              })(),
              timeoutMs,
              id,
            );
          } finally {
            if (context !== undefined) await withTimeout(options.dispose(context), disposeGraceMs, id, "dispose");
          }
        },
        // vitest's own limit only backs ours up: the kit's timeout names the check first.
        timeoutMs + disposeGraceMs + 5_000,
      );
    }
  });
}

export interface RunChecksOptions<Id extends string> {
  /** Checks not to run, each with its reason (as for the describe* functions). */
  skip?: SkipReasons<Id>;
  /** Time per check, setup included. A check past it is reported in `hung`. Default 60 s. */
  timeoutMs?: number;
}

export interface RunChecksResult<Id extends string> {
  /** Checks that failed (hung ones included). */
  failed: Id[];
  passed: Id[];
  /** Skipped by `options.skip` or by a missing declared capability. */
  skipped: Id[];
  /** Checks that did not finish within `timeoutMs`. */
  hung: Id[];
  /** Why each failed check failed: the assertion, in the rule's words, or the timeout. */
  errors: Partial<Record<Id, unknown>>;
}

/**
 * Runs every check against one context factory outside vitest's registration and reports
 * which failed, and why. The kit uses it to prove that deliberately broken adapters fail; use
 * it the same way for your own adapter's failure modes.
 */
export async function runChecks<Context, Id extends string>(
  checks: Record<Id, Check<Context>>,
  create: () => Promise<Context>,
  dispose: (context: Context) => Promise<void>,
  options: RunChecksOptions<Id> = {},
): Promise<RunChecksResult<Id>> {
  validateSkips("runChecks", checks as Record<Id, Check<unknown>>, options.skip);
  const timeoutMs = options.timeoutMs ?? 60_000;
  const result: RunChecksResult<Id> = { failed: [], passed: [], skipped: [], hung: [], errors: {} };
  for (const [id, check] of Object.entries(checks) as Array<[Id, Check<Context>]>) {
    if (options.skip?.[id]) {
      result.skipped.push(id);
      continue;
    }
    let context: Context | undefined;
    try {
      const outcome = await withTimeout(
        (async () => {
          context = await create();
          if (check.requires?.(context)) return "skipped" as const;
          await check.run(context);
          return "passed" as const;
        })(),
        timeoutMs,
        id,
      );
      result[outcome].push(id);
    } catch (error) {
      result.failed.push(id);
      result.errors[id] = error;
      if (error instanceof CheckTimeoutError) result.hung.push(id);
    } finally {
      if (context !== undefined) {
        await withTimeout(dispose(context), disposeGraceMs, id, "dispose").catch((error: unknown) => {
          if (!result.failed.includes(id)) {
            result.failed.push(id);
            result.passed = result.passed.filter((passed) => passed !== id);
            result.errors[id] = error;
          }
        });
      }
    }
  }
  return result;
}
