import {
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxPublisher,
  type PublisherCapabilities,
  type PublishOptions,
  type PublishOutcome,
  permanentFailure,
  published,
  transientFailure,
} from "@outbox/core";
import type { Redis } from "ioredis";
import { encodeStreamFields } from "./fields.js";

export interface RedisStreamPublisherOptions {
  /** The caller's ioredis client. The publisher never closes it. */
  client: Redis;
  /** Stream name for an entry. Default: the entry's topic. */
  stream?: (entry: OutboxEntry) => string;
  /** Trims each stream to about this many entries on every XADD (`MAXLEN ~ n`). Default: no trimming. */
  maxLen?: number;
  /**
   * How long a batch may wait for Redis before every entry of it counts as a transient failure
   * (it may still land later: a duplicate, which at-least-once delivery allows). Default 10 s.
   */
  timeoutMs?: number;
  /**
   * Largest payload sent; bigger entries fail permanently without a round trip. Default 512 MiB,
   * Redis' default `proto-max-bulk-len`. Set it to what your server accepts.
   */
  maxPayloadBytes?: number;
}

export interface RedisStreamPublisher extends OutboxPublisher {
  readonly capabilities: PublisherCapabilities;
  /** Marks the publisher closed (publish then throws OUTBOX_CLOSED). Never closes the caller's client. */
  close(): Promise<void>;
}

/**
 * Reply errors that say "not now" rather than "never": memory limit, loading, busy script,
 * read-only replica after a failover, cluster redirections and outages.
 */
const transientReplies = new Set([
  "OOM",
  "LOADING",
  "BUSY",
  "READONLY",
  "MASTERDOWN",
  "TRYAGAIN",
  "CLUSTERDOWN",
  "NOREPLICAS",
  "MOVED",
  "ASK",
]);

/** Per-entry outcome of a failed XADD: a Redis refusal is permanent unless it is a known "not now". */
export function classifyRedisError(error: unknown): PublishOutcome {
  if (error instanceof Error && error.name === "ReplyError") {
    const code = error.message.split(" ", 1)[0] ?? "";
    return transientReplies.has(code) ? transientFailure(error) : permanentFailure(error);
  }
  // Connection loss, timeouts, "Stream isn't writeable": the command may not have reached Redis.
  return transientFailure(error);
}

function positive(value: number | undefined, name: string): number | undefined {
  if (value !== undefined && !(Number.isInteger(value) && value > 0)) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive integer, got ${value}`);
  }
  return value;
}

class StreamPublisher implements RedisStreamPublisher {
  readonly capabilities: PublisherCapabilities;
  readonly #client: Redis;
  readonly #stream: (entry: OutboxEntry) => string;
  readonly #trim: string[];
  readonly #timeoutMs: number;
  readonly #maxPayloadBytes: number;
  #closed = false;

  constructor(options: RedisStreamPublisherOptions) {
    if (!options?.client || typeof options.client.pipeline !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "createRedisStreamPublisher needs an ioredis client");
    }
    if (options.stream !== undefined && typeof options.stream !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "stream must be a function (entry) => string");
    }
    const maxLen = positive(options.maxLen, "maxLen");
    this.#client = options.client;
    this.#stream = options.stream ?? ((entry) => entry.topic);
    this.#trim = maxLen === undefined ? [] : ["MAXLEN", "~", String(maxLen)];
    this.#timeoutMs = positive(options.timeoutMs, "timeoutMs") ?? 10_000;
    this.#maxPayloadBytes = positive(options.maxPayloadBytes, "maxPayloadBytes") ?? 512 * 1024 * 1024;
    this.capabilities = { maxPayloadBytes: this.#maxPayloadBytes };
  }

  async publish(entries: readonly OutboxEntry[], options: PublishOptions = {}): Promise<PublishOutcome[]> {
    if (this.#closed) throw new OutboxError(OutboxErrorCode.Closed, "the Redis stream publisher is closed");
    if (options.signal?.aborted) {
      const reason = new OutboxError(OutboxErrorCode.PublishFailed, "not sent: the publish was aborted", {
        cause: options.signal.reason,
      });
      return entries.map(() => transientFailure(reason));
    }
    const outcomes: Array<PublishOutcome | undefined> = entries.map(() => undefined);
    const sent: number[] = [];
    const pipeline = this.#client.pipeline();
    entries.forEach((entry, index) => {
      if (entry.payload.byteLength > this.#maxPayloadBytes) {
        outcomes[index] = permanentFailure(
          new OutboxError(
            OutboxErrorCode.PublishFailed,
            `payload is ${entry.payload.byteLength} bytes, over maxPayloadBytes (${this.#maxPayloadBytes})`,
          ),
        );
        return;
      }
      let stream: string;
      try {
        stream = this.#stream(entry);
        if (typeof stream !== "string" || stream.length === 0) throw new Error(`got ${JSON.stringify(stream)}`);
      } catch (error) {
        outcomes[index] = permanentFailure(
          new OutboxError(OutboxErrorCode.PublishFailed, `no stream name for entry ${entry.id}`, { cause: error }),
        );
        return;
      }
      pipeline.xadd(stream, ...this.#trim, "*", ...encodeStreamFields(entry));
      sent.push(index);
    });
    if (sent.length > 0) {
      const results = await this.#exec(pipeline, options.signal);
      sent.forEach((entryIndex, commandIndex) => {
        const result = Array.isArray(results) ? results[commandIndex] : undefined;
        if (!result) {
          outcomes[entryIndex] = transientFailure(
            results instanceof Error
              ? results
              : new OutboxError(OutboxErrorCode.PublishFailed, "Redis returned no reply for this entry"),
          );
        } else if (result[0]) {
          outcomes[entryIndex] = classifyRedisError(result[0]);
        } else {
          outcomes[entryIndex] = published();
        }
      });
    }
    return outcomes as PublishOutcome[];
  }

  /** Marks the publisher closed. The ioredis client belongs to the caller and stays open. */
  async close(): Promise<void> {
    this.#closed = true;
  }

  /** One round trip for the whole batch; a failure of the round trip itself is returned, not thrown. */
  async #exec(
    pipeline: ReturnType<Redis["pipeline"]>,
    signal: AbortSignal | undefined,
  ): Promise<Array<[Error | null, unknown]> | Error> {
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const timeout = new Promise<Error>((resolve) => {
      timer = setTimeout(
        () =>
          resolve(new OutboxError(OutboxErrorCode.PublishFailed, `Redis did not confirm within ${this.#timeoutMs} ms`)),
        this.#timeoutMs,
      );
      onAbort = () =>
        resolve(new OutboxError(OutboxErrorCode.PublishFailed, "Redis did not confirm before the publish was aborted"));
      signal?.addEventListener("abort", onAbort, { once: true });
    });
    try {
      const results = await Promise.race([
        pipeline.exec().then(
          (value) => value ?? new OutboxError(OutboxErrorCode.PublishFailed, "the pipeline was discarded"),
          (error: unknown) =>
            error instanceof Error ? error : new OutboxError(OutboxErrorCode.PublishFailed, String(error)),
        ),
        timeout,
      ]);
      return results;
    } finally {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener("abort", onAbort);
    }
  }
}

/**
 * Publishes outbox entries to Redis Streams: one pipelined round trip per batch, one XADD per
 * entry, an outcome per entry.
 */
export function createRedisStreamPublisher(options: RedisStreamPublisherOptions): RedisStreamPublisher {
  return new StreamPublisher(options);
}
