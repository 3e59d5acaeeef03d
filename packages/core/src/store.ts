import type { OutboxEntry, OutboxMessage } from "./entry.js";

/**
 * A fencing token presented by a leader. The store remembers the highest token seen per lock
 * name and rejects (OUTBOX_FENCED) any claim or ack carrying a lower one, atomically with
 * that claim or ack: a deposed leader that still believes it leads can no longer act.
 */
export interface Fence {
  readonly lock: string;
  readonly token: bigint;
}

export interface ClaimRequest {
  /** Identifies the claiming relay; retry/deadLetter/release only act on the claimer's own entries. */
  readonly claimer: string;
  /** Most entries returned, all keys together. */
  readonly limit: number;
  /** Claimed entries stay invisible to other claimers for this long (unless a newer fence takes them over). */
  readonly leaseMs: number;
  readonly fence?: Fence;
}

/** Who is settling claimed entries. */
export interface SettleContext {
  readonly claimer: string;
  readonly fence?: Fence;
}

export interface RetryItem {
  readonly id: string;
  readonly error: string;
  /** The entry is not claimable before this moment. */
  readonly availableAt: Date;
}

export interface DeadLetterItem {
  readonly id: string;
  readonly error: string;
}

export interface StoreStats {
  /** Entries not yet published or dead, claimed or not. */
  readonly pending: number;
  /** Pending entries currently under a lease. */
  readonly inFlight: number;
  readonly dead: number;
  /** createdAt of the oldest pending entry: the outbox's lag. */
  readonly oldestPendingAt: Date | null;
  /** Log-capture stores only: where their position in the database's log stands. */
  readonly capture?: CaptureStats;
}

/** Where a log-capture store's position in the log stands (a PostgreSQL replication slot, say). */
export interface CaptureStats {
  /** What is read: the replication slot's name, for PostgreSQL. */
  readonly source: string;
  /** Whether a consumer is attached to it now. */
  readonly active: boolean;
  /**
   * The server's word for it (PostgreSQL: `reserved`, `extended`, `unreserved`, `lost`), or
   * `missing` when it does not exist: entries committed since are in the table only.
   */
  readonly state: string;
  /** Log bytes written since the position the store last confirmed (null when missing). */
  readonly lagBytes: number | null;
  /** Log bytes the server keeps on disk for it (null when missing). */
  readonly retainedBytes: number | null;
}

export interface PendingSummaryOptions {
  /** Pending entries looked at, oldest first (id order). Default 10,000. */
  readonly scanLimit?: number;
  /** Hot keys returned at most. Default 10. */
  readonly hotKeys?: number;
  /** Blocked keys returned at most. Default 10. */
  readonly blockedKeys?: number;
}

/**
 * A key whose first pending entry has failed and waits for its retry: every later entry of the
 * key waits behind it.
 */
export interface BlockedKey {
  readonly key: string;
  /** The key's pending entries among those scanned, the failing one included. */
  readonly pending: number;
  /** The failing entry. */
  readonly entryId: string;
  readonly attempts: number;
  readonly lastError: string | null;
  /** When it is tried again. */
  readonly availableAt: Date;
}

/** What `pendingSummary` found among the oldest pending entries. */
export interface PendingSummary {
  /** Pending entries looked at. Below `scanLimit`: every pending entry was. */
  readonly scanned: number;
  /**
   * Among them: entries waiting for a retry or a delayed start (`availableAt` in the future, not
   * under a lease).
   */
  readonly retryWaiting: number;
  /** Among them: the keys holding the most entries, most first (then by key); keyless entries are not counted. */
  readonly hotKeys: ReadonlyArray<{ readonly key: string; readonly pending: number }>;
  /**
   * Among them: keys blocked behind a failing entry (their first pending entry failed and waits
   * for a retry, not under a lease), most pending first (then by key).
   */
  readonly blockedKeys: ReadonlyArray<BlockedKey>;
}

/**
 * `scanLimit`: pending entries looked at, oldest first (id order), for the leases and the pending
 * entries' errors; and settled entries looked at, newest settle first, for the last publish.
 * Default 10,000.
 */
export interface RelayActivityOptions extends Pick<PendingSummaryOptions, "scanLimit"> {
  /** Errors returned at most. Default 10. */
  readonly recentErrors?: number;
}

/** A relay holding leases, as the store sees it: its claimers' unexpired leases together. */
export interface RelayClaimer {
  /**
   * The relay's id: a relay claims as `<relayId>#<n>`, so the claimer name up to its last `#`
   * (the whole name when it has none).
   */
  readonly relay: string;
  /** Its entries under an unexpired lease, among the pending entries looked at. */
  readonly inFlight: number;
  /** When the last of those leases ends. */
  readonly leaseUntil: Date;
}

/** An entry whose last attempt failed: pending and waiting for its retry, or dead. */
export interface RecentError {
  readonly id: string;
  readonly key: string | null;
  readonly topic: string;
  /** Its last error. */
  readonly error: string;
  readonly attempts: number;
  /**
   * Dead: when it was dead-lettered. Pending: when its retry is due (the store keeps no time of
   * the failure itself; a retry due in the future is a failure that is still current).
   */
  readonly at: Date;
  readonly dead: boolean;
}

/** What `relayActivity` found: the relays' work as the store sees it, each part a bounded read. */
export interface RelayActivity {
  /** Pending entries looked at (below `scanLimit`: every pending entry was). */
  readonly scanned: number;
  /** The newest fencing token the store recorded per lock name, by lock name (at most 100 names). */
  readonly fences: ReadonlyArray<Fence>;
  /** Relays with entries under an unexpired lease among the pending entries looked at, by relay id. */
  readonly claimers: ReadonlyArray<RelayClaimer>;
  /**
   * The newest settle time of a published entry, among the newest `scanLimit` settled entries
   * (null: none of them was published).
   */
  readonly lastPublishedAt: Date | null;
  /**
   * The entries with a last error, newest `at` first (then the higher id first), at most
   * `recentErrors`: from the pending entries looked at and the newest `recentErrors` dead entries
   * (by id).
   */
  readonly recentErrors: ReadonlyArray<RecentError>;
}

export interface PurgeRequest {
  /** Published and dead entries older than this go. Pending entries never do. */
  readonly olderThan: Date;
  /** Rows per statement, so a purge never holds long locks. Default 1000. */
  readonly batchSize?: number;
}

/** What a store promises. Read by the relay and by the conformance kit. */
export interface StoreCapabilities {
  /** `subscribe()` delivers wake-up hints after commits. */
  readonly wakeUps: boolean;
  /** A rolled-back transaction leaves no entry behind. */
  readonly transactions: boolean;
  /**
   * Two transactions can be open and commit independently (a connection pool on a server).
   * `false` for single-writer stores (SQLite, PGlite: one connection, one transaction at a time),
   * where a lower id cannot commit after a higher one. Absent means `true`.
   */
  readonly concurrentWriters?: boolean;
  /**
   * `listDead` honours its filters (`topic`, `key`, `errorContains`): each page holds up to `limit`
   * matching entries, however many do not match. Absent means `false`: a store written before the
   * filters may ignore them, so tools filter what it returns themselves.
   */
  readonly deadLetterFilters?: boolean;
}

export type Unsubscribe = () => Promise<void>;

/**
 * Which dead entries `listDead` returns, a page at a time. The filters combine (all must match) and
 * apply before `limit`: a page holds up to `limit` matching entries. A filter given is a non-empty,
 * well-formed string of at most 4,096 characters (`key` may also be `null`); anything else is
 * OUTBOX_INVALID_OPTIONS.
 */
export interface ListDeadOptions {
  /** At most this many entries. Default 100. */
  readonly limit?: number;
  /**
   * Only entries after this id (oldest first): the last id of the previous page, asked with the same
   * filters. It may name an entry that is no longer dead, or does not match.
   */
  readonly after?: string;
  /** Only entries of this topic: exactly (case, spaces and all). */
  readonly topic?: string;
  /** Only entries of this key, exactly (case, trailing spaces and all); `null`: only entries without a key. */
  readonly key?: string | null;
  /**
   * Only entries whose last error contains this text, ignoring case: ASCII letters on every store,
   * other letters as the store lowercases them (SQL stores: the database's rules). Plain text: `%`,
   * `_`, `\`, `*` and the like match themselves, never as wildcards.
   */
  readonly errorContains?: string;
}

/**
 * Durable outbox storage.
 *
 * The claim contract (the conformance kit checks each rule):
 * - **Key runs.** `claim` returns at most `limit` pending, available entries in id order. For a
 *   keyed entry it may return several consecutive pending entries of that key, a *run*: the
 *   returned entries of one key are always a prefix of that key's pending entries in id order
 *   (the key's head first, then its successors while they are available). Never an entry before
 *   an earlier pending entry of its key, and never two claimers on one key: a key whose head is
 *   leased by someone else, or waiting for a retry, yields nothing.
 * - **Cost.** A claim costs the same however deep the backlog behind a key is (SQL stores find
 *   key heads through a (key, id) index instead of walking the blocked entries).
 * - **Leases and takeover.** Claimed entries are leased to the claimer for `leaseMs`. A claim
 *   carrying a fence takes over, at once, entries leased under an *older* token of the same lock
 *   (a deposed or frozen leader's work), so a new leader never waits for old leases to run out.
 * - A claim increments `attempts`; `release` gives entries back without counting an attempt.
 * - `ack` is idempotent and ends an entry's life as published.
 * - **Fencing.** Every claim or settle carrying a fence is checked against the newest token seen
 *   for its lock, atomically with its effect: an older token gets `OUTBOX_FENCED` (details:
 *   `lock`, `token`, `newest`, the true newest token) and changes nothing.
 */
export interface OutboxStore<Tx = unknown> {
  readonly capabilities: StoreCapabilities;
  /** Inserts entries using the caller's own transaction. Returns their ids, in order. */
  enqueue(tx: Tx, messages: OutboxMessage | readonly OutboxMessage[]): Promise<string[]>;
  claim(request: ClaimRequest): Promise<OutboxEntry[]>;
  ack(ids: readonly string[], context: SettleContext): Promise<void>;
  retry(items: readonly RetryItem[], context: SettleContext): Promise<void>;
  deadLetter(items: readonly DeadLetterItem[], context: SettleContext): Promise<void>;
  /** Returns claimed entries unpublished and unleased, e.g. on shutdown. */
  release(ids: readonly string[], context: SettleContext): Promise<void>;
  /**
   * Optional: gives back every entry still leased to `context.claimer`, as `release` would (no
   * attempt counted), and returns how many. The relay claims under a new claimer name each time
   * and calls this for a claim that failed without an answer: it may have committed while its
   * reply was lost (a connection reset), and its entries, with the rest of their keys, would
   * otherwise wait out the lease. Under a fence, the same check as any settle.
   */
  releaseClaimer?(context: SettleContext): Promise<number>;
  /**
   * Dead entries, oldest first (id order), at most `limit` (default 100). `after` pages on: only
   * entries after that id, the last one of the previous page. A store that declares
   * `capabilities.deadLetterFilters` applies `topic`, `key` and `errorContains` itself, before the
   * limit (see `ListDeadOptions`).
   */
  listDead(options?: ListDeadOptions): Promise<OutboxEntry[]>;
  /** Makes dead entries pending again with a fresh attempt count. Returns how many moved. */
  requeueDead(ids: readonly string[]): Promise<number>;
  /**
   * Optional: deletes dead entries for good (operator tooling, e.g. `outbox dead drop`). Only
   * dead entries go; other ids are ignored. Returns how many were deleted.
   */
  dropDead?(ids: readonly string[]): Promise<number>;
  /** Deletes old published and dead entries in bounded batches. Returns how many went. */
  purge(request: PurgeRequest): Promise<number>;
  stats(): Promise<StoreStats>;
  /**
   * Optional (operator tooling, e.g. `outbox dashboard`): a look at the oldest `scanLimit` pending
   * entries, one bounded read of the pending index however deep the backlog: how many of them wait
   * for a retry, and the keys holding the most of them.
   */
  pendingSummary?(options?: PendingSummaryOptions): Promise<PendingSummary>;
  /**
   * Optional (operator tooling, e.g. `outbox dashboard` without `--relay`): the relays as the store
   * sees them: the fencing tokens it recorded, who holds leases, the last publish and the recent
   * errors. Bounded reads however large the table (see `RelayActivity`).
   */
  relayActivity?(options?: RelayActivityOptions): Promise<RelayActivity>;
  /** Wake-up hints (declared by `capabilities.wakeUps`); polling stays the safety net. */
  subscribe?(listener: () => void): Promise<Unsubscribe>;
  close(): Promise<void>;
}

/** The transaction type a store's enqueue takes. */
export type StoreTransaction<S> = S extends OutboxStore<infer Tx> ? Tx : never;
