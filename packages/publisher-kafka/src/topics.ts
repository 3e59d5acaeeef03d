import { OutboxError, OutboxErrorCode } from "@outbox/core";
import type { KafkaAdminLike } from "./types.js";

export interface EnsureTopicsOptions {
  /** Default: the broker's num.partitions (-1). */
  partitions?: number;
  /** Default: the broker's default.replication.factor (-1). */
  replicationFactor?: number;
  /** Topic configs, e.g. `{ "max.message.bytes": "2097152" }`. */
  config?: Readonly<Record<string, string>>;
  /** Default 30_000. */
  timeoutMs?: number;
}

/**
 * Creates the topics that do not exist yet and waits for their partition leaders. For
 * development and tests; production topics belong to your infrastructure code. Takes a
 * connected kafkajs `Admin`. Returns the names it created.
 */
export async function ensureTopics(
  admin: KafkaAdminLike,
  topics: readonly string[],
  options: EnsureTopicsOptions = {},
): Promise<string[]> {
  for (const topic of topics) {
    if (typeof topic !== "string" || topic.length === 0) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        `topic names must be non-empty strings, got ${JSON.stringify(topic)}`,
      );
    }
  }
  const existing = new Set(await admin.listTopics());
  const missing = [...new Set(topics)].filter((topic) => !existing.has(topic));
  if (missing.length === 0) return [];
  await admin.createTopics({
    waitForLeaders: true,
    timeout: options.timeoutMs ?? 30_000,
    topics: missing.map((topic) => ({
      topic,
      numPartitions: options.partitions ?? -1,
      replicationFactor: options.replicationFactor ?? -1,
      configEntries: Object.entries(options.config ?? {}).map(([name, value]) => ({ name, value })),
    })),
  });
  return missing;
}
