import type { OutboxEntry } from "./entry.js";
import { describeError, OutboxError, OutboxErrorCode } from "./errors.js";

export type PublishOutcome =
  | { readonly status: "published" }
  /** Worth another attempt later (broker down, leader election, timeout). */
  | { readonly status: "transient"; readonly error: unknown }
  /** Will never succeed as it is (oversize, unroutable, unknown topic, not authorised). */
  | { readonly status: "permanent"; readonly error: unknown };

export const published = (): PublishOutcome => ({ status: "published" });
export const transientFailure = (error: unknown): PublishOutcome => ({ status: "transient", error });
export const permanentFailure = (error: unknown): PublishOutcome => ({ status: "permanent", error });

/**
 * The destination an entry maps to through the user's function (a topic, a stream), or the
 * permanent failure every publisher reports when that function throws or returns no name
 * (`details.type` "UNROUTABLE"): one bad mapping fails its entry, never the batch.
 */
export function routeEntry(
  entry: OutboxEntry,
  route: (entry: OutboxEntry) => unknown,
  what = "topic",
): string | PublishOutcome {
  const unroutable = (message: string, cause?: unknown) =>
    permanentFailure(
      new OutboxError(OutboxErrorCode.PublishFailed, `${what} mapping ${message}`, {
        cause,
        details: { entryId: entry.id, type: "UNROUTABLE" },
      }),
    );
  let name: unknown;
  try {
    name = route(entry);
  } catch (error) {
    return unroutable(`failed for entry ${entry.id}: ${describeError(error)}`, error);
  }
  if (typeof name !== "string" || name.length === 0) {
    return unroutable(`returned ${JSON.stringify(name)} for entry ${entry.id}`);
  }
  return name;
}

export interface PublishOptions {
  /**
   * Aborted when the batch's lease is about to run out (another relay could claim the entries
   * then). A publisher stops waiting: entries not yet sent, or not confirmed by then, are
   * reported transient. An entry the broker already confirmed stays "published".
   */
  readonly signal?: AbortSignal;
}

export interface PublisherCapabilities {
  /** Largest payload the broker accepts as configured, when known. */
  readonly maxPayloadBytes?: number;
}

/**
 * Sends entries to a broker. `publish` returns one outcome per entry, in input order, and
 * reports "published" only after the broker confirmed the entry. A failing entry must not
 * fail its neighbours. Throwing is allowed and means "every entry failed transiently".
 *
 * The run contract: one call may hold several entries of one key (a run, in key order). Once an
 * entry of a key failed in a call, no later entry of that key in the same call may reach the
 * broker; report those `heldBack(entry)` (transient). The relay acks the published prefix of each
 * run, settles the failed entry and gives the held-back rest back without counting an attempt.
 * The relay may run several `publish` calls at once; their keys never overlap.
 */
export interface OutboxPublisher {
  readonly capabilities?: PublisherCapabilities;
  publish(entries: readonly OutboxEntry[], options?: PublishOptions): Promise<PublishOutcome[]>;
  close?(): Promise<void>;
}

/** Stable header names publishers use to carry entry metadata. */
export const OutboxHeader = {
  Id: "outbox-id",
  IdempotencyKey: "outbox-idempotency-key",
  Topic: "outbox-topic",
} as const;

/** Entry headers plus the outbox metadata headers, for brokers with string headers. */
export function headersWithMetadata(entry: OutboxEntry): Record<string, string> {
  return {
    ...entry.headers,
    [OutboxHeader.Id]: entry.id,
    [OutboxHeader.IdempotencyKey]: entry.idempotencyKey,
  };
}

/** The outcome of an entry not sent because an earlier entry of its key failed in the same call. */
export function heldBack(entry: OutboxEntry): PublishOutcome {
  return transientFailure(
    new OutboxError(
      OutboxErrorCode.PublishFailed,
      `not sent: an earlier entry of key ${JSON.stringify(entry.key)} failed in the same publish call`,
      { details: { id: entry.id, key: entry.key, reason: "held-back" } },
    ),
  );
}

/**
 * Tracks the run contract inside one publish call. `fail(entry, index)` records that the entry
 * at `index` failed; `blocked(entry, index)` says whether an entry of the same key failed at an
 * earlier index. Publishers that judge entries strictly in input order may omit the indexes.
 */
export class KeyFailures {
  readonly #firstFailure = new Map<string, number>();

  fail(entry: OutboxEntry, index = Number.NEGATIVE_INFINITY): void {
    if (entry.key === null) return;
    const known = this.#firstFailure.get(entry.key);
    if (known === undefined || index < known) this.#firstFailure.set(entry.key, index);
  }

  blocked(entry: OutboxEntry, index = Number.POSITIVE_INFINITY): boolean {
    if (entry.key === null) return false;
    const failedAt = this.#firstFailure.get(entry.key);
    return failedAt !== undefined && failedAt < index;
  }
}

export function outcomeError(outcome: PublishOutcome): string | null {
  return outcome.status === "published" ? null : describeError(outcome.error);
}
