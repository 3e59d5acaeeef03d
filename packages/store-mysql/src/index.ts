export { ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, isConnectionError, isLockConflict, mysqlErrno } from "./errors.js";
export {
  createMySqlInboxStore,
  type InboxSchemaNames,
  type InboxSchemaOptions,
  inboxKeyHash,
  inboxSchemaSql,
  inboxSchemaStatements,
  MySqlInboxStore,
  type MySqlInboxStoreOptions,
  migrateInbox,
  resolveInboxNames,
} from "./inbox.js";
export type { MySqlPoolConnectionLike, MySqlPoolLike } from "./pool.js";
export {
  type DrizzleLike,
  type DrizzleSqlTag,
  fromDrizzle,
  fromKnex,
  fromKysely,
  fromPrisma,
  fromSequelize,
  fromTypeORM,
  type KnexLike,
  type KyselyCompiledQueryFactory,
  type KyselyLike,
  type MySqlQueryable,
  normalizeResult,
  type PrismaLike,
  type SequelizeLike,
  type StatementResult,
  type TypeOrmLike,
} from "./queryable.js";
export {
  type ConnectionSource,
  migrate,
  resolveNames,
  type SchemaNames,
  type SchemaOptions,
  schemaSql,
  schemaStatements,
} from "./schema.js";
export { createMySqlStore, MySqlStore, type MySqlStoreOptions } from "./store.js";
export { keyHash } from "./values.js";
