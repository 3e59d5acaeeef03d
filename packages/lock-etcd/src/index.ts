export { createEtcdLockBackend, type EtcdLockBackend, type EtcdLockBackendOptions } from "./backend.js";
