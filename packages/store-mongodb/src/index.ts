export { hasLabel, isConnectionError, mongoCode } from "./errors.js";
export { createMongoInboxStore, MongoInboxStore, type MongoInboxStoreOptions } from "./inbox.js";
export { createMongoStore, MongoStore, type MongoStoreOptions, type MongoTransaction } from "./store.js";
export type { ChangeStreamLike } from "./wake.js";
