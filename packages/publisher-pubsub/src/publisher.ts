import type { BatchPublishOptions, PublishOptions as TopicPublishOptions } from "@google-cloud/pubsub";
import {
  describeError,
  headersWithMetadata,
  heldBack,
  KeyFailures,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  OutboxHeader,
  type OutboxPublisher,
  type PublisherCapabilities,
  type PublishOptions,
  type PublishOutcome,
  permanentFailure,
  published,
  routeEntry,
  transientFailure,
} from "@outbox/core";
import { classifyPubSubError, GrpcStatus, isPausedKeyError, type PubSubFailure } from "./classify.js";

/** A message as `Topic.publishMessage` takes it. */
export interface PubSubMessage {
  data: Buffer;
  attributes: Record<string, string>;
  orderingKey?: string;
}

/** The slice of @google-cloud/pubsub's `Topic` the publisher uses. */
export interface PubSubTopicLike {
  publishMessage(message: PubSubMessage): Promise<string>;
  resumePublishing(orderingKey: string): void;
  flush(): Promise<void>;
}

/** The slice of @google-cloud/pubsub's `PubSub` client the publisher uses. */
export interface PubSubClientLike {
  topic(name: string, options?: TopicPublishOptions): PubSubTopicLike;
}

/** Limits of the Pub/Sub service that the publisher checks before sending. */
export const PubSubLimits = {
  /** Attributes per message. */
  maxAttributes: 100,
  /** Bytes of an attribute key (UTF-8). */
  maxAttributeKeyBytes: 256,
  /** Bytes of an attribute value (UTF-8). */
  maxAttributeValueBytes: 1024,
  /** Bytes of an ordering key (UTF-8). */
  maxOrderingKeyBytes: 1024,
  /** The client's largest batch (`BATCH_LIMITS.maxBytes`), under the service's 10 MB per request. */
  maxMessageBytes: 9 * 1024 * 1024,
} as const;

/**
 * Batching the publisher gives each topic: up to the client's own limits per request, sent as
 * soon as the publish() call has handed over its entries (a 0 ms timer fires after that
 * synchronous loop), so a call costs one request per ordering key and one for its keyless entries.
 */
export const defaultBatching: Readonly<BatchPublishOptions> = Object.freeze({
  maxMessages: 1_000,
  maxBytes: PubSubLimits.maxMessageBytes,
  maxMilliseconds: 0,
});

export interface PubSubPublisherOptions {
  /** Your `PubSub` client (it honours `PUBSUB_EMULATOR_HOST`). The publisher never closes it. */
  pubsub: PubSubClientLike;
  /** Destination topic per entry (id or `projects/<p>/topics/<t>`). Default: `entry.topic`. A throw or an empty name fails that entry permanently. */
  topic?: (entry: OutboxEntry) => string;
  /**
   * Largest message sent, counted like the client does (data + attribute keys and values) plus
   * the ordering key. Bigger entries fail permanently without being sent. Default 9 MiB (the
   * client's largest batch; the service takes 10 MB per request).
   */
  maxMessageBytes?: number;
  /**
   * Upper bound of one publish() call; entries unconfirmed then are reported transient (and may
   * still reach Pub/Sub: at-least-once). Also the client's retry budget per request (its retries
   * of at most 5 s each). Keep it below the relay's lease (30 s by default). Default 20_000.
   */
  timeoutMs?: number;
  /** Overrides the client's batching per topic. Default: {@link defaultBatching}. */
  batching?: BatchPublishOptions;
  /** Overrides the classification of a publish error; return undefined to keep the default. */
  classifyError?: (error: unknown) => PubSubFailure | undefined;
}

/** What the client retries a publish on: its own defaults for Publish. */
const retryCodes = [
  GrpcStatus.ABORTED,
  GrpcStatus.CANCELLED,
  GrpcStatus.DEADLINE_EXCEEDED,
  GrpcStatus.INTERNAL,
  GrpcStatus.RESOURCE_EXHAUSTED,
  GrpcStatus.UNAVAILABLE,
  GrpcStatus.UNKNOWN,
];

/**
 * The client's retries within `timeoutMs`. Each attempt gets at most 5 s (a bare `timeout` would
 * give the first attempt all of it: a request sent on a connection that a network fault left
 * half-open then waits out the whole budget, and the key's later messages queue behind it), and
 * retries follow each other within a second.
 */
function publishRetry(timeoutMs: number) {
  const attemptMs = Math.min(5_000, timeoutMs);
  return {
    retryCodes,
    backoffSettings: {
      initialRetryDelayMillis: 100,
      retryDelayMultiplier: 1.3,
      maxRetryDelayMillis: 1_000,
      initialRpcTimeoutMillis: attemptMs,
      rpcTimeoutMultiplier: 1,
      maxRpcTimeoutMillis: attemptMs,
      totalTimeoutMillis: timeoutMs,
    },
  };
}

/**
 * gRPC channel options for your `PubSub` client: reconnect within 1 s of a network fault's end.
 * gRPC's own reconnect backoff grows 1.6x per failed attempt up to 120 s, so after a few seconds of
 * refused connections the client may wait several more before trying again.
 * `new PubSub({ projectId, ...pubsubReconnectOptions })`.
 */
export const pubsubReconnectOptions = Object.freeze({
  "grpc.initial_reconnect_backoff_ms": 250,
  "grpc.max_reconnect_backoff_ms": 1_000,
});

interface Send {
  readonly index: number;
  readonly entry: OutboxEntry;
  readonly topicName: string;
  readonly topic: PubSubTopicLike;
  readonly message: PubSubMessage;
  result?: Settled;
}

type Settled = { readonly ok: true } | { readonly ok: false; readonly error: unknown };

const settle = (promise: Promise<unknown>): Promise<Settled> =>
  promise.then(
    () => ({ ok: true }) as const,
    (error: unknown) => ({ ok: false, error }) as const,
  );

function positiveOption(value: number | undefined, fallback: number, name: string): number {
  const result = value ?? fallback;
  if (!Number.isFinite(result) || result <= 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive number, got ${value}`);
  }
  return result;
}

const utf8Length = (value: string): number => Buffer.byteLength(value, "utf8");

function failed(entry: OutboxEntry, topic: string, failure: PubSubFailure, message: string, cause?: unknown) {
  const error = new OutboxError(OutboxErrorCode.PublishFailed, `${failure.type} (topic "${topic}"): ${message}`, {
    ...(cause === undefined ? {} : { cause }),
    details: { entryId: entry.id, topic, type: failure.type, kind: failure.kind },
  });
  return failure.kind === "permanent" ? permanentFailure(error) : transientFailure(error);
}

/** Publishes outbox entries to Google Cloud Pub/Sub. Create with createPubSubPublisher(). */
export class PubSubPublisher implements OutboxPublisher {
  readonly capabilities: PublisherCapabilities;
  readonly #pubsub: PubSubClientLike;
  readonly #route: (entry: OutboxEntry) => string;
  readonly #maxMessageBytes: number;
  readonly #timeoutMs: number;
  readonly #topicOptions: TopicPublishOptions;
  readonly #classify: (error: unknown) => PubSubFailure;
  readonly #topics = new Map<string, PubSubTopicLike>();
  readonly #inFlight = new Set<Promise<unknown>>();
  #closed = false;

  constructor(options: PubSubPublisherOptions) {
    if (!options?.pubsub || typeof options.pubsub.topic !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "createPubSubPublisher needs { pubsub }: a PubSub client");
    }
    if (options.topic !== undefined && typeof options.topic !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "topic must be a function (entry) => string");
    }
    this.#pubsub = options.pubsub;
    this.#route = options.topic ?? ((entry) => entry.topic);
    this.#maxMessageBytes = positiveOption(options.maxMessageBytes, PubSubLimits.maxMessageBytes, "maxMessageBytes");
    this.#timeoutMs = positiveOption(options.timeoutMs, 20_000, "timeoutMs");
    this.#topicOptions = {
      messageOrdering: true,
      batching: { ...defaultBatching, ...options.batching },
      // The client's retry budget per request (its default is 600 s): an outage becomes a
      // transient outcome instead of a request that outlives the relay's lease.
      gaxOpts: { retry: publishRetry(this.#timeoutMs) },
    };
    const custom = options.classifyError;
    this.#classify = custom ? (error) => custom(error) ?? classifyPubSubError(error) : classifyPubSubError;
    this.capabilities = Object.freeze({ maxPayloadBytes: this.#maxMessageBytes });
  }

  publish(entries: readonly OutboxEntry[], options: PublishOptions = {}): Promise<PublishOutcome[]> {
    if (this.#closed) {
      return Promise.reject(new OutboxError(OutboxErrorCode.Closed, "the Pub/Sub publisher is closed"));
    }
    if (entries.length === 0) return Promise.resolve([]);
    const run = this.#publish(entries, options.signal);
    this.#inFlight.add(run);
    void run.finally(() => this.#inFlight.delete(run)).catch(() => undefined);
    return run;
  }

  /**
   * Waits for the publish calls in flight, then for the client to send what it still holds
   * (bounded by timeoutMs). Never closes your PubSub client.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.allSettled([...this.#inFlight]);
    const flushes = Promise.allSettled([...this.#topics.values()].map((topic) => topic.flush()));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(resolve, this.#timeoutMs);
    });
    await Promise.race([flushes, timeout]);
    clearTimeout(timer);
  }

  async #publish(entries: readonly OutboxEntry[], signal: AbortSignal | undefined): Promise<PublishOutcome[]> {
    if (signal?.aborted) {
      const error = new OutboxError(OutboxErrorCode.PublishFailed, "not sent: the publish was aborted", {
        cause: signal.reason,
        details: { type: "ABORTED" },
      });
      return entries.map(() => transientFailure(error));
    }
    const outcomes: Array<PublishOutcome | undefined> = new Array(entries.length);
    const failures = new KeyFailures();
    /** Keys the client paused in this call: resumed at the end, so the next call can publish them. */
    const toResume = new Map<PubSubTopicLike, Set<string>>();
    const pause = (send: Send) => {
      if (!send.message.orderingKey) return;
      const keys = toResume.get(send.topic);
      if (keys) keys.add(send.message.orderingKey);
      else toResume.set(send.topic, new Set([send.message.orderingKey]));
    };
    const stop = this.#stopper(signal);
    try {
      // Hand every sendable entry to the client in one synchronous loop: its batching sends one
      // request per ordering key (the key's entries in input order) and one for keyless entries.
      const sends: Send[] = [];
      const pending: Array<Promise<void>> = [];
      entries.forEach((entry, index) => {
        if (failures.blocked(entry)) {
          outcomes[index] = heldBack(entry);
          return;
        }
        const prepared = this.#prepare(entry);
        if ("status" in prepared) {
          outcomes[index] = prepared;
          failures.fail(entry);
          return;
        }
        const topic = this.#topic(prepared.topicName);
        const send: Send = { index, entry, topic, ...prepared };
        let sent: Promise<string>;
        try {
          sent = topic.publishMessage(send.message);
        } catch (error) {
          // The client validates synchronously (types of data and attributes): never sendable.
          outcomes[index] = failed(
            entry,
            send.topicName,
            { kind: "permanent", scope: "message", type: "INVALID_MESSAGE" },
            describeError(error),
            error,
          );
          failures.fail(entry);
          return;
        }
        sends.push(send);
        pending.push(
          settle(sent).then((result) => {
            send.result = result;
            // Failed after this call stopped waiting: the key is paused now, resume it so the
            // next call (which starts again from this entry) can publish it.
            if (stop.stopped && !result.ok) this.#resume(send);
          }),
        );
      });
      await Promise.race([Promise.all(pending), stop.promise]);

      // Outcomes in input order; a message sharing one refused request with others is isolated.
      const isolate: Send[] = [];
      const shared = countShared(sends);
      for (const send of sends) {
        const { entry, result } = send;
        if (result?.ok) {
          // On Pub/Sub even after an earlier failure of its key (never expected: the client
          // fails everything it holds for a key after a failed request).
          outcomes[send.index] = published();
          continue;
        }
        if (failures.blocked(entry)) {
          outcomes[send.index] = heldBack(entry);
          if (result) pause(send);
          continue;
        }
        if (!result) {
          outcomes[send.index] = this.#unconfirmed(entry, send.topicName, signal);
          failures.fail(entry);
          continue;
        }
        const failure = this.#failure(result.error);
        pause(send);
        if (failure.kind === "permanent" && failure.scope === "message" && (shared.get(result.error) ?? 0) > 1) {
          isolate.push(send);
          if (entry.key !== null) failures.fail(entry); // the rest of its run waits for the isolation
          continue;
        }
        outcomes[send.index] = failed(entry, send.topicName, failure, describeError(result.error), result.error);
        failures.fail(entry);
      }
      if (isolate.length > 0) await this.#isolate(isolate, sends, outcomes, stop, signal);
    } finally {
      stop.dispose();
      for (const [topic, keys] of toResume) for (const key of keys) topic.resumePublishing(key);
    }
    return outcomes.map(
      (outcome, index) =>
        outcome ??
        transientFailure(
          new OutboxError(OutboxErrorCode.PublishFailed, `entry ${entries[index]?.id} was not sent (internal error)`),
        ),
    );
  }

  /**
   * The service refused a request of several messages as invalid (INVALID_ARGUMENT), and does
   * not say which one. Send them again one at a time, in input order: keyless ones each alone,
   * a key's run up to its first refusal (the rest of the run is held back). Rare: the known
   * limits are checked before sending; a topic schema the data does not match gets here.
   */
  async #isolate(
    culprits: Send[],
    sends: Send[],
    outcomes: Array<PublishOutcome | undefined>,
    stop: Stopper,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const failures = new KeyFailures();
    const suspects = new Set(culprits.map((send) => send.result && !send.result.ok && send.result.error));
    // Every message of those requests (the ones after the first of a key too), in input order.
    const group = sends.filter((send) => send.result && !send.result.ok && suspects.has(send.result.error));
    for (const send of group) {
      const { entry } = send;
      if (failures.blocked(entry)) {
        outcomes[send.index] = heldBack(entry);
        continue;
      }
      if (stop.stopped) {
        outcomes[send.index] = this.#unconfirmed(entry, send.topicName, signal);
        failures.fail(entry);
        continue;
      }
      // The failed request paused the key in the client; this very key is what we send next.
      if (send.message.orderingKey) send.topic.resumePublishing(send.message.orderingKey);
      const result = await Promise.race([settle(send.topic.publishMessage(send.message)), stop.promise]);
      if (result?.ok) {
        outcomes[send.index] = published();
        continue;
      }
      failures.fail(entry);
      outcomes[send.index] = result
        ? failed(entry, send.topicName, this.#failure(result.error), describeError(result.error), result.error)
        : this.#unconfirmed(entry, send.topicName, signal);
    }
  }

  #failure(error: unknown): PubSubFailure {
    // Refused by the client because an earlier failure paused the key: never sent.
    if (isPausedKeyError(error)) return { kind: "transient", type: "ORDERING_KEY_PAUSED" };
    return this.#classify(error);
  }

  #unconfirmed(entry: OutboxEntry, topic: string, signal: AbortSignal | undefined): PublishOutcome {
    const why = signal?.aborted ? "the publish was aborted" : `timeoutMs ${this.#timeoutMs} passed`;
    return failed(entry, topic, { kind: "transient", type: "TIMEOUT" }, `not confirmed before ${why}`);
  }

  #resume(send: Send): void {
    if (send.message.orderingKey) send.topic.resumePublishing(send.message.orderingKey);
  }

  #topic(name: string): PubSubTopicLike {
    let topic = this.#topics.get(name);
    if (!topic) {
      topic = this.#pubsub.topic(name, this.#topicOptions);
      this.#topics.set(name, topic);
    }
    return topic;
  }

  #prepare(entry: OutboxEntry): { topicName: string; message: PubSubMessage } | PublishOutcome {
    const topicName = routeEntry(entry, this.#route);
    if (typeof topicName !== "string") return topicName;
    const attributes = headersWithMetadata(entry);
    if (topicName !== entry.topic) attributes[OutboxHeader.Topic] = entry.topic;
    const invalid = (reason: string) =>
      failed(entry, topicName as string, { kind: "permanent", scope: "message", type: "INVALID_ARGUMENT" }, reason);

    const payload = entry.payload;
    let bytes = payload.byteLength;
    const names = Object.keys(attributes);
    if (names.length > PubSubLimits.maxAttributes) {
      return invalid(`${names.length} attributes, over Pub/Sub's ${PubSubLimits.maxAttributes}`);
    }
    for (const name of names) {
      const value = attributes[name] as string;
      const nameBytes = utf8Length(name);
      const valueBytes = utf8Length(value);
      if (nameBytes > PubSubLimits.maxAttributeKeyBytes) {
        return invalid(`attribute key of ${nameBytes} bytes, over Pub/Sub's ${PubSubLimits.maxAttributeKeyBytes}`);
      }
      if (valueBytes > PubSubLimits.maxAttributeValueBytes) {
        return invalid(
          `attribute "${name}" has a ${valueBytes}-byte value, over Pub/Sub's ${PubSubLimits.maxAttributeValueBytes}`,
        );
      }
      if (name.startsWith("goog")) return invalid(`attribute key "${name}" uses Pub/Sub's reserved prefix "goog"`);
      bytes += nameBytes + valueBytes;
    }
    const message: PubSubMessage = {
      // A view on the entry's bytes, not a copy.
      data: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
      attributes,
    };
    if (entry.key === "") {
      // Pub/Sub reads an empty ordering key as none: the consumer would get null. Refused, not altered.
      return permanentFailure(
        new OutboxError(
          OutboxErrorCode.InvalidEntry,
          `entry ${entry.id} has an empty-string key: Pub/Sub cannot carry it (an empty ordering key means none)`,
          { details: { entryId: entry.id, topic: topicName, type: "EMPTY_ORDERING_KEY", kind: "permanent" } },
        ),
      );
    }
    if (entry.key !== null) {
      const keyBytes = utf8Length(entry.key);
      if (keyBytes > PubSubLimits.maxOrderingKeyBytes) {
        return invalid(`ordering key of ${keyBytes} bytes, over Pub/Sub's ${PubSubLimits.maxOrderingKeyBytes}`);
      }
      bytes += keyBytes;
      message.orderingKey = entry.key;
    }
    if (bytes > this.#maxMessageBytes) {
      return invalid(`message of ${bytes} bytes, over maxMessageBytes ${this.#maxMessageBytes}`);
    }
    return { topicName, message };
  }

  #stopper(signal: AbortSignal | undefined): Stopper {
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const stopper: Stopper = {
      stopped: false,
      promise: new Promise<undefined>((resolve) => {
        const fire = () => {
          stopper.stopped = true;
          resolve(undefined);
        };
        timer = setTimeout(fire, this.#timeoutMs);
        onAbort = fire;
        signal?.addEventListener("abort", onAbort, { once: true });
      }),
      dispose: () => {
        clearTimeout(timer);
        if (onAbort) signal?.removeEventListener("abort", onAbort);
      },
    };
    return stopper;
  }
}

/** Resolves (to undefined) when the call must stop waiting: timeoutMs passed or the signal aborted. */
interface Stopper {
  stopped: boolean;
  readonly promise: Promise<undefined>;
  dispose(): void;
}

/** How many sends share each error object: the client fails every message of a request with the same one. */
function countShared(sends: readonly Send[]): Map<unknown, number> {
  const counts = new Map<unknown, number>();
  for (const send of sends) {
    if (send.result && !send.result.ok) counts.set(send.result.error, (counts.get(send.result.error) ?? 0) + 1);
  }
  return counts;
}

/**
 * Creates an OutboxPublisher for Google Cloud Pub/Sub on your `PubSub` client: entry key ->
 * ordering key (message ordering on), headers plus outbox metadata -> attributes, payload -> data
 * byte for byte, one outcome per entry, and the ordering keys the client paused after a failure
 * resumed before the call returns.
 */
export function createPubSubPublisher(options: PubSubPublisherOptions): PubSubPublisher {
  return new PubSubPublisher(options);
}
