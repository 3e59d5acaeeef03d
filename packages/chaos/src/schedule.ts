// The fault schedule: which fault, when, for how long. Drawn from a seed, so a run is repeated
// with `--seed`; only the target (the relay leading at that moment) is decided when it fires.

export const faultKinds = [
  "relay-kill", // SIGKILL a relay (the leader), start a new one after `durationMs`
  "leader-freeze", // SIGSTOP the leader past the lock TTL, then SIGCONT: a frozen, then deposed leader
  "leader-deposed", // delete the lock key: another relay takes over while the old leader still runs
  "session-kill", // the database kills the leader's sessions (pg_terminate_backend, KILL CONNECTION)
  "db-cut", // the proxy between the leader and the database resets and refuses connections
  "db-pause", // ... forwards nothing either way (a partition), then resets
  "broker-cut", // the same between the leader and the broker
  "broker-pause",
  "broker-outage", // the broker is unreachable for every relay (a broker restart as the relays see it)
] as const;

export type FaultKind = (typeof faultKinds)[number];

export interface PlannedFault {
  readonly n: number;
  /** When it fires, in ms after production started. */
  readonly atMs: number;
  readonly kind: FaultKind;
  /** How long it lasts before it is undone (0: instantaneous). */
  readonly durationMs: number;
}

/** A small seeded PRNG (mulberry32): the same seed gives the same sequence on every machine. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface ScheduleOptions {
  productionMs: number;
  faults: number;
  ttlMs: number;
  kinds?: readonly FaultKind[];
  /** Quiet time after production starts and before it ends. Defaults 8 s and 12 s. */
  leadMs?: number;
  tailMs?: number;
}

/**
 * `faults` faults spread evenly over the production time (each slot's start jittered by up to a
 * quarter of a slot), kinds in shuffled rounds so each kind comes up equally often. Durations are
 * drawn per kind; a freeze always outlasts the lock's TTL.
 */
export function planFaults(seed: number, options: ScheduleOptions): PlannedFault[] {
  const random = seededRandom(seed);
  const kinds = options.kinds ?? faultKinds;
  const lead = options.leadMs ?? 8_000;
  const slot = (options.productionMs - lead - (options.tailMs ?? 12_000)) / options.faults;
  if (!(slot >= 2_000)) throw new Error(`${options.faults} faults do not fit in ${options.productionMs} ms`);
  const between = (low: number, high: number) => Math.round(low + (high - low) * random());
  const order: FaultKind[] = [];
  while (order.length < options.faults) {
    const round = [...kinds];
    for (let i = round.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [round[i], round[j]] = [round[j] as FaultKind, round[i] as FaultKind];
    }
    order.push(...round);
  }
  // Long enough to matter, short enough that the next slot is not overrun.
  const longest = Math.max(1_000, slot - 1_500);
  const duration = (kind: FaultKind): number => {
    switch (kind) {
      case "relay-kill":
        return between(500, Math.min(3_000, longest));
      case "leader-freeze":
        return options.ttlMs + between(500, 2_000);
      case "leader-deposed":
      case "session-kill":
        return 0;
      case "broker-outage":
        return between(2_000, Math.min(5_000, longest));
      default:
        return between(1_000, Math.min(4_000, longest));
    }
  };
  return order.slice(0, options.faults).map((kind, n) => ({
    n: n + 1,
    atMs: Math.round(lead + n * slot + random() * slot * 0.25),
    kind,
    durationMs: duration(kind),
  }));
}
