import {
  heldBack,
  KeyFailures,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxPublisher,
  type PublishOptions,
  type PublishOutcome,
  published,
  transientFailure,
} from "@outbox/core";

/** What a consumer of the in-memory broker sees. */
export interface MemoryMessage {
  readonly topic: string;
  readonly key: string | null;
  readonly payload: Uint8Array;
  readonly headers: Readonly<Record<string, string>>;
  readonly idempotencyKey: string;
  readonly entryId: string;
}

export interface MemoryPublisherOptions {
  /** Decides each entry's fate; default: published. Lets tests inject broker failures. */
  outcome?: (entry: OutboxEntry) => PublishOutcome | Promise<PublishOutcome>;
}

/** The reference publisher: an in-memory broker that records what it accepted, in order. */
export class MemoryPublisher implements OutboxPublisher {
  readonly messages: MemoryMessage[] = [];
  #outcome: MemoryPublisherOptions["outcome"];
  #closed = false;

  constructor(options: MemoryPublisherOptions = {}) {
    this.#outcome = options.outcome;
  }

  async publish(entries: readonly OutboxEntry[], options: PublishOptions = {}): Promise<PublishOutcome[]> {
    if (this.#closed) throw new OutboxError(OutboxErrorCode.Closed, "the memory publisher is closed");
    const outcomes: PublishOutcome[] = [];
    const failed = new KeyFailures();
    for (const entry of entries) {
      if (failed.blocked(entry)) {
        outcomes.push(heldBack(entry));
        continue;
      }
      if (options.signal?.aborted) {
        outcomes.push(
          transientFailure(new OutboxError(OutboxErrorCode.PublishFailed, "publish aborted before sending")),
        );
        continue;
      }
      const outcome = this.#outcome ? await this.#outcome(entry) : published();
      if (outcome.status === "published") {
        this.messages.push({
          topic: entry.topic,
          key: entry.key,
          payload: new Uint8Array(entry.payload),
          headers: { ...entry.headers },
          idempotencyKey: entry.idempotencyKey,
          entryId: entry.id,
        });
      } else {
        failed.fail(entry);
      }
      outcomes.push(outcome);
    }
    return outcomes;
  }

  /** Messages of one topic, in publish order. */
  topic(name: string): MemoryMessage[] {
    return this.messages.filter((message) => message.topic === name);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}
