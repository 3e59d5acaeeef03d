import {
  deadLetterFilter,
  type ListDeadOptions,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxStore,
} from "@outbox/core";
import { CliError, CliErrorCode } from "../errors.js";
import { type CliIO, writeJson, writeTable } from "../io.js";
import {
  act,
  type DeadFilter,
  type DeadScan,
  defaultMaxPayloadBytes,
  hasFilter,
  matchesFields,
  payloadJson,
  readPages,
  select,
  writeShown,
} from "./dead-letters.js";

export { type DeadFilter, defaultMaxPayloadBytes, hasFilter };

type AnyStore = OutboxStore<never>;

export function matches(entry: OutboxEntry, filter: DeadFilter): boolean {
  return matchesFields({ topic: entry.topic, key: entry.key, error: entry.lastError, at: entry.createdAt }, filter);
}

/**
 * Splits `filter` into what `store.listDead` applies (topic, key and error text, where the store
 * declares `capabilities.deadLetterFilters`: a page of matches, however many entries lie between them)
 * and what is left to apply to the entries read: the dates always, and everything for a store that does
 * not filter (one written before the filters may ignore them). The filters are checked either way, as
 * the stores check them (OUTBOX_INVALID_OPTIONS, exit 2).
 */
function splitFilter(store: AnyStore, filter: DeadFilter): { listDead: ListDeadOptions; here: DeadFilter } {
  const listDead = deadLetterFilter({ topic: filter.topic, key: filter.key, errorContains: filter.error });
  // A store of your own may have no capabilities object at all.
  if ((store.capabilities as AnyStore["capabilities"] | undefined)?.deadLetterFilters !== true) {
    return { listDead: {}, here: filter };
  }
  return { listDead, here: { since: filter.since, until: filter.until } };
}

/**
 * The oldest dead entries the store's filters select, at most `scan` (listDead's `after` cursor); stops early at
 * the first entry `until` accepts.
 */
function readDead(
  store: AnyStore,
  scan: number,
  filter: ListDeadOptions = {},
  until?: (entry: OutboxEntry) => boolean,
) {
  return readPages(
    (options) => store.listDead({ ...filter, ...options }),
    (entry) => entry.id,
    scan,
    until,
  );
}

async function scanDead(store: AnyStore, filter: DeadFilter, scan: number) {
  const { listDead, here } = splitFilter(store, filter);
  const { entries, complete } = await readDead(store, scan, listDead);
  const matched = entries.filter((entry) => matches(entry, here));
  return { matched, scanned: entries.length, complete };
}

/** An entry as JSON: dates ISO, payload as base64 plus text when it is valid UTF-8. */
export function entryJson(entry: OutboxEntry, withPayload: boolean, maxPayloadBytes?: number): Record<string, unknown> {
  return {
    id: entry.id,
    topic: entry.topic,
    key: entry.key,
    attempts: entry.attempts,
    createdAt: entry.createdAt.toISOString(),
    availableAt: entry.availableAt.toISOString(),
    idempotencyKey: entry.idempotencyKey,
    lastError: entry.lastError,
    headers: entry.headers,
    ...payloadJson(entry.payload, withPayload, maxPayloadBytes),
  };
}

export async function deadList(
  store: AnyStore,
  options: DeadFilter & DeadScan & { limit: number; json: boolean },
  io: CliIO,
) {
  const { matched, scanned, complete } = await scanDead(store, options, options.scan);
  const shown = matched.slice(0, options.limit);
  if (options.json) {
    writeJson(io.stdout, {
      entries: shown.map((entry) => entryJson(entry, false)),
      matched: matched.length,
      scanned,
      complete,
    });
    return;
  }
  if (shown.length === 0) {
    io.stdout.write(
      `no dead entries match (scanned ${scanned}${complete ? ", all" : `, --scan ${options.scan} reached`})\n`,
    );
    return;
  }
  writeTable(
    io.stdout,
    ["ID", "TOPIC", "KEY", "ATTEMPTS", "CREATED", "LAST ERROR"],
    shown.map((entry) => [
      entry.id,
      entry.topic,
      entry.key ?? "-",
      String(entry.attempts),
      entry.createdAt.toISOString(),
      entry.lastError ?? "-",
    ]),
  );
  io.stdout.write(
    `\n${shown.length} shown, ${matched.length} matched, ${scanned} scanned${complete ? "" : ` (--scan ${options.scan} reached: older entries only)`}\n`,
  );
}

export async function deadShow(
  store: AnyStore,
  id: string,
  options: DeadScan & { json: boolean; maxPayloadBytes: number | undefined },
  io: CliIO,
) {
  const { entries, complete } = await readDead(store, options.scan, {}, (candidate) => candidate.id === id);
  const entry = entries.find((candidate) => candidate.id === id);
  if (!entry) {
    throw new CliError(
      CliErrorCode.NotFound,
      `no dead entry ${JSON.stringify(id)} among the ${entries.length} oldest dead entries${complete ? "" : " (raise --scan)"}`,
      { id, scanned: entries.length },
    );
  }
  const json = entryJson(entry, true, options.maxPayloadBytes);
  if (options.json) {
    writeJson(io.stdout, json);
    return;
  }
  writeShown(json, io);
}

export async function deadRequeue(
  store: AnyStore,
  ids: readonly string[],
  options: DeadFilter & DeadScan & { all: boolean; dryRun: boolean; json: boolean },
  io: CliIO,
) {
  const selection = await select(ids, options, "dead requeue", async () =>
    (await scanDead(store, options, options.scan)).matched.map((entry) => entry.id),
  );
  await act("requeued", selection, options, (chosen) => store.requeueDead(chosen), io);
}

export async function deadDrop(
  store: AnyStore,
  ids: readonly string[],
  options: DeadFilter & DeadScan & { all: boolean; dryRun: boolean; json: boolean },
  io: CliIO,
) {
  const dropDead = store.dropDead?.bind(store);
  if (!dropDead) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      "this store cannot drop dead entries: it has no dropDead(ids) method (requeue them, or let `outbox purge` delete them once old enough)",
      { details: { capability: "dropDead" } },
    );
  }
  const selection = await select(ids, options, "dead drop", async () =>
    (await scanDead(store, options, options.scan)).matched.map((entry) => entry.id),
  );
  await act("dropped", selection, options, (chosen) => dropDead(chosen), io);
}
