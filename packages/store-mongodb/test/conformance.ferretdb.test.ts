import { describeRelayConformance, describeStoreConformance } from "@outbox/conformance";
import { afterAll } from "vitest";
import { createClient, mongoHarness } from "./helpers.js";

// One client for the file; every test gets its own collections (fresh namespace) and store.
const client = createClient({ appName: "outbox-conformance" });
afterAll(() => client.close());

const noTransactions =
  "FerretDB 1.x has no multi-document transactions: without them an entry is visible as soon as enqueue returns, so a commit cannot come late (the no-transactions late insert is tested in store.ferretdb.test.ts)";

describeStoreConformance({
  name: "store-mongodb (FerretDB 1.24, transactions: false)",
  create: (clock) => mongoHarness(clock, client),
  skip: { "late-commit": noTransactions },
});

describeRelayConformance({
  name: "store-mongodb (FerretDB 1.24, transactions: false)",
  createStore: (clock) => mongoHarness(clock, client),
});
