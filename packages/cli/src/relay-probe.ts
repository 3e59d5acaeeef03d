import { redactText } from "./redact.js";

/** What a running relay says about itself on /readyz (see `outbox relay`). */
export interface RelayProbe {
  readonly url: string;
  readonly reachable: boolean;
  readonly ready?: boolean;
  /** Codes of the reasons it is not ready (`lag-above-max`, `claims-failing`, ...). */
  readonly reasons?: string[];
  readonly relayId?: string;
  readonly leader?: boolean;
  readonly leaderElection?: boolean;
  readonly fence?: { lock: string; token: string } | null;
  /** Entries it published since it started. */
  readonly published?: number;
  readonly lastPublishedAt?: string | null;
  /** Its last publish error (redacted), and when. */
  readonly lastPublishError?: string | null;
  readonly lastPublishFailureAt?: string | null;
  readonly consecutiveFailures?: number;
  /** Why it could not be asked (unreachable). */
  readonly error?: string;
}

const text = (value: unknown): string | null => (typeof value === "string" ? value : null);
const count = (value: unknown): number | undefined => (typeof value === "number" ? value : undefined);

/** Asks a running relay's /readyz who it is, whether it leads and how its publishing goes. */
export async function probeRelay(url: string, timeoutMs: number): Promise<RelayProbe> {
  const base = url.replace(/\/+$/, "");
  try {
    const response = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(timeoutMs) });
    const body = (await response.json()) as Record<string, unknown>;
    const reasons = Array.isArray(body.reasons)
      ? body.reasons.flatMap((reason) => text((reason as { code?: unknown } | null)?.code) ?? [])
      : [];
    const lastError = text(body.lastPublishError);
    return {
      url,
      reachable: true,
      ready: body.ready === true,
      reasons,
      relayId: text(body.relayId) ?? undefined,
      leader: body.leader === true,
      leaderElection: body.leaderElection === true,
      fence: (body.fence as RelayProbe["fence"]) ?? null,
      published: count(body.published),
      lastPublishedAt: text(body.lastPublishedAt),
      lastPublishError: lastError === null ? null : redactText(lastError),
      lastPublishFailureAt: text(body.lastPublishFailureAt),
      consecutiveFailures: count(body.consecutiveFailures),
    };
  } catch (error) {
    return { url, reachable: false, error: redactText(error instanceof Error ? error.message : String(error)) };
  }
}
