import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createDashboardHandler } from "../dashboard/handler.js";
import { ExitCode, usageError } from "../errors.js";
import type { CliIO } from "../io.js";
import type { Logger } from "../log.js";
import type { Runtime } from "../runtime.js";

/** The environment variable holding the dashboard's access token (never a flag: it would show in `ps`). */
export const dashboardTokenEnv = "OUTBOX_DASHBOARD_TOKEN";

export interface DashboardCommandOptions {
  readonly port: number;
  readonly host: string;
  readonly allowRemote: boolean;
  readonly readOnly: boolean;
  readonly relays: readonly string[];
  readonly sampleIntervalMs: number;
  readonly historyMs: number;
}

/** 127.0.0.0/8, ::1 and localhost: addresses only this machine reaches. */
export function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, "").toLowerCase();
  return bare === "localhost" || bare === "::1" || /^127(\.\d{1,3}){3}$/.test(bare);
}

/**
 * `outbox dashboard`: serves the dashboard until SIGTERM/SIGINT. Loopback only unless
 * `--allow-remote` and a token ($OUTBOX_DASHBOARD_TOKEN) are given.
 */
export async function runDashboard(
  runtime: Runtime,
  options: DashboardCommandOptions,
  io: CliIO,
  log: Logger,
): Promise<number> {
  const token = io.env[dashboardTokenEnv] || undefined;
  const loopback = isLoopback(options.host);
  if (!loopback && !options.allowRemote) {
    throw usageError(
      `--host ${options.host} is not a loopback address: add --allow-remote (and set ${dashboardTokenEnv}) to serve other machines`,
    );
  }
  if (!loopback && token === undefined) {
    throw usageError(`--allow-remote needs a token: set ${dashboardTokenEnv} (at least 16 characters)`);
  }
  if (token !== undefined && token.length < 16) throw usageError(`${dashboardTokenEnv}: at least 16 characters`);
  // Fails here, not at the first request, when the store cannot be made.
  const store = await runtime.store();
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  // On loopback without a token, the Host header is checked against DNS rebinding.
  const allowedHosts = loopback
    ? ["127.0.0.1", "localhost", "[::1]", options.host].map((host) => `${host}:${port}`)
    : undefined;
  const handler = createDashboardHandler({
    store,
    readOnly: options.readOnly,
    token,
    allowedHosts,
    relays: options.relays,
    sampleIntervalMs: options.sampleIntervalMs,
    historyMs: options.historyMs,
    now: io.now,
  });
  server.on("request", handler);
  handler.start();
  const shownHost = options.host.includes(":") && !options.host.startsWith("[") ? `[${options.host}]` : options.host;
  log.info("dashboard started", {
    url: `http://${shownHost}:${port}/`,
    readOnly: options.readOnly,
    tokenRequired: token !== undefined,
    config: runtime.source.kind === "file" ? runtime.source.path : "environment",
  });

  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    const stop = io.onSignal((received) => {
      stop();
      resolve(received);
    });
  });
  handler.close();
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
  log.info("dashboard stopped", { signal });
  return ExitCode.Ok;
}
