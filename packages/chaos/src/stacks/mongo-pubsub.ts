// MongoDB store -> Google Cloud Pub/Sub (Google's fake server), leader election on an etcd lock, on
// either MongoDB-wire server scripts/services.sh starts (no mongod is installable here):
// - `mongo-pubsub`: mongo-java-server, whose single-document updates are a compare-and-set as on
//   MongoDB, so the store takes its MongoDB claim path (conditional updates; polling, see `store` below);
// - `ferretdb-pubsub`: FerretDB 1.x, whose updates are not atomic (the store's ticket path) and
//   whose every query scans and decodes the pending entries: the producer writes at 15/s there.
// Neither server has multi-document transactions: the store runs with `transactions: false`, so the
// producer's enqueue is its own write, not part of a transaction.
import { PubSub, v1 } from "@google-cloud/pubsub";
import { OutboxHeader } from "@outbox/core";
import { createEtcdLockBackend } from "@outbox/lock-etcd";
import { createPubSubPublisher, pubsubReconnectOptions } from "@outbox/publisher-pubsub";
import { createMongoStore } from "@outbox/store-mongodb";
import { mongoJavaUrl, mongoUrl, pubsubHost } from "@outbox/test-support/services";
import { sleep } from "@outbox/test-support/wait";
import { MongoClient } from "mongodb";
import type { Delivery } from "../check.js";
import { type Recorder, SeqHeader, type Stack, type StackAdmin, type StackId } from "../stack.js";
import { etcdClient } from "./etcd.js";

const projectId = "outbox-test";
const database = "outbox_test";

function mongoClient(url: string, app: string): MongoClient {
  return new MongoClient(url, { serverSelectionTimeoutMS: 5_000, appName: app });
}

interface Pulled {
  ackId?: string | null;
  message?: {
    attributes?: Record<string, string> | null;
    messageId?: string | null;
    orderingKey?: string | null;
  } | null;
}

/**
 * A synchronous Pull loop on a subscription with message ordering on (each pull returns at most
 * the next message of every ordering key), straight to the fake server. A message id it got
 * before is the subscription redelivering to us (an ack that did not make it), not recorded twice.
 */
async function pubsubRecorder(pubsub: PubSub, subscriptionName: string): Promise<Recorder> {
  const deliveries: Delivery[] = [];
  const errors: string[] = [];
  const seen = new Set<string>();
  const client = new v1.SubscriberClient({ ...pubsub.options } as ConstructorParameters<typeof v1.SubscriberClient>[0]);
  const subscription = `projects/${projectId}/subscriptions/${subscriptionName}`;
  let running = true;
  const loop = (async () => {
    while (running) {
      try {
        const [response] = await client.pull({ subscription, maxMessages: 1_000 }, { timeout: 5_000 });
        const at = Date.now();
        const received = (response.receivedMessages ?? []) as Pulled[];
        for (const pulled of received) {
          const message = pulled.message ?? {};
          const messageId = message.messageId ?? "";
          if (seen.has(messageId)) continue;
          seen.add(messageId);
          const attributes = message.attributes ?? {};
          deliveries.push({
            id: attributes[OutboxHeader.IdempotencyKey] ?? "",
            key: message.orderingKey ?? "",
            seq: Number(attributes[SeqHeader]),
            at,
            outboxId: attributes[OutboxHeader.Id] ?? "",
          });
        }
        const ackIds = received.map((pulled) => pulled.ackId).filter((id): id is string => Boolean(id));
        if (ackIds.length > 0) await client.acknowledge({ subscription, ackIds });
      } catch (error) {
        if (!running) break;
        errors.push(`recorder pull: ${(error as Error).message}`);
        await sleep(100);
      }
    }
  })();
  return {
    deliveries,
    errors,
    async close() {
      running = false;
      await loop;
      await client.close().catch(() => undefined);
    },
  };
}

const servers = {
  "mongo-pubsub": {
    title: "MongoDB (mongo-java-server) -> Pub/Sub, etcd lock",
    url: mongoJavaUrl,
    wakeUps: false,
    store:
      "createMongoStore({ client, db, collection, transactions: false, wakeUps: false }): mongo-java-server has no multi-document transactions, so the producer's enqueue is not in one; it answers a change stream's getMore at once instead of awaiting data (measured: ~300 getMores/s per stream, each a scan and sort of its whole oplog), which with three relays kept its busy core saturated, so the relays poll (every 500 ms, the relay's default); otherwise defaults (conditional updates)",
  },
  "ferretdb-pubsub": {
    title: "MongoDB (FerretDB) -> Pub/Sub, etcd lock",
    url: mongoUrl,
    wakeUps: "auto",
    store:
      "createMongoStore({ client, db, collection, transactions: false }): FerretDB 1.x has no transactions, so the producer's enqueue is not in a multi-document transaction; otherwise defaults (claim tickets, polling: no change streams)",
  },
} as const;

export function mongoPubSubStack(id: "mongo-pubsub" | "ferretdb-pubsub"): Stack {
  const server = servers[id];
  return {
    id: id satisfies StackId,
    title: server.title,
    db: new URL(server.url).host,
    broker: pubsubHost,
    // The mongodb driver wedges when every connection of a client is reset in the same instant
    // (store-mongodb README, Limits): the proxy resets them one at a time.
    resetGapMs: 5,
    ...(id === "ferretdb-pubsub"
      ? {
          rate: {
            perSecond: 15,
            why: "on FerretDB (SQLite or PostgreSQL backend) claims slow to seconds once a few thousand entries are pending, so the backlog of a fault is never worked off at 30/s and up (at 220/s not even without faults); --rate 220 runs it at the full rate",
          },
        }
      : {}),
    // Neither server serves the store's queries from an index (FerretDB 1.x pushes none down; mongo-java-server's
    // memory backend has unique indexes only), so every query costs a pass over the whole collection,
    // published entries included: the store's README asks for a scheduled purge there.
    purge: {
      everyMs: 5_000,
      olderThanMs: 10_000,
      why: "neither server answers the store's queries from an index: each scans the whole collection, so published entries are purged on a schedule, as the store's README asks",
    },
    settings: {
      store: server.store,
      publisher:
        "createPubSubPublisher({ pubsub }): defaults; the PubSub client with pubsubReconnectOptions (as the README recommends); a subscription with message ordering",
      lock: "createEtcdLockBackend({ client }): defaults; Etcd3 client with dialTimeout 1000",
      client: "MongoClient with serverSelectionTimeoutMS 5000",
    },
    dbUrl: (endpoint) => `mongodb://${endpoint}/?directConnection=true`,
    async openStore(url, names, hooks) {
      const client = mongoClient(url, hooks.app);
      const store = createMongoStore({
        client,
        db: database,
        collection: names.table,
        transactions: false,
        wakeUps: server.wakeUps,
        ...(hooks.onError ? { onError: hooks.onError } : {}),
      });
      await store.init();
      return {
        store,
        enqueueCommitted: (messages) => store.enqueue(null, messages).then(() => undefined),
        async close() {
          await store.close();
          await client.close();
        },
      };
    },
    async openPublisher(endpoint) {
      // As the package README recommends: reconnect within 1 s of a network fault's end.
      const pubsub = new PubSub({
        projectId,
        apiEndpoint: endpoint,
        emulatorMode: true,
        universeDomain: "googleapis.com",
        ...pubsubReconnectOptions,
      });
      return createPubSubPublisher({ pubsub });
    },
    async openLock() {
      const client = etcdClient();
      return { backend: createEtcdLockBackend({ client }), close: async () => client.close() };
    },
    async prepare(names): Promise<StackAdmin> {
      const client = mongoClient(`${server.url}/?directConnection=true`, "chaos-admin");
      const store = createMongoStore({ client, db: database, collection: names.table, transactions: false });
      await store.init();
      const pubsub = new PubSub({
        projectId,
        apiEndpoint: pubsubHost,
        emulatorMode: true,
        universeDomain: "googleapis.com",
      });
      await pubsub.createTopic(names.topic);
      const subscription = `${names.topic}-chaos`;
      await pubsub.createSubscription(names.topic, subscription, { enableMessageOrdering: true });
      const recorder = await pubsubRecorder(pubsub, subscription);
      const etcd = etcdClient();
      const lockKey = createEtcdLockBackend({ client: etcd }).lockKey(names.lock);
      return {
        recorder,
        // Neither server can kill another client's session: the connections die at the proxy instead,
        // one at a time, as a server's KILL would end them.
        killSessions: (relay) => relay.dbProxy.dropEach(),
        async depose() {
          await etcd.delete().key(lockKey);
        },
        stats: () => store.stats(),
        purge: (olderThan) => store.purge({ olderThan }),
        async close(drop) {
          await recorder.close();
          if (drop) {
            const db = client.db(database);
            for (const name of Object.values(store.names)) {
              if (name !== database) await db.dropCollection(name).catch(() => undefined);
            }
            await pubsub
              .subscription(subscription)
              .delete()
              .catch(() => undefined);
            await pubsub
              .topic(names.topic)
              .delete()
              .catch(() => undefined);
          }
          await pubsub.close();
          etcd.close();
          await store.close();
          await client.close();
        },
      };
    },
  };
}
