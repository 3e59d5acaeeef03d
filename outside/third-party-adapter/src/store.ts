import type { DatabaseSync } from "node:sqlite";
import {
  type ClaimRequest,
  type Clock,
  type DeadLetterItem,
  type Fence,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  type OutboxStore,
  type PurgeRequest,
  prepareMessages,
  type RetryItem,
  type SettleContext,
  type StoreCapabilities,
  type StoreStats,
  systemClock,
} from "@outbox/core";

/**
 * A small outbox store on node:sqlite (Node >= 24), written the way a third party would: only
 * against @outbox/core's public contract, verified by @outbox/conformance.
 *
 * node:sqlite is synchronous and this store uses one connection: every method runs start to end
 * without yielding, so each is atomic. That also makes it a single-writer store: it declares
 * `concurrentWriters: false`, and the kit skips `late-commit` with that reason.
 */
export interface SqliteStoreOptions {
  db: DatabaseSync;
  table?: string;
  clock?: Clock;
}

interface Row {
  id: number;
  topic: string;
  key: string | null;
  payload: Uint8Array | null;
  headers: string;
  idempotency_key: string | null;
  created_at: number;
  available_at: number;
  attempts: number;
  last_error: string | null;
  claimed_by: string | null;
  lease_until: number;
  lease_lock: string | null;
  lease_token: string | null;
}

export class SqliteStore implements OutboxStore<DatabaseSync> {
  readonly capabilities: StoreCapabilities = { wakeUps: false, transactions: true, concurrentWriters: false };
  readonly #db: DatabaseSync;
  readonly #table: string;
  readonly #clock: Clock;
  #closed = false;

  constructor(options: SqliteStoreOptions) {
    const table = options.table ?? "outbox";
    if (!/^[a-z_][a-z0-9_]*$/i.test(table)) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, `unsafe table name ${JSON.stringify(table)}`);
    }
    this.#db = options.db;
    this.#table = table;
    this.#clock = options.clock ?? systemClock;
  }

  /** Creates the tables (idempotent). */
  migrate(): void {
    const t = this.#table;
    this.#db.exec(`
      CREATE TABLE IF NOT EXISTS ${t} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL, key TEXT, payload BLOB, headers TEXT NOT NULL, idempotency_key TEXT,
        created_at INTEGER NOT NULL, available_at INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
        claimed_by TEXT, lease_until INTEGER NOT NULL DEFAULT 0, lease_lock TEXT, lease_token TEXT,
        settled_at INTEGER
      );
      CREATE INDEX IF NOT EXISTS ${t}_pending ON ${t} (status, id);
      CREATE TABLE IF NOT EXISTS ${t}_fences (lock TEXT PRIMARY KEY, token TEXT NOT NULL);
    `);
  }

  async enqueue(tx: DatabaseSync, messages: OutboxMessage | readonly OutboxMessage[]): Promise<string[]> {
    this.#open();
    if (tx !== this.#db) throw new OutboxError(OutboxErrorCode.InvalidOptions, "enqueue needs the store's database");
    const now = this.#clock.now();
    const prepared = prepareMessages(messages, { now });
    const insert = this.#db.prepare(
      `INSERT INTO ${this.#table} (topic, key, payload, headers, idempotency_key, created_at, available_at)
       VALUES (?, ?, ?, ?, ?, ?, ?)`,
    );
    return this.#atomically(() =>
      prepared.map((m) =>
        String(
          insert.run(
            m.topic,
            m.key,
            m.payload,
            JSON.stringify(m.headers),
            m.idempotencyKey,
            now,
            m.availableAt.getTime(),
          ).lastInsertRowid,
        ),
      ),
    );
  }

  async claim(request: ClaimRequest): Promise<OutboxEntry[]> {
    this.#open();
    return this.#atomically(() => {
      this.#checkFence(request.fence);
      const now = this.#clock.now();
      const rows = this.#db
        .prepare(`SELECT * FROM ${this.#table} WHERE status = 'pending' ORDER BY id`)
        .all() as unknown as Row[];
      const lease = this.#db.prepare(
        `UPDATE ${this.#table} SET attempts = attempts + 1, claimed_by = ?, lease_until = ?, lease_lock = ?, lease_token = ?
         WHERE id = ?`,
      );
      const blockedKeys = new Set<string>();
      const claimed: OutboxEntry[] = [];
      for (const row of rows) {
        if (claimed.length >= request.limit) break;
        if (row.key !== null && blockedKeys.has(row.key)) continue;
        const takesOver =
          request.fence !== undefined &&
          row.lease_lock === request.fence.lock &&
          row.lease_token !== null &&
          BigInt(row.lease_token) < request.fence.token;
        if (row.available_at > now || (row.lease_until > now && !takesOver)) {
          // A key's run ends at its first entry that cannot be claimed.
          if (row.key !== null) blockedKeys.add(row.key);
          continue;
        }
        const leaseUntil = now + request.leaseMs;
        lease.run(
          request.claimer,
          leaseUntil,
          request.fence?.lock ?? null,
          request.fence?.token.toString() ?? null,
          row.id,
        );
        claimed.push(toEntry({ ...row, attempts: row.attempts + 1 }));
      }
      return claimed;
    });
  }

  async ack(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#settle(context, () => {
      const update = this.#db.prepare(
        `UPDATE ${this.#table} SET status = 'published', settled_at = ?, lease_until = 0 WHERE id = ? AND status = 'pending'`,
      );
      for (const id of ids) update.run(this.#clock.now(), Number(id));
    });
  }

  async retry(items: readonly RetryItem[], context: SettleContext): Promise<void> {
    this.#settle(context, () => {
      const update = this.#db.prepare(
        `UPDATE ${this.#table} SET last_error = ?, available_at = ?, lease_until = 0, claimed_by = NULL
         WHERE id = ? AND status = 'pending' AND claimed_by = ?`,
      );
      for (const item of items) update.run(item.error, item.availableAt.getTime(), Number(item.id), context.claimer);
    });
  }

  async deadLetter(items: readonly DeadLetterItem[], context: SettleContext): Promise<void> {
    this.#settle(context, () => {
      const update = this.#db.prepare(
        `UPDATE ${this.#table} SET status = 'dead', last_error = ?, settled_at = ?, lease_until = 0
         WHERE id = ? AND status = 'pending' AND claimed_by = ?`,
      );
      for (const item of items) update.run(item.error, this.#clock.now(), Number(item.id), context.claimer);
    });
  }

  async release(ids: readonly string[], context: SettleContext): Promise<void> {
    this.#settle(context, () => {
      const update = this.#db.prepare(
        `UPDATE ${this.#table} SET attempts = max(0, attempts - 1), lease_until = 0, claimed_by = NULL
         WHERE id = ? AND status = 'pending' AND claimed_by = ?`,
      );
      for (const id of ids) update.run(Number(id), context.claimer);
    });
  }

  async listDead(options: { limit?: number; after?: string } = {}): Promise<OutboxEntry[]> {
    this.#open();
    const rows = this.#db
      .prepare(`SELECT * FROM ${this.#table} WHERE status = 'dead' AND id > ? ORDER BY id LIMIT ?`)
      .all(Number(options.after ?? 0), options.limit ?? 100) as unknown as Row[];
    return rows.map(toEntry);
  }

  async requeueDead(ids: readonly string[]): Promise<number> {
    this.#open();
    const update = this.#db.prepare(
      `UPDATE ${this.#table} SET status = 'pending', attempts = 0, available_at = ?, claimed_by = NULL,
         lease_until = 0, settled_at = NULL WHERE id = ? AND status = 'dead'`,
    );
    return this.#atomically(() =>
      ids.reduce((moved, id) => moved + Number(update.run(this.#clock.now(), Number(id)).changes), 0),
    );
  }

  async purge(request: PurgeRequest): Promise<number> {
    this.#open();
    const batch = request.batchSize ?? 1000;
    const remove = this.#db.prepare(
      `DELETE FROM ${this.#table} WHERE id IN (
         SELECT id FROM ${this.#table} WHERE status <> 'pending' AND settled_at < ? LIMIT ?)`,
    );
    let total = 0;
    for (;;) {
      const removed = Number(remove.run(request.olderThan.getTime(), batch).changes);
      total += removed;
      if (removed < batch) return total;
    }
  }

  async stats(): Promise<StoreStats> {
    this.#open();
    const row = this.#db
      .prepare(
        `SELECT
           (SELECT count(*) FROM ${this.#table} WHERE status = 'pending') AS pending,
           (SELECT count(*) FROM ${this.#table} WHERE status = 'pending' AND lease_until > ?) AS inFlight,
           (SELECT count(*) FROM ${this.#table} WHERE status = 'dead') AS dead,
           (SELECT min(created_at) FROM ${this.#table} WHERE status = 'pending') AS oldest`,
      )
      .get(this.#clock.now()) as { pending: number; inFlight: number; dead: number; oldest: number | null };
    return {
      pending: row.pending,
      inFlight: row.inFlight,
      dead: row.dead,
      oldestPendingAt: row.oldest === null ? null : new Date(row.oldest),
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  #open(): void {
    if (this.#closed) throw new OutboxError(OutboxErrorCode.Closed, "the SQLite store is closed");
  }

  #settle(context: SettleContext, work: () => void): void {
    this.#open();
    this.#atomically(() => {
      this.#checkFence(context.fence);
      work();
    });
  }

  /** Checks `fence` against the newest token seen for its lock and records it; in the caller's savepoint. */
  #checkFence(fence: Fence | undefined): void {
    if (!fence) return;
    const seen = this.#db.prepare(`SELECT token FROM ${this.#table}_fences WHERE lock = ?`).get(fence.lock) as
      | { token: string }
      | undefined;
    if (seen && fence.token < BigInt(seen.token)) {
      throw new OutboxError(OutboxErrorCode.Fenced, `fencing token ${fence.token} is older than ${seen.token}`, {
        details: { lock: fence.lock, token: fence.token.toString(), newest: seen.token },
      });
    }
    this.#db
      .prepare(
        `INSERT INTO ${this.#table}_fences (lock, token) VALUES (?, ?) ON CONFLICT (lock) DO UPDATE SET token = ?`,
      )
      .run(fence.lock, fence.token.toString(), fence.token.toString());
  }

  /** Runs `work` in a savepoint: all or nothing, inside or outside the caller's transaction. */
  #atomically<T>(work: () => T): T {
    this.#db.exec("SAVEPOINT outbox_op");
    try {
      const result = work();
      this.#db.exec("RELEASE outbox_op");
      return result;
    } catch (error) {
      this.#db.exec("ROLLBACK TO outbox_op");
      this.#db.exec("RELEASE outbox_op");
      throw error;
    }
  }
}

function toEntry(row: Row): OutboxEntry {
  return {
    id: String(row.id),
    topic: row.topic,
    key: row.key,
    payload: row.payload ? new Uint8Array(row.payload) : new Uint8Array(0),
    headers: JSON.parse(row.headers) as Record<string, string>,
    idempotencyKey: row.idempotency_key ?? String(row.id),
    createdAt: new Date(row.created_at),
    availableAt: new Date(row.available_at),
    attempts: row.attempts,
    lastError: row.last_error,
  };
}
