import type { StoreHarness } from "@outbox/conformance";
import type { ManualClock } from "@outbox/core";
import { mongoJavaUrl, mongoUrl } from "@outbox/test-support/services";
import { MongoClient, type MongoClientOptions } from "mongodb";
import { createMongoStore, type MongoStore, type MongoStoreOptions, type MongoTransaction } from "../src/index.js";

// scripts/services.sh's MongoDB-wire servers: `mongodb` (FerretDB 1.24 on PostgreSQL) and `mongo-java`
// (mongo-java-server 1.47, in memory, oplog on).
export { mongoJavaUrl, mongoUrl };
export const testDb = "outbox_test";

export function createClient(options: MongoClientOptions = {}, url = mongoUrl): MongoClient {
  return new MongoClient(url, {
    serverSelectionTimeoutMS: 5_000,
    appName: "outbox-store-mongodb-test",
    ...options,
  });
}

/** A fresh collection name per test (collections are the store's namespace). */
export function freshCollection(prefix = "t"): string {
  return `${prefix}_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
}

export async function dropStore(client: MongoClient, store: MongoStore): Promise<void> {
  const db = client.db(store.names.db);
  for (const name of [store.names.entries, store.names.sequence, store.names.fences, store.names.claims]) {
    await db.dropCollection(name).catch(() => undefined);
  }
}

/**
 * A store on a fresh collection of the real server, for the conformance kit. Neither server
 * has transactions: the store runs with transactions: false and the harness's "transaction" is
 * a plain session (the kit skips the rollback check on the declared capability), or null with
 * `sessions: false` (mongo-java-server has no logical sessions: the driver refuses to use one).
 */
export async function mongoHarness(
  clock: ManualClock,
  client: MongoClient,
  options: Partial<MongoStoreOptions> = {},
  { sessions = true }: { sessions?: boolean } = {},
): Promise<StoreHarness<MongoTransaction>> {
  const settings = {
    client,
    db: testDb,
    collection: freshCollection(),
    transactions: false,
    clock,
    onError: () => undefined,
    ...options,
  };
  const store = createMongoStore(settings);
  await store.init();
  const peers: MongoStore[] = [];
  return {
    store,
    clock,
    transaction: (work) => (sessions ? client.withSession((session) => work(session)) : work(null)),
    // Another relay's store: a second instance on the same collection (its own in-process state).
    async peer() {
      const peer = createMongoStore(settings);
      await peer.init();
      peers.push(peer);
      return peer;
    },
    async teardown() {
      await Promise.all(peers.map((peer) => peer.close()));
      await store.close();
      await dropStore(client, store);
    },
  };
}

/**
 * A MongoClient stand-in for a replica-set member, no server: `hello` names a replica set; `collection(name)`
 * and `session` are the test's fakes.
 */
export function fakeReplicaSetClient(collection: (name: string) => unknown, session: unknown): MongoClient {
  const client = {
    db: (name: string) =>
      name === "admin"
        ? { command: async () => ({ setName: "rs0", ok: 1 }) }
        : { collection: (c: string) => collection(c) },
    startSession: () => session,
  };
  return client as unknown as MongoClient;
}
