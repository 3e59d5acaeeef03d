import { OutboxError, OutboxErrorCode } from "@outbox/core";

/** Process exit codes of the `outbox` command. */
export const ExitCode = {
  /** Done; for `outbox relay`: drained and stopped after SIGTERM/SIGINT. */
  Ok: 0,
  /** A runtime failure: store or broker unreachable, drain timeout, entry not found, ... */
  Failure: 1,
  /** Bad usage or configuration: unknown command or flag, invalid value, unusable config file. */
  Usage: 2,
} as const;

export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** Error codes of the CLI itself; errors of stores and publishers keep their OUTBOX_* codes. */
export const CliErrorCode = {
  /** Unknown command or flag, missing argument, value that does not parse. Exit 2. */
  Usage: "OUTBOX_CLI_USAGE",
  /** An entry named on the command line does not exist (or is not dead). Exit 1. */
  NotFound: "OUTBOX_CLI_NOT_FOUND",
  /**
   * The configuration parses but points at something unusable: the outbox table or schema is
   * missing (run `outbox migrate`), the database URL is not a URL, its host does not resolve, the
   * database does not exist, the credentials are refused. `details.field` names the environment
   * variable or config field, `details.hint` says what to do. Exit 2.
   */
  Config: "OUTBOX_CLI_CONFIG",
} as const;

export type CliErrorCode = (typeof CliErrorCode)[keyof typeof CliErrorCode];

export class CliError extends Error {
  override readonly name = "CliError";
  readonly code: CliErrorCode;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: CliErrorCode, message: string, details: Record<string, unknown> = {}, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.code = code;
    this.details = details;
  }
}

/** Invalid configuration: an OutboxError with OUTBOX_INVALID_OPTIONS and the offending field. */
export function configError(
  field: string,
  message: string,
  cause?: unknown,
  extra: { hint?: string } = {},
): OutboxError {
  return new OutboxError(OutboxErrorCode.InvalidOptions, `config: ${field}: ${message}`, {
    details: { field, ...extra },
    cause,
  });
}

/** A configuration problem found by using it: OUTBOX_CLI_CONFIG with the field and a hint. */
export function configProblem(field: string, message: string, hint: string, cause?: unknown): CliError {
  return new CliError(CliErrorCode.Config, `${field}: ${message}`, { field, hint }, cause);
}

export function usageError(message: string, details: Record<string, unknown> = {}): CliError {
  return new CliError(CliErrorCode.Usage, message, details);
}

/** The exit code an error maps to: 2 for usage and configuration errors, 1 for everything else. */
export function exitCodeOf(error: unknown): ExitCode {
  if (error instanceof CliError) {
    return error.code === CliErrorCode.Usage || error.code === CliErrorCode.Config ? ExitCode.Usage : ExitCode.Failure;
  }
  if (OutboxError.is(error, OutboxErrorCode.InvalidOptions)) return ExitCode.Usage;
  return ExitCode.Failure;
}

/** The stable code of any error: OUTBOX_* when it has one, else its name. */
export function codeOf(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string") return code;
  return error instanceof Error ? error.name : "Error";
}

/** Where the store's settings come from, for hints: an environment variable or a config file field. */
export interface ConfigOrigin {
  /** The variable or field holding the connection (OUTBOX_DATABASE_URL, or `store` in the file). */
  readonly connection: string;
  /** The same, for people: "OUTBOX_DATABASE_URL", "the store's client in ./outbox.config.ts". */
  readonly connectionText: string;
  /** The variables or fields naming the outbox table. */
  readonly table: string;
  readonly tableText: string;
  /** The tables, as a sentence starts ("the outbox table is", "the inbox tables are"), and what creates them. */
  readonly tables: string;
  readonly createTables: string;
}

function* causes(error: unknown): Generator<Record<string, unknown>> {
  let current: unknown = error;
  for (let depth = 0; current !== null && typeof current === "object" && depth < 6; depth++) {
    yield current as Record<string, unknown>;
    current = (current as { cause?: unknown }).cause;
  }
}

function codesOf(error: unknown): Set<string | number> {
  const codes = new Set<string | number>();
  for (const link of causes(error)) {
    for (const value of [link.code, link.errno, (link.details as { sqlState?: unknown } | undefined)?.sqlState]) {
      if (typeof value === "string" || typeof value === "number") codes.add(value);
    }
  }
  return codes;
}

/** PostgreSQL SQLSTATEs and MySQL error numbers meaning "the outbox schema is not there (or is older)". */
const missingSchema = new Set<string | number>([
  "42P01",
  "3F000",
  "42703",
  "ER_NO_SUCH_TABLE",
  1146,
  "ER_BAD_FIELD_ERROR",
  1054,
  // An index a statement forces (FORCE INDEX) that an older schema did not create. (The name is MySQL's own.)
  "ER_KEY_DOES_NOT_EXITS",
  1176,
]);
const unknownDatabase = new Set<string | number>(["3D000", "ER_BAD_DB_ERROR", 1049]);
const refusedCredentials = new Set<string | number>(["28P01", "28000", "ER_ACCESS_DENIED_ERROR", 1045]);

/**
 * An error that is a configuration problem in disguise (the store reports them as
 * OUTBOX_STORE_UNAVAILABLE: to the relay they look like an outage) as OUTBOX_CLI_CONFIG with a
 * hint; any other error as it is. `command` is the command that ran (no "run migrate" hint from
 * `migrate` itself).
 */
export function classifyError(error: unknown, origin: ConfigOrigin | undefined, command?: string): unknown {
  if (!origin || error instanceof CliError || OutboxError.is(error, OutboxErrorCode.InvalidOptions)) return error;
  const codes = codesOf(error);
  const has = (set: Set<string | number>) => [...codes].some((code) => set.has(code));
  if (codes.has("ERR_INVALID_URL")) {
    return configProblem(
      origin.connection,
      "is not a valid URL",
      `set ${origin.connectionText} to a URL such as postgres://user@host:5432/database`,
      error,
    );
  }
  if (codes.has("ENOTFOUND")) {
    return configProblem(
      origin.connection,
      "names a host that does not resolve",
      `check the host in ${origin.connectionText}`,
      error,
    );
  }
  if (has(unknownDatabase)) {
    return configProblem(
      origin.connection,
      "names a database that does not exist",
      `create the database, or fix ${origin.connectionText}`,
      error,
    );
  }
  if (has(refusedCredentials)) {
    return configProblem(
      origin.connection,
      "the server refused the credentials",
      `check the user and password in ${origin.connectionText}`,
      error,
    );
  }
  if (has(missingSchema) && command !== "migrate") {
    return configProblem(
      origin.table,
      `${origin.tables} missing or older than the store expects`,
      `${origin.createTables}, or check ${origin.tableText}`,
      error,
    );
  }
  return error;
}
