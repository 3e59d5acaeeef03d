import {
  describeError,
  heldBack,
  KeyFailures,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxPublisher,
  type PublisherCapabilities,
  type PublishOptions,
  type PublishOutcome,
  published,
  transientFailure,
} from "@outbox/core";
import {
  type AmqpFailureType,
  classifyConfirmError,
  classifyOpenError,
  failureOutcome,
  returnOutcome,
} from "./classify.js";
import { AmqpHeader, type AmqpMessage, encodeMessage, MAX_PROPERTIES_BYTES, SHORT_STRING_BYTES } from "./message.js";
import type { AmqpConfirmChannelLike, AmqpConnectionLike, AmqpReturnedMessage, AmqpReturnFields } from "./types.js";
import { planWaves } from "./waves.js";

/** amqplib's `Options.Connect` (the fields of an amqp:// URL, as an object). */
export interface AmqpConnectOptions {
  protocol?: string;
  hostname?: string;
  port?: number;
  username?: string;
  password?: string;
  locale?: string;
  frameMax?: number;
  heartbeat?: number;
  vhost?: string;
}

export interface RabbitMqPublisherOptions {
  /**
   * Your amqplib connection (`await amqplib.connect(url)`). The publisher opens its own confirm
   * channel on it, re-opens the channel after a channel error, and never closes the connection.
   * A connection that died stays dead: every publish is then transient until you replace the
   * publisher. Pass `url` instead to let the publisher reconnect.
   */
  connection?: AmqpConnectionLike;
  /**
   * Where to connect (`amqp://user:pass@host:5672/vhost` or amqplib's connect options). The
   * publisher connects lazily, reconnects after the connection is lost, and closes it on close().
   */
  url?: string | AmqpConnectOptions;
  /** amqplib socket options for `url` (TLS, `timeout`, `clientProperties`...). */
  socketOptions?: Readonly<Record<string, unknown>>;
  /**
   * The exchange every entry is published to; `""` is the default exchange (routing key = queue
   * name). It must exist: the publisher checks it (passively) whenever it opens a channel, and a
   * missing exchange makes every entry transient (details.type `EXCHANGE_NOT_FOUND`).
   */
  exchange: string;
  /**
   * Routing key per entry. Default: `entry.topic`. A throw, a non-string or more than 255 bytes
   * makes that entry fail permanently.
   */
  routingKey?: (entry: OutboxEntry) => string;
  /**
   * Upper bound for one publish() call, connecting included. Entries not sent or not confirmed
   * by then are reported transient (a written one may still reach a queue later: at-least-once).
   * Keep it below the relay's lease (30 s by default). Default 20_000.
   */
  timeoutMs?: number;
  /**
   * Largest payload sent; bigger entries fail permanently without being sent. RabbitMQ closes
   * the channel on a message over its `max_message_size` (128 MiB by default), which would fail
   * every unconfirmed neighbour, so set this to your broker's value. Default 134_217_728.
   */
  maxMessageBytes?: number;
}

export interface RabbitMqPublisher extends OutboxPublisher {
  readonly capabilities: PublisherCapabilities;
  /** Connections opened so far (`url`; 0 with your own connection): more than 1 means it reconnected. For monitoring and tests. */
  readonly connectionsOpened: number;
  /** Confirm channels opened so far: more than 1 means a channel was lost and re-opened. */
  readonly channelsOpened: number;
  /**
   * Waits for publishes in flight, closes the publisher's channel, and closes the connection if
   * the publisher opened it (`url`). A connection you passed stays open.
   */
  close(): Promise<void>;
}

/** RabbitMQ's default `max_message_size` (3.8+). */
const DEFAULT_MAX_MESSAGE_BYTES = 134_217_728;
/** AMQP frame header and end byte. */
const FRAME_OVERHEAD = 8;

/** One message written and waiting for its confirm. */
interface Sent {
  readonly index: number;
  readonly entry: OutboxEntry;
  readonly routingKey: string;
  returned: AmqpReturnFields | null;
  /** undefined while unconfirmed, null for an ack, the error for a nack or a close. */
  result: unknown;
  settled: boolean;
}

/** A confirm channel and what is in flight on it. */
class ChannelState {
  closed = false;
  /** Why the broker closed the channel (its "error" event comes before "close"). */
  closeError: unknown;
  /** Messages awaiting a confirm, by outbox id, oldest first: basic.return finds its entry here. */
  readonly unconfirmed = new Map<string, Sent[]>();
  readonly #wakers = new Set<() => void>();
  readonly channel: AmqpConfirmChannelLike;
  readonly frameMax: number;

  constructor(channel: AmqpConfirmChannelLike, frameMax: number) {
    this.channel = channel;
    this.frameMax = frameMax;
    channel.on("error", (error: unknown) => {
      this.closeError = error;
    });
    channel.on("close", () => {
      this.closed = true;
      this.#wake();
    });
    channel.on("drain", () => this.#wake());
    channel.on("return", (message: AmqpReturnedMessage) => this.#onReturn(message));
  }

  track(sent: Sent): void {
    const list = this.unconfirmed.get(sent.entry.id);
    if (list) list.push(sent);
    else this.unconfirmed.set(sent.entry.id, [sent]);
  }

  untrack(sent: Sent): void {
    const list = this.unconfirmed.get(sent.entry.id);
    if (!list) return;
    const at = list.indexOf(sent);
    if (at >= 0) list.splice(at, 1);
    if (list.length === 0) this.unconfirmed.delete(sent.entry.id);
  }

  /** Resolves on the channel's next "drain" or "close", or when `stopped` settles. */
  wait(stopped: Promise<unknown>): Promise<void> {
    return new Promise<void>((resolve) => {
      if (this.closed) return resolve();
      this.#wakers.add(resolve);
      stopped.then(() => {
        this.#wakers.delete(resolve);
        resolve();
      });
    });
  }

  /**
   * A return comes before the confirm of the same message, and returns come in publish order:
   * the oldest unconfirmed, not yet returned message with that outbox id and routing key is it.
   */
  #onReturn(message: AmqpReturnedMessage): void {
    const id = message.properties.headers?.[AmqpHeader.Id];
    const key = typeof id === "string" ? id : id instanceof Uint8Array ? Buffer.from(id).toString("utf8") : undefined;
    const match = key === undefined ? undefined : this.unconfirmed.get(key);
    const sent = match?.find((item) => item.returned === null && item.routingKey === message.fields.routingKey);
    if (sent) sent.returned = { ...message.fields };
  }

  #wake(): void {
    const wakers = [...this.#wakers];
    this.#wakers.clear();
    for (const wake of wakers) wake();
  }
}

/** One publish() call's deadline: the call's timeoutMs or the relay's abort signal, whichever comes first. */
class Deadline {
  reason: "TIMEOUT" | "ABORTED" | null = null;
  readonly stopped: Promise<void>;
  #timer: NodeJS.Timeout | undefined;
  #onAbort: (() => void) | undefined;

  readonly signal: AbortSignal | undefined;

  constructor(timeoutMs: number, signal: AbortSignal | undefined) {
    this.signal = signal;
    this.stopped = new Promise<void>((resolve) => {
      this.#timer = setTimeout(() => {
        this.reason ??= "TIMEOUT";
        resolve();
      }, timeoutMs);
      this.#onAbort = () => {
        this.reason ??= "ABORTED";
        resolve();
      };
      if (signal?.aborted) this.#onAbort();
      else signal?.addEventListener("abort", this.#onAbort, { once: true });
    });
  }

  /** `promise`'s value, or undefined once the deadline passed first. */
  async race<T>(promise: Promise<T>): Promise<{ value: T } | undefined> {
    return Promise.race([promise.then((value) => ({ value })), this.stopped.then(() => undefined)]);
  }

  dispose(): void {
    clearTimeout(this.#timer);
    if (this.#onAbort) this.signal?.removeEventListener("abort", this.#onAbort);
  }
}

function positive(value: number | undefined, fallback: number, name: string): number {
  const result = value ?? fallback;
  if (!Number.isInteger(result) || result <= 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive integer, got ${value}`);
  }
  return result;
}

function frameMaxOf(connection: AmqpConnectionLike): number {
  const frameMax = (connection.connection as { frameMax?: unknown } | undefined)?.frameMax;
  return typeof frameMax === "number" && frameMax > FRAME_OVERHEAD ? frameMax : MAX_PROPERTIES_BYTES;
}

interface Prepared {
  readonly index: number;
  readonly entry: OutboxEntry;
  readonly message: AmqpMessage;
}

class AmqpPublisher implements RabbitMqPublisher {
  readonly capabilities: PublisherCapabilities;
  readonly #userConnection: AmqpConnectionLike | null;
  readonly #url: string | AmqpConnectOptions | null;
  readonly #socketOptions: Readonly<Record<string, unknown>>;
  readonly #exchange: string;
  readonly #route: (entry: OutboxEntry) => string;
  readonly #timeoutMs: number;
  readonly #maxMessageBytes: number;

  /** The owned connection (`url`), while it is open. */
  #owned: AmqpConnectionLike | null = null;
  #channel: ChannelState | null = null;
  #opening: Promise<ChannelState> | null = null;
  /** The broker's reason while it blocks the connection (resource alarm), else null. */
  #blocked: string | null = null;
  #closed = false;
  #connections = 0;
  #channels = 0;
  /** Set once close() has no publish left to wait for: a channel or connection opened late is closed at once. */
  #shutDown = false;
  readonly #inFlight = new Set<Promise<unknown>>();
  readonly #detach: Array<() => void> = [];

  constructor(options: RabbitMqPublisherOptions) {
    if (!options || typeof options !== "object") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "createRabbitMqPublisher needs options");
    }
    const { connection, url } = options;
    if ((connection === undefined) === (url === undefined)) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "pass exactly one of `connection` and `url`");
    }
    if (connection !== undefined && typeof connection?.createConfirmChannel !== "function") {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        "connection must be an amqplib connection (from amqplib's promise API connect())",
      );
    }
    if (url !== undefined && typeof url !== "string" && (typeof url !== "object" || url === null)) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "url must be an amqp:// URL or amqplib connect options");
    }
    if (typeof options.exchange !== "string" || Buffer.byteLength(options.exchange) > SHORT_STRING_BYTES) {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        `exchange must be a string of at most ${SHORT_STRING_BYTES} bytes ("" is the default exchange), got ${JSON.stringify(options.exchange)}`,
      );
    }
    if (options.routingKey !== undefined && typeof options.routingKey !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "routingKey must be a function (entry) => string");
    }
    this.#userConnection = connection ?? null;
    this.#url = url ?? null;
    this.#socketOptions = options.socketOptions ?? {};
    this.#exchange = options.exchange;
    this.#route = options.routingKey ?? ((entry) => entry.topic);
    this.#timeoutMs = positive(options.timeoutMs, 20_000, "timeoutMs");
    this.#maxMessageBytes = positive(options.maxMessageBytes, DEFAULT_MAX_MESSAGE_BYTES, "maxMessageBytes");
    this.capabilities = Object.freeze({ maxPayloadBytes: this.#maxMessageBytes });
    if (this.#userConnection) this.#watchConnection(this.#userConnection);
  }

  get connectionsOpened(): number {
    return this.#connections;
  }

  get channelsOpened(): number {
    return this.#channels;
  }

  publish(entries: readonly OutboxEntry[], options: PublishOptions = {}): Promise<PublishOutcome[]> {
    if (this.#closed) {
      return Promise.reject(new OutboxError(OutboxErrorCode.Closed, "the RabbitMQ publisher is closed"));
    }
    if (entries.length === 0) return Promise.resolve([]);
    const running = this.#publish(entries, options.signal);
    const tracked = running.catch(() => undefined);
    this.#inFlight.add(tracked);
    void tracked.then(() => this.#inFlight.delete(tracked));
    return running;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all(this.#inFlight);
    this.#shutDown = true;
    const opening = this.#opening;
    if (opening) await opening.catch(() => undefined);
    const state = this.#channel;
    this.#channel = null;
    if (state && !state.closed) await state.channel.close().catch(() => undefined);
    for (const detach of [...this.#detach]) detach();
    const owned = this.#owned;
    this.#owned = null;
    if (owned) await owned.close().catch(() => undefined);
  }

  async #publish(entries: readonly OutboxEntry[], signal: AbortSignal | undefined): Promise<PublishOutcome[]> {
    const outcomes: Array<PublishOutcome | undefined> = new Array(entries.length);
    const deadline = new Deadline(this.#timeoutMs, signal);
    const failures = new KeyFailures();
    try {
      for (const wave of planWaves(entries)) {
        const candidates: OutboxEntry[] = [];
        const indexes: number[] = [];
        for (const index of wave) {
          const entry = entries[index] as OutboxEntry;
          if (failures.blocked(entry)) outcomes[index] = heldBack(entry);
          else {
            candidates.push(entry);
            indexes.push(index);
          }
        }
        if (candidates.length === 0) continue;
        await this.#sendWave(candidates, indexes, outcomes, deadline);
        candidates.forEach((entry, i) => {
          if (outcomes[indexes[i] as number]?.status !== "published") failures.fail(entry);
        });
      }
    } finally {
      deadline.dispose();
    }
    return outcomes.map(
      (outcome, index) =>
        outcome ??
        transientFailure(
          new OutboxError(OutboxErrorCode.PublishFailed, `entry ${entries[index]?.id} was not sent (internal error)`),
        ),
    );
  }

  /** Writes one wave (no key twice), then awaits its confirms together. */
  async #sendWave(
    entries: OutboxEntry[],
    indexes: number[],
    outcomes: Array<PublishOutcome | undefined>,
    deadline: Deadline,
  ): Promise<void> {
    const fail = (i: number, type: AmqpFailureType, message: string, cause?: unknown): void => {
      const entry = entries[i] as OutboxEntry;
      outcomes[indexes[i] as number] = failureOutcome(type, message, { entryId: entry.id }, cause);
    };
    const failAll = (type: AmqpFailureType, message: string, cause?: unknown): void => {
      for (let i = 0; i < entries.length; i++) fail(i, type, message, cause);
    };
    const stoppedMessage = () =>
      deadline.reason === "ABORTED"
        ? "not confirmed before the publish was aborted"
        : `not confirmed within timeoutMs ${this.#timeoutMs}`;

    if (deadline.reason) {
      failAll(deadline.reason, `not sent: ${stoppedMessage()}`);
      return;
    }
    let state: ChannelState;
    try {
      const ready = await deadline.race(this.#ready());
      if (!ready) {
        failAll(deadline.reason ?? "TIMEOUT", `not sent: no channel (${stoppedMessage()})`);
        return;
      }
      state = ready.value;
    } catch (error) {
      const type = classifyOpenError(error);
      failAll(type, `not sent: could not open a channel: ${describeError(error)}`, error);
      return;
    }

    const sent: Sent[] = [];
    const confirms: Array<Promise<void>> = [];
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i] as OutboxEntry;
      const index = indexes[i] as number;
      const prepared = this.#prepare(entry, index, state);
      if ("status" in prepared) {
        outcomes[index] = prepared;
        continue;
      }
      if (deadline.reason) {
        fail(i, deadline.reason, `not sent: ${stoppedMessage()}`);
        continue;
      }
      if (this.#blocked !== null) {
        fail(i, "BLOCKED", `not sent: the broker blocks publishing (${this.#blocked})`);
        continue;
      }
      if (state.closed) {
        fail(
          i,
          "CHANNEL_CLOSED",
          `not sent: the channel closed (${describeError(state.closeError)})`,
          state.closeError,
        );
        continue;
      }
      const item: Sent = {
        index,
        entry,
        routingKey: prepared.message.routingKey,
        returned: null,
        result: undefined,
        settled: false,
      };
      let settle!: () => void;
      const confirmed = new Promise<void>((resolve) => {
        settle = resolve;
      });
      state.track(item);
      let writable: boolean;
      try {
        const { routingKey, content, options } = prepared.message;
        writable = state.channel.publish(this.#exchange, routingKey, content, options, (error: unknown) => {
          if (item.settled) return;
          item.settled = true;
          item.result = error ?? null;
          state.untrack(item);
          settle();
        });
      } catch (error) {
        state.untrack(item);
        // A publish refused by amqplib itself may have consumed a confirm slot: the channel's
        // delivery tags can no longer be trusted. Close it; its unconfirmed messages fail transient.
        if (!state.closed) this.#discard(state);
        fail(i, state.closed ? "CHANNEL_CLOSED" : "CLIENT_ERROR", `not sent: ${describeError(error)}`, error);
        continue;
      }
      sent.push(item);
      confirms.push(confirmed);
      // Back-pressure: the channel's write buffer is full. Wait for "drain" before writing more.
      if (!writable) await state.wait(deadline.stopped);
    }
    if (confirms.length > 0) await deadline.race(Promise.all(confirms));
    for (const item of sent) {
      if (item.returned) {
        outcomes[item.index] = returnOutcome(item.returned, { entryId: item.entry.id });
      } else if (item.settled && item.result === null) {
        outcomes[item.index] = published();
      } else if (item.settled) {
        const type = classifyConfirmError(item.result, state.closeError);
        const why = type === "NACKED" ? "the broker nacked the message" : `the channel closed before the confirm`;
        outcomes[item.index] = failureOutcome(
          type,
          `${why}${state.closeError ? ` (${describeError(state.closeError)})` : ""}`,
          { entryId: item.entry.id },
          state.closeError ?? item.result,
        );
      } else {
        const type = deadline.reason ?? "TIMEOUT";
        const blocked = this.#blocked === null ? "" : ` (the broker blocks publishing: ${this.#blocked})`;
        outcomes[item.index] = failureOutcome(type, `${stoppedMessage()}${blocked}`, { entryId: item.entry.id });
      }
    }
  }

  #prepare(entry: OutboxEntry, index: number, state: ChannelState): Prepared | PublishOutcome {
    let routingKey: unknown;
    try {
      routingKey = this.#route(entry);
    } catch (error) {
      return failureOutcome(
        "ROUTING_KEY_INVALID",
        `routingKey() threw for entry ${entry.id}: ${describeError(error)}`,
        { entryId: entry.id },
        error,
      );
    }
    const message = encodeMessage(entry, routingKey as string, {
      maxMessageBytes: this.#maxMessageBytes,
      maxPropertiesBytes: Math.min(MAX_PROPERTIES_BYTES, state.frameMax - FRAME_OVERHEAD),
    });
    if ("type" in message) {
      return failureOutcome(message.type, message.message, {
        entryId: entry.id,
        ...(message.bytes === undefined ? {} : { bytes: message.bytes }),
      });
    }
    return { index, entry, message };
  }

  /** The open confirm channel; opens one (and connects, for `url`) when there is none. Shared by concurrent calls. */
  #ready(): Promise<ChannelState> {
    const current = this.#channel;
    if (current && !current.closed) return Promise.resolve(current);
    if (!this.#opening) {
      const opening = this.#open().finally(() => {
        if (this.#opening === opening) this.#opening = null;
      });
      // A caller that gave up at its deadline no longer awaits it.
      opening.catch(() => undefined);
      this.#opening = opening;
    }
    return this.#opening;
  }

  async #open(): Promise<ChannelState> {
    const connection = this.#userConnection ?? (await this.#connect());
    const channel = await connection.createConfirmChannel();
    this.#channels++;
    const state = new ChannelState(channel, frameMaxOf(connection));
    if (this.#shutDown) {
      await channel.close().catch(() => undefined);
      throw new OutboxError(OutboxErrorCode.Closed, "the RabbitMQ publisher is closed");
    }
    // Passive: fails (404, closing this channel) when the exchange does not exist, instead of
    // the first publish closing the channel under a whole batch in flight.
    if (this.#exchange !== "") await channel.checkExchange(this.#exchange);
    this.#channel = state;
    return state;
  }

  async #connect(): Promise<AmqpConnectionLike> {
    if (this.#owned) return this.#owned;
    const { connect } = (await import("amqplib")) as unknown as {
      connect(url: unknown, socketOptions?: unknown): Promise<AmqpConnectionLike>;
    };
    const connection = await connect(this.#url, {
      timeout: Math.min(this.#timeoutMs, 10_000),
      ...this.#socketOptions,
      clientProperties: {
        connection_name: "outbox-publisher",
        ...((this.#socketOptions.clientProperties as Record<string, unknown> | undefined) ?? {}),
      },
    });
    this.#connections++;
    // Owned: connection errors are expected (broker restarts); "close" follows, and the next
    // publish reconnects.
    connection.on("error", () => undefined);
    const detach = this.#watchConnection(connection);
    connection.on("close", () => {
      if (this.#owned === connection) this.#owned = null;
      detach();
    });
    if (this.#closed) {
      await connection.close().catch(() => undefined);
      throw new OutboxError(OutboxErrorCode.Closed, "the RabbitMQ publisher is closed");
    }
    this.#owned = connection;
    return connection;
  }

  /** Follows the broker's flow control (connection.blocked / unblocked) on a connection. */
  #watchConnection(connection: AmqpConnectionLike): () => void {
    const onBlocked = (reason: unknown) => {
      this.#blocked = typeof reason === "string" && reason.length > 0 ? reason : "connection blocked";
    };
    const onUnblocked = () => {
      this.#blocked = null;
    };
    const onClose = () => {
      this.#blocked = null;
    };
    connection.on("blocked", onBlocked);
    connection.on("unblocked", onUnblocked);
    connection.on("close", onClose);
    const detach = () => {
      connection.removeListener("blocked", onBlocked);
      connection.removeListener("unblocked", onUnblocked);
      connection.removeListener("close", onClose);
      const at = this.#detach.indexOf(detach);
      if (at >= 0) this.#detach.splice(at, 1);
    };
    this.#detach.push(detach);
    return detach;
  }

  #discard(state: ChannelState): void {
    if (this.#channel === state) this.#channel = null;
    state.channel.close().catch(() => undefined);
  }
}

/**
 * Publishes outbox entries to RabbitMQ through a confirm channel: each wave of a batch written at
 * once and its confirms awaited together, `mandatory` routing (an unroutable entry fails
 * permanently), nacks and lost channels transient, and the per-key run contract kept (see README).
 */
export function createRabbitMqPublisher(options: RabbitMqPublisherOptions): RabbitMqPublisher {
  return new AmqpPublisher(options);
}
