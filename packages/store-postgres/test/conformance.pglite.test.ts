import { PGlite } from "@electric-sql/pglite";
import { describeRelayConformance, describeStoreConformance } from "@outbox/conformance";
import { PGlite as PGliteMin } from "pglite-min";
import { afterAll, beforeAll } from "vitest";
import { pgliteHarness } from "./helpers.js";

// PGlite 0.5.x (PostgreSQL 17/18 in WASM), the version we pin.
let db: PGlite;
beforeAll(async () => {
  db = await PGlite.create();
});
afterAll(() => db.close());

describeStoreConformance({
  name: "store-postgres (PGlite 0.5)",
  create: (clock) => pgliteHarness(clock, db),
});

describeRelayConformance({
  name: "store-postgres (PGlite 0.5)",
  createStore: (clock) => pgliteHarness(clock, db),
});

// The oldest PGlite the peer range allows.
let oldest: PGliteMin;
beforeAll(async () => {
  oldest = await PGliteMin.create();
});
afterAll(() => oldest.close());

describeStoreConformance({
  name: "store-postgres (PGlite 0.3, oldest supported)",
  create: (clock) => pgliteHarness(clock, oldest as unknown as PGlite),
});
