import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { pgUrl } from "@outbox/test-support/postgres";

/** A relay in its own process (./relay-child.ts) and what it reported over IPC. */
export interface RelayChild {
  readonly process: ChildProcess;
  published: number;
  retried: number;
  readonly errors: string[];
  readonly dead: string[];
  /** Fencing tokens of every leadership it gained. */
  readonly leaderships: string[];
  exited: Promise<number | null>;
}

/** Starts a relay child with the given E2E_* settings; resolves once its loop runs. */
export function startRelayChild(env: Record<string, string>): Promise<RelayChild> {
  const child = fork(fileURLToPath(new URL("./relay-child.ts", import.meta.url)), {
    execArgv: [
      "--conditions=@outbox/source",
      "--experimental-strip-types",
      "--no-warnings",
      "--import",
      fileURLToPath(new URL("../../../../scripts/register-ts.mjs", import.meta.url)),
    ],
    env: { ...process.env, OUTBOX_PG_URL: pgUrl, ...env },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const relay: RelayChild = {
    process: child,
    published: 0,
    retried: 0,
    errors: [],
    dead: [],
    leaderships: [],
    exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))),
  };
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`relay child exited early (${code})`)));
    child.on("message", (message: Record<string, unknown>) => {
      if (typeof message.published === "number") relay.published += message.published;
      if (typeof message.retried === "number") relay.retried += message.retried;
      if (typeof message.leader === "string") relay.leaderships.push(message.leader);
      if (typeof message.error === "string" && message.dead === undefined) relay.errors.push(message.error);
      if (message.dead !== undefined) relay.dead.push(`${message.dead}: ${message.error}`);
      if (message.started) resolve(relay);
    });
  });
}
