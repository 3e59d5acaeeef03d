import type { RecentError, RelayClaimer } from "./store.js";

/** `relayActivity` reports the fencing tokens of at most this many lock names (the first by name). */
export const relayActivityMaxLocks = 100;

/**
 * `relayActivity`'s claimers from the leases a store counted per claimer name: summed per relay
 * (a relay claims as `<relayId>#<n>`; a name without `#` is its own), the latest lease end kept,
 * by relay id.
 */
export function claimersByRelay(
  leases: Iterable<{ readonly claimer: string; readonly inFlight: number; readonly leaseUntil: Date }>,
): RelayClaimer[] {
  const relays = new Map<string, RelayClaimer>();
  for (const { claimer, inFlight, leaseUntil } of leases) {
    const hash = claimer.lastIndexOf("#");
    const relay = hash < 0 ? claimer : claimer.slice(0, hash);
    const seen = relays.get(relay);
    relays.set(relay, {
      relay,
      inFlight: inFlight + (seen?.inFlight ?? 0),
      leaseUntil: seen && seen.leaseUntil > leaseUntil ? seen.leaseUntil : leaseUntil,
    });
  }
  // Relay ids are unique in the map: never equal.
  return [...relays.values()].sort((a, b) => (a.relay < b.relay ? -1 : 1));
}

/** The order of `relayActivity`'s errors: newest `at` first, then the higher id (decimal ids compare as numbers). */
export function newestErrorFirst(a: RecentError, b: RecentError): number {
  return b.at.getTime() - a.at.getTime() || b.id.length - a.id.length || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
}
