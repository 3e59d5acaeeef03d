import { describeInboxStoreConformance, memoryInboxStoreHarness } from "../src/inbox.js";

// The inbox checks against the in-memory reference store.
describeInboxStoreConformance({ name: "MemoryInboxStore", create: memoryInboxStoreHarness });
