import { describeRelayConformance, describeStoreConformance } from "@outbox/conformance";
import { afterAll } from "vitest";
import { createPool, pgHarness } from "./helpers.js";

// One pool for the file; every test gets its own schema (fresh namespace) and store.
const pool = createPool({ max: 12, application_name: "outbox-conformance" });
afterAll(() => pool.end());

describeStoreConformance({
  name: "store-postgres (pg Pool, PostgreSQL 15)",
  create: (clock) => pgHarness(clock, pool),
});

describeStoreConformance({
  name: "store-postgres (pg Pool, async acks, no NOTIFY)",
  create: (clock) => pgHarness(clock, pool, { asyncAcks: true, notifyChannel: false }),
});

describeRelayConformance({
  name: "store-postgres (pg Pool, PostgreSQL 15)",
  createStore: (clock) => pgHarness(clock, pool),
});
