// What a stack (a store, a publisher, a lock backend on their real servers) gives the chaos run:
// the child side (a relay's or the producer's store, a relay's publisher and lock) and the
// orchestrator side (setup, the independent recorder, the faults that need the servers' tools).
import type { LockBackend, OutboxMessage, OutboxPublisher, OutboxStore, StoreStats } from "@outbox/core";
import type { TcpProxy } from "@outbox/test-support/tcp-proxy";
import type { Delivery } from "./check.js";

export const stackIds = ["pg-kafka", "mysql-rabbitmq", "mongo-pubsub", "ferretdb-pubsub"] as const;
export type StackId = (typeof stackIds)[number];

/** Per run: fresh table/collection, topic/queue and lock names. */
export interface Names {
  readonly table: string;
  readonly topic: string;
  readonly lock: string;
}

export interface StoreHooks {
  /** Names the process's database sessions (application_name / appName). */
  readonly app: string;
  /** A database session (MySQL thread id) was opened: session kills target these. */
  readonly onSession?: (id: number) => void;
  readonly onError?: (error: unknown) => void;
}

export interface StoreHandle {
  readonly store: OutboxStore<never>;
  /** One application transaction that enqueues `messages`; resolves once it committed. */
  enqueueCommitted(messages: OutboxMessage[]): Promise<void>;
  close(): Promise<void>;
}

export interface Recorder {
  /** What the broker holds, in its order per key, as an independent consumer read it. */
  readonly deliveries: Delivery[];
  readonly errors: string[];
  close(): Promise<void>;
}

/** One relay process, as a fault sees it. */
export interface RelayTarget {
  readonly app: string;
  readonly sessions: ReadonlySet<number>;
  readonly dbProxy: TcpProxy;
}

export interface StackAdmin {
  readonly recorder: Recorder;
  /** The database ends the relay's sessions; returns how many. */
  killSessions(relay: RelayTarget): Promise<number>;
  /** Deletes the lock's key (as an operator or a lock-store failover would): the leader is deposed. */
  depose(): Promise<void>;
  stats(): Promise<StoreStats>;
  /** `store.purge({ olderThan })`: published and dead entries settled before it; returns how many. */
  purge(olderThan: Date): Promise<number>;
  /** `drop`: remove the run's table, topic/queue (kept when the run failed, for a look). */
  close(drop: boolean): Promise<void>;
}

export interface Stack {
  readonly id: StackId;
  readonly title: string;
  /** host:port of the database and of the broker (the proxies' targets). */
  readonly db: string;
  readonly broker: string;
  /** The database proxy resets connections one at a time, this many ms apart (0: all at once). */
  readonly resetGapMs: number;
  /** The producer's rate when the run's (220/s) is beyond what the server can take at all, and why. */
  readonly rate?: { readonly perSecond: number; readonly why: string };
  /**
   * An operator's scheduled `store.purge` (what the store's README asks for on its server), run by the
   * orchestrator every `everyMs` from the start of production to the end of the drain, and why.
   */
  readonly purge?: { readonly everyMs: number; readonly olderThanMs: number; readonly why: string };
  /** What the stack sets beyond the packages' defaults, and what the defaults are: printed. */
  readonly settings: Readonly<Record<string, string>>;
  /** The database URL with `endpoint` (host:port: the server or a proxy) as its address. */
  dbUrl(endpoint: string): string;
  openStore(url: string, names: Names, hooks: StoreHooks): Promise<StoreHandle>;
  /** The relay's publisher, connecting to the broker at `endpoint` (a proxy). */
  openPublisher(endpoint: string, names: Names): Promise<OutboxPublisher>;
  openLock(): Promise<{ backend: LockBackend; close(): Promise<void> }>;
  prepare(names: Names): Promise<StackAdmin>;
}

/** The headers every chaos entry carries: `x-seq` per key, the producer's time just before COMMIT. */
export const SeqHeader = "x-seq";
export const EnqueuedAtHeader = "x-enqueued-at";
