import { describeRelayConformance, describeStoreConformance } from "@outbox/conformance";
import { afterAll } from "vitest";
import { createPool, mysqlHarness } from "./helpers.js";

// One pool for the file; every test gets its own table (fresh namespace) and store.
const pool = createPool({ connectionLimit: 12 });
afterAll(() => pool.end());

describeStoreConformance({
  name: "store-mysql (mysql2 Pool, MariaDB 10.11, store.transaction())",
  create: (clock) => mysqlHarness(clock, pool),
});

describeStoreConformance({
  name: "store-mysql (mysql2 Pool, MariaDB 10.11, plain START TRANSACTION on a PoolConnection)",
  create: (clock) => mysqlHarness(clock, pool, { plainTransactions: true, wakeUps: false }),
});

describeRelayConformance({
  name: "store-mysql (mysql2 Pool, MariaDB 10.11)",
  createStore: (clock) => mysqlHarness(clock, pool),
});
