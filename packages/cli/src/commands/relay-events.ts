import type { LockGrant, OutboxRelay, RelayPhase } from "@outbox/core";
import type { Logger } from "../log.js";

export interface RelayEventHooks {
  /** The leader's grant while it leads, null once it lost it (for /readyz and the fence gauge). */
  onLeadership(grant: LockGrant | null): void;
  onError(error: unknown, phase: RelayPhase): void;
}

/** What the relay service logs of a relay's events: one line each, at the level an operator acts on. */
export function logRelayEvents(relay: OutboxRelay, log: Logger, hooks: RelayEventHooks): void {
  relay.on("published", ({ entries }) => {
    if (!log.enabled("debug")) return;
    log.debug("published", { count: entries.length, firstId: entries[0]?.id, lastId: entries.at(-1)?.id });
  });
  relay.on("retried", ({ entry, error, availableAt }) =>
    log.warn("entry will be retried", {
      entryId: entry.id,
      topic: entry.topic,
      key: entry.key,
      attempts: entry.attempts,
      availableAt,
      error,
    }),
  );
  relay.on("deadLettered", ({ entry, error, reason }) =>
    log.error("entry dead-lettered", {
      entryId: entry.id,
      topic: entry.topic,
      key: entry.key,
      attempts: entry.attempts,
      reason,
      error,
    }),
  );
  relay.on("leadershipGained", ({ grant }) => {
    hooks.onLeadership(grant);
    log.info("leadership gained", { lock: grant.name, fenceToken: grant.token });
  });
  relay.on("leadershipLost", ({ grant, reason }) => {
    hooks.onLeadership(null);
    log.warn("leadership lost", {
      lock: grant.name,
      fenceToken: grant.token,
      reason: reason === "stopped" ? "stopped" : reason,
    });
  });
  relay.on("error", ({ error, phase }) => {
    hooks.onError(error, phase);
    log.error("relay error", { phase, error });
  });
}
