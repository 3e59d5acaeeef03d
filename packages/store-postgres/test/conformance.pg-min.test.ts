import { describeStoreConformance } from "@outbox/conformance";
import pgMin from "pg-min";
import { afterAll } from "vitest";
import { pgHarness, pgUrl } from "./helpers.js";

// The oldest pg the peer range allows (8.11): the whole store suite once more.
const pool = new pgMin.Pool({ connectionString: pgUrl, max: 12 });
pool.on("error", () => undefined);
afterAll(() => pool.end());

describeStoreConformance({
  name: "store-postgres (pg 8.11 Pool, oldest supported)",
  create: (clock) => pgHarness(clock, pool),
});
