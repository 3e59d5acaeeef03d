import {
  heldBack,
  KeyFailures,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxPublisher,
  type PublisherCapabilities,
  type PublishOptions,
  type PublishOutcome,
  permanentFailure,
  published,
  routeEntry,
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

const runErrorPrefix = "outbox-error:";

/**
 * XADDs a key's run in order and stops at the first error. KEYS: one stream per entry. ARGV: the
 * trim argument count and arguments, then per entry its field count and fields. Replies one id
 * per entry written, then the error it stopped at, prefixed.
 */
const addRunScript = `
local pos = 1
local ntrim = tonumber(ARGV[pos]); pos = pos + 1
local trim = {}
for i = 1, ntrim do trim[i] = ARGV[pos]; pos = pos + 1 end
local out = {}
for i = 1, #KEYS do
  local n = tonumber(ARGV[pos]); pos = pos + 1
  local args = {KEYS[i]}
  for j = 1, #trim do args[#args + 1] = trim[j] end
  args[#args + 1] = '*'
  for j = 1, n do args[#args + 1] = ARGV[pos]; pos = pos + 1 end
  local reply = redis.pcall('XADD', unpack(args))
  if type(reply) == 'table' and reply.err then
    out[i] = '${runErrorPrefix}' .. reply.err
    return out
  end
  out[i] = reply
end
return out
`;

/** A Redis error reply as ioredis would have raised it, so one classifier serves both paths. */
function replyError(message: string): Error {
  const error = new Error(message);
  error.name = "ReplyError";
  return error;
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
    const failedKeys = new KeyFailures();
    // A key's entries in this call form one run: written by one script that stops at the first
    // error, so nothing after a failed entry of its key reaches the stream (the run contract).
    const runs = new Map<string | null, Array<{ index: number; stream: string }>>();
    const singles: Array<{ index: number; stream: string }> = [];
    entries.forEach((entry, index) => {
      if (failedKeys.blocked(entry)) {
        outcomes[index] = heldBack(entry);
        return;
      }
      const stream = this.#prepare(entry);
      if (typeof stream !== "string") {
        outcomes[index] = stream;
        failedKeys.fail(entry);
        return;
      }
      if (entry.key === null) {
        singles.push({ index, stream });
        return;
      }
      const run = runs.get(entry.key);
      if (run) run.push({ index, stream });
      else runs.set(entry.key, [{ index, stream }]);
    });
    const pipeline = this.#client.pipeline();
    const commands: Array<Array<{ index: number; stream: string }>> = [];
    for (const single of singles) {
      pipeline.xadd(single.stream, ...this.#trim, "*", ...encodeStreamFields(entries[single.index] as OutboxEntry));
      commands.push([single]);
    }
    for (const run of runs.values()) {
      if (run.length === 1) {
        const [only] = run as [{ index: number; stream: string }];
        pipeline.xadd(only.stream, ...this.#trim, "*", ...encodeStreamFields(entries[only.index] as OutboxEntry));
      } else {
        const args: Array<string | Buffer> = [String(this.#trim.length), ...this.#trim];
        for (const { index } of run) {
          const fields = encodeStreamFields(entries[index] as OutboxEntry);
          args.push(String(fields.length), ...fields);
        }
        pipeline.eval(addRunScript, run.length, ...run.map((item) => item.stream), ...args);
      }
      commands.push(run);
    }
    if (commands.length === 0) return outcomes as PublishOutcome[];
    const results = await this.#exec(pipeline, options.signal);
    commands.forEach((command, commandIndex) => {
      const result = Array.isArray(results) ? results[commandIndex] : undefined;
      const [error, reply] = result ?? [
        results instanceof Error
          ? results
          : new OutboxError(OutboxErrorCode.PublishFailed, "Redis returned no reply for this entry"),
        null,
      ];
      if (command.length === 1 && !Array.isArray(reply)) {
        const { index } = command[0] as { index: number };
        outcomes[index] = error ? (result ? classifyRedisError(error) : transientFailure(error)) : published();
        return;
      }
      // The run script answers one reply per entry it reached: an id, or the error it stopped at.
      const replies = Array.isArray(reply) ? (reply as unknown[]) : [];
      command.forEach(({ index }, position) => {
        const entry = entries[index] as OutboxEntry;
        const answer = replies[position];
        if (error && replies.length === 0) {
          // The script as a whole failed (connection, script error): nothing of the run was judged.
          outcomes[index] = transientFailure(error);
        } else if (typeof answer === "string" && answer.startsWith(runErrorPrefix)) {
          outcomes[index] = classifyRedisError(replyError(answer.slice(runErrorPrefix.length)));
        } else if (answer === undefined || answer === null || answer === false) {
          outcomes[index] = heldBack(entry);
        } else {
          outcomes[index] = published();
        }
      });
    });
    return outcomes as PublishOutcome[];
  }

  /** The stream an entry goes to, or its permanent failure. */
  #prepare(entry: OutboxEntry): string | PublishOutcome {
    if (entry.payload.byteLength > this.#maxPayloadBytes) {
      return permanentFailure(
        new OutboxError(
          OutboxErrorCode.PublishFailed,
          `payload is ${entry.payload.byteLength} bytes, over maxPayloadBytes (${this.#maxPayloadBytes})`,
        ),
      );
    }
    return routeEntry(entry, this.#stream, "stream");
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
