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
} as const;

export type CliErrorCode = (typeof CliErrorCode)[keyof typeof CliErrorCode];

export class CliError extends Error {
  override readonly name = "CliError";
  readonly code: CliErrorCode;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: CliErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.code = code;
    this.details = details;
  }
}

/** Invalid configuration: an OutboxError with OUTBOX_INVALID_OPTIONS and the offending field. */
export function configError(field: string, message: string, cause?: unknown): OutboxError {
  return new OutboxError(OutboxErrorCode.InvalidOptions, `config: ${field}: ${message}`, {
    details: { field },
    cause,
  });
}

export function usageError(message: string, details: Record<string, unknown> = {}): CliError {
  return new CliError(CliErrorCode.Usage, message, details);
}

/** The exit code an error maps to: 2 for usage and configuration errors, 1 for everything else. */
export function exitCodeOf(error: unknown): ExitCode {
  if (error instanceof CliError) return error.code === CliErrorCode.Usage ? ExitCode.Usage : ExitCode.Failure;
  if (OutboxError.is(error, OutboxErrorCode.InvalidOptions)) return ExitCode.Usage;
  return ExitCode.Failure;
}

/** The stable code of any error: OUTBOX_* when it has one, else its name. */
export function codeOf(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string") return code;
  return error instanceof Error ? error.name : "Error";
}
