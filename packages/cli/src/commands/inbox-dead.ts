import type { InboxDeadLetter, InboxMessage, InboxStore } from "@outbox/inbox";
import { CliError, CliErrorCode } from "../errors.js";
import { type CliIO, writeJson, writeTable } from "../io.js";
import {
  act,
  type DeadFilter,
  type DeadScan,
  matchesFields,
  payloadJson,
  readPages,
  select,
  writeShown,
} from "./dead-letters.js";

type AnyInbox = InboxStore<unknown>;

interface ConsumerOption {
  readonly consumer: string;
}

export function letterMatches(letter: InboxDeadLetter, filter: DeadFilter): boolean {
  return matchesFields(
    { topic: letter.message.topic, key: letter.message.key, error: letter.error, at: letter.deadAt },
    filter,
  );
}

/** A consumer's dead letters by message id, at most `scan`; stops early at the first letter `until` accepts. */
function readDead(store: AnyInbox, consumer: string, scan: number, until?: (letter: InboxDeadLetter) => boolean) {
  return readPages(
    (options) => store.listDead(consumer, options),
    (letter) => letter.messageId,
    scan,
    until,
  );
}

async function scanDead(store: AnyInbox, consumer: string, filter: DeadFilter, scan: number) {
  const { entries, complete } = await readDead(store, consumer, scan);
  const matched = entries.filter((letter) => letterMatches(letter, filter));
  return { matched, scanned: entries.length, complete };
}

const utf8 = new TextEncoder();

function payloadOf(message: InboxMessage): Uint8Array {
  const payload = message.payload;
  if (payload === null || payload === undefined) return new Uint8Array(0);
  return typeof payload === "string" ? utf8.encode(payload) : payload;
}

/** A dead letter as JSON: the message's fields, the dates ISO, the payload as base64 plus text when it is UTF-8. */
export function letterJson(
  letter: InboxDeadLetter,
  withPayload: boolean,
  maxPayloadBytes?: number,
): Record<string, unknown> {
  return {
    consumer: letter.consumer,
    messageId: letter.messageId,
    id: letter.message.id,
    idempotencyKey: letter.message.idempotencyKey ?? null,
    topic: letter.message.topic ?? null,
    key: letter.message.key ?? null,
    attempts: letter.attempts,
    deadAt: letter.deadAt.toISOString(),
    error: letter.error,
    headers: letter.message.headers ?? {},
    ...payloadJson(payloadOf(letter.message), withPayload, maxPayloadBytes),
  };
}

export async function inboxDeadList(
  store: AnyInbox,
  options: DeadFilter & DeadScan & ConsumerOption & { limit: number; json: boolean },
  io: CliIO,
) {
  const { matched, scanned, complete } = await scanDead(store, options.consumer, options, options.scan);
  const shown = matched.slice(0, options.limit);
  if (options.json) {
    writeJson(io.stdout, {
      consumer: options.consumer,
      entries: shown.map((letter) => letterJson(letter, false)),
      matched: matched.length,
      scanned,
      complete,
    });
    return;
  }
  if (shown.length === 0) {
    io.stdout.write(
      `no dead letters of consumer ${JSON.stringify(options.consumer)} match (scanned ${scanned}${complete ? ", all" : `, --scan ${options.scan} reached`})\n`,
    );
    return;
  }
  writeTable(
    io.stdout,
    ["MESSAGE ID", "TOPIC", "KEY", "ATTEMPTS", "DEAD AT", "ERROR"],
    shown.map((letter) => [
      letter.messageId,
      letter.message.topic ?? "-",
      letter.message.key ?? "-",
      String(letter.attempts),
      letter.deadAt.toISOString(),
      letter.error || "-",
    ]),
  );
  io.stdout.write(
    `\n${shown.length} shown, ${matched.length} matched, ${scanned} scanned${complete ? "" : ` (--scan ${options.scan} reached: the first message ids only)`}\n`,
  );
}

export async function inboxDeadShow(
  store: AnyInbox,
  messageId: string,
  options: DeadScan & ConsumerOption & { json: boolean; maxPayloadBytes: number | undefined },
  io: CliIO,
) {
  const { entries, complete } = await readDead(
    store,
    options.consumer,
    options.scan,
    (candidate) => candidate.messageId === messageId,
  );
  const letter = entries.find((candidate) => candidate.messageId === messageId);
  if (!letter) {
    throw new CliError(
      CliErrorCode.NotFound,
      `consumer ${JSON.stringify(options.consumer)} has no dead letter ${JSON.stringify(messageId)} among the first ${entries.length}${complete ? "" : " (raise --scan)"}`,
      { consumer: options.consumer, messageId, scanned: entries.length },
    );
  }
  const json = letterJson(letter, true, options.maxPayloadBytes);
  if (options.json) {
    writeJson(io.stdout, json);
    return;
  }
  writeShown(json, io);
}

type ActOptions = DeadFilter & DeadScan & ConsumerOption & { all: boolean; dryRun: boolean; json: boolean };

function selectLetters(store: AnyInbox, ids: readonly string[], options: ActOptions, command: string) {
  return select(ids, options, command, async () =>
    (await scanDead(store, options.consumer, options, options.scan)).matched.map((letter) => letter.messageId),
  );
}

/**
 * Makes the consumer's dead letters recordable again: their next delivery runs the handler with a fresh attempt
 * count. Nothing redelivers them by itself (the broker was told they were done).
 */
export async function inboxDeadRequeue(store: AnyInbox, ids: readonly string[], options: ActOptions, io: CliIO) {
  const selection = await selectLetters(store, ids, options, "inbox dead requeue");
  const { consumer } = options;
  const count = await act("requeued", selection, options, (chosen) => store.requeueDead(consumer, chosen), io, {
    consumer,
  });
  if (!options.json && !options.dryRun && count > 0) {
    io.stdout.write(
      "note: a requeued message is handled at its next delivery; the broker does not send it again by itself " +
        "(replay it: republish it, or rewind the consumer)\n",
    );
  }
}

/** Discards the consumer's dead letters: they count as handled from now on (a redelivery is a duplicate). */
export async function inboxDeadDrop(store: AnyInbox, ids: readonly string[], options: ActOptions, io: CliIO) {
  const selection = await selectLetters(store, ids, options, "inbox dead drop");
  const { consumer } = options;
  await act("dropped", selection, options, (chosen) => store.dropDead(consumer, chosen), io, { consumer });
}
