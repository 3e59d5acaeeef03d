import { type OutboxEntry, OutboxError, OutboxErrorCode, type OutboxStore } from "@outbox/core";
import { CliError, CliErrorCode, usageError } from "../errors.js";
import { type CliIO, writeJson, writeTable } from "../io.js";

type AnyStore = OutboxStore<never>;

export interface DeadFilter {
  topic?: string;
  key?: string;
  /** Substring of the last error, case-insensitive. */
  error?: string;
  /** Created at or after. */
  since?: Date;
  /** Created before. */
  until?: Date;
}

export interface DeadScan {
  /** Dead entries read from the store (oldest first); filters apply client-side. */
  readonly scan: number;
}

export function matches(entry: OutboxEntry, filter: DeadFilter): boolean {
  if (filter.topic !== undefined && entry.topic !== filter.topic) return false;
  if (filter.key !== undefined && entry.key !== filter.key) return false;
  if (filter.error !== undefined && !(entry.lastError ?? "").toLowerCase().includes(filter.error.toLowerCase())) {
    return false;
  }
  if (filter.since !== undefined && entry.createdAt < filter.since) return false;
  if (filter.until !== undefined && entry.createdAt >= filter.until) return false;
  return true;
}

export function hasFilter(filter: DeadFilter): boolean {
  const { topic, key, error, since, until } = filter;
  return [topic, key, error, since, until].some((value) => value !== undefined);
}

/** Dead entries read per listDead call while scanning. */
const pageSize = 1_000;

/**
 * The oldest dead entries, at most `scan`, read a page at a time (listDead's `after` cursor);
 * stops early at the first entry `until` accepts.
 */
async function readDead(store: AnyStore, scan: number, until?: (entry: OutboxEntry) => boolean) {
  const entries: OutboxEntry[] = [];
  let after: string | undefined;
  while (entries.length < scan) {
    const limit = Math.min(pageSize, scan - entries.length);
    const page = await store.listDead(after === undefined ? { limit } : { limit, after });
    entries.push(...page);
    if (page.length < limit) return { entries, complete: true };
    if (until && page.some(until)) return { entries, complete: false };
    after = page.at(-1)?.id;
  }
  return { entries, complete: false };
}

async function scanDead(store: AnyStore, filter: DeadFilter, scan: number) {
  const { entries, complete } = await readDead(store, scan);
  const matched = entries.filter((entry) => matches(entry, filter));
  return { matched, scanned: entries.length, complete };
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function payloadText(payload: Uint8Array): string | null {
  try {
    return utf8.decode(payload);
  } catch {
    return null;
  }
}

/** Bytes of a payload `dead show` prints unless told `--full` (or another `--max-payload`). */
export const defaultMaxPayloadBytes = 4_096;

/**
 * The first `max` bytes of a payload (all of it when `max` is undefined), cut back to a whole
 * UTF-8 character when the payload is text, so the shown part still decodes.
 */
export function payloadPart(payload: Uint8Array, max: number | undefined): { bytes: Uint8Array; truncated: boolean } {
  if (max === undefined || payload.byteLength <= max) return { bytes: payload, truncated: false };
  let end = max;
  if (payloadText(payload) !== null) {
    // Continuation bytes are 10xxxxxx: back off to the start of the character the cut splits.
    while (end > 0 && ((payload[end] as number) & 0xc0) === 0x80) end--;
  }
  return { bytes: payload.subarray(0, end), truncated: true };
}

/** An entry as JSON: dates ISO, payload as base64 plus text when it is valid UTF-8. */
export function entryJson(entry: OutboxEntry, withPayload: boolean, maxPayloadBytes?: number): Record<string, unknown> {
  const isText = withPayload && payloadText(entry.payload) !== null;
  const { bytes, truncated } = payloadPart(entry.payload, withPayload ? maxPayloadBytes : undefined);
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
    payloadBytes: entry.payload.byteLength,
    ...(withPayload
      ? {
          payloadText: isText ? payloadText(bytes) : null,
          payloadBase64: Buffer.from(bytes).toString("base64"),
          payloadTruncated: truncated,
        }
      : {}),
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
  const { entries, complete } = await readDead(store, options.scan, (candidate) => candidate.id === id);
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
  for (const [name, value] of Object.entries(json)) {
    if (name === "payloadText" || name === "payloadBase64" || name === "payloadTruncated") continue;
    io.stdout.write(`${`${name}`.padEnd(16)}${typeof value === "object" ? JSON.stringify(value) : String(value)}\n`);
  }
  const text = json.payloadText;
  io.stdout.write(text === null ? `payload (base64)\n${String(json.payloadBase64)}\n` : `payload\n${String(text)}\n`);
  if (json.payloadTruncated === true) {
    const shown =
      text === null ? Buffer.from(String(json.payloadBase64), "base64").byteLength : Buffer.byteLength(String(text));
    io.stdout.write(`… truncated: ${shown} of ${entry.payload.byteLength} bytes shown (--full for all of it)\n`);
  }
}

interface Selection {
  readonly ids: string[];
  readonly explicit: boolean;
}

async function select(
  store: AnyStore,
  ids: readonly string[],
  options: DeadFilter & DeadScan & { all: boolean },
  command: string,
): Promise<Selection> {
  if (ids.length > 0) {
    if (options.all || hasFilter(options)) throw usageError(`${command}: give ids, or --all with filters, not both`);
    return { ids: [...new Set(ids)], explicit: true };
  }
  if (!options.all) {
    throw usageError(`${command}: give entry ids, or --all (narrowed by --topic/--key/--error/--since/--until)`);
  }
  const { matched } = await scanDead(store, options, options.scan);
  return { ids: matched.map((entry) => entry.id), explicit: false };
}

async function act(
  verb: "requeued" | "dropped",
  selection: Selection,
  options: { dryRun: boolean; json: boolean },
  run: (ids: string[]) => Promise<number>,
  io: CliIO,
) {
  const count = options.dryRun || selection.ids.length === 0 ? 0 : await run(selection.ids);
  const report = { [verb]: count, selected: selection.ids.length, ids: selection.ids, dryRun: options.dryRun };
  if (options.json) writeJson(io.stdout, report);
  else if (options.dryRun)
    io.stdout.write(`would be ${verb}: ${selection.ids.length} (${selection.ids.join(", ") || "none"})\n`);
  else io.stdout.write(`${verb}: ${count} of ${selection.ids.length} selected\n`);
  if (!options.dryRun && selection.explicit && count < selection.ids.length) {
    throw new CliError(
      CliErrorCode.NotFound,
      `${selection.ids.length - count} of the given ids were not dead entries`,
      {
        [verb]: count,
        selected: selection.ids.length,
      },
    );
  }
}

export async function deadRequeue(
  store: AnyStore,
  ids: readonly string[],
  options: DeadFilter & DeadScan & { all: boolean; dryRun: boolean; json: boolean },
  io: CliIO,
) {
  const selection = await select(store, ids, options, "dead requeue");
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
  const selection = await select(store, ids, options, "dead drop");
  await act("dropped", selection, options, (chosen) => dropDead(chosen), io);
}
