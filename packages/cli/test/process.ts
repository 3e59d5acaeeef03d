import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { waitFor } from "@outbox/test-support/wait";

export const packageDir = fileURLToPath(new URL("..", import.meta.url));
export const binPath = fileURLToPath(new URL("../src/bin.ts", import.meta.url));
export const registerTs = fileURLToPath(new URL("../../../scripts/register-ts.mjs", import.meta.url));
export const pgKafkaConfig = fileURLToPath(new URL("./fixtures/pg-kafka.config.ts", import.meta.url));

/** `node` running the CLI from its TypeScript sources (workspace packages resolve to their sources too). */
export const nodeArgs = ["--conditions=@outbox/source", "--import", registerTs, binPath];

export function childEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.NODE_OPTIONS;
  for (const [name, value] of Object.entries(extra)) if (value === undefined) delete env[name];
  return env;
}

/** The `outbox` CLI as a child process, its stdout split into lines. */
export class CliProcess {
  readonly child: ChildProcess;
  stdout = "";
  stderr = "";
  readonly exit: Promise<number | null>;

  constructor(args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, [...nodeArgs, ...args], {
      cwd: packageDir,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      this.stdout += chunk;
    });
    this.child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      this.stderr += chunk;
    });
    this.exit = new Promise((resolve) => this.child.on("exit", (code) => resolve(code)));
  }

  lines(): string[] {
    return this.stdout.split("\n").filter((line) => line.length > 0);
  }

  /** stdout as JSON lines (throws on a line that is not JSON: logs must be structured). */
  logs(): Array<Record<string, unknown>> {
    return this.lines().map((line) => JSON.parse(line) as Record<string, unknown>);
  }

  waitForLog(msg: string, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    return waitFor(
      () => this.logs().find((line) => line.msg === msg),
      timeoutMs,
      `log "${msg}" (stdout so far: ${this.stdout.slice(-500)}; stderr: ${this.stderr.slice(-500)})`,
    );
  }

  signal(name: NodeJS.Signals = "SIGTERM"): void {
    this.child.kill(name);
  }

  /** Kills the process if it still runs (cleanup after a failed test). */
  async dispose(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGKILL");
      await this.exit;
    }
  }
}

/** Runs a short CLI command to completion. */
export async function runCli(args: string[], env: NodeJS.ProcessEnv) {
  const cli = new CliProcess(args, env);
  const code = await cli.exit;
  return { code, stdout: cli.stdout, stderr: cli.stderr };
}
