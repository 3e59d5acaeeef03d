export {
  type GuardedCallbacks,
  guardedCallbacks,
  type HelperCallbackOptions,
  invalidOption,
  nonEmptyOption,
  nonNegativeOption,
  positiveIntegerOption,
} from "./consumer-helper.js";
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
  InboxConsumerStats,
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
  consumerStats,
  decodeStoredMessage,
  emptyConsumerStats,
  encodeStoredMessage,
  type InboxFailingGroup,
  type InboxKeyGroup,
  listDeadOptions,
  type PurgeBatches,
  purgeInBatches,
  statsConsumer,
} from "./stored.js";
