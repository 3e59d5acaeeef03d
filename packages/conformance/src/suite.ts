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
  timeoutMs?: number;
}

/** Registers one vitest test per check. Skips only with a stated reason. */
export function registerSuite<Context, Id extends string>(
  suiteName: string,
  checks: Record<Id, Check<Context>>,
  options: SuiteOptions<Context, Id>,
): void {
  for (const [id, reason] of Object.entries(options.skip ?? {})) {
    if (!(id in checks)) throw new Error(`${suiteName}: skip names unknown check "${id}"`);
    if (typeof reason !== "string" || reason.trim().length < 10) {
      throw new Error(`${suiteName}: skipping "${id}" needs a real reason, got ${JSON.stringify(reason)}`);
    }
  }
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
          const context = await options.create();
          try {
            const missing = check.requires?.(context) ?? null;
            if (missing) {
              testContext.skip(missing);
              return;
            }
            await check.run(context);
          } finally {
            await options.dispose(context);
          }
        },
        options.timeoutMs,
      );
    }
  });
}

/**
 * Runs every check against one context factory outside vitest's registration and reports
 * which failed. The kit uses it to prove that deliberately broken adapters fail.
 */
export async function runChecks<Context, Id extends string>(
  checks: Record<Id, Check<Context>>,
  create: () => Promise<Context>,
  dispose: (context: Context) => Promise<void>,
): Promise<{ failed: Id[]; passed: Id[]; skipped: Id[] }> {
  const failed: Id[] = [];
  const passed: Id[] = [];
  const skipped: Id[] = [];
  for (const [id, check] of Object.entries(checks) as Array<[Id, Check<Context>]>) {
    const context = await create();
    try {
      if (check.requires?.(context)) {
        skipped.push(id);
        continue;
      }
      await check.run(context);
      passed.push(id);
    } catch {
      failed.push(id);
    } finally {
      await dispose(context);
    }
  }
  return { failed, passed, skipped };
}
