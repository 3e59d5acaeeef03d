import { describeInboxStoreConformance } from "@outbox/conformance/inbox";
import { createInbox, type InboxMessage } from "@outbox/inbox";
import { afterAll, describe, expect, it } from "vitest";
import { createPostgresInboxStore, createPostgresStore, migrate, migrateInbox, type Queryable } from "../src/index.js";
import { createPool, freshSchema } from "./helpers.js";
import { pgInboxHarness } from "./inbox-helpers.js";

// Two pools: the kit's concurrent deliveries race two independent store instances (two consumer processes).
const pool = createPool({ max: 6, application_name: "outbox-inbox-conformance" });
const peerPool = createPool({ max: 4, application_name: "outbox-inbox-conformance-peer" });
afterAll(async () => {
  await pool.end();
  await peerPool.end();
});

describeInboxStoreConformance({
  name: "store-postgres inbox (pg Pool, PostgreSQL 15)",
  create: (clock) => pgInboxHarness(clock, pool, peerPool),
});

describe("store-postgres inbox: chaining into the outbox", () => {
  it("follow-up outbox entries enqueued on the handler's transaction commit with the key, or not at all", async () => {
    const schema = freshSchema();
    await migrate(pool, { schema });
    await migrateInbox(pool, { schema });
    const outbox = createPostgresStore({ pool, schema, listen: false, notifyChannel: false });
    const inbox = createInbox({ store: createPostgresInboxStore({ pool, schema }), maxAttempts: 10 });
    try {
      const forward = (fail: boolean) => async (tx: Queryable, message: InboxMessage) => {
        await outbox.enqueue(tx, { topic: "payments.requested", key: message.key, payload: `for ${message.id}` });
        if (fail) throw new Error("fails after the enqueue");
      };
      const message: InboxMessage = { id: "order-1", key: "customer-7" };
      await expect(inbox.handle(message, forward(true))).rejects.toThrow("fails after the enqueue");
      expect((await outbox.stats()).pending, "a rolled-back handler leaves no follow-up entry").toBe(0);
      expect((await inbox.handle(message, forward(false))).status).toBe("handled");
      expect((await inbox.handle(message, forward(false))).status).toBe("duplicate");
      expect((await outbox.stats()).pending, "one follow-up entry, whatever the redeliveries").toBe(1);
    } finally {
      await outbox.close();
      await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });

  it("refuses bad options with OUTBOX_INVALID_OPTIONS", () => {
    expect(() => createPostgresInboxStore({} as never)).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
    expect(() => createPostgresInboxStore({ pool, table: "bad name" })).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
  });
});
