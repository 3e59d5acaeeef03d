export {
  createPostgresLockBackend,
  type LockClientClass,
  type LockSession,
  PostgresLockBackend,
  type PostgresLockBackendOptions,
} from "./backend.js";
