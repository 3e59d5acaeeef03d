export { main } from "./cli.js";
export { dashboardTokenEnv, isLoopback } from "./commands/dashboard.js";
export {
  configFileNames,
  defineConfig,
  type Factory,
  type OutboxCliConfig,
  type PurgeEstimate,
  type RelaySettings,
  validateConfig,
} from "./config.js";
export {
  createDashboardHandler,
  csrfHeader,
  type DashboardHandler,
  type DashboardOptions,
  tokenCookie,
} from "./dashboard/handler.js";
export { CliError, CliErrorCode, ExitCode } from "./errors.js";
export { metricNames } from "./metrics.js";
export { NotReadyReason, readinessDefaults } from "./readiness.js";
export { redact, redactText, redactUrl } from "./redact.js";
export { postgresPurgeEstimate, stackEnv } from "./stack.js";
