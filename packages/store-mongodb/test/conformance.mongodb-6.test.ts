import { describeStoreConformance } from "@outbox/conformance";
import { ManualClock } from "@outbox/core";
import * as driver from "mongodb";
import { afterAll, expect, it, vi } from "vitest";
import { createClient, mongoHarness, mongoJavaUrl } from "./helpers.js";

// The oldest driver the peer range allows (mongodb 6.0.0): the whole store suite once more, on
// both servers. Every import of "mongodb" in this file's module graph (the store's Binary and Long
// included) resolves to 6.0.0, as in an application that installed it: BSON values of one
// driver major cannot be sent by another (bson checks its own version).
vi.mock("mongodb", () => import("mongodb-6"));

const ferret = createClient({ appName: "outbox-conformance-mongodb-6" });
const java = createClient({ appName: "outbox-conformance-mongodb-6" }, mongoJavaUrl);
afterAll(() => Promise.all([ferret.close(), java.close()]));

it("runs the 6.0.0 driver", async () => {
  const { version } = (await import("mongodb-6/package.json", { with: { type: "json" } })).default as {
    version: string;
  };
  expect(version).toBe("6.0.0");
  expect(driver.MongoClient).toBe((await import("mongodb-6")).MongoClient);
  const { store, teardown } = await mongoHarness(new ManualClock(), java, {}, { sessions: false });
  try {
    expect(store.capabilities).toEqual({ wakeUps: true, transactions: false, deadLetterFilters: true });
  } finally {
    await teardown();
  }
});

const noTransactions =
  "neither server has multi-document transactions: an entry is visible as soon as enqueue returns, so a commit cannot come late";

describeStoreConformance({
  name: "store-mongodb (mongodb 6.0.0 driver, FerretDB 1.24)",
  create: (clock) => mongoHarness(clock, ferret),
  skip: { "late-commit": noTransactions },
});

describeStoreConformance({
  name: "store-mongodb (mongodb 6.0.0 driver, mongo-java-server 1.47, change streams)",
  create: (clock) => mongoHarness(clock, java, {}, { sessions: false }),
  skip: { "late-commit": noTransactions },
});
