import { describeRelayConformance, describeStoreConformance } from "@outbox/conformance";
import type { ManualClock } from "@outbox/core";
import { afterAll } from "vitest";
import { createClient, mongoHarness, mongoJavaUrl } from "./helpers.js";

// mongo-java-server 1.47 (scripts/services.sh start mongo-java): in memory, oplog on, so it has
// change streams; no transactions and no logical sessions. The store probes change streams at
// init(), so the kit's wake-ups check runs for real here (on FerretDB it is skipped). Without
// transactions the store also wakes its own process at enqueue; mongo-java.test.ts shows that the
// change stream wakes a subscriber for another client's enqueue.
const client = createClient({ appName: "outbox-conformance-mongo-java" }, mongoJavaUrl);
afterAll(() => client.close());

const harness = (clock: ManualClock) => mongoHarness(clock, client, {}, { sessions: false });

const noTransactions =
  "mongo-java-server has no multi-document transactions: without them an entry is visible as soon as enqueue returns, so a commit cannot come late (the no-transactions late insert is tested in store.ferretdb.test.ts)";

describeStoreConformance({
  name: "store-mongodb (mongo-java-server 1.47, transactions: false, change streams)",
  create: harness,
  skip: { "late-commit": noTransactions },
});

describeRelayConformance({
  name: "store-mongodb (mongo-java-server 1.47, transactions: false, change streams)",
  createStore: harness,
});
