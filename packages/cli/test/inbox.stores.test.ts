// `outbox inbox status|dead|purge` against the inbox stores on the real servers (scripts/services.sh start postgres
// mariadb mongodb mongo-java): PostgreSQL through the environment stack and through a config file, MariaDB, and
// both MongoDB-wire servers (FerretDB, mongo-java-server; neither has transactions). One scenario per store:
// the numbers `status` gives, the dead letters listed, shown, requeued and dropped, then a purge. Assertions are on
// codes, exit statuses and fields, never on message text.
import { ManualClock } from "@outbox/core";
import { createInbox, type InboxStore } from "@outbox/inbox";
import { createMongoInboxStore } from "@outbox/store-mongodb";
import { createMySqlInboxStore, migrateInbox as migrateMySqlInbox } from "@outbox/store-mysql";
import { createPostgresInboxStore, migrateInbox as migratePostgresInbox } from "@outbox/store-postgres";
import { freshIdentifier, pgUrl } from "@outbox/test-support/postgres";
import { mongoUrl, mysqlUrl } from "@outbox/test-support/services";
import { MongoClient } from "mongodb";
import mysql from "mysql2/promise";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { CliErrorCode, ExitCode } from "../src/errors.js";
import { globalConfigPath, run, setTestConfig } from "./support.js";

const mongoJavaUrl = process.env.OUTBOX_MONGO_JAVA_URL ?? "mongodb://127.0.0.1:27018";
const day = 86_400_000;

const pgPool = new pg.Pool({ connectionString: pgUrl, max: 4 });
const mysqlPool = mysql.createPool({ uri: mysqlUrl, connectionLimit: 4 });
const mongoClients = [mongoUrl, mongoJavaUrl].map(
  (url) => new MongoClient(url, { serverSelectionTimeoutMS: 5_000, appName: "outbox-cli-inbox-test" }),
);
afterAll(async () => {
  await pgPool.end();
  await mysqlPool.end();
  await Promise.all(mongoClients.map((client) => client.close()));
});

/** A fresh inbox on one server: a store for the test's own writes, how the CLI reaches it, and the cleanup. */
interface Namespace {
  readonly store: InboxStore<unknown>;
  /** The CLI's arguments before the command, and its environment. */
  readonly args: string[];
  readonly env: Record<string, string>;
  drop(): Promise<void>;
}

/** Each server: a fresh namespace (the CLI reaches it through a config file, or the environment stack). */
const servers: Array<{ name: string; fresh(): Promise<Namespace> }> = [
  {
    name: "PostgreSQL, environment stack (OUTBOX_DATABASE_URL, OUTBOX_SCHEMA)",
    async fresh() {
      const schema = freshIdentifier("cli_inbox");
      await migratePostgresInbox(pgPool, { schema });
      return {
        store: createPostgresInboxStore({ pool: pgPool, schema }),
        args: [],
        env: { OUTBOX_DATABASE_URL: pgUrl, OUTBOX_SCHEMA: schema },
        drop: async () => void (await pgPool.query(`DROP SCHEMA "${schema}" CASCADE`)),
      };
    },
  },
  {
    name: "MariaDB, config file",
    async fresh() {
      const table = freshIdentifier("cli_inbox");
      await migrateMySqlInbox(mysqlPool, { table });
      // A store per command: each command closes the store it used (the pool stays the test's).
      setTestConfig({ inbox: () => createMySqlInboxStore({ pool: mysqlPool, table }) });
      return {
        store: createMySqlInboxStore({ pool: mysqlPool, table }),
        args: ["--config", globalConfigPath],
        env: {},
        drop: async () => void (await mysqlPool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_attempts\``)),
      };
    },
  },
  ...mongoClients.map((client, n) => ({
    name: `${n === 0 ? "FerretDB" : "mongo-java-server"}, config file (transactions: false)`,
    async fresh(): Promise<Namespace> {
      const collection = freshIdentifier("cli_inbox");
      const options = { client, db: "outbox_test", collection, transactions: false };
      const store = createMongoInboxStore(options);
      await store.init();
      setTestConfig({ inbox: () => createMongoInboxStore(options) });
      return {
        store: store as InboxStore<unknown>,
        args: ["--config", globalConfigPath],
        env: {},
        async drop() {
          const db = client.db("outbox_test");
          for (const name of [collection, `${collection}_attempts`]) await db.dropCollection(name).catch(() => false);
        },
      };
    },
  })),
];

/**
 * Consumer "shipping": 3 keys recorded 10 days ago and 2 a minute ago, 3 dead letters a minute ago (two on "orders",
 * one on "billing" with a binary payload) and a message that failed once. Consumer "billing": one key, a minute ago.
 */
async function fill(store: InboxStore<unknown>, start: number) {
  const clock = new ManualClock(start - 10 * day);
  const shipping = createInbox({ store, clock, consumer: "shipping", maxAttempts: 2, onError: () => undefined });
  const ok = async () => undefined;
  for (const id of ["old-1", "old-2", "old-3"]) await shipping.handle({ id }, ok);
  clock.advance(10 * day - 60_000);
  for (const id of ["new-1", "new-2"]) await shipping.handle({ id }, ok);
  const once = createInbox({ store, clock, consumer: "shipping", maxAttempts: 1 });
  const fail = (error: string) => () => Promise.reject(new Error(error));
  await once.handle({ id: "d-1", topic: "orders", key: "a", payload: '{"n":1}' }, fail("validation failed"));
  await once.handle({ id: "d-2", topic: "orders", key: "b", payload: new Uint8Array([0xff, 0xfe]) }, fail("boom"));
  await once.handle({ id: "d-3", topic: "billing", key: "a", payload: "x" }, fail("permission denied"));
  await expect(shipping.handle({ id: "failing" }, fail("flaky"))).rejects.toThrow();
  await createInbox({ store, clock, consumer: "billing" }).handle({ id: "new-1" }, ok);
  return shipping;
}

for (const server of servers) {
  describe(`outbox inbox on ${server.name}`, () => {
    it("status, dead list/show/requeue/drop and purge, on the real store", async () => {
      const ns = await server.fresh();
      const cli = async (...args: string[]) => {
        const result = await run([...ns.args, ...args], ns.env);
        return { ...result, body: () => JSON.parse(result.stdout.text) };
      };
      try {
        const start = Date.now();
        const shipping = await fill(ns.store, start);

        const status = await cli("inbox", "status", "--json");
        expect(status.code, status.stderr.text).toBe(ExitCode.Ok);
        const recent = new Date(start - 60_000).toISOString();
        expect(status.body()).toEqual({
          consumers: [
            {
              consumer: "billing",
              processed: 1,
              dead: 0,
              failing: 0,
              oldestProcessedAt: recent,
              newestProcessedAt: recent,
              oldestDeadAt: null,
            },
            {
              consumer: "shipping",
              processed: 5,
              dead: 3,
              failing: 1,
              oldestProcessedAt: new Date(start - 10 * day).toISOString(),
              newestProcessedAt: recent,
              oldestDeadAt: recent,
            },
          ],
        });
        const one = await cli("inbox", "status", "--consumer", "billing", "--json");
        expect(one.body().consumers).toEqual([status.body().consumers[0]]);

        const listed = await cli("inbox", "dead", "list", "--consumer", "shipping", "--topic", "orders", "--json");
        expect(listed.body()).toMatchObject({ matched: 2, scanned: 3, complete: true });
        expect(listed.body().entries.map((letter: { messageId: string }) => letter.messageId)).toEqual(["d-1", "d-2"]);
        const shown = await cli("inbox", "dead", "show", "d-2", "--consumer", "shipping", "--json");
        expect(shown.body()).toMatchObject({ messageId: "d-2", key: "b", payloadText: null, payloadBase64: "//4=" });
        const absent = await cli("inbox", "dead", "show", "d-2", "--consumer", "billing", "--json");
        expect(absent.code).toBe(ExitCode.Failure);
        expect(JSON.parse(absent.stderr.text).error.code).toBe(CliErrorCode.NotFound);

        const requeued = await cli(
          "inbox",
          "dead",
          "requeue",
          "--all",
          "--topic",
          "orders",
          "--consumer",
          "shipping",
          "--json",
        );
        expect(requeued.body()).toMatchObject({ requeued: 2, selected: 2, ids: ["d-1", "d-2"] });
        expect((await shipping.handle({ id: "d-1" }, async () => "ran")).status, "requeued: handled again").toBe(
          "handled",
        );
        const dropped = await cli("inbox", "dead", "drop", "d-3", "--consumer", "shipping", "--json");
        expect(dropped.body()).toMatchObject({ dropped: 1, selected: 1 });
        expect((await shipping.handle({ id: "d-3" }, async () => "ran")).status, "dropped: a duplicate").toBe(
          "duplicate",
        );
        const after = (await cli("inbox", "status", "--consumer", "shipping", "--json")).body().consumers[0];
        expect(after).toMatchObject({ processed: 7, dead: 0, failing: 1 });

        const purged = await cli("inbox", "purge", "--older-than", "7d", "--batch-size", "2", "--json");
        expect(purged.code, purged.stderr.text).toBe(ExitCode.Ok);
        expect(purged.body()).toMatchObject({ deleted: 3 });
        const left = (await cli("inbox", "status", "--consumer", "shipping", "--json")).body().consumers[0];
        expect(left).toMatchObject({ processed: 4, failing: 1, oldestProcessedAt: recent });
      } finally {
        await ns.store.close();
        await ns.drop();
      }
    });
  });
}

describe("outbox inbox: missing or older tables exit 2 with OUTBOX_CLI_CONFIG, naming the setting to fix", () => {
  const errorOf = (stderr: { text: string }) =>
    JSON.parse(stderr.text).error as { code: string; details?: { field?: string; hint?: unknown } };

  it("PostgreSQL, environment stack: no inbox table names OUTBOX_INBOX_TABLE", async () => {
    const result = await run(["inbox", "status", "--json"], {
      OUTBOX_DATABASE_URL: pgUrl,
      OUTBOX_INBOX_TABLE: freshIdentifier("missing"),
    });
    expect(result.code).toBe(ExitCode.Usage);
    const error = errorOf(result.stderr);
    expect(error).toMatchObject({ code: CliErrorCode.Config, details: { field: "OUTBOX_INBOX_TABLE" } });
    expect(typeof error.details?.hint).toBe("string");
  });

  it("MariaDB, config file: tables migrateInbox() of v1 created (no consumer index) name `inbox`", async () => {
    const table = freshIdentifier("cli_inbox_v1");
    await mysqlPool.query(`CREATE TABLE \`${table}\` (
      key_hash BINARY(32) NOT NULL, consumer VARCHAR(255) NOT NULL, message_id VARCHAR(1024) NOT NULL,
      status TINYINT NOT NULL DEFAULT 1, recorded_at BIGINT NOT NULL, attempts INT NOT NULL DEFAULT 0,
      last_error TEXT NULL, message LONGBLOB NULL, PRIMARY KEY (key_hash),
      KEY inbox_processed_idx (status, recorded_at), KEY inbox_dead_idx (consumer, status, message_id(400))
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`);
    await mysqlPool.query(`CREATE TABLE \`${table}_attempts\` (
      key_hash BINARY(32) NOT NULL, attempts INT NOT NULL, last_error TEXT NULL, updated_at BIGINT NOT NULL,
      PRIMARY KEY (key_hash), KEY inbox_attempts_at_idx (updated_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`);
    setTestConfig({ inbox: () => createMySqlInboxStore({ pool: mysqlPool, table }) });
    try {
      const old = await run(["inbox", "status", "--json", "--config", globalConfigPath]);
      expect(old.code).toBe(ExitCode.Usage);
      expect(errorOf(old.stderr)).toMatchObject({ code: CliErrorCode.Config, details: { field: "inbox" } });
      await migrateMySqlInbox(mysqlPool, { table });
      expect((await run(["inbox", "status", "--json", "--config", globalConfigPath])).code).toBe(ExitCode.Ok);
    } finally {
      await mysqlPool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_attempts\``);
    }
  });
});
