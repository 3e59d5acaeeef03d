import { configError } from "../errors.js";
import { type CliIO, writeJson } from "../io.js";
import type { Runtime } from "../runtime.js";

/** `outbox migrate`: runs the config's `migrate()` (the built-in stack: @outbox/store-postgres's migrate). */
export async function migrateCommand(runtime: Runtime, options: { json: boolean }, io: CliIO): Promise<void> {
  const migrate = runtime.config.migrate;
  if (!migrate) {
    throw configError(
      "migrate",
      "the config has no migrate() (e.g. `migrate: () => migrate(pool)` from @outbox/store-postgres)",
    );
  }
  const started = io.now();
  await migrate();
  const durationMs = io.now() - started;
  if (options.json) writeJson(io.stdout, { migrated: true, durationMs });
  else io.stdout.write(`migrated in ${durationMs} ms\n`);
}
