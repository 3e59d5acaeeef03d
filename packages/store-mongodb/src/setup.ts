/**
 * What the stores set up and read of the server before their first operation: namespaces,
 * server capabilities, indexes.
 */
import { OutboxError, OutboxErrorCode } from "@outbox/core";
import { type Collection, Long, type MongoClient } from "mongodb";
import { isConnectionError, mongoCode } from "./errors.js";

export interface ServerInfo {
  /** Replica set member or mongos: multi-document transactions and change streams. */
  readonly replicated: boolean;
  /**
   * Change streams open on the entries collection: always on replica sets and mongos; elsewhere
   * as probed at `init()` (a standalone mongod and FerretDB 1.x refuse them; mongo-java-server
   * with its oplog enabled has them, without transactions).
   */
  readonly changeStreams: boolean;
  /**
   * A conditional single-document update is a compare-and-set, so claims arbitrate with the
   * lease update itself: MongoDB, and mongo-java-server (every write command holds its
   * collection's lock). The three below are false on FerretDB (`buildInfo.ferretdbVersion`):
   * 1.x applies an update as read, filter, write back, so claims insert unique tickets first
   * there (see claim-tickets.ts).
   */
  readonly atomicUpdates: boolean;
  /** `$group` has `$first`, for the claim's key heads past its window (FerretDB 1.x: no). */
  readonly groupFirst: boolean;
  /**
   * Queries use the store's indexes (created at `init()`). FerretDB 1.x uses none but `_id`'s
   * unique index, and that one only to write: it pushes equality filters down to PostgreSQL as
   * jsonb containment (`@>`, which no btree index serves) and sorts in memory, so every query is
   * a scan of the collection (EXPLAIN: Seq Scan). The store creates no indexes there (they would
   * only slow its writes down) and reads every pending entry in one query per claim.
   */
  readonly secondaryIndexes: boolean;
}

/** The server's "no such command" error code. */
const commandNotFound = 59;

/** Collection names: 1-100 characters, no "$", no U+0000. */
function validCollection(name: string): boolean {
  return name.length >= 1 && name.length <= 100 && !name.includes("$") && !name.includes(String.fromCharCode(0));
}

/**
 * The `client`, `db` and `collection` options the stores share, validated (OUTBOX_INVALID_OPTIONS naming
 * `factory`). Returns the collection name.
 */
export function checkNamespace(
  options: { client?: MongoClient; db?: string; collection?: string } | undefined,
  factory: string,
  defaultCollection: string,
): string {
  if (!options?.client || typeof options.client.db !== "function") {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${factory} needs \`client\`: a MongoClient`);
  }
  if (typeof options.db !== "string" || options.db.length === 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${factory} needs \`db\`: a database name`);
  }
  const collection = options.collection ?? defaultCollection;
  if (typeof collection !== "string" || !validCollection(collection) || collection.startsWith("system.")) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `collection must be 1-100 characters without "$" or U+0000, got ${JSON.stringify(collection)}`,
    );
  }
  return collection;
}

/**
 * Creates the indexes that are missing. Only those: FerretDB 1.24 drops the connection (a
 * panic) on createIndexes for indexes that already exist.
 */
export async function ensureIndexes(
  collection: {
    listIndexes(): { toArray(): Promise<Array<{ name?: unknown }>> };
    createIndexes: Collection["createIndexes"];
  },
  wanted: Array<{ key: Record<string, 1 | -1>; name: string }>,
): Promise<void> {
  let existing: string[] = [];
  try {
    existing = (await collection.listIndexes().toArray()).map((index) => String(index.name));
  } catch (error) {
    // NamespaceNotFound: the collection does not exist yet.
    if (mongoCode(error) !== 26) throw error;
  }
  const missing = wanted.filter((index) => !existing.includes(index.name));
  if (missing.length > 0) await collection.createIndexes(missing);
}

/** The outbox store's indexes, on its entries, claims and fences collections (never on FerretDB: see ServerInfo). */
export async function ensureStoreIndexes(entries: Collection, claims: Collection, fences: Collection): Promise<void> {
  await ensureIndexes(entries, [
    // The claim's window: the oldest pending entries; also dead entries oldest first.
    { key: { status: 1, _id: 1 }, name: "outbox_status_id" },
    // Past the window: each key's head ($group/$first: a distinct scan), null-key entries.
    { key: { status: 1, key: 1, _id: 1 }, name: "outbox_status_key_id" },
    // purge: settled entries by settle time.
    { key: { status: 1, settledAt: 1 }, name: "outbox_status_settled" },
  ]);
  // purge removes the tickets of purged entries.
  await ensureIndexes(claims, [{ key: { seq: 1 }, name: "outbox_claims_seq" }]);
  // The newest fencing token of a lock: its highest record.
  await ensureIndexes(fences, [{ key: { lock: 1, token: -1 }, name: "outbox_fences_lock_token" }]);
}

/**
 * What a store reads of the server at `init()`: whether it is a replica set member or mongos (multi-document
 * transactions, change streams) and whether it is FerretDB. Fails with OUTBOX_INVALID_OPTIONS when
 * `transactions` is asked for on a standalone server.
 */
export async function probeServer(
  client: MongoClient,
  transactions: boolean,
): Promise<{ replicated: boolean; ferretdb: boolean }> {
  const admin = client.db("admin");
  // Servers without `hello` (older ones, mongo-java-server) answer the legacy isMaster.
  const hello = await admin.command({ hello: 1 }).catch((error: unknown) => {
    if (mongoCode(error) !== commandNotFound) throw error;
    return admin.command({ isMaster: 1 });
  });
  const replicated = typeof hello.setName === "string" || hello.msg === "isdbgrid";
  if (transactions && !replicated) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      "transactions: true needs a replica set or a sharded cluster, and this server is standalone (no multi-document transactions): use transactions: false (see the README)",
    );
  }
  // FerretDB names itself in buildInfo. What the store knows of it is 1.24 (see ServerInfo and
  // the README); any version is treated the same way, which is correct everywhere.
  const ferretdb = typeof (await admin.command({ buildInfo: 1 })).ferretdbVersion === "string";
  return { replicated, ferretdb };
}

/**
 * Whether the server opens a change stream on the entries collection: one `aggregate` with
 * `$changeStream` and an empty first batch, its cursor killed at once. A server that refuses
 * it (standalone mongod: "only supported on replica sets"; FerretDB 1.x: unknown stage) has
 * none; a connection failure is not an answer and fails `init()`.
 */
export async function probeChangeStreams(client: MongoClient, dbName: string, collection: string): Promise<boolean> {
  const db = client.db(dbName);
  let reply: { cursor?: { id?: unknown } };
  try {
    reply = await db.command({
      aggregate: collection,
      pipeline: [{ $changeStream: {} }],
      cursor: { batchSize: 0 },
    });
  } catch (error) {
    // Only the server's refusal is an answer; a failed connection or a timeout fails init().
    if (isConnectionError(error) || (error as { name?: unknown } | null)?.name !== "MongoServerError") throw error;
    return false;
  }
  const id = reply.cursor?.id;
  if ((typeof id === "number" || id instanceof Long) && String(id) !== "0") {
    // A cursor id is an int64 (the driver hands small ones back as numbers).
    const cursor = typeof id === "number" ? Long.fromNumber(id) : id;
    await db.command({ killCursors: collection, cursors: [cursor] }).catch(() => undefined);
  }
  return true;
}
