export {
  describeLockConformance,
  type LockCheckId,
  type LockConformanceOptions,
  type LockHarness,
  lockChecks,
} from "./lock.js";
export type { BrokerStall, TransientCondition } from "./publisher.js";
export {
  describePublisherConformance,
  makeEntry,
  type PublisherCheckId,
  type PublisherConformanceOptions,
  type PublisherHarness,
  publisherChecks,
  type ReceivedMessage,
} from "./publisher.js";
export {
  describeRelayConformance,
  type RealTimeLockBackend,
  type RelayCheckContext,
  type RelayCheckId,
  type RelayConformanceOptions,
  type RelayFactory,
  type RelayUnderTest,
  relayCheckContext,
  relayChecks,
} from "./relay.js";
export {
  describeStoreConformance,
  memoryStoreHarness,
  type StoreCheckId,
  type StoreConformanceOptions,
  type StoreHarness,
  storeChecks,
} from "./store.js";
export { type Check, runChecks, type SkipReasons } from "./suite.js";
export {
  awkwardPayloads,
  bytesEqual,
  deferred,
  keyOrderViolations,
  seededRandom,
  uniqueName,
  wrapLockBackend,
  wrapStore,
} from "./util.js";
