import type { Fence } from "@outbox/core";
import type { MySqlQueryable, Row, StatementResult } from "./queryable.js";
import { type Statements, slices } from "./statements.js";
import { hashHex, nullableNum, nullableText, num } from "./values.js";

/**
 * A claim's window of the oldest pending entries, and its read of keyless entries past it, are
 * `max(limit x this, minScan)` rows.
 */
const scanFactor = 4;
const minScan = 64;
/**
 * The slab of the key index a claim reads past a blocked window: `slabFactor x` the window, at
 * least `minSlab` index entries, read in `slices` ranges of key_hash (by its first byte), each
 * from its own cursor.
 */
const slabFactor = 4;
const minSlab = 4_096;
/** Keys whose runs a claim continues past its window (a UNION of one range scan per key). */
const maxRunKeys = 32;
/** Locking rounds of a claim (another goes on when skipped heads left it short). */
const maxLockRounds = 4;

/** The state a claim decides on, read from the window, the fallback scans or the locked rows. */
export interface StateRow {
  id: string;
  n: bigint;
  key: string | null;
  availableAt: number;
  leaseUntil: number | null;
  leaseLock: string | null;
  leaseToken: bigint | null;
}

/** Runs one of the claim's statements on its connection, under the claim's statement timeout. */
export type ClaimRun = (conn: MySqlQueryable, sql: string, params: unknown[]) => Promise<StatementResult>;

/** One claim's inputs, shared by its steps. */
export interface ClaimPass {
  readonly sql: Statements;
  readonly limit: number;
  readonly claimable: (row: StateRow) => boolean;
  /** `claimable` as the lockRows statement's params. */
  readonly claimableParams: unknown[];
  readonly read: ClaimRun;
  readonly write: ClaimRun;
}

/** Where a store's claims read past the window next: they move on from claim to claim. */
export interface ClaimCursors {
  /** Where the next read of keyless entries past the window starts (an id; null: at the window's edge). */
  keylessFrom: bigint | null;
  /** Per slice of key_hash, where the next read of the key index past the window starts. */
  keysFrom: Buffer[];
}

export function claimCursors(): ClaimCursors {
  return { keylessFrom: null, keysFrom: Array.from({ length: slices }, (_, slice) => sliceStart(slice)) };
}

/**
 * Whether a claim at `now` may take the entry: available, and unleased, its lease expired, or
 * leased under an older token of the fence's lock. The statements' `claimableSql` is the same
 * rule: the rows it locks are checked again here.
 */
export function claimableAt(now: number, fence: Fence | undefined): (row: StateRow) => boolean {
  return (row: StateRow) =>
    row.availableAt <= now &&
    (row.leaseUntil === null ||
      row.leaseUntil <= now ||
      (fence !== undefined && row.leaseLock === fence.lock && row.leaseToken !== null && row.leaseToken < fence.token));
}

/** A key_hash's slice, by its first byte (SHA-256 spreads keys evenly over the slices). */
function sliceOf(hash: Uint8Array): number {
  return Math.floor((hash[0] ?? 0) / (256 / slices));
}

/** Below every key_hash of the slice: its first byte alone (a shorter binary string sorts first). */
function sliceStart(slice: number): Buffer {
  return Buffer.from([slice * (256 / slices)]);
}

/** Above every key_hash of the slice: the next slice's start, or 17 bytes of 0xff after the last. */
function sliceEnd(slice: number): Buffer {
  return slice + 1 < slices ? sliceStart(slice + 1) : Buffer.alloc(17, 0xff);
}

function stateOf(row: Row): StateRow {
  const token = row.lease_token;
  return {
    id: String(row.id),
    n: BigInt(String(row.id)),
    key: hashHex(row.key_hash),
    availableAt: num(row.available_at),
    leaseUntil: nullableNum(row.lease_until),
    leaseLock: nullableText(row.lease_lock),
    leaseToken: token === null || token === undefined ? null : BigInt(String(token)),
  };
}

function byId(a: { n: bigint }, b: { n: bigint }): number {
  return a.n < b.n ? -1 : a.n > b.n ? 1 : 0;
}

/**
 * Steps 1 and 2 of a claim: candidates in id order, runs included, read without locks.
 */
export async function claimCandidates(
  pass: ClaimPass,
  conn: MySqlQueryable,
  cursors: ClaimCursors,
): Promise<StateRow[]> {
  const { sql, limit, claimable } = pass;
  const size = Math.max(limit * scanFactor, minScan);
  const window = (await pass.read(conn, sql.window, [size])).rows.map(stateOf);
  // Keys met in the window: their first entry there is their head (every lower pending id is
  // in the window too), so the window decides them. `ended`: their run is over.
  const met = new Set<string>();
  const ended = new Set<string>();
  const out: StateRow[] = [];
  for (const row of window) {
    if (row.key !== null) {
      if (ended.has(row.key)) continue;
      met.add(row.key);
    }
    if (claimable(row)) out.push(row);
    else if (row.key !== null) ended.add(row.key);
  }
  // A short window holds every pending entry. A full one that gave twice what the claim needs
  // is enough: the spare candidates take the place of those concurrent claims lock first.
  if (window.length < size || out.length >= 2 * limit) return out;

  // Past the window: the heads of the keys in the next slab of the key index, read in `slices`
  // ranges of key_hash from one cursor each (a deep key costs its slice's share of one slab at
  // most: the next read of that slice starts after it), and the next `size` keyless entries
  // after the window's edge or the keyless cursor.
  const edge = (window.at(-1) as StateRow).n;
  const keylessFrom = cursors.keylessFrom !== null && cursors.keylessFrom > edge ? cursors.keylessFrom : edge;
  const perSlice = Math.ceil(Math.max(size * slabFactor, minSlab) / slices);
  const past = (
    await pass.read(conn, sql.pastWindow, [
      ...cursors.keysFrom.flatMap((from, slice) => [from, sliceEnd(slice), perSlice]),
      keylessFrom.toString(),
      size,
    ])
  ).rows;
  const heads: StateRow[] = [];
  const keyless: StateRow[] = [];
  // Entries of each key in the slab: a key inside its slice's read has exactly these pending.
  const inSlab = new Map<string, number>();
  const bySlice: StateRow[][] = Array.from({ length: slices }, () => []);
  const sliceRead = new Array<number>(slices).fill(0);
  for (const row of past) {
    const state = stateOf(row);
    if (state.key === null) {
      keyless.push(state);
      continue;
    }
    heads.push(state);
    inSlab.set(state.key, Number(row.slab));
    const slice = sliceOf(row.key_hash as Uint8Array);
    bySlice[slice]?.push(state);
    sliceRead[slice] = (sliceRead[slice] ?? 0) + Number(row.slab);
  }
  // What the claim asks for from this read: the oldest of the new heads (keys the window did not
  // decide) and of the claimable keyless entries, up to `size` candidates with the window's
  // (more than it needs: the spares stand in for rows concurrent claims lock first).
  const need = Math.max(0, limit - out.length);
  const ask = Math.max(0, size - out.length);
  const candidate = (head: StateRow) => !met.has(head.key as string) && claimable(head);
  const found = [...heads.filter(candidate), ...keyless.filter(claimable)].sort(byId);
  const offered = found.slice(0, ask);
  const taken = new Set(found.slice(0, need).map((row) => row.id));
  const leftOut = (row: StateRow) => !taken.has(row.id);
  // The cursors move past everything the claim had room for: the next read of a slice (or of
  // the keyless entries) starts at its first candidate beyond that (the claim was full), else
  // after this read (the rest of a deep key is skipped), or over from the start when this read
  // came back short. The last key of a full slice may have more entries than the slab shows
  // (`cut`).
  const cut = new Set<string>();
  cursors.keysFrom = cursors.keysFrom.map((from, slice) => {
    const read = (bySlice[slice] ?? []).sort((a, b) => ((a.key as string) < (b.key as string) ? -1 : 1));
    const last = read.at(-1);
    const full = (sliceRead[slice] ?? 0) >= perSlice && last !== undefined;
    if (full) cut.add(last.key as string);
    const first = read.findIndex((head) => candidate(head) && leftOut(head));
    if (first > 0) return Buffer.from((read[first - 1] as StateRow).key as string, "hex");
    if (first === 0) return from;
    return full ? Buffer.from(last.key as string, "hex") : sliceStart(slice);
  });
  const firstKeyless = keyless.findIndex((row) => claimable(row) && leftOut(row));
  if (firstKeyless > 0) cursors.keylessFrom = (keyless[firstKeyless - 1] as StateRow).n;
  else if (firstKeyless < 0) cursors.keylessFrom = keyless.length === size ? (keyless.at(-1) as StateRow).n : null;

  const newHeads = offered.filter((row) => row.key !== null);
  // Runs past the edge, when the heads alone leave room: the successors of new heads that have
  // some (the slab shows it), then those of window runs still open at the edge; at most
  // `maxRunKeys` keys (one range scan each).
  const room = ask - offered.length;
  const runFrom = new Map<string, string>();
  for (const head of newHeads) {
    const key = head.key as string;
    if (runFrom.size < maxRunKeys && (cut.has(key) || (inSlab.get(key) ?? 0) > 1)) runFrom.set(key, head.id);
  }
  for (const row of out) {
    if (runFrom.size >= maxRunKeys) break;
    if (row.key !== null && !ended.has(row.key)) runFrom.set(row.key, edge.toString());
  }
  const share = Math.ceil(room / Math.max(1, runFrom.size));
  const runRows =
    room > 0 && runFrom.size > 0
      ? (
          await pass.read(
            conn,
            sql.runs(runFrom.size),
            [...runFrom].flatMap(([key, after]) => [Buffer.from(key, "hex"), after, share]),
          )
        ).rows.map(stateOf)
      : [];
  const more: StateRow[] = offered.filter((row) => row.key === null);
  const runs = [...newHeads, ...runRows].sort(byId);
  for (const row of runs) {
    const key = row.key as string;
    if (ended.has(key)) continue;
    if (claimable(row)) more.push(row);
    else ended.add(key);
  }
  return [...out, ...more].sort(byId);
}

/**
 * Step 3 of a claim, inside its transaction: the candidates it may lease, locked, as rows.
 */
export async function lockCandidates(pass: ClaimPass, conn: MySqlQueryable, candidates: StateRow[]): Promise<Row[]> {
  const { limit, claimable } = pass;
  const chosen: Row[] = [];
  // Lock candidates in id order, skipping rows other claims hold, up to what is still
  // missing (one statement: concurrent claimers spread over the candidates as PostgreSQL's
  // SKIP LOCKED scan does). A head that is skipped, gone or no longer claimable ends its
  // key for this claim (a successor locked behind it is left unleased); another round
  // goes on after the last row locked while the claim is short.
  const done = new Set<string>();
  let from = 0;
  for (let round = 0; round < maxLockRounds && chosen.length < limit && from < candidates.length; round++) {
    const untried = candidates.slice(from).filter((c) => c.key === null || !done.has(c.key));
    if (untried.length === 0) break;
    const wanted = limit - chosen.length;
    const { rows } = await pass.write(conn, pass.sql.lockRows(untried.length), [
      ...untried.map((c) => c.id),
      ...pass.claimableParams,
      wanted,
    ]);
    const locked = new Map<string, Row>();
    for (const row of rows) locked.set(String(row.id), row);
    // A full answer tried the candidates up to its last row; a short one tried them all.
    const last = rows.length < wanted ? null : (rows.map(stateOf).sort(byId).at(-1) as StateRow).n;
    for (; from < candidates.length; from++) {
      const candidate = candidates[from] as StateRow;
      if (last !== null && candidate.n > last) break;
      if (candidate.key !== null && done.has(candidate.key)) continue;
      const row = locked.get(candidate.id);
      if (!row || Number(row.status) !== 0 || !claimable(stateOf(row))) {
        if (candidate.key !== null) done.add(candidate.key);
        continue;
      }
      chosen.push(row);
    }
  }
  return chosen;
}
