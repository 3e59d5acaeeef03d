// The Redis Streams inbox helper's own logic on a fake stream (a consumer group's log, pending list, claims and acks
// in memory, where the test decides when entries count as idle and when a blocked read times out): the mapping of an
// entry to an inbox message, ack after commit, failures left pending and claimed again, the hold-back of a failed
// key's later entries, rejects, stop. The inbox is the real one on its in-memory store; the real Redis and database
// are in inbox.e2e.test.ts.
import { makeEntry } from "@outbox/conformance";
import type { OutboxEntry } from "@outbox/core";
import { createInbox, type InboxMessage, MemoryInboxStore, type MemoryInboxTransaction } from "@outbox/inbox";
import { waitFor } from "@outbox/test-support/wait";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  type InboxConsumer,
  type InboxConsumerOptions,
  inboxMessageFromStreamEntry,
  type RedisClientLike,
  type RedisConnectionLike,
  type RedisInboxErrorReason,
  type RedisStreamEntry,
  startInboxConsumer,
} from "../src/inbox.js";
import { encodeStreamFields, StreamField } from "../src/index.js";

const STREAM = "orders";
const GROUP = "shipping";

type Arg = string | number | Buffer;

function replyError(message: string): Error {
  const error = new Error(message);
  error.name = "ReplyError";
  return error;
}

const buffers = (fields: ReadonlyArray<string | Buffer>): Buffer[] => fields.map((field) => Buffer.from(field));

/**
 * One stream and its consumer groups, as far as the helper uses them. Entries are idle (claimable) only once the
 * test says so (`idle()`), and a blocked read returns only when an entry is added, the test times it out
 * (`timeOutReads()`) or its connection is closed.
 */
class FakeStream implements RedisClientLike {
  readonly log: Array<{ id: string; fields: Buffer[] | null }> = [];
  readonly groups = new Map<
    string,
    { lastId: number; pending: Map<string, { consumer: string; idle: boolean; deliveries: number }> }
  >();
  readonly commands: Arg[][] = [];
  readonly acked: string[] = [];
  readonly failures: Array<{ command: string; error: Error }> = [];
  readonly connections: Array<{ override: unknown; connected: boolean; closed: boolean }> = [];
  #blocked: Array<() => void> = [];
  #seq = 0;

  /** XADD of what the publisher writes for `entry`; returns the stream id. */
  add(entry: OutboxEntry): string {
    return this.addFields(buffers(encodeStreamFields(entry)));
  }

  addFields(fields: Buffer[]): string {
    const id = `${++this.#seq}-0`;
    this.log.push({ id, fields });
    this.#wake();
    return id;
  }

  /** Every pending entry counts as idle longer than claimIdleMs (or only `ids`). */
  idle(ids?: readonly string[]): void {
    for (const group of this.groups.values())
      for (const [id, pending] of group.pending) if (ids === undefined || ids.includes(id)) pending.idle = true;
  }

  /** The blocked reads return nothing, as when BLOCK times out. */
  timeOutReads(): void {
    this.#wake();
  }

  /** The pending list of the group: `id@consumer`, in stream order. */
  pending(group = GROUP): string[] {
    return [...(this.groups.get(group)?.pending ?? [])].map(([id, p]) => `${id}@${p.consumer}`);
  }

  /** Another consumer claimed `id`. */
  transfer(id: string, consumer: string): void {
    const pending = this.groups.get(GROUP)?.pending.get(id);
    if (pending) pending.consumer = consumer;
  }

  failNext(command: string, error: Error): void {
    this.failures.push({ command, error });
  }

  #wake(): void {
    const blocked = this.#blocked;
    this.#blocked = [];
    for (const wake of blocked) wake();
  }

  #group(name: Arg | undefined) {
    const group = this.groups.get(String(name));
    if (group === undefined) throw replyError("NOGROUP No such key or consumer group");
    return group;
  }

  #fields(id: string): Buffer[] | null {
    return this.log.find((entry) => entry.id === id)?.fields ?? null;
  }

  async callBuffer(command: string, ...args: Arg[]): Promise<unknown> {
    this.commands.push([command, ...args]);
    const failure = this.failures.findIndex((f) => f.command === command);
    if (failure >= 0) throw this.failures.splice(failure, 1)[0]?.error;
    switch (command) {
      case "XGROUP": {
        const [, , group, startId] = args;
        if (this.groups.has(String(group))) throw replyError("BUSYGROUP Consumer Group name already exists");
        this.groups.set(String(group), { lastId: startId === "$" ? this.#seq : 0, pending: new Map() });
        return "OK";
      }
      case "XREADGROUP":
        return this.#read(args);
      case "XAUTOCLAIM": {
        const [, name, consumer, , cursor, , count] = args;
        const group = this.#group(name);
        const ids = [...group.pending.keys()].filter(
          (id) => Number.parseInt(id, 10) >= Number.parseInt(String(cursor), 10),
        );
        const claimed: Array<[Buffer, Buffer[]]> = [];
        const deleted: Buffer[] = [];
        let next = "0-0";
        for (const id of ids) {
          if (claimed.length >= Number(count)) {
            next = id;
            break;
          }
          const pending = group.pending.get(id);
          if (!pending?.idle) continue;
          const fields = this.#fields(id);
          if (fields === null) {
            group.pending.delete(id);
            deleted.push(Buffer.from(id));
            continue;
          }
          Object.assign(pending, { consumer: String(consumer), idle: false, deliveries: pending.deliveries + 1 });
          claimed.push([Buffer.from(id), fields]);
        }
        return [Buffer.from(next), claimed, deleted];
      }
      case "XACK": {
        const [, name, id] = args;
        this.acked.push(String(id));
        return this.#group(name).pending.delete(String(id)) ? 1 : 0;
      }
      case "XPENDING": {
        const [, name, id] = args;
        const pending = this.#group(name).pending.get(String(id));
        return pending ? [[Buffer.from(String(id)), Buffer.from(pending.consumer), 0, pending.deliveries]] : [];
      }
      default:
        throw replyError(`ERR unknown command '${command}'`);
    }
  }

  async #read(args: Arg[]): Promise<unknown> {
    const group = this.#group(args[1]);
    const consumer = String(args[2]);
    const count = Number(args[args.indexOf("COUNT") + 1]);
    const from = String(args.at(-1));
    if (from !== ">") {
      // The consumer's own pending entries after `from`: fields null for an entry deleted since.
      const own = [...group.pending]
        .filter(([id, p]) => p.consumer === consumer && Number.parseInt(id, 10) > Number.parseInt(from, 10))
        .slice(0, count)
        .map(([id, p]) => {
          Object.assign(p, { idle: false, deliveries: p.deliveries + 1 });
          return [Buffer.from(id), this.#fields(id)];
        });
      return [[Buffer.from(STREAM), own]];
    }
    for (;;) {
      const fresh = this.log.filter((entry) => Number.parseInt(entry.id, 10) > group.lastId).slice(0, count);
      if (fresh.length > 0) {
        for (const entry of fresh) {
          group.lastId = Number.parseInt(entry.id, 10);
          group.pending.set(entry.id, { consumer, idle: false, deliveries: 1 });
        }
        return [[Buffer.from(STREAM), fresh.map((entry) => [Buffer.from(entry.id), entry.fields])]];
      }
      if (!args.includes("BLOCK")) return null;
      const woken = await new Promise<"entry" | "closed">((resolve) => {
        this.#blocked.push(() => resolve("entry"));
        this.#onClose = () => resolve("closed");
      });
      if (woken === "closed") throw new Error("Connection is closed.");
      if (this.log.every((entry) => Number.parseInt(entry.id, 10) <= group.lastId)) return null;
    }
  }

  #onClose: () => void = () => undefined;

  duplicate(override?: unknown): RedisConnectionLike {
    const state = { override, connected: false, closed: false };
    this.connections.push(state);
    return {
      connect: async () => {
        state.connected = true;
      },
      callBuffer: (command, ...args) => {
        if (state.closed) return Promise.reject(new Error("Connection is closed."));
        return this.callBuffer(command, ...args);
      },
      disconnect: () => {
        state.closed = true;
        this.#onClose();
      },
    };
  }
}

type Handler = (tx: MemoryInboxTransaction, message: InboxMessage, entry: RedisStreamEntry) => Promise<unknown>;

const running: InboxConsumer[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((consumer) => consumer.stop()));
});

function setup(
  handler: Handler,
  options: { fake?: FakeStream; consumer?: string; maxAttempts?: number; count?: number } = {},
) {
  const fake = options.fake ?? new FakeStream();
  const inbox = createInbox({ store: new MemoryInboxStore(), consumer: "unit", maxAttempts: options.maxAttempts ?? 5 });
  const results: string[] = [];
  const errors: Array<{ id: string | null; reason: RedisInboxErrorReason; error: unknown }> = [];
  const handled: string[] = [];
  const start = (extra: Partial<InboxConsumerOptions<MemoryInboxTransaction>> = {}) => {
    const consumer = startInboxConsumer({
      inbox,
      client: fake,
      stream: STREAM,
      group: GROUP,
      consumer: options.consumer ?? "c1",
      handler: async (tx, message, entry) => {
        const result = await handler(tx, message, entry);
        tx.onCommit(() => handled.push(message.idempotencyKey as string));
        return result;
      },
      count: options.count ?? 10,
      blockMs: 1,
      claimIdleMs: 1,
      onResult: (result, entry) => results.push(`${entry.id}:${result.status}:${entry.delivery}`),
      onError: (error, entry, reason) => errors.push({ id: entry?.id ?? null, reason, error }),
      ...extra,
    });
    running.push(consumer);
    return consumer;
  };
  return { fake, inbox, results, errors, handled, start };
}

const code = (error: unknown) => (error as { code?: string }).code;
const entryOf = (key: string | null, idempotencyKey: string) => makeEntry({ topic: STREAM, key, idempotencyKey });

describe("inboxMessageFromStreamEntry", () => {
  it("reads the id, idempotency key, key, topic, payload and headers the publisher writes", () => {
    const entry = makeEntry({
      topic: "orders.created",
      key: "customer-7",
      payload: new Uint8Array([0, 255, 1]),
      headers: { "content-type": "text/plain", "outbox-id": "spoofed" },
    });
    const message = inboxMessageFromStreamEntry({ stream: "eu-orders", id: "1-0", fields: encodeStreamFields(entry) });
    expect(message.id).toBe(entry.id);
    expect(message.idempotencyKey).toBe(entry.idempotencyKey);
    expect(message.key).toBe("customer-7");
    expect(message.topic, "outbox-topic, not the stream").toBe("orders.created");
    expect(message.payload).toEqual(new Uint8Array([0, 255, 1]));
    expect(message.headers, "the entry's headers and the metadata fields; the fields win a clash").toEqual({
      "content-type": "text/plain",
      [StreamField.Id]: entry.id,
      [StreamField.Topic]: "orders.created",
      [StreamField.IdempotencyKey]: entry.idempotencyKey,
    });
  });

  it("reads a keyless entry as no key", () => {
    const entry = makeEntry({ topic: "t", key: null });
    expect(inboxMessageFromStreamEntry({ stream: "t", id: "1-0", fields: encodeStreamFields(entry) }).key).toBeNull();
  });

  it("falls back to <stream>:<entry id> for an entry of another producer, its fields as headers", () => {
    const message = inboxMessageFromStreamEntry({
      stream: "legacy",
      id: "1700000000000-3",
      fields: ["type", "order", "payload", "x"],
    });
    expect(message).toMatchObject({ id: "legacy:1700000000000-3", idempotencyKey: null, key: null, topic: "legacy" });
    expect(message.headers).toEqual({ type: "order" });
    expect(message.payload).toEqual(new TextEncoder().encode("x"));
  });

  it("fails with OUTBOX_INVALID_ENTRY for a deleted entry (no fields) or a headers field that is not a JSON object of strings", () => {
    for (const fields of [
      [],
      ["headers", "not json"],
      ["headers", "[]"],
      ["headers", '{"n":1}'],
      ["headers", "null"],
    ]) {
      expect(() => inboxMessageFromStreamEntry({ stream: "s", id: "1-0", fields })).toThrow(
        expect.objectContaining({ code: "OUTBOX_INVALID_ENTRY" }),
      );
    }
  });
});

describe("startInboxConsumer options", () => {
  it("rejects unusable options with OUTBOX_INVALID_OPTIONS naming the option, before it opens a connection", () => {
    const fake = new FakeStream();
    const inbox = createInbox({ store: new MemoryInboxStore() });
    const valid: InboxConsumerOptions<MemoryInboxTransaction> = {
      inbox,
      client: fake,
      stream: STREAM,
      group: GROUP,
      consumer: "c1",
      handler: async () => undefined,
    };
    const bad: Array<[string, Record<string, unknown>]> = [
      ["client", { client: {} }],
      ["inbox", { inbox: {} }],
      ["handler", { handler: "nope" }],
      ["stream", { stream: "" }],
      ["group", { group: 7 }],
      ["consumer", { consumer: undefined }],
      ["startId", { startId: "" }],
      ["count", { count: 0 }],
      ["count", { count: 1.5 }],
      ["blockMs", { blockMs: -1 }],
      ["blockMs", { blockMs: Number.POSITIVE_INFINITY }],
      ["claimIdleMs", { claimIdleMs: Number.NaN }],
    ];
    for (const [option, override] of bad) {
      expect(() => startInboxConsumer({ ...valid, ...override } as unknown as typeof valid), option).toThrow(
        expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS", details: { option } }),
      );
    }
    expect(fake.connections).toEqual([]);
  });
});

describe("startInboxConsumer", () => {
  it("creates the group (MKSTREAM) on its own connection, which it never lets time out before BLOCK does", async () => {
    const { fake, start } = setup(async () => undefined);
    const consumer = start({ blockMs: 2_000 });
    await waitFor(() => fake.groups.has(GROUP), 2_000);
    expect(fake.commands[0]).toEqual(["XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM"]);
    const [connection] = fake.connections;
    expect(connection).toMatchObject({ connected: true, closed: false });
    expect((connection?.override as { lazyConnect: boolean; commandTimeout: number }).lazyConnect).toBe(true);
    expect((connection?.override as { commandTimeout: number }).commandTimeout).toBeGreaterThan(2_000);
    await consumer.stop();
    expect(connection?.closed, "stop closes the loop's connection").toBe(true);
  });

  it("joins an existing group (BUSYGROUP) and reads from where it is", async () => {
    const { fake, handled, start } = setup(async () => undefined);
    fake.add(entryOf("k", "before"));
    await fake.callBuffer("XGROUP", "CREATE", STREAM, GROUP, "$", "MKSTREAM");
    start();
    fake.add(entryOf("k", "after"));
    await waitFor(() => handled.length === 1, 2_000);
    expect(handled).toEqual(["after"]);
  });

  it("acknowledges an entry only after the handler's transaction committed, and a repeat as a duplicate", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let pendingWhileRunning: string[] = [];
    const { fake, results, handled, start } = setup(async () => {
      pendingWhileRunning = fake.pending();
      await gate;
    });
    start();
    const entry = entryOf("k", "e1");
    const id = fake.add(entry);
    await waitFor(() => pendingWhileRunning.length > 0, 2_000);
    expect(pendingWhileRunning).toEqual([`${id}@c1`]);
    expect(fake.acked, "nothing acknowledged while the handler runs").toEqual([]);
    release();
    await waitFor(() => fake.acked.length === 1, 2_000);
    expect(fake.acked).toEqual([id]);
    expect(handled).toEqual(["e1"]);
    expect(fake.pending()).toEqual([]);

    // The relay published it again (a lost reply): another stream entry, the same idempotency key.
    const again = fake.add(entry);
    await waitFor(() => fake.acked.length === 2, 2_000);
    expect(results).toEqual([`${id}:handled:new`, `${again}:duplicate:new`]);
    expect(handled, "the handler did not run again").toEqual(["e1"]);
  });

  it("leaves a failed entry pending and holds its key's later entries back; a claim replays the key in order", async () => {
    let failures = 1;
    const { fake, errors, handled, results, start } = setup(async (_tx, message) => {
      if (message.idempotencyKey === "a1" && failures-- > 0) throw new Error("a1 fails once");
    });
    start();
    const [a1, a2, a3, b1] = ["a1", "a2", "a3", "b1"].map((name) => fake.add(entryOf(name[0] ?? "", name)));
    await waitFor(() => errors.length === 3 && handled.length === 1, 2_000);
    expect(handled, "the other key goes on").toEqual(["b1"]);
    expect(fake.acked).toEqual([b1]);
    expect(errors.map((e) => [e.id, e.reason])).toEqual([
      [a1, "failed"],
      [a2, "held-back"],
      [a3, "held-back"],
    ]);
    expect((errors[1]?.error as Error).message, "a held-back entry reports the failure it waits behind").toBe(
      "a1 fails once",
    );
    expect(fake.pending()).toEqual([`${a1}@c1`, `${a2}@c1`, `${a3}@c1`]);

    // A new entry of the key, read before the failed one is back: held back too.
    const a4 = fake.add(entryOf("a", "a4"));
    await waitFor(() => errors.length === 4, 2_000);
    expect(errors[3]).toMatchObject({ id: a4, reason: "held-back" });

    fake.idle(); // claimIdleMs passed
    fake.timeOutReads();
    await waitFor(() => handled.length === 5, 2_000);
    expect(handled).toEqual(["b1", "a1", "a2", "a3", "a4"]);
    expect(results.slice(1)).toEqual([a1, a2, a3, a4].map((id) => `${id}:handled:claimed`));
    expect(fake.pending()).toEqual([]);
  });

  it("keeps holding a key back while its failed entry is pending under this consumer, and lets it go once another consumer has it", async () => {
    let failA1 = true;
    const { fake, errors, handled, start } = setup(async (_tx, message) => {
      if (message.idempotencyKey === "a1" && failA1) throw new Error("a1 fails");
    });
    start();
    const a1 = fake.add(entryOf("a", "a1"));
    const a2 = fake.add(entryOf("a", "a2"));
    await waitFor(() => errors.length === 2, 2_000);
    // a2 comes back (claimed) while a1 is still this consumer's: after the hold's deadline, the helper asks whose a1
    // is (XPENDING) and keeps holding.
    await waitFor(
      () => {
        fake.idle([a2]);
        fake.timeOutReads();
        return fake.commands.some(([command]) => command === "XPENDING");
      },
      2_000,
      "the ownership check",
    );
    expect(handled).toEqual([]);
    expect(fake.pending()).toEqual([`${a1}@c1`, `${a2}@c1`]);

    // Another consumer took a1 over: a2 goes on.
    fake.transfer(a1, "c2");
    failA1 = false;
    await waitFor(
      () => {
        fake.idle([a2]);
        fake.timeOutReads();
        return handled.length === 1;
      },
      2_000,
      "a2 handled",
    );
    expect(handled).toEqual(["a2"]);
    expect(fake.pending()).toEqual([`${a1}@c2`]);
  });

  it("acknowledges an entry once the inbox parked it in its dead letters", async () => {
    const { fake, inbox, results, errors, start } = setup(
      async () => {
        throw new Error("always fails");
      },
      { maxAttempts: 2 },
    );
    start();
    const id = fake.add(entryOf("k", "poison"));
    await waitFor(() => errors.length === 1, 2_000);
    expect(errors[0]).toMatchObject({ id, reason: "failed" });
    await waitFor(() => {
      fake.idle();
      fake.timeOutReads();
      return results.length === 1;
    }, 2_000);
    expect(results).toEqual([`${id}:dead:claimed`]);
    expect(fake.acked).toEqual([id]);
    expect((await inbox.listDead()).map((dead) => dead.messageId)).toEqual(["poison"]);
  });

  it("acknowledges without running an entry it cannot handle, and an entry deleted while pending, and reports both", async () => {
    let fail = true;
    const { fake, errors, handled, start } = setup(async () => {
      if (fail) throw new Error("fails");
    });
    start();
    const bad = fake.addFields(buffers(["outbox-id", "x", "headers", "not json", "payload", "p"]));
    await waitFor(() => errors.length === 1, 2_000);
    expect(errors[0]).toMatchObject({ id: bad, reason: "rejected" });
    expect(code(errors[0]?.error)).toBe("OUTBOX_INVALID_ENTRY");
    expect(fake.acked).toEqual([bad]);

    const gone = fake.add(entryOf("k", "trimmed"));
    await waitFor(() => errors.length === 2, 2_000);
    expect(errors[1]).toMatchObject({ id: gone, reason: "failed" });
    fake.log.find((entry) => entry.id === gone)!.fields = null; // XTRIM / XDEL while it was pending
    fail = false;
    fake.idle();
    fake.timeOutReads();
    await waitFor(() => errors.length === 3, 2_000);
    expect(errors[2]).toMatchObject({ id: gone, reason: "rejected" });
    expect(code(errors[2]?.error)).toBe("OUTBOX_INVALID_ENTRY");
    expect(handled).toEqual([]);
    expect(fake.pending()).toEqual([]);
  });

  it("reports a failed XACK as unacked; the entry comes back and is acknowledged as a duplicate", async () => {
    const { fake, errors, results, handled, start } = setup(async () => undefined);
    fake.failNext("XACK", new Error("connection lost"));
    start();
    const id = fake.add(entryOf("k", "e1"));
    await waitFor(() => errors.length === 1, 2_000);
    expect(errors[0]).toMatchObject({ id, reason: "unacked" });
    expect(results, "no result before the acknowledgement").toEqual([]);
    expect(fake.pending()).toEqual([`${id}@c1`]);
    fake.idle();
    fake.timeOutReads();
    await waitFor(() => results.length === 1, 2_000);
    expect(results).toEqual([`${id}:duplicate:claimed`]);
    expect(handled).toEqual(["e1"]);
    expect(fake.pending()).toEqual([]);
  });

  it("reports a failed loop command and goes on; recreates the group when the stream was deleted (NOGROUP)", async () => {
    const { fake, errors, handled, start } = setup(async () => undefined);
    const lost = new Error("connection lost");
    fake.failNext("XREADGROUP", lost);
    start();
    await waitFor(() => errors.length === 1, 2_000);
    expect(errors[0]).toEqual({ id: null, reason: "redis", error: lost });
    fake.add(entryOf("k", "e1"));
    await waitFor(() => handled.length === 1, 2_000);

    fake.groups.delete(GROUP);
    fake.log.splice(0);
    fake.timeOutReads();
    await waitFor(() => fake.groups.has(GROUP), 2_000, "the group created again");
    expect(errors.slice(1).map((e) => [e.reason, e.id])).toEqual([["redis", null]]);
    fake.add(entryOf("k", "e2"));
    await waitFor(() => handled.length === 2, 2_000);
    expect(handled).toEqual(["e1", "e2"]);
  });

  it("at start, handles its own pending entries (a restart under the same name) before new ones, in order", async () => {
    const fake = new FakeStream();
    await fake.callBuffer("XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM");
    const [k1, k2] = [fake.add(entryOf("k", "k1")), fake.add(entryOf("k", "k2"))];
    // The previous process read them and died before handling them.
    await fake.callBuffer("XREADGROUP", "GROUP", GROUP, "c1", "COUNT", 10, "STREAMS", STREAM, ">");
    fake.idle([k2]); // even an idle one is not claimed ahead of the history
    const k3 = fake.add(entryOf("k", "k3"));
    const { results, handled, start } = setup(async () => undefined, { fake });
    start();
    await waitFor(() => handled.length === 3, 2_000);
    expect(handled).toEqual(["k1", "k2", "k3"]);
    expect(results).toEqual([`${k1}:handled:pending`, `${k2}:handled:pending`, `${k3}:handled:new`]);
  });

  it("takes over another consumer's stale pending entries before it reads new ones", async () => {
    const fake = new FakeStream();
    await fake.callBuffer("XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM");
    const old = fake.add(entryOf("k", "old"));
    await fake.callBuffer("XREADGROUP", "GROUP", GROUP, "dead", "COUNT", 10, "STREAMS", STREAM, ">");
    fake.idle();
    const fresh = fake.add(entryOf("k", "new"));
    const { results, handled, start } = setup(async () => undefined, { fake, consumer: "c2" });
    start();
    await waitFor(() => handled.length === 2, 2_000);
    expect(handled).toEqual(["old", "new"]);
    expect(results).toEqual([`${old}:handled:claimed`, `${fresh}:handled:new`]);
  });

  it("keeps at most count entries in hand", async () => {
    let inFlight = 0;
    let most = 0;
    const gates: Array<() => void> = [];
    const { fake, handled, start } = setup(
      async () => {
        inFlight += 1;
        most = Math.max(most, inFlight);
        await new Promise<void>((resolve) => gates.push(resolve));
        inFlight -= 1;
      },
      { count: 2 },
    );
    start();
    for (let i = 0; i < 6; i++) fake.add(entryOf(`k${i}`, `e${i}`));
    await waitFor(() => {
      gates.splice(0).forEach((release) => {
        release();
      });
      return handled.length === 6;
    }, 2_000);
    expect(most).toBeLessThanOrEqual(2);
    const counts = fake.commands
      .filter(([command]) => command === "XREADGROUP")
      .map((c) => Number(c[c.indexOf("COUNT") + 1]));
    expect(Math.max(...counts)).toBeLessThanOrEqual(2);
  });

  it("stop() lets the handler in flight finish and be acknowledged; the entries behind it stay pending", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const { fake, handled, start } = setup(async () => gate);
    const consumer = start();
    const [first, second] = [fake.add(entryOf("k", "first")), fake.add(entryOf("k", "second"))];
    await waitFor(() => fake.pending().length === 2, 2_000);
    let stopped = false;
    const stop = consumer.stop();
    expect(consumer.stop(), "stop is idempotent").toBe(stop);
    const stopping = stop.then(() => {
      stopped = true;
    });
    await waitFor(() => fake.connections[0]?.closed, 2_000);
    expect(stopped, "stop waits for the handler in flight").toBe(false);
    release();
    await stopping;
    expect(handled).toEqual(["first"]);
    expect(fake.acked).toEqual([first]);
    expect(fake.pending(), "not started: left for the next consumer").toEqual([`${second}@c1`]);
  });

  it("a throwing onResult does not stop the key's later entries (it is logged)", async () => {
    const warn = vi.spyOn(console, "warn").mockImplementation(() => undefined);
    const { fake, handled, start } = setup(async () => undefined);
    start({
      onResult: () => {
        throw new Error("onResult throws");
      },
    });
    fake.add(entryOf("k", "e1"));
    fake.add(entryOf("k", "e2"));
    await waitFor(() => handled.length === 2, 2_000);
    expect(fake.pending()).toEqual([]);
    expect(warn).toHaveBeenCalledTimes(2);
    warn.mockRestore();
  });
});
