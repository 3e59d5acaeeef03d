export { createRedisLockBackend, type RedisLockBackend, type RedisLockBackendOptions } from "./backend.js";
