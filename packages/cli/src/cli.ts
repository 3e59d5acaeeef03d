import { readFileSync } from "node:fs";
import { Command, CommanderError, Option } from "commander";
import { runDashboard } from "./commands/dashboard.js";
import { type DeadFilter, deadDrop, deadList, deadRequeue, deadShow, defaultMaxPayloadBytes } from "./commands/dead.js";
import { inboxDeadDrop, inboxDeadList, inboxDeadRequeue, inboxDeadShow } from "./commands/inbox-dead.js";
import { inboxPurge } from "./commands/inbox-purge.js";
import { inboxStatus } from "./commands/inbox-status.js";
import { migrateCommand } from "./commands/migrate.js";
import { purge } from "./commands/purge.js";
import { runRelay } from "./commands/relay.js";
import { status } from "./commands/status.js";
import { parseDuration, parseMoment, parsePositiveInt } from "./duration.js";
import { classifyError, codeOf, ExitCode, exitCodeOf, usageError } from "./errors.js";
import { type CliIO, processIO } from "./io.js";
import { createLogger, type Logger, type LogLevel, logLevels } from "./log.js";
import { redactText, serializeError } from "./redact.js";
import { Runtime } from "./runtime.js";

function packageVersion(): string {
  try {
    const text = readFileSync(new URL("../package.json", import.meta.url), "utf8");
    return (JSON.parse(text) as { version?: string }).version ?? "0.0.0";
  } catch {
    return "0.0.0";
  }
}

interface GlobalOptions {
  config?: string;
  json?: boolean;
}

interface FilterFlags {
  topic?: string;
  key?: string;
  keyless?: boolean;
  error?: string;
  since?: string;
  until?: string;
  scan: string;
}

function filterOf(flags: FilterFlags, now: number): DeadFilter & { scan: number } {
  if (flags.keyless === true && flags.key !== undefined) throw usageError("--key and --keyless: give one of them");
  return {
    topic: flags.topic,
    key: flags.keyless === true ? null : flags.key,
    error: flags.error,
    since: flags.since === undefined ? undefined : parseMoment(flags.since, now, "--since"),
    until: flags.until === undefined ? undefined : parseMoment(flags.until, now, "--until"),
    scan: parsePositiveInt(flags.scan, "--scan"),
  };
}

/** The filters of `dead list|requeue|drop`; the inbox's dead letters are dated when they died, in message id order. */
function withFilters(command: Command, inbox = false): Command {
  const what = inbox ? "dead letters" : "entries";
  const dated = inbox ? "parked" : "created";
  return command
    .option("--topic <topic>", `only ${what} of this topic`)
    .option("--key <key>", `only ${what} of this key (exactly)`)
    .option("--keyless", `only ${what} without a key`)
    .option("--error <text>", `only ${what} whose last error contains this text (case-insensitive)`)
    .option("--since <when>", `only ${what} ${dated} at or after (ISO date, or a duration ago: 7d)`)
    .option("--until <when>", `only ${what} ${dated} before (ISO date, or a duration ago)`)
    .option(
      "--scan <n>",
      inbox
        ? "dead letters read from the store, by message id; filters apply to these"
        : "dead entries read from the store, oldest first (only matching ones where the store filters); the rest of the filtering applies to these",
      "10000",
    );
}

/** `outbox inbox dead ...`: dead letters are kept per consumer, and ids are message ids of that consumer. */
function withConsumer(command: Command): Command {
  return command.requiredOption("--consumer <name>", "the inbox's consumer name (createInbox's `consumer`)");
}

function optionalDuration(text: string | undefined, option: string): number | undefined {
  return text === undefined ? undefined : parseDuration(text, option);
}

/** "off" (or 0) turns a readiness check off: undefined. */
function offOr(text: string, parse: (text: string) => number): number | undefined {
  const trimmed = text.trim().toLowerCase();
  if (trimmed === "off" || trimmed === "0" || trimmed === "none") return undefined;
  return parse(text);
}

function optionalInt(text: string | undefined, option: string): number | undefined {
  return text === undefined ? undefined : parsePositiveInt(text, option);
}

/**
 * Runs the `outbox` command line and resolves to the exit code (it never calls process.exit:
 * the bin does). `io` defaults to the real process; tests pass their own.
 */
export async function main(argv: readonly string[], ioOverrides: Partial<CliIO> = {}): Promise<number> {
  const io: CliIO = { ...processIO(), ...ioOverrides };
  let exitCode: number = ExitCode.Ok;
  let json = false;
  let runtime: Runtime | undefined;
  let commandName: string | undefined;
  /** An `outbox inbox ...` command runs: configuration hints name the inbox store. */
  let inboxCommand = false;

  const stderrLogger = (level: LogLevel = "warn"): Logger =>
    createLogger({ level, write: (line) => io.stderr.write(line), now: io.now });
  const load = async (globals: GlobalOptions, logger: Logger) => {
    runtime = await Runtime.load({ config: globals.config, env: io.env, cwd: io.cwd }, logger);
    return runtime;
  };
  const globalsOf = (command: Command): GlobalOptions => {
    const globals = command.optsWithGlobals() as GlobalOptions;
    json = globals.json === true;
    commandName = command.name();
    for (let parent = command.parent; parent; parent = parent.parent) {
      if (parent.name() === "inbox" && parent.parent === program) inboxCommand = true;
    }
    return globals;
  };

  const program = new Command("outbox")
    .description("Run the outbox relay as a service, and inspect and repair the outbox.")
    .version(packageVersion(), "-v, --version")
    .option(
      "-c, --config <file>",
      "config file (default: $OUTBOX_CONFIG, then ./outbox.config.{ts,mts,js,mjs}, then the OUTBOX_DATABASE_URL stack)",
    )
    .option("--json", "machine-readable output: one JSON document on stdout; errors as one JSON line on stderr")
    .exitOverride()
    .showHelpAfterError()
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
    });

  program
    .command("relay")
    .description("run the relay until SIGTERM/SIGINT (drains, then exits 0), with /healthz, /readyz and /metrics")
    .option("--port <n>", "HTTP port for /healthz, /readyz, /metrics (0: any free port)", "9464")
    .option("--host <address>", "address the HTTP server binds", "0.0.0.0")
    .addOption(new Option("--log-level <level>", "least severe log level written").choices(logLevels).default("info"))
    .option("--stats-interval <duration>", "how often the backlog is read from the store for /readyz and gauges", "5s")
    .option(
      "--ready-max-lag <duration>",
      "/readyz answers 503 while the oldest pending entry is older than this (off: never)",
      "5m",
    )
    .option(
      "--ready-max-failures <n>",
      "/readyz answers 503 after this many failed publish attempts (or claim cycles) in a row (off: never)",
      "3",
    )
    .option("--batch-size <n>", "entries claimed per cycle (overrides the config)")
    .option("--max-in-flight <n>", "batches published at once (maxInFlightBatches)")
    .option("--poll <duration>", "wait between polls when idle (pollMs)")
    .option("--lease <duration>", "claim lease (leaseMs)")
    .option("--drain-timeout <duration>", "how long SIGTERM waits for in-flight batches (drainTimeoutMs)")
    .option("--relay-id <id>", "this relay's claimer id (default: a random UUID)")
    .option("--no-default-metrics", "leave out prom-client's process_* and nodejs_* metrics")
    .action(async (flags, command: Command) => {
      const globals = globalsOf(command);
      const port = Number(flags.port);
      if (!Number.isInteger(port) || port < 0 || port > 65_535)
        throw usageError(`--port: expected 0-65535, got ${flags.port}`);
      const options = {
        port,
        host: String(flags.host),
        statsIntervalMs: parseDuration(flags.statsInterval, "--stats-interval"),
        readyMaxLagMs: offOr(flags.readyMaxLag, (text) => parseDuration(text, "--ready-max-lag")),
        readyMaxFailures: offOr(flags.readyMaxFailures, (text) => parsePositiveInt(text, "--ready-max-failures")),
        defaultMetrics: flags.defaultMetrics !== false,
        overrides: {
          batchSize: optionalInt(flags.batchSize, "--batch-size"),
          maxInFlightBatches: optionalInt(flags.maxInFlight, "--max-in-flight"),
          pollMs: optionalDuration(flags.poll, "--poll"),
          leaseMs: optionalDuration(flags.lease, "--lease"),
          drainTimeoutMs: optionalDuration(flags.drainTimeout, "--drain-timeout"),
          id: flags.relayId as string | undefined,
        },
      };
      const logger = createLogger({
        level: flags.logLevel as LogLevel,
        write: (line) => io.stdout.write(line),
        now: io.now,
      });
      try {
        exitCode = await runRelay(await load(globals, logger), options, io, logger);
      } catch (error) {
        const classified = classifyError(error, runtime?.origin(), "relay");
        logger.error("relay failed to start", { error: classified });
        throw classified;
      }
    });

  program
    .command("status")
    .description("pending, in flight, dead, oldest lag; with --relay, the current leader and its fence")
    .option(
      "--relay <url>",
      "a running relay's base URL (http://host:9464) to ask for leader and fence; repeatable",
      (value: string, previous: string[]) => [...previous, value],
      [] as string[],
    )
    .option("--timeout <duration>", "per-relay request timeout", "2s")
    .action(async (flags, command: Command) => {
      const globals = globalsOf(command);
      const timeoutMs = parseDuration(flags.timeout, "--timeout");
      const rt = await load(globals, stderrLogger());
      await status(await rt.store(), { relays: flags.relay as string[], timeoutMs, json }, io);
    });

  const dead = program.command("dead").description("inspect and repair dead letters");
  withFilters(dead.command("list").description("list dead entries, oldest first"))
    .option("--limit <n>", "entries shown at most", "50")
    .action(async (flags, command: Command) => {
      const globals = globalsOf(command);
      const filter = filterOf(flags as FilterFlags, io.now());
      const limit = parsePositiveInt(flags.limit, "--limit");
      const rt = await load(globals, stderrLogger());
      await deadList(await rt.store(), { ...filter, limit, json }, io);
    });
  dead
    .command("show")
    .description("one dead entry: headers, last error, payload (text, or base64; the first 4 KiB unless --full)")
    .argument("<id>", "entry id")
    .option("--scan <n>", "dead entries searched, oldest first", "10000")
    .option(
      "--max-payload <bytes>",
      "payload bytes shown at most (the rest is cut, and said so)",
      String(defaultMaxPayloadBytes),
    )
    .option("--full", "the whole payload, however large")
    .action(async (id: string, flags, command: Command) => {
      const globals = globalsOf(command);
      const scan = parsePositiveInt(flags.scan, "--scan");
      const maxPayloadBytes = flags.full === true ? undefined : parsePositiveInt(flags.maxPayload, "--max-payload");
      const rt = await load(globals, stderrLogger());
      await deadShow(await rt.store(), id, { scan, json, maxPayloadBytes }, io);
    });
  for (const [name, run, help] of [
    ["requeue", deadRequeue, "make dead entries pending again (fresh attempt count): the relay republishes them"],
    ["drop", deadDrop, "delete dead entries for good (needs a store with dropDead(); see README)"],
  ] as const) {
    withFilters(dead.command(name).description(help))
      .argument("[ids...]", "entry ids; or use --all (narrowed by the filters)")
      .option("--all", "every dead entry matching the filters")
      .option("--dry-run", "show what would be selected, change nothing")
      .action(async (ids: string[], flags, command: Command) => {
        const globals = globalsOf(command);
        const filter = filterOf(flags as FilterFlags, io.now());
        const rt = await load(globals, stderrLogger());
        await run(
          await rt.store(),
          ids,
          { ...filter, all: flags.all === true, dryRun: flags.dryRun === true, json },
          io,
        );
      });
  }

  program
    .command("purge")
    .description("delete published and dead entries settled longer ago than --older-than (never pending ones)")
    .requiredOption("--older-than <duration>", "retention: 7d, 12h, 2w, ...")
    .option("--batch-size <n>", "rows per DELETE statement", "1000")
    .option("--steps <n>", "time slices of the purge (progress resolution)", "100")
    .option("--no-progress", "no progress bar (it shows only on a terminal, and never with --json)")
    .action(async (flags, command: Command) => {
      const globals = globalsOf(command);
      const olderThanMs = parseDuration(flags.olderThan, "--older-than");
      const batchSize = parsePositiveInt(flags.batchSize, "--batch-size");
      const steps = parsePositiveInt(flags.steps, "--steps");
      const rt = await load(globals, stderrLogger());
      await purge(
        await rt.store(),
        { olderThanMs, batchSize, steps, progress: flags.progress !== false, json, estimate: rt.config.purgeEstimate },
        io,
      );
    });

  const inbox = program
    .command("inbox")
    .description("the consumer side (@outbox/inbox): status, dead letters and retention of an inbox store");
  inbox
    .command("status")
    .description("per consumer: processed keys, dead letters, failing messages, oldest and newest key")
    .option("--consumer <name>", "only this consumer (default: every consumer that recorded something)")
    .action(async (flags, command: Command) => {
      const globals = globalsOf(command);
      const rt = await load(globals, stderrLogger());
      await inboxStatus(await rt.inbox(), { consumer: flags.consumer as string | undefined, json }, io);
    });

  const inboxDead = inbox.command("dead").description("inspect and repair an inbox consumer's dead letters");
  withFilters(withConsumer(inboxDead.command("list").description("list dead letters, by message id")), true)
    .option("--limit <n>", "dead letters shown at most", "50")
    .action(async (flags, command: Command) => {
      const globals = globalsOf(command);
      const filter = filterOf(flags as FilterFlags, io.now());
      const limit = parsePositiveInt(flags.limit, "--limit");
      const rt = await load(globals, stderrLogger());
      await inboxDeadList(await rt.inbox(), { ...filter, consumer: String(flags.consumer), limit, json }, io);
    });
  withConsumer(
    inboxDead
      .command("show")
      .description(
        "one dead letter: message, headers, error, payload (text, or base64; the first 4 KiB unless --full)",
      ),
  )
    .argument("<message-id>", "the dead letter's message id (its idempotency key, or its id)")
    .option("--scan <n>", "dead letters searched, by message id", "10000")
    .option(
      "--max-payload <bytes>",
      "payload bytes shown at most (the rest is cut, and said so)",
      String(defaultMaxPayloadBytes),
    )
    .option("--full", "the whole payload, however large")
    .action(async (messageId: string, flags, command: Command) => {
      const globals = globalsOf(command);
      const scan = parsePositiveInt(flags.scan, "--scan");
      const maxPayloadBytes = flags.full === true ? undefined : parsePositiveInt(flags.maxPayload, "--max-payload");
      const rt = await load(globals, stderrLogger());
      await inboxDeadShow(
        await rt.inbox(),
        messageId,
        { consumer: String(flags.consumer), scan, json, maxPayloadBytes },
        io,
      );
    });
  for (const [name, run, help] of [
    [
      "requeue",
      inboxDeadRequeue,
      "make dead letters handleable again (fresh attempt count): their next delivery runs the handler",
    ],
    ["drop", inboxDeadDrop, "discard dead letters: they count as handled, a redelivery is a duplicate"],
  ] as const) {
    withFilters(withConsumer(inboxDead.command(name).description(help)), true)
      .argument("[message-ids...]", "message ids; or use --all (narrowed by the filters)")
      .option("--all", "every dead letter of the consumer matching the filters")
      .option("--dry-run", "show what would be selected, change nothing")
      .action(async (ids: string[], flags, command: Command) => {
        const globals = globalsOf(command);
        const filter = filterOf(flags as FilterFlags, io.now());
        const rt = await load(globals, stderrLogger());
        await run(
          await rt.inbox(),
          ids,
          {
            ...filter,
            consumer: String(flags.consumer),
            all: flags.all === true,
            dryRun: flags.dryRun === true,
            json,
          },
          io,
        );
      });
  }

  inbox
    .command("purge")
    .description("delete processed keys recorded longer ago than --older-than, of every consumer (never dead letters)")
    .requiredOption("--older-than <duration>", "retention, at least the consumers' duplicate window: 7d, 12h, 2w, ...")
    .option("--batch-size <n>", "rows per DELETE statement", "1000")
    .option("--steps <n>", "time slices of the purge (progress resolution)", "100")
    .option("--no-progress", "no progress bar (it shows only on a terminal, and never with --json)")
    .action(async (flags, command: Command) => {
      const globals = globalsOf(command);
      const olderThanMs = parseDuration(flags.olderThan, "--older-than");
      const batchSize = parsePositiveInt(flags.batchSize, "--batch-size");
      const steps = parsePositiveInt(flags.steps, "--steps");
      const rt = await load(globals, stderrLogger());
      await inboxPurge(
        await rt.inbox(),
        { olderThanMs, batchSize, steps, progress: flags.progress !== false, json },
        io,
      );
    });

  program
    .command("dashboard")
    .description("serve the operator dashboard (backlog, lag, live chart, dead letters) until SIGTERM/SIGINT")
    .option("--port <n>", "HTTP port (0: any free port)", "9465")
    .option("--host <address>", "address the server binds (loopback unless --allow-remote)", "127.0.0.1")
    .option("--allow-remote", "allow a non-loopback --host; needs a token in $OUTBOX_DASHBOARD_TOKEN")
    .option("--read-only", "hide requeue and drop, and refuse them")
    .option(
      "--relay <url>",
      "a running relay's base URL (http://host:9464): its published counter draws throughput; repeatable",
      (value: string, previous: string[]) => [...previous, value],
      [] as string[],
    )
    .option("--sample-interval <duration>", "how often stats() is read for the chart", "2s")
    .option("--history <duration>", "how far back the chart goes", "10m")
    .addOption(new Option("--log-level <level>", "least severe log level written").choices(logLevels).default("info"))
    .action(async (flags, command: Command) => {
      const globals = globalsOf(command);
      const port = Number(flags.port);
      if (!Number.isInteger(port) || port < 0 || port > 65_535)
        throw usageError(`--port: expected 0-65535, got ${flags.port}`);
      const logger = createLogger({
        level: flags.logLevel as LogLevel,
        write: (line) => io.stdout.write(line),
        now: io.now,
      });
      const options = {
        port,
        host: String(flags.host),
        allowRemote: flags.allowRemote === true,
        readOnly: flags.readOnly === true,
        relays: flags.relay as string[],
        sampleIntervalMs: parseDuration(flags.sampleInterval, "--sample-interval"),
        historyMs: parseDuration(flags.history, "--history"),
      };
      exitCode = await runDashboard(await load(globals, logger), options, io, logger);
    });

  program
    .command("migrate")
    .description("create or upgrade the outbox schema (runs the config's migrate())")
    .action(async (_flags, command: Command) => {
      const globals = globalsOf(command);
      const rt = await load(globals, stderrLogger());
      await migrateCommand(rt, { json }, io);
    });

  try {
    await program.parseAsync([...argv], { from: "user" });
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version exit 0; every parse error (unknown command or flag, missing value) is usage.
      return error.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage;
    }
    const classified = classifyError(error, runtime?.origin(inboxCommand), commandName);
    exitCode = exitCodeOf(classified);
    reportError(classified, json, io);
  } finally {
    await runtime?.close();
  }
  return exitCode;
}

function reportError(error: unknown, json: boolean, io: CliIO): void {
  if (json) {
    io.stderr.write(`${JSON.stringify({ error: serializeError(error) })}\n`);
    return;
  }
  const code = codeOf(error);
  let message = error instanceof Error ? error.message : String(error);
  if (!message.includes(code)) message = `[${code}] ${message}`;
  io.stderr.write(`outbox: ${redactText(message)}\n`);
  let cause = (error as { cause?: unknown } | null)?.cause;
  for (let depth = 0; cause !== undefined && depth < 4; depth++) {
    io.stderr.write(`  caused by: ${redactText(cause instanceof Error ? cause.message : String(cause))}\n`);
    cause = (cause as { cause?: unknown } | null)?.cause;
  }
  const hint = (error as { details?: { hint?: unknown } } | null)?.details?.hint;
  if (typeof hint === "string") io.stderr.write(`  hint: ${redactText(hint)}\n`);
}
