export { hasLabel, isConnectionError, mongoCode } from "./errors.js";
export { createMongoStore, MongoStore, type MongoStoreOptions, type MongoTransaction } from "./store.js";
export type { ChangeStreamLike } from "./wake.js";
