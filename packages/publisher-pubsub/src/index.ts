export {
  classifyPubSubError,
  failureType,
  GrpcStatus,
  grpcStatus,
  isPausedKeyError,
  type PubSubFailure,
} from "./classify.js";
export {
  createPubSubPublisher,
  defaultBatching,
  type PubSubClientLike,
  PubSubLimits,
  type PubSubMessage,
  PubSubPublisher,
  type PubSubPublisherOptions,
  type PubSubTopicLike,
  pubsubReconnectOptions,
} from "./publisher.js";
