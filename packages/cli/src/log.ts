import { redact, serializeError } from "./redact.js";

export type LogLevel = "debug" | "info" | "warn" | "error";
export const logLevels: readonly LogLevel[] = ["debug", "info", "warn", "error"];
const rank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  enabled(level: LogLevel): boolean;
}

export interface LoggerOptions {
  level?: LogLevel;
  /** Receives one complete line (JSON + "\n") per event. */
  write: (line: string) => void;
  /** Fields on every line, e.g. `{ relayId }`. */
  base?: Record<string, unknown>;
  now?: () => number;
}

/**
 * Structured logs: one JSON object per line, `{ time, level, msg, ...fields }`, every string
 * redacted (URLs lose their passwords) and errors serialised with their code and cause chain.
 */
export function createLogger(options: LoggerOptions): Logger {
  const threshold = rank[options.level ?? "info"];
  const now = options.now ?? Date.now;
  const base = options.base ?? {};
  const log = (level: LogLevel, msg: string, fields: Record<string, unknown> = {}) => {
    if (rank[level] < threshold) return;
    const record: Record<string, unknown> = { time: new Date(now()).toISOString(), level, msg };
    for (const [key, value] of Object.entries({ ...base, ...fields })) {
      if (value === undefined) continue;
      record[key] = key === "error" || value instanceof Error ? serializeError(value) : redact(value);
    }
    options.write(`${JSON.stringify(record)}\n`);
  };
  return {
    debug: (msg, fields) => log("debug", msg, fields),
    info: (msg, fields) => log("info", msg, fields),
    warn: (msg, fields) => log("warn", msg, fields),
    error: (msg, fields) => log("error", msg, fields),
    enabled: (level) => rank[level] >= threshold,
  };
}
