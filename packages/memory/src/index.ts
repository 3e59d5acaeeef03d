export { MemoryLockBackend } from "./lock.js";
export { type MemoryMessage, MemoryPublisher, type MemoryPublisherOptions } from "./publisher.js";
export { MemoryStore, type MemoryStoreOptions, MemoryTransaction } from "./store.js";
