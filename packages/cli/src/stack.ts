import type { LockBackend, OutboxPublisher, OutboxStore } from "@outbox/core";
import type { InboxStore } from "@outbox/inbox";
import type { OutboxCliConfig, PurgeEstimate } from "./config.js";
import { configError } from "./errors.js";
import type { Logger } from "./log.js";

/** The environment variables of the built-in PostgreSQL + Kafka stack (no config file needed). */
export const stackEnv = {
  databaseUrl: "OUTBOX_DATABASE_URL",
  schema: "OUTBOX_SCHEMA",
  table: "OUTBOX_TABLE",
  inboxTable: "OUTBOX_INBOX_TABLE",
  kafkaBrokers: "OUTBOX_KAFKA_BROKERS",
  kafkaClientId: "OUTBOX_KAFKA_CLIENT_ID",
  kafkaSsl: "OUTBOX_KAFKA_SSL",
  kafkaSaslMechanism: "OUTBOX_KAFKA_SASL_MECHANISM",
  kafkaSaslUsername: "OUTBOX_KAFKA_SASL_USERNAME",
  kafkaSaslPassword: "OUTBOX_KAFKA_SASL_PASSWORD",
  leader: "OUTBOX_LEADER",
} as const;

async function importPeer<T>(name: string, why: string): Promise<T> {
  try {
    return (await import(name)) as T;
  } catch (error) {
    throw configError(why, `needs the package "${name}" installed next to @outbox/cli`, error);
  }
}

/*
 * The peers are loaded at run time and typed structurally here, so this package builds without
 * them (and without their builds).
 */
interface StorePostgresModule {
  createPostgresStore(options: Record<string, unknown>): OutboxStore<never>;
  createPostgresInboxStore(options: { pool: unknown; schema?: string; table?: string }): InboxStore<unknown>;
  migrate(db: unknown, options: { schema?: string; table?: string }): Promise<void>;
}
interface PublisherKafkaModule {
  createKafkaPublisher(source: { kafka: unknown }): OutboxPublisher;
}
interface LockPostgresModule {
  createPostgresLockBackend(options: { connectionString: string; schema?: string }): LockBackend;
}
interface KafkajsModule {
  Kafka: new (config: Record<string, unknown>) => unknown;
}

interface PgPool {
  query(text: string, params?: unknown[]): Promise<{ rows: Array<Record<string, unknown>> }>;
  on(event: "error", listener: (error: Error) => void): unknown;
  end(): Promise<void>;
}

/**
 * A count of purgeable rows and their oldest settle time, for PostgreSQL stores made by
 * @outbox/store-postgres (its `<table>` with `status` and `settled_at`; uses its settled index).
 * Give it to `purgeEstimate` in your config so `outbox purge` shows a bar in rows.
 */
export function postgresPurgeEstimate(
  pool: { query(text: string, params?: unknown[]): Promise<{ rows: unknown[] }> },
  options: { schema?: string; table?: string } = {},
): (olderThan: Date) => Promise<PurgeEstimate> {
  const identifier = /^[A-Za-z_][A-Za-z0-9_]*$/;
  const schema = options.schema ?? "public";
  const table = options.table ?? "outbox";
  if (!identifier.test(schema) || !identifier.test(table)) {
    throw configError("purgeEstimate", `schema and table must match ${identifier}`);
  }
  const sql = `SELECT count(*)::float8 AS rows, (extract(epoch FROM min(settled_at)) * 1000)::float8 AS oldest
    FROM "${schema}"."${table}" WHERE status <> 'pending' AND settled_at < $1::timestamptz`;
  return async (olderThan) => {
    const { rows } = await pool.query(sql, [olderThan.toISOString()]);
    const row = rows[0] as { rows?: unknown; oldest?: unknown } | undefined;
    return {
      rows: Number(row?.rows ?? 0),
      oldest: row?.oldest === null || row?.oldest === undefined ? null : new Date(Number(row.oldest)),
    };
  };
}

/** host:port, the host a name, an IPv4 address or a bracketed IPv6 address. */
const brokerPattern = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$/;

/**
 * OUTBOX_DATABASE_URL must be a PostgreSQL URL (what pg's connectionString takes): anything else
 * would reach the driver as a host name ("getaddrinfo ENOTFOUND base") and look like an outage.
 */
function checkDatabaseUrl(url: string): void {
  const hint = `set ${stackEnv.databaseUrl} to a URL such as postgres://user@host:5432/database`;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (error) {
    throw configError(stackEnv.databaseUrl, "is not a URL", error, { hint });
  }
  if (!["postgres:", "postgresql:", "socket:"].includes(parsed.protocol)) {
    throw configError(
      stackEnv.databaseUrl,
      `expected a postgres:// URL, got the scheme ${parsed.protocol}`,
      undefined,
      {
        hint,
      },
    );
  }
}

function kafkaLogCreator(logger: Logger) {
  // kafkajs levels: NOTHING 0, ERROR 1, WARN 2, INFO 4, DEBUG 5.
  return () =>
    ({ level, log }: { level: number; log: { message?: string } & Record<string, unknown> }) => {
      const { message, timestamp: _t, logger: _l, ...fields } = log;
      const text = `kafkajs: ${message ?? ""}`;
      if (level <= 1) logger.error(text, fields);
      else if (level === 2) logger.warn(text, fields);
      else if (level === 4) logger.debug(text, fields);
      else logger.debug(text, fields);
    };
}

/**
 * Builds the PostgreSQL + Kafka stack from environment variables (see README): a pg Pool on
 * OUTBOX_DATABASE_URL, @outbox/store-postgres on it (its outbox store, and its inbox store for
 * `outbox inbox ...`), a Kafka publisher on OUTBOX_KAFKA_BROKERS (only when a command needs it),
 * and with OUTBOX_LEADER=postgres an advisory-lock leader.
 */
export function configFromEnv(env: Record<string, string | undefined>, logger: Logger): OutboxCliConfig | undefined {
  const url = env[stackEnv.databaseUrl];
  if (!url) return undefined;
  checkDatabaseUrl(url);
  const schema = env[stackEnv.schema] || undefined;
  const table = env[stackEnv.table] || undefined;
  const inboxTable = env[stackEnv.inboxTable] || undefined;
  const leaderMode = (env[stackEnv.leader] ?? "none").toLowerCase();
  if (!["none", "postgres", "false", "true", ""].includes(leaderMode)) {
    throw configError(stackEnv.leader, `expected "postgres" or "none", got ${JSON.stringify(env[stackEnv.leader])}`);
  }
  const withLeader = leaderMode === "postgres" || leaderMode === "true";
  let pool: PgPool | undefined;
  const closers: Array<() => Promise<unknown>> = [];

  const getPool = async (): Promise<PgPool> => {
    if (pool) return pool;
    const pg = await importPeer<{ default: { Pool: new (options: object) => PgPool } }>("pg", stackEnv.databaseUrl);
    const created = new pg.default.Pool({ connectionString: url, application_name: "outbox-cli", max: 4 });
    created.on("error", (error) => logger.warn("idle PostgreSQL connection failed", { error }));
    pool = created;
    closers.push(() => created.end());
    return created;
  };

  return {
    store: async () => {
      const { createPostgresStore } = await importPeer<StorePostgresModule>(
        "@outbox/store-postgres",
        stackEnv.databaseUrl,
      );
      return createPostgresStore({
        pool: await getPool(),
        schema,
        table,
        onError: (error: unknown) => logger.warn("store background error", { error }),
      });
    },
    inbox: async () => {
      const { createPostgresInboxStore } = await importPeer<StorePostgresModule>(
        "@outbox/store-postgres",
        stackEnv.databaseUrl,
      );
      // The inbox store reads and writes dead letters through @outbox/inbox: missing, say so now, not mid-command.
      await importPeer<unknown>("@outbox/inbox", stackEnv.databaseUrl);
      return createPostgresInboxStore({ pool: await getPool(), schema, table: inboxTable });
    },
    publisher: async (): Promise<OutboxPublisher> => {
      const brokers = (env[stackEnv.kafkaBrokers] ?? "")
        .split(",")
        .map((broker) => broker.trim())
        .filter(Boolean);
      if (brokers.length === 0) throw configError(stackEnv.kafkaBrokers, "is required to publish (host:port,...)");
      const malformed = brokers.find((broker) => !brokerPattern.test(broker));
      if (malformed !== undefined) {
        throw configError(
          stackEnv.kafkaBrokers,
          `expected host:port,host:port, got ${JSON.stringify(malformed)}`,
          undefined,
          {
            hint: `set ${stackEnv.kafkaBrokers} to the brokers' host:port list, e.g. kafka-0:9092,kafka-1:9092`,
          },
        );
      }
      const { Kafka } = await importPeer<KafkajsModule>("kafkajs", stackEnv.kafkaBrokers);
      const { createKafkaPublisher } = await importPeer<PublisherKafkaModule>(
        "@outbox/publisher-kafka",
        stackEnv.kafkaBrokers,
      );
      const mechanism = env[stackEnv.kafkaSaslMechanism]?.toLowerCase();
      if (mechanism && !["plain", "scram-sha-256", "scram-sha-512"].includes(mechanism)) {
        throw configError(stackEnv.kafkaSaslMechanism, "expected plain, scram-sha-256 or scram-sha-512");
      }
      const kafka = new Kafka({
        clientId: env[stackEnv.kafkaClientId] || "outbox-relay",
        brokers,
        ssl: env[stackEnv.kafkaSsl] === "true" || env[stackEnv.kafkaSsl] === "1",
        ...(mechanism
          ? {
              sasl: {
                mechanism,
                username: env[stackEnv.kafkaSaslUsername] ?? "",
                password: env[stackEnv.kafkaSaslPassword] ?? "",
              },
            }
          : {}),
        logCreator: kafkaLogCreator(logger),
      });
      return createKafkaPublisher({ kafka });
    },
    ...(withLeader
      ? {
          lock: async (): Promise<LockBackend> => {
            const { createPostgresLockBackend } = await importPeer<LockPostgresModule>(
              "@outbox/lock-postgres",
              stackEnv.leader,
            );
            return createPostgresLockBackend({ connectionString: url, schema });
          },
        }
      : {}),
    migrate: async () => {
      const { migrate } = await importPeer<StorePostgresModule>("@outbox/store-postgres", stackEnv.databaseUrl);
      await migrate(await getPool(), { schema, table });
    },
    purgeEstimate: async (olderThan) => postgresPurgeEstimate(await getPool(), { schema, table })(olderThan),
    close: async () => {
      await Promise.allSettled(closers.map((close) => close()));
    },
  };
}
