import { OutboxError, OutboxErrorCode } from "@outbox/core";
import { createInbox } from "@outbox/inbox";
import type { ClientSession } from "mongodb";
import { describe, expect, it } from "vitest";
import { createMongoInboxStore } from "../src/index.js";
import { fakeReplicaSetClient } from "./helpers.js";

// The inbox store's replica-set code paths (transactions: true) against the driver's API, no server: neither
// test server has transactions (see inbox.test.ts for the kit on both).

const transient = (message: string, code: number) =>
  Object.assign(new Error(message), { code, hasErrorLabel: (label: string) => label === "TransientTransactionError" });

function fakeReplicaSet(options: { conflicts?: number; commitError?: Error } = {}) {
  const calls: Array<{ op: string; session?: unknown }> = [];
  const keys = new Map<string, Record<string, unknown>>();
  let conflicts = options.conflicts ?? 0;
  let open = false;
  const session = {
    inTransaction: () => open,
    endSession: async () => undefined,
    // As the driver's: runs the callback again after a TransientTransactionError.
    async withTransaction(callback: (session: unknown) => Promise<unknown>) {
      for (;;) {
        calls.push({ op: "withTransaction" });
        open = true;
        try {
          await callback(session);
        } catch (error) {
          if ((error as { hasErrorLabel?: (label: string) => boolean }).hasErrorLabel?.("TransientTransactionError"))
            continue;
          throw error;
        } finally {
          open = false;
        }
        if (options.commitError) throw options.commitError;
        return;
      }
    },
  };
  const collection = (name: string) => ({
    listIndexes: () => ({ toArray: async () => [] }),
    createIndexes: async () => [],
    async updateOne(filter: { _id: string }, update: { $setOnInsert: object }, opts: { session?: unknown }) {
      calls.push({ op: `${name}.updateOne`, session: opts?.session });
      if (conflicts > 0) {
        conflicts -= 1;
        throw transient("WriteConflict", 112);
      }
      const found = keys.has(filter._id);
      if (!found) keys.set(filter._id, { ...update.$setOnInsert });
      return { upsertedCount: found ? 0 : 1 };
    },
    async findOne(filter: { _id: string }, opts: { session?: unknown }) {
      calls.push({ op: `${name}.findOne`, session: opts?.session });
      return keys.get(filter._id) ?? null;
    },
  });
  return {
    client: fakeReplicaSetClient(collection, session),
    calls,
    session: session as unknown as ClientSession,
  };
}

describe("inbox store, replica-set code paths (driver API, no server)", () => {
  it("the key is upserted on the handler's session inside withTransaction; a redelivery is a duplicate", async () => {
    const { client, calls, session } = fakeReplicaSet();
    const store = createMongoInboxStore({ client, db: "app" });
    expect(store.capabilities).toEqual({ transactions: true, concurrentWriters: true });
    const inbox = createInbox({ store, consumer: "shipping" });
    let handedOver: unknown;
    const handled = await inbox.handle({ id: "m-1" }, async (tx) => {
      handedOver = tx;
    });
    expect(handled.status).toBe("handled");
    expect(handedOver, "the handler gets the transaction's ClientSession").toBe(session);
    expect(calls.map((c) => c.op)).toEqual(["withTransaction", "inbox.updateOne"]);
    expect(calls[1]?.session).toBe(session);
    expect((await inbox.handle({ id: "m-1" }, async () => "ran")).status).toBe("duplicate");
  });

  it("a write conflict on the key reaches withTransaction untouched, which runs the delivery again", async () => {
    const { client, calls } = fakeReplicaSet({ conflicts: 2 });
    const inbox = createInbox({ store: createMongoInboxStore({ client, db: "app" }) });
    let ran = 0;
    const result = await inbox.handle({ id: "m-1" }, async () => {
      ran += 1;
    });
    expect(result.status).toBe("handled");
    expect(ran, "the handler ran once: the conflicting attempts stopped at the key").toBe(1);
    expect(calls.filter((c) => c.op === "withTransaction")).toHaveLength(3);
  });

  it("the handler's own error is rethrown as it is; a failed commit is OUTBOX_STORE_UNAVAILABLE", async () => {
    const boom = new Error("handler failed");
    const store = createMongoInboxStore({ client: fakeReplicaSet().client, db: "app" });
    expect(await store.transaction(() => Promise.reject(boom)).catch((e: unknown) => e)).toBe(boom);
    const failing = createMongoInboxStore({
      client: fakeReplicaSet({ commitError: new Error("commit lost") }).client,
      db: "app",
    });
    const error = await failing.transaction(async () => "done").catch((e: unknown) => e);
    expect(OutboxError.is(error, OutboxErrorCode.StoreUnavailable)).toBe(true);
  });

  it("record needs the session of a transaction", async () => {
    const store = createMongoInboxStore({ client: fakeReplicaSet().client, db: "app" });
    const error = await store.record(null, { consumer: "c", messageId: "m", at: new Date() }).catch((e: unknown) => e);
    expect(OutboxError.is(error, OutboxErrorCode.InvalidOptions)).toBe(true);
  });
});
