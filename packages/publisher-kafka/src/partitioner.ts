import { OutboxHeader } from "@outbox/core";

/** What kafkajs hands a partitioner (kafkajs' `PartitionerArgs`, structurally). */
export interface PartitionerArgs {
  topic: string;
  partitionMetadata: ReadonlyArray<{ partitionId: number; leader: number }>;
  message: {
    key?: Buffer | string | null;
    partition?: number | null;
    headers?: Readonly<Record<string, unknown>>;
  };
}

export type Partitioner = (args: PartitionerArgs) => number;

const SEED = 0x9747b28c;
const M = 0x5bd1e995;

/**
 * Kafka's murmur2 (the Java client's `Utils.murmur2`, which kafkajs' DefaultPartitioner ports),
 * in 32-bit integer arithmetic. Returns a signed 32-bit integer.
 */
export function murmur2(data: Uint8Array): number {
  const length = data.length;
  let h = (SEED ^ length) | 0;
  const whole = length & ~3;
  for (let i = 0; i < whole; i += 4) {
    let k = (data[i] as number) | ((data[i + 1] as number) << 8) | ((data[i + 2] as number) << 16);
    k |= (data[i + 3] as number) << 24;
    k = Math.imul(k, M);
    k ^= k >>> 24;
    k = Math.imul(k, M);
    h = Math.imul(h, M) ^ k;
  }
  const rest = length % 4;
  if (rest >= 3) h ^= (data[whole + 2] as number) << 16;
  if (rest >= 2) h ^= (data[whole + 1] as number) << 8;
  if (rest >= 1) {
    h ^= data[whole] as number;
    h = Math.imul(h, M);
  }
  h ^= h >>> 13;
  h = Math.imul(h, M);
  h ^= h >>> 15;
  return h;
}

const toPositive = (value: number): number => value & 0x7fffffff;

function bytesOf(value: Buffer | string): Uint8Array {
  return typeof value === "string" ? Buffer.from(value, "utf8") : value;
}

/**
 * The partitioner the publisher installs on producers it builds. Keyed messages go exactly where
 * kafkajs' DefaultPartitioner (and the Java client) put them: murmur2(key) mod partitions, so
 * the same key always lands on the same partition. Keyless messages are spread by a hash of their
 * `outbox-id` header instead of kafkajs' round-robin counter: a retry then re-sends the very same
 * per-partition batches, which the idempotent producer's sequence numbers deduplicate (a
 * round-robin retry regroups them, and the broker answers OUT_OF_ORDER_SEQUENCE_NUMBER).
 */
export function createOutboxPartitioner(): Partitioner {
  let counter = Math.floor(Math.random() * 0x7fffffff);
  return ({ partitionMetadata, message }) => {
    if (message.partition !== null && message.partition !== undefined) return message.partition;
    const numPartitions = partitionMetadata.length;
    if (message.key !== null && message.key !== undefined) {
      return toPositive(murmur2(bytesOf(message.key))) % numPartitions;
    }
    const available = partitionMetadata.filter((partition) => partition.leader >= 0);
    const pool = available.length > 0 ? available : partitionMetadata;
    const id = message.headers?.[OutboxHeader.Id];
    const spread =
      typeof id === "string" || Buffer.isBuffer(id) ? toPositive(murmur2(bytesOf(id))) : toPositive(counter++);
    return (pool[spread % pool.length] as { partitionId: number }).partitionId;
  };
}
