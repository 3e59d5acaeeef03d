import { EventEmitter } from "node:events";
import { fileURLToPath } from "node:url";
import { main } from "../src/cli.js";
import type { CliIO } from "../src/io.js";

export const globalConfigPath = fileURLToPath(new URL("./fixtures/global.config.ts", import.meta.url));

export function setTestConfig(config: unknown): void {
  (globalThis as { __outboxCliTestConfig?: unknown }).__outboxCliTestConfig = config;
}

/** A captured output stream. */
export class Capture {
  text = "";
  isTTY = false;
  write(chunk: string): boolean {
    this.text += chunk;
    return true;
  }
  lines(): string[] {
    return this.text.split("\n").filter((line) => line.length > 0);
  }
  json<T = Record<string, unknown>>(): T[] {
    return this.lines().map((line) => JSON.parse(line) as T);
  }
}

export interface InProcessRun {
  readonly code: Promise<number>;
  readonly stdout: Capture;
  readonly stderr: Capture;
  /** Sends SIGTERM (or another signal) to the in-process command. */
  signal(name?: NodeJS.Signals): void;
  /** Emits a process warning to the in-process command (the real process' warnings stay vitest's). */
  warn(warning: Error): void;
}

/** Runs `outbox <args>` in this process with captured output and a fake signal source. */
export function runInProcess(args: string[], env: Record<string, string | undefined> = {}): InProcessRun {
  const stdout = new Capture();
  const stderr = new Capture();
  const signals = new EventEmitter();
  const io: Partial<CliIO> = {
    stdout,
    stderr,
    env,
    cwd: process.cwd(),
    onSignal(listener) {
      signals.on("signal", listener);
      return () => signals.off("signal", listener);
    },
    onWarning(listener) {
      signals.on("warning", listener);
      return () => signals.off("warning", listener);
    },
  };
  return {
    code: main(args, io),
    stdout,
    stderr,
    signal: (name = "SIGTERM") => signals.emit("signal", name),
    warn: (warning) => signals.emit("warning", warning),
  };
}

/** Runs a command to completion. */
export async function run(args: string[], env: Record<string, string | undefined> = {}) {
  const running = runInProcess(args, env);
  const code = await running.code;
  return { code, stdout: running.stdout, stderr: running.stderr };
}
