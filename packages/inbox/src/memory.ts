import { OutboxError, OutboxErrorCode } from "@outbox/core";
import type { InboxMessage } from "./message.js";
import type {
  InboxConsumerStats,
  InboxDeadItem,
  InboxDeadLetter,
  InboxFailure,
  InboxPurgeRequest,
  InboxRecord,
  InboxStore,
  InboxStoreCapabilities,
  ListInboxDeadOptions,
  RecordOutcome,
} from "./store.js";
import { consumerStats, type InboxFailingGroup, type InboxKeyGroup, statsConsumer } from "./stored.js";

interface KeyRow {
  status: "processed" | "dead";
  recordedAt: number;
  dead: { message: InboxMessage; error: string; attempts: number; deadAt: number } | null;
}

/**
 * A transaction of the in-memory inbox store. Business writes of a test or a demo join it with `onCommit`:
 * they happen at commit, all together with the recorded key, and never when it rolls back.
 */
export class MemoryInboxTransaction {
  readonly #onCommit: Array<() => void> = [];
  readonly staged = new Map<string, KeyRow>();
  #open = true;
  readonly ended: Promise<void>;
  #end!: () => void;

  constructor() {
    this.ended = new Promise((resolve) => {
      this.#end = resolve;
    });
  }

  get open(): boolean {
    return this.#open;
  }

  /** Runs `effect` when (and only if) the transaction commits. */
  onCommit(effect: () => void): void {
    if (!this.#open) throw new OutboxError(OutboxErrorCode.InvalidOptions, "the transaction has ended");
    this.#onCommit.push(effect);
  }

  /** @internal */
  finish(committed: boolean): Array<() => void> {
    this.#open = false;
    this.#end();
    return committed ? this.#onCommit : [];
  }
}

const rowKey = (consumer: string, messageId: string) => JSON.stringify([consumer, messageId]);

/**
 * The reference inbox store: every rule of the contract, in memory. A key being recorded by an open
 * transaction blocks other transactions recording it (a row lock) until that one ends.
 */
export class MemoryInboxStore implements InboxStore<MemoryInboxTransaction> {
  readonly capabilities: InboxStoreCapabilities = { transactions: true, concurrentWriters: true };
  readonly #rows = new Map<string, KeyRow>();
  readonly #attempts = new Map<string, { attempts: number; at: number }>();
  /** Keys held by an open transaction ("row locks"). */
  readonly #locks = new Map<string, MemoryInboxTransaction>();
  #closed = false;

  async transaction<T>(work: (tx: MemoryInboxTransaction) => Promise<T>): Promise<T> {
    this.#assertOpen();
    const tx = new MemoryInboxTransaction();
    let result: T;
    try {
      result = await work(tx);
      this.#assertOpen();
    } catch (error) {
      this.#release(tx);
      tx.finish(false);
      throw error;
    }
    for (const [key, row] of tx.staged) {
      this.#rows.set(key, row);
      this.#attempts.delete(key);
    }
    this.#release(tx);
    for (const effect of tx.finish(true)) effect();
    return result;
  }

  async record(tx: MemoryInboxTransaction, record: InboxRecord): Promise<RecordOutcome> {
    this.#assertOpen();
    if (!(tx instanceof MemoryInboxTransaction) || !tx.open) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "record needs an open MemoryInboxTransaction");
    }
    const key = rowKey(record.consumer, record.messageId);
    if (tx.staged.has(key)) return "duplicate";
    for (;;) {
      const holder = this.#locks.get(key);
      if (holder === undefined || holder === tx) break;
      await holder.ended;
    }
    const existing = this.#rows.get(key);
    if (existing?.status === "processed") return "duplicate";
    if (existing?.status === "dead") return "dead";
    this.#locks.set(key, tx);
    tx.staged.set(key, { status: "processed", recordedAt: record.at.getTime(), dead: null });
    return "recorded";
  }

  async recordFailure(failure: InboxFailure): Promise<number> {
    this.#assertOpen();
    const key = rowKey(failure.consumer, failure.messageId);
    const attempts = (this.#attempts.get(key)?.attempts ?? 0) + 1;
    this.#attempts.set(key, { attempts, at: failure.at.getTime() });
    return attempts;
  }

  async deadLetter(item: InboxDeadItem): Promise<boolean> {
    this.#assertOpen();
    const key = rowKey(item.consumer, item.messageId);
    const existing = this.#rows.get(key);
    if (existing?.status === "processed") return false;
    this.#rows.set(key, {
      status: "dead",
      recordedAt: item.at.getTime(),
      dead: { message: item.message, error: item.error, attempts: item.attempts, deadAt: item.at.getTime() },
    });
    this.#attempts.delete(key);
    return true;
  }

  async listDead(consumer: string, options: ListInboxDeadOptions = {}): Promise<InboxDeadLetter[]> {
    this.#assertOpen();
    const limit = options.limit ?? 100;
    const dead: InboxDeadLetter[] = [];
    for (const [key, row] of this.#rows) {
      const [rowConsumer, messageId] = JSON.parse(key) as [string, string];
      if (row.status !== "dead" || row.dead === null || rowConsumer !== consumer) continue;
      if (options.after !== undefined && !(messageId > options.after)) continue;
      dead.push({
        consumer,
        messageId,
        message: copyMessage(row.dead.message),
        error: row.dead.error,
        attempts: row.dead.attempts,
        deadAt: new Date(row.dead.deadAt),
      });
    }
    return dead.sort((a, b) => (a.messageId < b.messageId ? -1 : a.messageId > b.messageId ? 1 : 0)).slice(0, limit);
  }

  async requeueDead(consumer: string, messageIds: readonly string[]): Promise<number> {
    this.#assertOpen();
    let moved = 0;
    for (const messageId of new Set(messageIds)) {
      const key = rowKey(consumer, messageId);
      if (this.#rows.get(key)?.status !== "dead") continue;
      this.#rows.delete(key);
      this.#attempts.delete(key);
      moved += 1;
    }
    return moved;
  }

  async dropDead(consumer: string, messageIds: readonly string[]): Promise<number> {
    this.#assertOpen();
    let dropped = 0;
    for (const messageId of new Set(messageIds)) {
      const row = this.#rows.get(rowKey(consumer, messageId));
      if (row?.status !== "dead") continue;
      row.status = "processed";
      row.dead = null;
      dropped += 1;
    }
    return dropped;
  }

  async purge(request: InboxPurgeRequest): Promise<number> {
    this.#assertOpen();
    const cutoff = request.olderThan.getTime();
    let purged = 0;
    for (const [key, row] of [...this.#rows]) {
      if (row.status === "processed" && row.recordedAt < cutoff) {
        this.#rows.delete(key);
        purged += 1;
      }
    }
    for (const [key, attempt] of [...this.#attempts]) if (attempt.at < cutoff) this.#attempts.delete(key);
    return purged;
  }

  async stats(consumer?: string): Promise<InboxConsumerStats[]> {
    this.#assertOpen();
    const only = statsConsumer(consumer);
    const keys: InboxKeyGroup[] = [];
    for (const [key, row] of this.#rows) {
      const [rowConsumer] = JSON.parse(key) as [string, string];
      if (only !== undefined && rowConsumer !== only) continue;
      const at = new Date(row.status === "dead" && row.dead ? row.dead.deadAt : row.recordedAt);
      keys.push({ consumer: rowConsumer, status: row.status, count: 1, oldest: at, newest: at });
    }
    const failing: InboxFailingGroup[] = [];
    for (const key of this.#attempts.keys()) {
      if (this.#rows.has(key)) continue;
      const [rowConsumer] = JSON.parse(key) as [string, string];
      failing.push({ consumer: rowConsumer, count: 1 });
    }
    return consumerStats(only, keys, failing);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  #release(tx: MemoryInboxTransaction): void {
    for (const key of tx.staged.keys()) if (this.#locks.get(key) === tx) this.#locks.delete(key);
  }

  #assertOpen(): void {
    if (this.#closed) throw new OutboxError(OutboxErrorCode.Closed, "the memory inbox store is closed");
  }
}

function copyMessage(message: InboxMessage): InboxMessage {
  const payload = message.payload;
  return {
    ...message,
    payload: payload instanceof Uint8Array ? new Uint8Array(payload) : payload,
    headers: { ...(message.headers ?? {}) },
  };
}
