export { classifyKafkaError, errorChain, type KafkaFailure, kafkaErrorType } from "./classify.js";
export { createOutboxPartitioner, murmur2, type Partitioner, type PartitionerArgs } from "./partitioner.js";
export {
  createKafkaPublisher,
  defaultProducerConfig,
  estimateRecordBytes,
  KafkaPublisher,
  type KafkaPublisherOptions,
  type KafkaPublisherSource,
} from "./publisher.js";
export { type EnsureTopicsOptions, ensureTopics } from "./topics.js";
export type {
  KafkaAdminLike,
  KafkaClientLike,
  KafkaHeaderValue,
  KafkaMessage,
  KafkaProducerBatch,
  KafkaProducerConfig,
  KafkaProducerLike,
  KafkaRetryOptions,
  KafkaTopicConfig,
  KafkaTopicMessages,
} from "./types.js";
