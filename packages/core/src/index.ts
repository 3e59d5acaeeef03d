export { defaultRetryPolicy, type RetryPolicy, resolveRetryPolicy, retryDelayMs } from "./backoff.js";
export { type Clock, ManualClock, systemClock } from "./clock.js";
export {
  type DeadLetterFilter,
  deadLetterFilter,
  matchesDeadLetterFilter,
  maxDeadLetterFilterLength,
} from "./dead-letters.js";
export {
  defaultEntryLimits,
  type EntryLimits,
  jsonPayload,
  type OutboxEntry,
  type OutboxMessage,
  type OutboxPayload,
  type PreparedMessage,
  payloadText,
  prepareMessages,
} from "./entry.js";
export { describeError, OutboxError, OutboxErrorCode, type OutboxErrorOptions } from "./errors.js";
export {
  checkLockCall,
  DistributedLock,
  type DistributedLockOptions,
  type LockBackend,
  type LockBackendCapabilities,
  type LockGrant,
  randomId,
} from "./lock.js";
export { mostPendingFirst } from "./pending-summary.js";
export {
  headersWithMetadata,
  heldBack,
  KeyFailures,
  OutboxHeader,
  type OutboxPublisher,
  outcomeError,
  type PublisherCapabilities,
  type PublishOptions,
  type PublishOutcome,
  permanentFailure,
  published,
  routeEntry,
  transientFailure,
} from "./publisher.js";
export {
  type LeaderOptions,
  OutboxRelay,
  type OutboxRelayOptions,
  type RelayEvents,
  type RelayMetrics,
  type RelayPhase,
} from "./relay.js";
export type {
  BlockedKey,
  CaptureStats,
  ClaimRequest,
  DeadLetterItem,
  Fence,
  ListDeadOptions,
  OutboxStore,
  PendingSummary,
  PendingSummaryOptions,
  PurgeRequest,
  RetryItem,
  SettleContext,
  StoreCapabilities,
  StoreStats,
  StoreTransaction,
  Unsubscribe,
} from "./store.js";
export { type WakeSource, WakeUpListeners, type WakeUpListenersOptions } from "./wake-ups.js";
