// The checker and the schedule on made-up records: each criterion fails when it should, and
// only then.
import { describe, expect, it } from "vitest";
import { type Committed, check, type Delivery, type FencedOp, staleFences } from "../src/check.js";
import { faultKinds, planFaults } from "../src/schedule.js";

const T = 1_000_000;
/** Ten keys, one entry per 100 ms for 30 s, committed at `T + i * 100`. */
const committed: Committed[] = Array.from({ length: 300 }, (_, i) => ({
  id: `e${i}`,
  key: `k${i % 10}`,
  seq: Math.floor(i / 10),
  at: T + i * 100,
}));
/** Each delivered 50 ms after its commit, in commit order. */
const onTime: Delivery[] = committed.map((entry) => ({ ...entry, at: entry.at + 50 }));
const base = {
  committed,
  deliveries: onTime,
  fencedOps: [],
  faults: [],
  productionStart: T,
  productionEnd: T + 30_000,
  ttlMs: 3_000,
};

describe("check", () => {
  it("passes a clean run and reports its figures", () => {
    const result = check(base);
    expect(result.failures).toEqual([]);
    expect(result).toMatchObject({ committed: 300, delivered: 300, lost: 0, duplicates: 0, inversions: 0 });
    expect(result.latency).toEqual({ p50: 50, p90: 50, p99: 50, max: 50 });
    expect(result.windows).toEqual({ total: 6, empty: 0, emptyUnexcused: 0, unexcusedAt: [] });
  });

  it("counts lost entries and duplicates", () => {
    const deliveries = [...onTime.filter((d) => d.id !== "e7"), onTime[3] as Delivery, onTime[3] as Delivery];
    const result = check({ ...base, deliveries });
    expect(result.lost).toBe(1);
    expect(result.lostSample[0]).toMatch(/^e7 /);
    expect(result.duplicates).toBe(2);
    expect(result.failures).toEqual(["1 committed entries never delivered"]);
  });

  it("finds per-key inversions among first deliveries only", () => {
    // k0: seq 1 reaches the broker before seq 0 (an inversion) ...
    const swapped = [...onTime];
    [swapped[0], swapped[10]] = [swapped[10] as Delivery, swapped[0] as Delivery];
    expect(check({ ...base, deliveries: swapped }).inversions).toBe(1);
    // ... while a duplicate of seq 0 after seq 1 is not.
    const replayed = [...onTime.slice(0, 11), onTime[0] as Delivery, ...onTime.slice(11)];
    const result = check({ ...base, deliveries: replayed });
    expect(result.inversions).toBe(0);
    expect(result.duplicates).toBe(1);
  });

  it("flags deliveries that match no committed entry", () => {
    const result = check({ ...base, deliveries: [...onTime, { id: "x", key: "k0", seq: 99, at: T }] });
    expect(result.unknown).toBe(1);
    expect(result.failures).toHaveLength(1);
  });

  it("fails a p99 of 15 s or more", () => {
    // The last 4% of entries (12) wait 20 s.
    const late = onTime.map((d, i) => (i >= 288 ? { ...d, at: d.at + 20_000 } : d));
    const result = check({ ...base, deliveries: late });
    expect(result.latency?.p99).toBe(20_050);
    expect(result.failures).toEqual(["commit -> delivery p99 20050 ms >= 15000 ms"]);
  });

  it("fails an empty 5 s window unless a fault (or TTL + 5 s after it) overlaps it", () => {
    // Nothing is delivered between +10 s and +16 s; then the backlog arrives at once.
    const stalled = onTime.map((d) => (d.at >= T + 10_000 && d.at < T + 16_000 ? { ...d, at: T + 16_000 } : d));
    const result = check({ ...base, deliveries: stalled });
    expect(result.windows).toMatchObject({ empty: 1, emptyUnexcused: 1, unexcusedAt: [10_000] });
    expect(result.failures).toEqual(["1 empty 5 s windows outside fault windows (at +10s)"]);
    // A fault that ended at +3 s excuses windows up to +11 s (TTL 3 s + 5 s).
    const excused = check({
      ...base,
      deliveries: stalled,
      faults: [{ n: 1, kind: "x", start: T + 2_000, end: T + 3_000 }],
    });
    expect(excused.windows).toMatchObject({ empty: 1, emptyUnexcused: 0 });
    expect(excused.failures).toEqual([]);
    // One that ended at +1 s does not (its excuse ends at +9 s).
    const early = check({ ...base, deliveries: stalled, faults: [{ n: 1, kind: "x", start: T, end: T + 1_000 }] });
    expect(early.windows.emptyUnexcused).toBe(1);
  });

  it("measures the catch-up after each fault", () => {
    // Entries committed up to +12 s are delivered at +15 s at the latest.
    const slow = onTime.map((d) => (d.at <= T + 12_050 && d.at >= T + 10_000 ? { ...d, at: T + 15_000 } : d));
    const result = check({
      ...base,
      deliveries: slow,
      faults: [
        { n: 1, kind: "a", start: T + 11_000, end: T + 12_000 },
        { n: 2, kind: "b", start: T + 20_000, end: T + 20_000 },
      ],
    });
    expect(result.catchUp).toEqual([
      { n: 1, kind: "a", catchUpMs: 3_000 },
      { n: 2, kind: "b", catchUpMs: 50 },
    ]);
    const never = check({
      ...base,
      deliveries: onTime.slice(0, 100),
      faults: [{ n: 1, kind: "a", start: T, end: T + 20_000 }],
    });
    expect(never.catchUp[0]?.catchUpMs).toBeNull();
  });
});

describe("staleFences", () => {
  const op = (relay: string, token: bigint, start: number, end: number, lock = "L"): FencedOp => ({
    relay,
    op: "ack",
    lock,
    token,
    start,
    end,
  });

  it("accepts overlapping leaders and an old leader's ops that started before the new one's first completed", () => {
    const ops = [op("a", 1n, 0, 10), op("b", 2n, 5, 20), op("a", 1n, 15, 30), op("b", 2n, 25, 26)];
    expect(staleFences(ops)).toEqual([]);
  });

  it("finds an op with an older token that started after a newer token's op completed", () => {
    const ops = [op("a", 1n, 0, 10), op("b", 2n, 5, 20), op("a", 1n, 21, 30)];
    expect(staleFences(ops)).toEqual([op("a", 1n, 21, 30)]);
  });

  it("compares tokens per lock only", () => {
    expect(staleFences([op("b", 2n, 0, 10, "L1"), op("a", 1n, 20, 30, "L2")])).toEqual([]);
  });

  it("makes check fail", () => {
    const result = check({ ...base, fencedOps: [op("b", 2n, 5, 20), op("a", 1n, 21, 30)] });
    expect(result.staleFences).toBe(1);
    expect(result.failures).toEqual(["1 stale fencing tokens accepted by the store"]);
  });
});

describe("planFaults", () => {
  const options = { productionMs: 75_000, faults: 10, ttlMs: 3_000 };

  it("is the same for the same seed, and different for another", () => {
    expect(planFaults(7, options)).toEqual(planFaults(7, options));
    expect(planFaults(8, options)).not.toEqual(planFaults(7, options));
  });

  it("uses every kind, keeps the quiet lead and tail, and freezes past the TTL", () => {
    const plan = planFaults(1, options);
    expect(new Set(plan.map((fault) => fault.kind))).toEqual(new Set(faultKinds));
    for (const fault of plan) {
      expect(fault.atMs).toBeGreaterThanOrEqual(8_000);
      expect(fault.atMs + fault.durationMs).toBeLessThanOrEqual(75_000 - 5_000);
      if (fault.kind === "leader-freeze") expect(fault.durationMs).toBeGreaterThan(3_000);
    }
    const long = planFaults(1, { ...options, productionMs: 330_000, faults: 52 });
    expect(long).toHaveLength(52);
    for (const kind of faultKinds) expect(long.filter((fault) => fault.kind === kind).length).toBeGreaterThanOrEqual(5);
  });
});
