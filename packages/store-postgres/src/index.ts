export {
  type CaptureNames,
  type CaptureOptions,
  createPostgresCaptureStore,
  dropCapture,
  migrateCapture,
  PostgresCaptureStore,
  type PostgresCaptureStoreOptions,
  resolveCaptureNames,
} from "./capture.js";
export { sqlState } from "./errors.js";
export {
  createPostgresInboxStore,
  type InboxSchemaNames,
  type InboxSchemaOptions,
  inboxSchemaSql,
  migrateInbox,
  PostgresInboxStore,
  type PostgresInboxStoreOptions,
  resolveInboxNames,
} from "./inbox.js";
export type { ListenConnection, PGliteListenApi, WakeSource } from "./listener.js";
export {
  type DrizzleLike,
  type DrizzleSqlTag,
  fromDrizzle,
  fromKnex,
  fromKysely,
  fromPrisma,
  type KnexLike,
  type KyselyCompiledQueryFactory,
  type KyselyLike,
  type PrismaLike,
  type Queryable,
  type ScriptRunner,
} from "./queryable.js";
export { migrate, resolveNames, type SchemaNames, type SchemaOptions, schemaSql } from "./schema.js";
export { createPostgresStore, type PgPoolLike, PostgresStore, type PostgresStoreOptions } from "./store.js";
