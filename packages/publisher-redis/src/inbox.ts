// The consumer half: a Redis Streams consumer group read into an @outbox/inbox. A subpath export
// (@outbox/publisher-redis/inbox) so a publisher-only application never loads @outbox/inbox.
import { OutboxError, OutboxErrorCode } from "@outbox/core";
import {
  dedupeKey,
  guardedCallbacks,
  type HandleResult,
  type HeaderValue,
  type Inbox,
  type InboxMessage,
  inboxMessageFrom,
  invalidOption,
  KeyOrder,
  nonEmptyOption,
  orderingKey,
  positiveIntegerOption,
} from "@outbox/inbox";
import { StreamField } from "./fields.js";

type CommandArg = string | number | Buffer;

/** The connection the consumer loop blocks on: a `duplicate()` of your client, owned and closed by the helper. */
export interface RedisConnectionLike {
  connect(): Promise<void>;
  callBuffer(command: string, ...args: CommandArg[]): Promise<unknown>;
  disconnect(): void;
  on?(event: "error", listener: (error: unknown) => void): unknown;
}

/** An ioredis `Redis`, as far as the helper goes (structural: tests stand in for it). */
export interface RedisClientLike {
  callBuffer(command: string, ...args: CommandArg[]): Promise<unknown>;
  duplicate(override?: { lazyConnect?: boolean; commandTimeout?: number }): RedisConnectionLike;
}

/** A stream entry as the consumer received it. */
export interface RedisStreamEntry {
  readonly stream: string;
  /** Redis' stream entry id (`<ms>-<seq>`), not the outbox id. */
  readonly id: string;
  /**
   * The field/value list as Redis returns it (`decodeStreamFields(fields)` reads what the publisher wrote). Empty
   * for an entry deleted from the stream (trimmed) while it was pending.
   */
  readonly fields: readonly Buffer[];
  /**
   * How this consumer got it: `new` (`XREADGROUP ... >`), `pending` (its own pending entries, read again when it
   * starts), `claimed` (`XAUTOCLAIM`: its own failed entry again, or a stale one of another consumer).
   */
  readonly delivery: "new" | "pending" | "claimed";
}

/**
 * Why an entry was not acknowledged, or what failed:
 * - `failed`: the handler or the inbox's store failed (`error`). The entry stays pending; `XAUTOCLAIM` hands it out
 *   again once it has been idle `claimIdleMs`.
 * - `held-back`: an earlier entry of its key failed (`error` is that failure). Left pending without running, so that
 *   the key's entries are handled in stream order once the failed one is back.
 * - `rejected`: the entry cannot be handled at all (deleted from the stream while pending, a `headers` field that is
 *   not a JSON object of strings, an over-long key or idempotency key): acknowledged without running, and reported.
 * - `unacked`: the `XACK` itself failed; the entry stays pending and comes back as a duplicate.
 * - `redis`: a command of the consumer loop failed (`entry` is null); the loop tries again after `blockMs`.
 */
export type RedisInboxErrorReason = "failed" | "held-back" | "rejected" | "unacked" | "redis";

export interface InboxConsumerOptions<Tx> {
  inbox: Inbox<Tx>;
  /**
   * Your ioredis client: it sends the `XACK`s (and the rare `XPENDING`), and is never blocked or closed. The loop's
   * blocking reads go on `client.duplicate()`, which the helper opens and closes.
   */
  client: RedisClientLike;
  stream: string;
  /** The consumer group, created at `startId` (with `MKSTREAM`) if missing. */
  group: string;
  /** This process's consumer name in the group: unique per process, and stable across its restarts. */
  consumer: string;
  /**
   * Your business writes, on the inbox's transaction `tx` (and follow-up outbox entries: `store.enqueue(tx, ...)`).
   * Throwing rolls both back; the entry stays pending and is handled again after `claimIdleMs`.
   */
  handler: (tx: Tx, message: InboxMessage, entry: RedisStreamEntry) => Promise<unknown>;
  /** Most entries in hand (read or claimed, not yet settled), and the `COUNT` of each read and claim. Default 50. */
  count?: number;
  /** How long a read waits for new entries (`BLOCK`), in ms; also the pause after a failed command. Default 2000. */
  blockMs?: number;
  /**
   * How long an entry stays pending before `XAUTOCLAIM` hands it out again, in ms: the retry delay of a failed
   * entry, and how soon a dead consumer's entries are taken over. Keep it above the longest time an entry may be in
   * hand (handler time, plus waiting behind its key): an entry idle longer is claimed again, possibly by another
   * consumer. Default 30000.
   */
  claimIdleMs?: number;
  /** Where a group this helper creates starts: "0" (the whole stream, the default) or "$" (new entries only). */
  startId?: string;
  /** Called after each entry was acknowledged, with what the inbox did (handled, duplicate, dead). */
  onResult?: (result: HandleResult<unknown>, entry: RedisStreamEntry) => void;
  /** Called for each entry left pending or rejected, and each failed loop command. Default: console.warn, except `held-back`. */
  onError?: (error: unknown, entry: RedisStreamEntry | null, reason: RedisInboxErrorReason) => void;
}

export interface InboxConsumer {
  /**
   * Stops reading, lets the handlers in flight finish (and their entries be acknowledged), closes the loop's
   * connection, and resolves. Entries in hand that had not started stay pending. Never closes your client.
   */
  stop(): Promise<void>;
}

const utf8 = new TextDecoder();

function text(value: string | Uint8Array | undefined): string {
  return value === undefined ? "" : typeof value === "string" ? value : utf8.decode(value);
}

function invalidEntry(message: string, field: string): OutboxError {
  return new OutboxError(OutboxErrorCode.InvalidEntry, message, { details: { field } });
}

function entryHeaders(json: string | Uint8Array): Record<string, string> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text(json));
  } catch {
    throw invalidEntry("the stream entry's headers field is not JSON", StreamField.Headers);
  }
  if (
    typeof parsed !== "object" ||
    parsed === null ||
    Array.isArray(parsed) ||
    !Object.values(parsed).every((value) => typeof value === "string")
  ) {
    throw invalidEntry("the stream entry's headers field is not a JSON object of strings", StreamField.Headers);
  }
  return parsed as Record<string, string>;
}

/**
 * The inbox message for a stream entry: id from the `outbox-id` field our publisher writes (else
 * `<stream>:<entry id>`), idempotency key from `outbox-idempotency-key`, ordering key from `key`, topic from
 * `outbox-topic` (else the stream), `payload` as the payload, and as headers the entry's own (the `headers` JSON
 * object) plus every other field as text. Throws OUTBOX_INVALID_ENTRY for an entry without fields (deleted while
 * pending) or with a `headers` field that is not a JSON object of strings.
 */
export function inboxMessageFromStreamEntry(entry: {
  readonly stream: string;
  readonly id: string;
  readonly fields: ReadonlyArray<string | Uint8Array>;
}): InboxMessage {
  const { fields } = entry;
  if (fields.length === 0) throw invalidEntry("the stream entry was deleted while it was pending", "fields");
  const metadata: Record<string, HeaderValue> = {};
  let key: string | Uint8Array | null = null;
  let payload: Uint8Array | null = null;
  let json: string | Uint8Array | undefined;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = text(fields[i]);
    const value = fields[i + 1] as string | Uint8Array;
    if (name === StreamField.Key) key = value;
    else if (name === StreamField.Headers) json = value;
    else if (name === StreamField.Payload) {
      payload =
        typeof value === "string"
          ? new TextEncoder().encode(value)
          : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
    } else metadata[name] = value;
  }
  return inboxMessageFrom({
    // The fields win a clash with the entry's own headers, as the metadata headers do on the other brokers.
    headers: json === undefined ? metadata : { ...entryHeaders(json), ...metadata },
    key,
    topic: entry.stream,
    payload,
    fallbackId: `${entry.stream}:${entry.id}`,
  });
}

/** Orders stream ids (`<ms>-<seq>`, both up to 64 bits). */
function compareIds(a: string, b: string): number {
  const [aMs = "0", aSeq = "0"] = a.split("-");
  const [bMs = "0", bSeq = "0"] = b.split("-");
  const ms = BigInt(aMs) - BigInt(bMs);
  const seq = BigInt(aSeq) - BigInt(bSeq);
  return ms !== 0n ? (ms < 0n ? -1 : 1) : seq === 0n ? 0 : seq < 0n ? -1 : 1;
}

type RawEntry = readonly [Buffer, Buffer[] | null];

/** The entries of an `XREADGROUP` reply (null when the block timed out) on one stream. */
function readEntries(reply: unknown): RawEntry[] {
  if (!Array.isArray(reply)) return [];
  const [first] = reply as Array<[Buffer, RawEntry[]]>;
  return first?.[1] ?? [];
}

const replyCode = (error: unknown): string => (error instanceof Error ? (error.message.split(" ", 1)[0] ?? "") : "");

/**
 * A key after a failure: the stream ids it owes, in stream order (the failed entry first, then the ones held back
 * behind it), that failure, and when to check whether the first is still this consumer's to retry.
 */
interface Hold {
  readonly owed: string[];
  error: unknown;
  checkAt: number;
}

/**
 * Starts a consumer of `stream` in `group`: each entry goes through `inbox.handle` (deduped on the
 * `outbox-idempotency-key` / `outbox-id` fields our publisher writes, else on `<stream>:<entry id>`; ordered on the
 * `key` field) and is acknowledged (`XACK`) only after the handler's transaction committed, or after the inbox
 * reported a duplicate or parked the message in its dead letters. A failed entry is not acknowledged: it stays
 * pending, and `XAUTOCLAIM` hands it out again once it has been idle `claimIdleMs` (the inbox counts the attempts and
 * parks it after its `maxAttempts`). The same claims take over the entries a dead consumer of the group left pending.
 *
 * Each loop round claims stale pending entries first (a whole pass over the group's pending list), then reads new
 * ones (`XREADGROUP ... BLOCK blockMs ... >`); at start it first reads this consumer's own pending entries, so a
 * restart under the same name resumes where it stopped. At most `count` entries are in hand.
 *
 * Order: a key's entries run one at a time in the order they arrived, and after one failed, the key's later entries
 * are left pending without running ("held back") until the failed one is back and succeeded; claims return pending
 * entries in stream order, so the key replays in order. The hold-back waits as long as the failed entry is still
 * pending under this consumer; once another consumer has it (or it was acknowledged or deleted), the key goes on.
 * Order holds within one consumer: a group spreads a stream's entries over its consumers, keys regardless.
 *
 * The blocking reads run on `client.duplicate()`: a blocked connection holds back every command queued behind it, so
 * your client, which sends the acknowledgements while the loop waits, stays free, and `stop()` can end a read at once
 * by closing a connection nobody else uses.
 */
export function startInboxConsumer<Tx>(options: InboxConsumerOptions<Tx>): InboxConsumer {
  if (typeof options !== "object" || options === null) throw invalidOption("options", "options are required");
  const { inbox, client, handler } = options;
  if (typeof client?.callBuffer !== "function" || typeof client.duplicate !== "function") {
    throw invalidOption("client", "client must be an ioredis client");
  }
  if (typeof inbox?.handle !== "function") throw invalidOption("inbox", "inbox must be an Inbox (createInbox)");
  if (typeof handler !== "function") throw invalidOption("handler", "handler must be a function");
  const stream = nonEmptyOption(options.stream, "stream");
  const group = nonEmptyOption(options.group, "group");
  const consumer = nonEmptyOption(options.consumer, "consumer");
  const startId = nonEmptyOption(options.startId ?? "0", "startId");
  const count = positiveIntegerOption(options.count ?? 50, "count");
  const blockMs = positiveIntegerOption(options.blockMs ?? 2_000, "blockMs");
  const claimIdleMs = positiveIntegerOption(options.claimIdleMs ?? 30_000, "claimIdleMs");
  /** How long a failed entry normally takes to come back: idle long enough, then the next claim pass. */
  const returnMs = claimIdleMs + blockMs;

  // The callbacks run on a key's chain: one that throws must not stop the key's later entries.
  const { warn, onResult, onError } = guardedCallbacks<
    RedisStreamEntry,
    RedisInboxErrorReason,
    RedisStreamEntry | null
  >(`@outbox/publisher-redis/inbox ${inbox.consumer} ${consumer}`, options, ["held-back"]);

  // Also bounds the read: a connection that stopped answering fails the command instead of hanging the loop.
  const connection = client.duplicate({ lazyConnect: true, commandTimeout: blockMs + 5_000 });
  // ioredis' duplicate() copies none of the caller's listeners, and a client without an "error" listener prints
  // every reconnect failure as unhandled. The failed read itself reaches onError(…, "redis").
  connection.on?.("error", () => undefined);
  const keyOrder = new KeyOrder();
  const held = new Map<string, Hold>();
  /** Entries read or claimed and not settled yet, by stream id: never handed to the handler twice at once. */
  const inHand = new Map<string, Promise<void>>();
  let stopping = false;
  let roomFreed: () => void = () => undefined;
  let pauseEnded: () => void = () => undefined;

  const ack = async (entry: RedisStreamEntry): Promise<boolean> => {
    try {
      await client.callBuffer("XACK", stream, group, entry.id);
      return true;
    } catch (error) {
      onError(error, entry, "unacked");
      return false;
    }
  };

  /** Drops the owed entries before `id` that are no longer this consumer's to retry (claimed by another, acked, gone). */
  const releaseLost = async (hold: Hold, id: string): Promise<void> => {
    while (hold.owed[0] !== undefined && hold.owed[0] !== id) {
      const first = hold.owed[0];
      let owner: string | undefined;
      try {
        const [pending] = (await client.callBuffer("XPENDING", stream, group, first, first, 1)) as Array<
          [Buffer, Buffer]
        >;
        owner = pending?.[1].toString();
      } catch {
        // Not known: keep waiting, and ask again later.
        owner = consumer;
      }
      if (owner === consumer) {
        hold.checkAt = Date.now() + returnMs;
        return;
      }
      hold.owed.shift();
    }
  };

  const run = async (entry: RedisStreamEntry, message: InboxMessage, key: string | null): Promise<void> => {
    if (stopping) return; // not started: it stays pending for the next consumer (or this one, restarted)
    let hold = key === null ? undefined : held.get(key);
    if (hold !== undefined) {
      if (!hold.owed.includes(entry.id)) {
        hold.owed.push(entry.id);
        hold.owed.sort(compareIds);
      }
      if (hold.owed[0] !== entry.id && Date.now() >= hold.checkAt) await releaseLost(hold, entry.id);
      if (hold.owed[0] !== entry.id) {
        onError(hold.error, entry, "held-back");
        return;
      }
    }
    let result: HandleResult<unknown>;
    try {
      result = await inbox.handle(message, (tx, handled) => handler(tx, handled, entry));
    } catch (error) {
      if (key !== null) {
        const now = Date.now();
        if (hold === undefined) {
          if (held.size >= 1_000)
            for (const [other, stale] of held) if (stale.checkAt + returnMs < now) held.delete(other);
          hold = { owed: [entry.id], error, checkAt: now + returnMs };
          held.set(key, hold);
        } else {
          hold.error = error;
          hold.checkAt = now + returnMs;
        }
      }
      onError(error, entry, "failed");
      return;
    }
    if (key !== null && hold !== undefined) {
      hold.owed.shift();
      if (hold.owed.length === 0) held.delete(key);
      else hold.checkAt = Date.now() + returnMs;
    }
    if (await ack(entry)) onResult(result, entry);
  };

  const dispatch = (entries: readonly RawEntry[], delivery: RedisStreamEntry["delivery"]): void => {
    for (const [rawId, fields] of entries) {
      const id = rawId.toString();
      // XAUTOCLAIM also returns this consumer's own entries still in hand (a slow handler): not twice.
      if (inHand.has(id)) continue;
      const entry: RedisStreamEntry = { stream, id, fields: fields ?? [], delivery };
      let work: Promise<void>;
      try {
        const message = inboxMessageFromStreamEntry(entry);
        dedupeKey(message);
        const key = orderingKey(message);
        work = keyOrder.run(key, () => run(entry, message, key));
      } catch (error) {
        // Retrying cannot help it; acknowledged so that it does not come back forever. It stays in the stream.
        work = ack(entry).then((acked) => {
          if (acked) onError(error, entry, "rejected");
        });
      }
      inHand.set(
        id,
        work
          .catch((error: unknown) => warn("unexpected", error))
          .finally(() => {
            inHand.delete(id);
            roomFreed();
          }),
      );
    }
  };

  /** Waits until at most half of `count` is in hand, so that each read or claim fetches a useful batch. */
  const room = async (): Promise<void> => {
    while (!stopping && inHand.size > Math.floor(count / 2)) {
      await new Promise<void>((resolve) => {
        roomFreed = resolve;
      });
    }
  };

  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      pauseEnded = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  const loop = async (): Promise<void> => {
    try {
      await connection.connect();
    } catch (error) {
      // ioredis keeps reconnecting; the commands below report what still fails.
      if (!stopping) onError(error, null, "redis");
    }
    let groupReady = false;
    /** Where the read of this consumer's own pending entries is, until it has read them all. */
    let history: string | null = "0";
    let cursor = "0-0";
    while (!stopping) {
      try {
        if (!groupReady) {
          try {
            await connection.callBuffer("XGROUP", "CREATE", stream, group, startId, "MKSTREAM");
          } catch (error) {
            if (replyCode(error) !== "BUSYGROUP") throw error;
          }
          groupReady = true;
        }
        await room();
        if (stopping) break;
        if (history !== null) {
          // No claims meanwhile: a claim could hand out a key's later entry before the history reaches its earlier one.
          const entries = readEntries(
            await connection.callBuffer(
              "XREADGROUP",
              "GROUP",
              group,
              consumer,
              "COUNT",
              count - inHand.size,
              "STREAMS",
              stream,
              history,
            ),
          );
          const last = entries.at(-1);
          history = last === undefined ? null : last[0].toString();
          dispatch(entries, "pending");
          continue;
        }
        const [next, claimed, deleted] = (await connection.callBuffer(
          "XAUTOCLAIM",
          stream,
          group,
          consumer,
          claimIdleMs,
          cursor,
          "COUNT",
          count - inHand.size,
        )) as [Buffer, RawEntry[], Buffer[] | undefined];
        cursor = next.toString();
        // Redis 7 drops deleted entries from the pending list itself and lists them: reported as rejected.
        dispatch([...claimed, ...(deleted ?? []).map((id): RawEntry => [id, null])], "claimed");
        // The whole pending list before new entries: a key's older entries come first.
        if (cursor !== "0-0" || inHand.size >= count) continue;
        const entries = readEntries(
          await connection.callBuffer(
            "XREADGROUP",
            "GROUP",
            group,
            consumer,
            "COUNT",
            count - inHand.size,
            "BLOCK",
            blockMs,
            "STREAMS",
            stream,
            ">",
          ),
        );
        dispatch(entries, "new");
      } catch (error) {
        if (stopping) break;
        // The stream (and its groups) was deleted: create the group again.
        if (replyCode(error) === "NOGROUP") groupReady = false;
        onError(error, null, "redis");
        await pause(blockMs);
      }
    }
  };

  const done = loop().catch((error: unknown) => warn("the consumer loop failed", error));
  let stopped: Promise<void> | undefined;
  return {
    stop() {
      stopped ??= (async () => {
        stopping = true;
        roomFreed();
        pauseEnded();
        connection.disconnect();
        await done;
        while (inHand.size > 0) await Promise.all(inHand.values());
      })();
      return stopped;
    },
  };
}
