/**
 * How a failed Pub/Sub publish maps to outbox outcomes. Kept apart from the publisher so it can
 * be unit-tested without a server, and so users can read (and override) the policy in one place.
 */

/** gRPC status codes (google.rpc.Code), as @google-cloud/pubsub reports them in `error.code`. */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

const statusNames = new Map<number, string>(Object.entries(GrpcStatus).map(([name, code]) => [code, name]));

export type PubSubFailure =
  /**
   * The service refused for good. `scope: "message"`: something in the request is invalid
   * (INVALID_ARGUMENT: too large, bad attributes, a schema the data does not match); the
   * publisher isolates the culprit when several messages shared the request. `scope: "topic"`:
   * every message for the topic is refused (NOT_FOUND: no such topic).
   */
  | { readonly kind: "permanent"; readonly scope: "message" | "topic"; readonly type: string }
  /** Worth another attempt: outage, timeout, throttling, a paused ordering key, credentials. */
  | { readonly kind: "transient"; readonly type: string };

interface ErrorLike {
  code?: unknown;
  error?: unknown;
  cause?: unknown;
  orderingKey?: unknown;
}

/**
 * True for the client's PublishError: the ordering key was paused by an earlier failure and this
 * message was refused by the client without being sent. Its `code` is the earlier failure's.
 */
export function isPausedKeyError(error: unknown): boolean {
  if (typeof error !== "object" || error === null) return false;
  const candidate = error as ErrorLike;
  return (
    typeof candidate.orderingKey === "string" &&
    "error" in candidate &&
    (error.constructor?.name === "PublishError" || /^Unable to publish for key/.test(String((error as Error).message)))
  );
}

/** The gRPC status code of a failure: `error.code`, or that of a wrapped `error`/`cause`. */
export function grpcStatus(error: unknown): number | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 8 && typeof current === "object" && current !== null; depth++) {
    const link = current as ErrorLike;
    if (typeof link.code === "number") return link.code;
    current = link.error ?? link.cause;
  }
  return undefined;
}

/** A readable name for a failure: the gRPC status name, else the error's name. */
export function failureType(error: unknown): string {
  const code = grpcStatus(error);
  if (code !== undefined) return statusNames.get(code) ?? `GRPC_${code}`;
  return error instanceof Error ? error.name : typeof error;
}

/**
 * Classifies a publish failure. Permanent: INVALID_ARGUMENT (per message) and NOT_FOUND (the
 * topic). Everything else is transient, including PERMISSION_DENIED and UNAUTHENTICATED: a
 * misconfigured client fails every entry and must not dead-letter the whole backlog. A message
 * the client refused because its ordering key was paused was never sent: transient.
 */
export function classifyPubSubError(error: unknown): PubSubFailure {
  if (isPausedKeyError(error)) return { kind: "transient", type: "ORDERING_KEY_PAUSED" };
  const code = grpcStatus(error);
  if (code === GrpcStatus.INVALID_ARGUMENT) return { kind: "permanent", scope: "message", type: "INVALID_ARGUMENT" };
  if (code === GrpcStatus.NOT_FOUND) return { kind: "permanent", scope: "topic", type: "NOT_FOUND" };
  return { kind: "transient", type: failureType(error) };
}
