import type { LockBackend, OutboxPublisher, OutboxStore } from "@outbox/core";
import type { InboxStore } from "@outbox/inbox";
import { findConfigFile, loadConfigFile, type OutboxCliConfig, resolveAdapter } from "./config.js";
import { type ConfigOrigin, configError } from "./errors.js";
import type { Logger } from "./log.js";
import { configFromEnv, stackEnv } from "./stack.js";

export interface RuntimeSource {
  /** "file" (with its path) or "env" (the built-in PostgreSQL + Kafka stack). */
  readonly kind: "file" | "env";
  readonly path?: string;
}

/**
 * The configured adapters, made on first use and closed in reverse order of dependence:
 * publisher, store, lock backend, then the config's own `close()` (your pools and clients).
 */
export class Runtime {
  readonly config: OutboxCliConfig;
  readonly source: RuntimeSource;
  readonly #logger: Logger;
  #store: Promise<OutboxStore<never>> | undefined;
  #inbox: Promise<InboxStore<unknown>> | undefined;
  #publisher: Promise<OutboxPublisher | undefined> | undefined;
  #lock: Promise<LockBackend | undefined> | undefined;
  #closed = false;

  constructor(config: OutboxCliConfig, source: RuntimeSource, logger: Logger) {
    this.config = config;
    this.source = source;
    this.#logger = logger;
  }

  /**
   * Where the store's connection and table are configured, for the hints of configuration errors: the outbox
   * store's, or with `inbox` the inbox store's.
   */
  origin(inbox = false): ConfigOrigin {
    const tables = inbox ? "the inbox tables are" : "the outbox table is";
    if (this.source.kind === "env") {
      return {
        connection: stackEnv.databaseUrl,
        connectionText: stackEnv.databaseUrl,
        table: inbox ? stackEnv.inboxTable : stackEnv.table,
        tableText: `${stackEnv.schema} and ${inbox ? stackEnv.inboxTable : stackEnv.table}`,
        tables,
        createTables: inbox
          ? "create them with migrateInbox() of @outbox/store-postgres (the consumer service's migration)"
          : "run `outbox migrate` with the same configuration",
      };
    }
    const file = this.source.path ?? "the config file";
    const field = inbox ? "inbox" : "store";
    return {
      connection: field,
      connectionText: `the ${field}'s database client in ${file}`,
      table: field,
      tableText: `the ${field}'s schema and table in ${file}`,
      tables,
      createTables: inbox
        ? "create them with migrateInbox() of your store package (the consumer service's migration)"
        : "run `outbox migrate` with the same configuration",
    };
  }

  static async load(
    options: { config?: string; env: Record<string, string | undefined>; cwd: string },
    logger: Logger,
  ): Promise<Runtime> {
    const path = findConfigFile(options.config, options.env, options.cwd);
    if (path) return new Runtime(await loadConfigFile(path), { kind: "file", path }, logger);
    const fromEnv = configFromEnv(options.env, logger);
    if (fromEnv) return new Runtime(fromEnv, { kind: "env" }, logger);
    throw configError(
      "--config",
      "no configuration: pass --config <file>, set OUTBOX_CONFIG, add outbox.config.ts here, or set OUTBOX_DATABASE_URL",
    );
  }

  store(): Promise<OutboxStore<never>> {
    this.#store ??= resolveAdapter(this.config.store, "store").then((store) => {
      if (!store) throw configError("store", "is required");
      return store;
    });
    return this.#store;
  }

  inbox(): Promise<InboxStore<unknown>> {
    this.#inbox ??= resolveAdapter(this.config.inbox, "inbox").then((inbox) => {
      if (!inbox) {
        throw configError("inbox", "is required by `outbox inbox` commands: add an inbox store to the config");
      }
      return inbox;
    });
    return this.#inbox;
  }

  async publisher(): Promise<OutboxPublisher> {
    this.#publisher ??= resolveAdapter(this.config.publisher, "publisher");
    const publisher = await this.#publisher;
    if (!publisher) throw configError("publisher", "is required to run the relay");
    return publisher;
  }

  lock(): Promise<LockBackend | undefined> {
    this.#lock ??= resolveAdapter(this.config.lock, "lock");
    return this.#lock;
  }

  /** Closes what was made. Never throws: failures are logged. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const settle = async (what: string, made: Promise<{ close?: () => Promise<void> } | undefined> | undefined) => {
      if (!made) return;
      try {
        const adapter = await made.catch(() => undefined);
        await adapter?.close?.();
      } catch (error) {
        this.#logger.warn(`closing the ${what} failed`, { error });
      }
    };
    await settle("publisher", this.#publisher);
    await settle("store", this.#store);
    await settle("inbox store", this.#inbox);
    await settle("lock backend", this.#lock);
    try {
      await this.config.close?.();
    } catch (error) {
      this.#logger.warn("the config's close() failed", { error });
    }
  }
}
