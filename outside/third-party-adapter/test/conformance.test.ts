import { DatabaseSync } from "node:sqlite";
import { describeRelayConformance, describeStoreConformance, type StoreHarness } from "@outbox/conformance";
import type { ManualClock } from "@outbox/core";
import { SqliteStore } from "../src/store.js";

/** A fresh in-memory database per check, driven by the kit's manual clock. */
async function harness(clock: ManualClock): Promise<StoreHarness<DatabaseSync>> {
  const db = new DatabaseSync(":memory:");
  const store = new SqliteStore({ db, clock });
  store.migrate();
  return {
    store,
    clock,
    async transaction(work) {
      db.exec("BEGIN");
      try {
        const result = await work(db);
        db.exec("COMMIT");
        return result;
      } catch (error) {
        db.exec("ROLLBACK");
        throw error;
      }
    },
    async teardown() {
      await store.close();
      db.close();
    },
  };
}

// `late-commit` is skipped by the kit itself: the store declares concurrentWriters: false.
describeStoreConformance({ name: "SqliteStore (node:sqlite)", create: harness });

describeRelayConformance({ name: "SqliteStore (node:sqlite)", createStore: harness });
