// What `outbox dead` and `outbox inbox dead` share: paging through a store's dead letters, the filters, the
// selection of requeue and drop (ids, or --all narrowed by filters), their report, and payload rendering.
import { CliError, CliErrorCode, usageError } from "../errors.js";
import { type CliIO, writeJson } from "../io.js";

export interface DeadFilter {
  topic?: string;
  /** `null`: dead letters without a key. */
  key?: string | null;
  /** Substring of the last error, case-insensitive. */
  error?: string;
  /** At or after (the outbox: created; the inbox: dead-lettered). */
  since?: Date;
  /** Before. */
  until?: Date;
}

export interface DeadScan {
  /**
   * Dead letters read from the store at most (in the store's order): only matching ones where the store
   * filters itself, every one otherwise; the filters it does not apply, the CLI applies to these.
   */
  readonly scan: number;
}

/** The fields a filter looks at, whatever the dead letter's shape. */
export interface FilterFields {
  readonly topic: string | null | undefined;
  readonly key: string | null | undefined;
  readonly error: string | null | undefined;
  readonly at: Date;
}

export function matchesFields(fields: FilterFields, filter: DeadFilter): boolean {
  if (filter.topic !== undefined && fields.topic !== filter.topic) return false;
  if (filter.key !== undefined && (fields.key ?? null) !== filter.key) return false;
  if (filter.error !== undefined && !(fields.error ?? "").toLowerCase().includes(filter.error.toLowerCase())) {
    return false;
  }
  if (filter.since !== undefined && fields.at < filter.since) return false;
  if (filter.until !== undefined && fields.at >= filter.until) return false;
  return true;
}

export function hasFilter(filter: DeadFilter): boolean {
  const { topic, key, error, since, until } = filter;
  return [topic, key, error, since, until].some((value) => value !== undefined);
}

/** Dead letters read per page while scanning. */
const pageSize = 1_000;

/**
 * The first dead letters, at most `scan`, a page at a time (the store's `after` cursor, the last id of the previous
 * page); stops early at the first page with a letter `until` accepts.
 */
export async function readPages<T>(
  page: (options: { limit: number; after?: string }) => Promise<T[]>,
  idOf: (letter: T) => string,
  scan: number,
  until?: (letter: T) => boolean,
): Promise<{ entries: T[]; complete: boolean }> {
  const entries: T[] = [];
  let after: string | undefined;
  while (entries.length < scan) {
    const limit = Math.min(pageSize, scan - entries.length);
    const letters = await page(after === undefined ? { limit } : { limit, after });
    entries.push(...letters);
    if (letters.length < limit) return { entries, complete: true };
    if (until && letters.some(until)) return { entries, complete: false };
    const last = letters.at(-1);
    after = last === undefined ? undefined : idOf(last);
  }
  return { entries, complete: false };
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

export function payloadText(payload: Uint8Array): string | null {
  try {
    return utf8.decode(payload);
  } catch {
    return null;
  }
}

/** Bytes of a payload `show` prints unless told `--full` (or another `--max-payload`). */
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

/** A payload as JSON fields: its size, and with `withPayload` the (cut) bytes as base64, plus text when UTF-8. */
export function payloadJson(payload: Uint8Array, withPayload: boolean, maxPayloadBytes?: number) {
  if (!withPayload) return { payloadBytes: payload.byteLength };
  const isText = payloadText(payload) !== null;
  const { bytes, truncated } = payloadPart(payload, maxPayloadBytes);
  return {
    payloadBytes: payload.byteLength,
    payloadText: isText ? payloadText(bytes) : null,
    payloadBase64: Buffer.from(bytes).toString("base64"),
    payloadTruncated: truncated,
  };
}

/** `show`'s text: one `name value` line per field, then the payload (text, or base64) and whether it was cut. */
export function writeShown(json: Record<string, unknown>, io: CliIO): void {
  for (const [name, value] of Object.entries(json)) {
    if (name === "payloadText" || name === "payloadBase64" || name === "payloadTruncated") continue;
    io.stdout.write(`${`${name}`.padEnd(16)}${typeof value === "object" ? JSON.stringify(value) : String(value)}\n`);
  }
  const text = json.payloadText;
  io.stdout.write(text === null ? `payload (base64)\n${String(json.payloadBase64)}\n` : `payload\n${String(text)}\n`);
  if (json.payloadTruncated === true) {
    const shown =
      text === null ? Buffer.from(String(json.payloadBase64), "base64").byteLength : Buffer.byteLength(String(text));
    io.stdout.write(`… truncated: ${shown} of ${String(json.payloadBytes)} bytes shown (--full for all of it)\n`);
  }
}

export interface Selection {
  readonly ids: string[];
  readonly explicit: boolean;
}

/**
 * What requeue or drop acts on: the ids given, or with `--all` every dead letter `matched` finds (the filters narrow
 * it). Both, or neither, is a usage error.
 */
export async function select(
  ids: readonly string[],
  options: DeadFilter & { all: boolean },
  command: string,
  matched: () => Promise<string[]>,
): Promise<Selection> {
  if (ids.length > 0) {
    if (options.all || hasFilter(options)) throw usageError(`${command}: give ids, or --all with filters, not both`);
    return { ids: [...new Set(ids)], explicit: true };
  }
  if (!options.all) {
    throw usageError(`${command}: give ids, or --all (narrowed by --topic/--key/--keyless/--error/--since/--until)`);
  }
  return { ids: await matched(), explicit: false };
}

/**
 * Runs requeue or drop on the selection (not with `dryRun`) and reports it; ids given by hand that were not dead
 * letters are OUTBOX_CLI_NOT_FOUND (exit 1) after the report. `extra` goes into the JSON report.
 */
export async function act(
  verb: "requeued" | "dropped",
  selection: Selection,
  options: { dryRun: boolean; json: boolean },
  run: (ids: string[]) => Promise<number>,
  io: CliIO,
  extra: Record<string, unknown> = {},
): Promise<number> {
  const count = options.dryRun || selection.ids.length === 0 ? 0 : await run(selection.ids);
  const report = {
    ...extra,
    [verb]: count,
    selected: selection.ids.length,
    ids: selection.ids,
    dryRun: options.dryRun,
  };
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
  return count;
}
