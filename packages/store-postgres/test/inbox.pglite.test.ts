import { PGlite } from "@electric-sql/pglite";
import { describeInboxStoreConformance } from "@outbox/conformance/inbox";
import { PGlite as PGliteMin } from "pglite-min";
import { afterAll, beforeAll } from "vitest";
import { pgliteInboxHarness } from "./inbox-helpers.js";

let db: PGlite;
beforeAll(async () => {
  db = await PGlite.create();
});
afterAll(() => db.close());

describeInboxStoreConformance({
  name: "store-postgres inbox (PGlite 0.5)",
  create: (clock) => pgliteInboxHarness(clock, db),
});

// The oldest PGlite the peer range allows.
let oldest: PGliteMin;
beforeAll(async () => {
  oldest = await PGliteMin.create();
});
afterAll(() => oldest.close());

describeInboxStoreConformance({
  name: "store-postgres inbox (PGlite 0.3, oldest supported)",
  create: (clock) => pgliteInboxHarness(clock, oldest as unknown as PGlite),
});
