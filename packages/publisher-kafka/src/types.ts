/**
 * The slice of the kafkajs API the publisher uses, declared structurally so that kafkajs' own
 * `Kafka`/`Producer`/`Admin` fit, and so do clients that implement the kafkajs API.
 */

import type { Partitioner } from "./partitioner.js";

export type KafkaHeaderValue = Buffer | string | Array<Buffer | string> | undefined;

export interface KafkaMessage {
  key?: Buffer | string | null;
  value: Buffer | string | null;
  partition?: number;
  headers?: Record<string, KafkaHeaderValue>;
  timestamp?: string;
}

export interface KafkaTopicMessages {
  topic: string;
  messages: KafkaMessage[];
}

export interface KafkaProducerBatch {
  acks?: number;
  timeout?: number;
  /** kafkajs `CompressionTypes` (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd). */
  compression?: number;
  topicMessages?: KafkaTopicMessages[];
}

export interface KafkaProducerLike {
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  sendBatch(batch: KafkaProducerBatch): Promise<unknown>;
  isIdempotent?(): boolean;
  readonly events?: { readonly DISCONNECT: string };
  on?(eventName: "producer.disconnect", listener: (event: unknown) => void): () => void;
}

export interface KafkaRetryOptions {
  maxRetryTime?: number;
  initialRetryTime?: number;
  factor?: number;
  multiplier?: number;
  retries?: number;
  restartOnFailure?: (error: Error) => Promise<boolean>;
}

/** kafkajs `ProducerConfig`. */
export interface KafkaProducerConfig {
  createPartitioner?: () => Partitioner;
  retry?: KafkaRetryOptions;
  metadataMaxAge?: number;
  allowAutoTopicCreation?: boolean;
  idempotent?: boolean;
  transactionalId?: string;
  transactionTimeout?: number;
  maxInFlightRequests?: number;
}

export interface KafkaClientLike {
  producer(config?: KafkaProducerConfig): KafkaProducerLike;
}

export interface KafkaTopicConfig {
  topic: string;
  numPartitions?: number;
  replicationFactor?: number;
  configEntries?: Array<{ name: string; value: string }>;
}

export interface KafkaAdminLike {
  listTopics(): Promise<string[]>;
  createTopics(options: {
    topics: KafkaTopicConfig[];
    validateOnly?: boolean;
    waitForLeaders?: boolean;
    timeout?: number;
  }): Promise<boolean>;
}
