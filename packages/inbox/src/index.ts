export { createInbox, type HandleResult, type Inbox, type InboxOptions } from "./inbox.js";
export { KeyOrder } from "./key-order.js";
export { MemoryInboxStore, MemoryInboxTransaction } from "./memory.js";
export {
  dedupeKey,
  type HeaderValue,
  type InboxMessage,
  inboxMessageFrom,
  maxMessageIdLength,
  normalizedMessage,
  orderingKey,
  type ReceivedMessage,
} from "./message.js";
export type {
  InboxDeadItem,
  InboxDeadLetter,
  InboxFailure,
  InboxPurgeRequest,
  InboxRecord,
  InboxStore,
  InboxStoreCapabilities,
  InboxTransaction,
  ListInboxDeadOptions,
  RecordOutcome,
} from "./store.js";
export {
  decodeStoredMessage,
  encodeStoredMessage,
  listDeadOptions,
  type PurgeBatches,
  purgeInBatches,
} from "./stored.js";
