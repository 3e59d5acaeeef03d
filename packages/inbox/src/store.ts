import type { InboxMessage } from "./message.js";

/** What an inbox store promises. Read by the inbox and by the conformance kit. */
export interface InboxStoreCapabilities {
  /**
   * A rolled-back transaction leaves no key and no effect behind. `false` for a store on a server without
   * multi-document transactions (MongoDB with `transactions: false`): the key is still removed when the handler
   * fails, but the handler's own writes stay (the kit then checks the key only).
   */
  readonly transactions: boolean;
  /**
   * Two transactions can be open at once and block each other on the same key (a connection pool on
   * a server). `false` for single-writer stores (PGlite: one connection, one transaction at a time),
   * where concurrent deliveries queue instead. Absent means `true`.
   */
  readonly concurrentWriters?: boolean;
}

/** What `record` writes, inside the handler's transaction. */
export interface InboxRecord {
  /** The inbox (consumer) name: one store can serve several inboxes, each with its own keys. */
  readonly consumer: string;
  /** The dedupe key: the message's idempotency key, or its id when it has none. */
  readonly messageId: string;
  /** When the key was recorded (the inbox's clock): retention counts from here. */
  readonly at: Date;
}

/**
 * - `recorded`: the key was new (or requeued from the dead letters); the handler runs and both commit together.
 * - `duplicate`: a committed transaction already recorded it; the handler must not run.
 * - `dead`: the message sits in the dead letters; the handler must not run until it is requeued.
 */
export type RecordOutcome = "recorded" | "duplicate" | "dead";

export interface InboxFailure {
  readonly consumer: string;
  readonly messageId: string;
  /** A short description of the handler's error (what `describeError` gives). */
  readonly error: string;
  readonly at: Date;
}

export interface InboxDeadItem {
  readonly consumer: string;
  readonly message: InboxMessage;
  readonly messageId: string;
  readonly error: string;
  readonly attempts: number;
  readonly at: Date;
}

/** A message in the inbox's dead letters. */
export interface InboxDeadLetter {
  readonly consumer: string;
  /** The dedupe key (idempotency key or id): what listDead pages on and requeueDead/dropDead take. */
  readonly messageId: string;
  /** The message as it was handed to `handle` (payload as bytes), so it can be handled again after a requeue. */
  readonly message: InboxMessage;
  readonly error: string;
  readonly attempts: number;
  readonly deadAt: Date;
}

export interface ListInboxDeadOptions {
  /** At most this many. Default 100. */
  readonly limit?: number;
  /** Only messages after this message id (ordered by message id): the last one of the previous page. */
  readonly after?: string;
}

export interface InboxPurgeRequest {
  /** Processed keys (and stale attempt counters) recorded before this go. Dead letters stay until dropped. */
  readonly olderThan: Date;
  /** Rows per statement, so a purge never holds long locks. Default 1000. */
  readonly batchSize?: number;
}

/** One consumer's numbers, as `InboxStore.stats` reads them. */
export interface InboxConsumerStats {
  readonly consumer: string;
  /** Processed keys kept: handled messages and dropped dead letters (the duplicate window `purge` trims). */
  readonly processed: number;
  /** Dead letters waiting for a requeue or a drop. */
  readonly dead: number;
  /**
   * Messages whose handler failed and that are neither processed nor dead: the broker is redelivering them. A
   * message given up on (never delivered again) counts until `purge` drops its stale attempt counter.
   */
  readonly failing: number;
  /** When the oldest processed key was recorded: how far back the duplicate window reaches. Null: none. */
  readonly oldestProcessedAt: Date | null;
  /** When the newest one was: the consumer's last handled (or dropped) message. Null: none. */
  readonly newestProcessedAt: Date | null;
  /** When the oldest dead letter was parked. Null: none. */
  readonly oldestDeadAt: Date | null;
}

/**
 * Durable inbox storage: the processed keys of each consumer, failed-attempt counters and dead letters.
 *
 * The contract (the conformance kit checks each rule):
 * - **Same transaction.** `record(tx, ...)` writes the key on the handler's own transaction `tx`, the one
 *   `transaction()` opened: the key commits if and only if the handler's writes commit.
 * - **Exactly one effect.** Two transactions recording the same key at once: one gets `recorded`, the other
 *   waits for it and gets `duplicate` once it committed (or `recorded` once it rolled back). Never both
 *   `recorded` and both committed. SQL stores do this with a primary-key insert (`ON CONFLICT DO NOTHING`).
 * - **Attempts.** `recordFailure` counts a failed attempt outside any handler transaction and returns the
 *   count so far; `deadLetter` moves the message to the dead letters (with its error and attempts), after
 *   which `record` answers `dead`. `requeueDead` makes it recordable again with a fresh attempt count;
 *   `dropDead` discards it (it then counts as processed).
 * - **Retention.** `purge` deletes processed keys recorded before `olderThan`, never a younger one and never
 *   a dead letter.
 * - **Stats.** `stats` counts exactly what the calls above left: processed keys, dead letters and failing messages
 *   per consumer, with the oldest and newest key times.
 */
export interface InboxStore<Tx = unknown> {
  readonly capabilities: InboxStoreCapabilities;
  /**
   * Runs `work` in a new transaction of the backend: committed when it resolves, rolled back when it throws
   * (the error is rethrown). `tx` is the handle the user's own writes (and `OutboxStore.enqueue`) take.
   */
  transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T>;
  /** Records the key inside `tx` (see the contract above). */
  record(tx: Tx, record: InboxRecord): Promise<RecordOutcome>;
  /** Counts a failed attempt (its own short transaction). Returns the attempts so far, this one included. */
  recordFailure(failure: InboxFailure): Promise<number>;
  /**
   * Moves the message to the dead letters. Returns false when the key was processed meanwhile (a concurrent
   * delivery succeeded): then nothing changes.
   */
  deadLetter(item: InboxDeadItem): Promise<boolean>;
  /** Dead letters of `consumer`, ordered by message id, at most `limit` (default 100). */
  listDead(consumer: string, options?: ListInboxDeadOptions): Promise<InboxDeadLetter[]>;
  /** Makes dead messages recordable again (their next delivery runs the handler). Returns how many moved. */
  requeueDead(consumer: string, messageIds: readonly string[]): Promise<number>;
  /**
   * Discards dead messages: they count as handled from now on (a later delivery is a duplicate until retention
   * purges the key), and their stored copy goes. Returns how many.
   */
  dropDead(consumer: string, messageIds: readonly string[]): Promise<number>;
  /** Deletes processed keys (of every consumer) recorded before `olderThan`, in bounded batches. Returns how many. */
  purge(request: InboxPurgeRequest): Promise<number>;
  /**
   * What an operator looks at (`outbox inbox status`). With `consumer`: that consumer's numbers, one element (zeros
   * and nulls when it has recorded nothing). Without: one element per consumer that has a processed key, a dead
   * letter or a failing message, ordered by name. The counts read every key of the consumer once (an index range
   * where the store has one): an operator's query, not one to run per message.
   */
  stats(consumer?: string): Promise<InboxConsumerStats[]>;
  close(): Promise<void>;
}

/** The transaction type an inbox store hands to handlers. */
export type InboxTransaction<S> = S extends InboxStore<infer Tx> ? Tx : never;
