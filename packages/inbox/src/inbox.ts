import { type Clock, describeError, OutboxError, OutboxErrorCode, systemClock } from "@outbox/core";
import { KeyOrder } from "./key-order.js";
import { dedupeKey, type InboxMessage, normalizedMessage, orderingKey } from "./message.js";
import type { InboxDeadLetter, InboxStore, ListInboxDeadOptions } from "./store.js";
import { positiveInteger } from "./stored.js";

export interface InboxOptions<Tx> {
  store: InboxStore<Tx>;
  /**
   * This inbox's name in the store: keys are deduped per consumer, so two services (or two consumer groups)
   * sharing one table each handle every message once. Default "default".
   */
  consumer?: string;
  /** Failed attempts before a message goes to the dead letters. Default 5; 1 dead-letters at the first failure. */
  maxAttempts?: number;
  /** How long processed keys are kept (the duplicate window): `purge()` without arguments drops older ones. Default 7 days. */
  retentionMs?: number;
  clock?: Clock;
  /** Errors nobody awaits (counting a failed attempt failed). Default: console.warn. */
  onError?: (error: unknown) => void;
}

export type HandleResult<T> =
  /** The handler ran and its transaction, the key included, committed. */
  | { readonly status: "handled"; readonly messageId: string; readonly result: T }
  /** A committed transaction already handled this message: the handler did not run. */
  | { readonly status: "duplicate"; readonly messageId: string }
  /**
   * The message is in the dead letters: it failed `maxAttempts` times (this delivery moved it there, `error`
   * is the handler's last error) or was already there. Acknowledge it to the broker: it is parked, not lost.
   */
  | { readonly status: "dead"; readonly messageId: string; readonly error?: unknown };

export interface Inbox<Tx> {
  readonly consumer: string;
  readonly store: InboxStore<Tx>;
  /**
   * Handles `message` exactly once: runs `handler` in a new transaction that also records the message's
   * idempotency key (or id). A duplicate is skipped. A handler error rolls both back, counts an attempt and is
   * rethrown (let the broker redeliver); after `maxAttempts` the message goes to the dead letters and the call
   * resolves `dead`. Messages of one key are handled one at a time, in call order.
   */
  handle<T>(message: InboxMessage, handler: (tx: Tx, message: InboxMessage) => Promise<T>): Promise<HandleResult<T>>;
  listDead(options?: ListInboxDeadOptions): Promise<InboxDeadLetter[]>;
  requeueDead(messageIds: readonly string[]): Promise<number>;
  dropDead(messageIds: readonly string[]): Promise<number>;
  /** Deletes processed keys older than `olderThan` (default: now minus `retentionMs`). Returns how many. */
  purge(olderThan?: Date): Promise<number>;
  /** Resolves once every `handle` call made so far has settled. */
  idle(): Promise<void>;
}

class InboxImpl<Tx> implements Inbox<Tx> {
  readonly consumer: string;
  readonly store: InboxStore<Tx>;
  readonly #maxAttempts: number;
  readonly #retentionMs: number;
  readonly #clock: Clock;
  readonly #onError: (error: unknown) => void;
  /** Calls of one key run one at a time, in call order. */
  readonly #keyOrder = new KeyOrder();
  readonly #inFlight = new Set<Promise<unknown>>();

  constructor(options: InboxOptions<Tx>) {
    if (!options || typeof options.store?.transaction !== "function" || typeof options.store.record !== "function") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "createInbox needs an InboxStore as `store`", {
        details: { option: "store" },
      });
    }
    this.store = options.store;
    this.consumer = options.consumer ?? "default";
    if (typeof this.consumer !== "string" || this.consumer.length === 0 || this.consumer.length > 200) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "consumer must be a non-empty string (at most 200)", {
        details: { option: "consumer" },
      });
    }
    this.#maxAttempts = positiveInteger(options.maxAttempts ?? 5, "maxAttempts");
    this.#retentionMs = positiveInteger(options.retentionMs ?? 7 * 24 * 60 * 60 * 1000, "retentionMs");
    this.#clock = options.clock ?? systemClock;
    this.#onError = options.onError ?? ((error) => console.warn(`[@outbox/inbox ${this.consumer}]`, error));
  }

  handle<T>(message: InboxMessage, handler: (tx: Tx, message: InboxMessage) => Promise<T>): Promise<HandleResult<T>> {
    let messageId: string;
    let key: string | null;
    try {
      messageId = dedupeKey(message);
      key = orderingKey(message);
      if (typeof handler !== "function") {
        throw new OutboxError(OutboxErrorCode.InvalidOptions, "handle needs a handler function", {
          details: { option: "handler" },
        });
      }
    } catch (error) {
      return Promise.reject(error);
    }
    const call = this.#keyOrder.run(key, () => this.#handle(message, messageId, handler));
    const tracked = call.catch(() => undefined);
    this.#inFlight.add(tracked);
    void tracked.then(() => this.#inFlight.delete(tracked));
    return call;
  }

  async #handle<T>(
    message: InboxMessage,
    messageId: string,
    handler: (tx: Tx, message: InboxMessage) => Promise<T>,
  ): Promise<HandleResult<T>> {
    const consumer = this.consumer;
    /** Set when the store reported the key as already handled: the transaction commits nothing of ours. */
    let skipped: "duplicate" | "dead" | null = null;
    let handlerFailed = false;
    let result: T;
    try {
      result = await this.store.transaction(async (tx) => {
        const outcome = await this.store.record(tx, { consumer, messageId, at: new Date(this.#clock.now()) });
        if (outcome !== "recorded") {
          skipped = outcome;
          return undefined as T;
        }
        try {
          return await handler(tx, message);
        } catch (error) {
          handlerFailed = true;
          throw error;
        }
      });
    } catch (error) {
      // Only a handler's own failure counts an attempt; a store failure (commit lost, connection down) is
      // surfaced as is and the redelivery decides (the key is there if the commit went through).
      if (!handlerFailed) throw error;
      return this.#failed(message, messageId, error);
    }
    if (skipped !== null) return { status: skipped, messageId };
    return { status: "handled", messageId, result };
  }

  async #failed<T>(message: InboxMessage, messageId: string, error: unknown): Promise<HandleResult<T>> {
    const at = new Date(this.#clock.now());
    const description = describeError(error);
    let attempts: number;
    try {
      attempts = await this.store.recordFailure({ consumer: this.consumer, messageId, error: description, at });
    } catch (storeFailure) {
      // The broker redelivers either way; the count only decides when to give up.
      this.#onError(storeFailure);
      throw error;
    }
    if (attempts < this.#maxAttempts) throw error;
    const moved = await this.store.deadLetter({
      consumer: this.consumer,
      message: normalizedMessage(message),
      messageId,
      error: description,
      attempts,
      at,
    });
    // Not moved: a concurrent delivery handled it meanwhile.
    return moved ? { status: "dead", messageId, error } : { status: "duplicate", messageId };
  }

  listDead(options?: ListInboxDeadOptions): Promise<InboxDeadLetter[]> {
    return this.store.listDead(this.consumer, options);
  }

  requeueDead(messageIds: readonly string[]): Promise<number> {
    return this.store.requeueDead(this.consumer, messageIds);
  }

  dropDead(messageIds: readonly string[]): Promise<number> {
    return this.store.dropDead(this.consumer, messageIds);
  }

  purge(olderThan?: Date): Promise<number> {
    return this.store.purge({ olderThan: olderThan ?? new Date(this.#clock.now() - this.#retentionMs) });
  }

  async idle(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.all([...this.#inFlight]);
  }
}

/** Creates an inbox on `store`. See `Inbox.handle`. */
export function createInbox<Tx>(options: InboxOptions<Tx>): Inbox<Tx> {
  return new InboxImpl(options);
}
