// The checker: pure functions over what the run recorded (the producer's ledger of committed
// entries, the recorder's deliveries in the broker's order, the relays' log of fenced store
// operations, the faults as they happened). No clock and no waiting here: unit-tested in
// test/check.test.ts.

/** An entry the producer's transaction committed. `at`: when COMMIT returned (ms, epoch). */
export interface Committed {
  readonly id: string;
  readonly key: string;
  readonly seq: number;
  readonly at: number;
}

/**
 * A message as the independent consumer received it, in the broker's order for its key (a Kafka
 * partition's offsets, a queue's order, an ordering key's order). Re-reads by the consumer itself
 * (a redelivery to it, a re-fetched offset) are not recorded: every element is something a relay
 * published.
 */
export interface Delivery {
  readonly id: string;
  readonly key: string;
  readonly seq: number;
  readonly at: number;
  /** The store's id of the entry (the `outbox-id` header), where the recorder reads it: shown with an inversion. */
  readonly outboxId?: string;
}

/** A fenced store call that succeeded (the store accepted its token). Times in ms, epoch. */
export interface FencedOp {
  readonly relay: string;
  readonly op: string;
  readonly lock: string;
  readonly token: bigint;
  readonly start: number;
  readonly end: number;
}

export interface FaultWindow {
  readonly n: number;
  readonly kind: string;
  readonly start: number;
  readonly end: number;
}

export interface CheckInput {
  readonly committed: readonly Committed[];
  readonly deliveries: readonly Delivery[];
  readonly fencedOps: readonly FencedOp[];
  readonly faults: readonly FaultWindow[];
  readonly productionStart: number;
  readonly productionEnd: number;
  readonly ttlMs: number;
  readonly windowMs?: number;
  readonly p99LimitMs?: number;
}

export interface FaultCatchUp {
  readonly n: number;
  readonly kind: string;
  /** ms from the fault's end until every entry committed before that end was delivered; null: never. */
  readonly catchUpMs: number | null;
}

export interface CheckResult {
  readonly committed: number;
  readonly delivered: number;
  readonly messages: number;
  readonly lost: number;
  readonly lostSample: string[];
  readonly duplicates: number;
  readonly inversions: number;
  readonly inversionSample: string[];
  /** Deliveries whose seq or key differs from the committed entry's, or of ids never committed. */
  readonly mismatched: number;
  readonly unknown: number;
  readonly staleFences: number;
  readonly staleFenceSample: string[];
  readonly latency: { p50: number; p90: number; p99: number; max: number } | null;
  readonly windows: { total: number; empty: number; emptyUnexcused: number; unexcusedAt: number[] };
  readonly catchUp: FaultCatchUp[];
  readonly failures: string[];
}

const sample = (list: string[], item: string) => {
  if (list.length < 10) list.push(item);
};

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] as number;
}

/**
 * Stale fences accepted: a successful operation with token t that started after a successful
 * operation of the same lock with a newer token had completed. The store must have refused it
 * (it had recorded the newer token before the stale call was even made).
 */
export function staleFences(ops: readonly FencedOp[]): FencedOp[] {
  const stale: FencedOp[] = [];
  const byLock = new Map<string, FencedOp[]>();
  for (const op of ops) {
    const list = byLock.get(op.lock);
    if (list) list.push(op);
    else byLock.set(op.lock, [op]);
  }
  for (const list of byLock.values()) {
    const byEnd = [...list].sort((a, b) => a.end - b.end);
    const byStart = [...list].sort((a, b) => a.start - b.start);
    let newest = -1n;
    let i = 0;
    for (const op of byStart) {
      while (i < byEnd.length && (byEnd[i] as FencedOp).end < op.start) {
        const token = (byEnd[i] as FencedOp).token;
        if (token > newest) newest = token;
        i++;
      }
      if (newest > op.token) stale.push(op);
    }
  }
  return stale;
}

/** Durations (ms) of calls (store, publisher), per operation: where a stall shows first. */
export function opDurations(
  ops: ReadonlyArray<{ readonly op: string; readonly start: number; readonly end: number }>,
): Record<string, { n: number; p50: number; p99: number; max: number }> {
  const byOp = new Map<string, number[]>();
  for (const op of ops) {
    const list = byOp.get(op.op);
    if (list) list.push(op.end - op.start);
    else byOp.set(op.op, [op.end - op.start]);
  }
  const result: Record<string, { n: number; p50: number; p99: number; max: number }> = {};
  for (const [op, list] of byOp) {
    list.sort((a, b) => a - b);
    const round = (ms: number) => Math.round(ms * 10) / 10;
    result[op] = {
      n: list.length,
      p50: round(percentile(list, 50)),
      p99: round(percentile(list, 99)),
      max: round(list[list.length - 1] as number),
    };
  }
  return result;
}

export function check(input: CheckInput): CheckResult {
  const windowMs = input.windowMs ?? 5_000;
  const p99Limit = input.p99LimitMs ?? 15_000;
  const committed = new Map(input.committed.map((entry) => [entry.id, entry]));

  // Deliveries: first delivery per id, duplicates, per-key order of first deliveries.
  const first = new Map<string, number>();
  const lastSeq = new Map<string, number>();
  const lastOutboxId = new Map<string, string | undefined>();
  const inversionSample: string[] = [];
  let inversions = 0;
  let mismatched = 0;
  let unknown = 0;
  for (const delivery of input.deliveries) {
    if (first.has(delivery.id)) continue;
    first.set(delivery.id, delivery.at);
    const entry = committed.get(delivery.id);
    if (!entry) unknown++;
    else if (entry.seq !== delivery.seq || entry.key !== delivery.key) mismatched++;
    const previous = lastSeq.get(delivery.key);
    if (previous !== undefined && delivery.seq < previous) {
      inversions++;
      const ids =
        delivery.outboxId === undefined
          ? ""
          : ` (store ids ${delivery.outboxId} after ${lastOutboxId.get(delivery.key)})`;
      sample(inversionSample, `${delivery.key}: seq ${delivery.seq} first delivered after seq ${previous}${ids}`);
    }
    if (previous === undefined || delivery.seq > previous) {
      lastSeq.set(delivery.key, delivery.seq);
      lastOutboxId.set(delivery.key, delivery.outboxId);
    }
  }

  // Lost entries and commit -> first delivery latency.
  const lostSample: string[] = [];
  let lost = 0;
  const latencies: number[] = [];
  for (const entry of input.committed) {
    const at = first.get(entry.id);
    if (at === undefined) {
      lost++;
      sample(lostSample, `${entry.id} (${entry.key} seq ${entry.seq}, committed ${new Date(entry.at).toISOString()})`);
    } else latencies.push(Math.max(0, at - entry.at));
  }
  latencies.sort((a, b) => a - b);
  const latency =
    latencies.length === 0
      ? null
      : {
          p50: percentile(latencies, 50),
          p90: percentile(latencies, 90),
          p99: percentile(latencies, 99),
          max: latencies[latencies.length - 1] as number,
        };

  // Continuity: 5 s windows of production without a single first delivery, unless a fault (or the
  // TTL + 5 s after it) overlaps the window.
  const firstTimes = [...first.values()].sort((a, b) => a - b);
  const excusedUntil = (fault: FaultWindow) => fault.end + input.ttlMs + 5_000;
  let total = 0;
  let empty = 0;
  const unexcusedAt: number[] = [];
  let cursor = 0;
  for (let start = input.productionStart; start + windowMs <= input.productionEnd; start += windowMs) {
    const end = start + windowMs;
    total++;
    while (cursor < firstTimes.length && (firstTimes[cursor] as number) < start) cursor++;
    const hasDelivery = cursor < firstTimes.length && (firstTimes[cursor] as number) < end;
    if (hasDelivery) continue;
    empty++;
    const excused = input.faults.some((fault) => fault.start < end && excusedUntil(fault) > start);
    if (!excused) unexcusedAt.push(start - input.productionStart);
  }

  // Catch-up after each fault: until everything committed before its end was delivered.
  const byCommit = [...input.committed].sort((a, b) => a.at - b.at);
  const doneBy: number[] = []; // doneBy[i]: when entries 0..i had all been delivered (Infinity: never)
  let latest = 0;
  for (const entry of byCommit) {
    latest = Math.max(latest, first.get(entry.id) ?? Number.POSITIVE_INFINITY);
    doneBy.push(latest);
  }
  const catchUp = input.faults.map((fault): FaultCatchUp => {
    let lo = 0;
    let hi = byCommit.length; // first index committed after the fault's end
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((byCommit[mid] as Committed).at <= fault.end) lo = mid + 1;
      else hi = mid;
    }
    const done = lo === 0 ? fault.end : (doneBy[lo - 1] as number);
    return {
      n: fault.n,
      kind: fault.kind,
      catchUpMs: Number.isFinite(done) ? Math.max(0, Math.round(done - fault.end)) : null,
    };
  });

  const stale = staleFences(input.fencedOps);
  const staleFenceSample = stale
    .slice(0, 10)
    .map(
      (op) =>
        `${op.relay} ${op.op} with token ${op.token} started ${new Date(op.start).toISOString()}, after a newer token's op completed`,
    );

  const failures: string[] = [];
  if (lost > 0) failures.push(`${lost} committed entries never delivered`);
  if (inversions > 0) failures.push(`${inversions} per-key order inversions`);
  if (mismatched + unknown > 0) failures.push(`${mismatched + unknown} deliveries that match no committed entry`);
  if (stale.length > 0) failures.push(`${stale.length} stale fencing tokens accepted by the store`);
  if (!latency) failures.push("nothing delivered");
  else if (!(latency.p99 < p99Limit)) failures.push(`commit -> delivery p99 ${latency.p99} ms >= ${p99Limit} ms`);
  if (unexcusedAt.length > 0)
    failures.push(
      `${unexcusedAt.length} empty ${windowMs / 1000} s windows outside fault windows (at +${unexcusedAt
        .map((at) => `${Math.round(at / 1000)}s`)
        .join(", +")})`,
    );

  return {
    committed: input.committed.length,
    delivered: first.size,
    messages: input.deliveries.length,
    lost,
    lostSample,
    duplicates: input.deliveries.length - first.size,
    inversions,
    inversionSample,
    mismatched,
    unknown,
    staleFences: stale.length,
    staleFenceSample,
    latency,
    windows: { total, empty, emptyUnexcused: unexcusedAt.length, unexcusedAt },
    catchUp,
    failures,
  };
}
