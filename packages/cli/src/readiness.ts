import type {
  OutboxEntry,
  OutboxPublisher,
  PublishOptions,
  PublishOutcome,
  RelayMetrics,
  StoreStats,
} from "@outbox/core";
import { redactText } from "./redact.js";

/**
 * Why `/readyz` answers 503: stable codes (the body's `reasons[].code`); the messages are for
 * people and may change.
 */
export const NotReadyReason = {
  /** SIGTERM/SIGINT received: the relay drains and stops. */
  Draining: "draining",
  /** The relay loop is not running (not started yet, or stopped). */
  NotRunning: "relay-not-running",
  /** No stats read from the store has succeeded yet. */
  StoreNotReached: "store-not-reached",
  /** The last stats read from the store failed. */
  StoreFailing: "store-failing",
  /** The last `--ready-max-failures` claim cycles failed (the store refuses claims). */
  ClaimsFailing: "claims-failing",
  /** The last `--ready-max-failures` publish attempts failed while entries are pending (the broker is unreachable or refuses). */
  PublishFailing: "publish-failing",
  /** The oldest pending entry is older than `--ready-max-lag`. */
  LagAboveMax: "lag-above-max",
} as const;

export type NotReadyReason = (typeof NotReadyReason)[keyof typeof NotReadyReason];

/** Defaults of the readiness thresholds (`outbox relay --ready-max-lag`, `--ready-max-failures`). */
export const readinessDefaults = {
  /** 5 minutes: longer than a healthy relay lags, shorter than an outage goes unnoticed. */
  maxLagMs: 5 * 60_000,
  /** Three failed publish attempts (or claim cycles) in a row; one failure alone is not an outage. */
  maxFailures: 3,
} as const;

/**
 * What the relay's publisher did lately: publish() calls in a row that delivered nothing while
 * at least one entry failed transiently (or that threw). A call that published something, or
 * whose entries the broker refused for good (it answered), ends the streak.
 */
export class PublishHealth {
  failedInARow = 0;
  attempts = 0;
  lastSuccessAt: Date | null = null;
  lastFailureAt: Date | null = null;
  lastError: string | null = null;
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  record(outcome: readonly PublishOutcome[] | { error: unknown }): void {
    this.attempts += 1;
    if (!Array.isArray(outcome)) {
      this.#failed((outcome as { error: unknown }).error);
      return;
    }
    const outcomes = outcome as readonly PublishOutcome[];
    const transient = outcomes.find((item) => item.status === "transient");
    if (transient && !outcomes.some((item) => item.status === "published")) {
      this.#failed(transient.status === "transient" ? transient.error : undefined);
      return;
    }
    this.failedInARow = 0;
    this.lastSuccessAt = new Date(this.#now());
  }

  #failed(error: unknown): void {
    this.failedInARow += 1;
    this.lastFailureAt = new Date(this.#now());
    this.lastError = redactText(error instanceof Error ? error.message : String(error));
  }

  /** A publisher that records every publish() call's outcome here. */
  wrap(publisher: OutboxPublisher): OutboxPublisher {
    return {
      capabilities: publisher.capabilities,
      publish: async (entries: readonly OutboxEntry[], options?: PublishOptions) => {
        let outcomes: PublishOutcome[];
        try {
          outcomes = await publisher.publish(entries, options);
        } catch (error) {
          this.record({ error });
          throw error;
        }
        if (Array.isArray(outcomes)) this.record(outcomes);
        return outcomes;
      },
      close: publisher.close ? () => publisher.close?.() ?? Promise.resolve() : undefined,
    };
  }
}

export interface ReadinessInput {
  readonly draining: boolean;
  readonly running: boolean;
  /** The last stats read (null before the first success) and whether the last read succeeded. */
  readonly backlog: { readonly stats: StoreStats | null; readonly ok: boolean };
  /** Claim cycles failed in a row (the relay's `metrics().consecutiveFailures`). */
  readonly claimFailures: number;
  readonly publish: Pick<PublishHealth, "failedInARow" | "lastError">;
  readonly now: number;
  /** Undefined: no lag limit. */
  readonly maxLagMs: number | undefined;
  /** Undefined: failures never make the relay unready. */
  readonly maxFailures: number | undefined;
}

export interface ReadinessReason {
  readonly code: NotReadyReason;
  readonly message: string;
}

export function lagMsOf(stats: StoreStats | null, now: number): number {
  return stats?.oldestPendingAt ? Math.max(0, now - stats.oldestPendingAt.getTime()) : 0;
}

/** Why the relay is not ready; empty when it is. */
export function notReadyReasons(input: ReadinessInput): ReadinessReason[] {
  const reasons: ReadinessReason[] = [];
  const add = (code: NotReadyReason, message: string) => reasons.push({ code, message });
  if (input.draining) add(NotReadyReason.Draining, "draining after a signal");
  else if (!input.running) add(NotReadyReason.NotRunning, "the relay is not running");
  const { stats, ok } = input.backlog;
  if (!ok) {
    if (stats) add(NotReadyReason.StoreFailing, "the last stats read from the store failed");
    else add(NotReadyReason.StoreNotReached, "no stats read from the store has succeeded yet");
  }
  if (input.maxFailures !== undefined) {
    if (input.claimFailures >= input.maxFailures) {
      add(NotReadyReason.ClaimsFailing, `the last ${input.claimFailures} claim cycles failed`);
    }
    // Only while something waits to be delivered: with nothing pending there is nothing to fail.
    const pending = stats?.pending ?? 1;
    if (input.publish.failedInARow >= input.maxFailures && pending > 0) {
      add(
        NotReadyReason.PublishFailing,
        `the last ${input.publish.failedInARow} publish attempts failed${input.publish.lastError ? `: ${input.publish.lastError}` : ""}`,
      );
    }
  }
  if (input.maxLagMs !== undefined) {
    const lagMs = lagMsOf(stats, input.now);
    if (lagMs > input.maxLagMs) {
      add(
        NotReadyReason.LagAboveMax,
        `the oldest pending entry is ${(lagMs / 1000).toFixed(1)} s old (limit ${(input.maxLagMs / 1000).toFixed(1)} s)`,
      );
    }
  }
  return reasons;
}

export interface ReadyzInput {
  readonly reasons: ReadinessReason[];
  readonly maxLagMs: number | undefined;
  readonly maxFailures: number | undefined;
  readonly relayId: string;
  readonly relay: RelayMetrics;
  readonly leaderElection: boolean;
  readonly fence: { readonly lock: string; readonly token: bigint } | null;
  readonly stats: StoreStats | null;
  readonly now: number;
  readonly publish: PublishHealth;
}

/** What `/readyz` answers: readiness with its reasons, then what an operator (or the dashboard) reads of the relay. */
export function readyzBody(input: ReadyzInput) {
  const { reasons, relay, stats, fence, publish } = input;
  return {
    ready: reasons.length === 0,
    reasons,
    limits: {
      maxLagSeconds: input.maxLagMs === undefined ? null : input.maxLagMs / 1000,
      maxFailures: input.maxFailures ?? null,
    },
    relayId: input.relayId,
    leader: relay.leader,
    leaderElection: input.leaderElection,
    fence: fence ? { lock: fence.lock, token: fence.token.toString() } : null,
    lagSeconds: lagMsOf(stats, input.now) / 1000,
    pending: stats?.pending ?? null,
    inFlight: stats?.inFlight ?? null,
    dead: stats?.dead ?? null,
    oldestPendingAt: stats?.oldestPendingAt?.toISOString() ?? null,
    published: relay.published,
    lastPublishedAt: relay.lastPublishedAt?.toISOString() ?? null,
    consecutiveFailures: relay.consecutiveFailures,
    publishAttempts: publish.attempts,
    publishFailuresInARow: publish.failedInARow,
    lastPublishError: publish.lastError,
    lastPublishFailureAt: publish.lastFailureAt?.toISOString() ?? null,
  };
}
