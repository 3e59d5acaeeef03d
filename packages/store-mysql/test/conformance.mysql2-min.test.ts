import { describeStoreConformance } from "@outbox/conformance";
import mysqlMin from "mysql2-min/promise";
import { afterAll } from "vitest";
import { mysqlHarness, mysqlUrl } from "./helpers.js";

// The oldest mysql2 the peer range allows (3.9): the whole store suite once more.
const pool = mysqlMin.createPool({ uri: mysqlUrl, connectionLimit: 12 });
afterAll(() => pool.end());

describeStoreConformance({
  name: "store-mysql (mysql2 3.9 Pool, oldest supported)",
  create: (clock) => mysqlHarness(clock, pool as never, { plainTransactions: true, wakeUps: false }),
});
