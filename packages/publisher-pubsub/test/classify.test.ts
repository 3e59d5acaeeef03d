import { describe, expect, it } from "vitest";
import { classifyPubSubError, failureType, GrpcStatus, grpcStatus, isPausedKeyError } from "../src/index.js";

const grpcError = (code: number, message = "boom") => Object.assign(new Error(`${code} ${message}`), { code });

/** Shaped like @google-cloud/pubsub's PublishError (the class is not exported). */
class PublishError extends Error {
  readonly code: number;
  constructor(
    readonly orderingKey: string,
    readonly error: Error & { code: number },
  ) {
    super(`Unable to publish for key "${orderingKey}". Reason: ${error.message}`);
    this.code = error.code;
  }
}

describe("classifyPubSubError", () => {
  it.each([
    ["INVALID_ARGUMENT", GrpcStatus.INVALID_ARGUMENT, "message"],
    ["NOT_FOUND", GrpcStatus.NOT_FOUND, "topic"],
  ])("%s is permanent", (type, code, scope) => {
    expect(classifyPubSubError(grpcError(code))).toEqual({ kind: "permanent", scope, type });
  });

  it.each([
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "INTERNAL",
    "ABORTED",
    "CANCELLED",
    "UNKNOWN",
    "FAILED_PRECONDITION",
    "UNIMPLEMENTED",
  ] as const)("%s is transient (misconfiguration must not dead-letter a backlog)", (type) => {
    expect(classifyPubSubError(grpcError(GrpcStatus[type]))).toEqual({ kind: "transient", type });
  });

  it("a message refused because its ordering key is paused is transient, whatever paused it", () => {
    const paused = new PublishError("k", grpcError(GrpcStatus.NOT_FOUND));
    expect(isPausedKeyError(paused)).toBe(true);
    expect(classifyPubSubError(paused)).toEqual({ kind: "transient", type: "ORDERING_KEY_PAUSED" });
  });

  it("errors without a gRPC code are transient, named by their class", () => {
    expect(classifyPubSubError(new TypeError("socket hang up"))).toEqual({ kind: "transient", type: "TypeError" });
    expect(classifyPubSubError("text")).toEqual({ kind: "transient", type: "string" });
  });

  it("finds the code of a wrapped error", () => {
    const wrapped = new Error("outer", { cause: grpcError(GrpcStatus.INVALID_ARGUMENT) });
    expect(grpcStatus(wrapped)).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(failureType(wrapped)).toBe("INVALID_ARGUMENT");
    expect(isPausedKeyError(grpcError(5))).toBe(false);
    expect(isPausedKeyError(null)).toBe(false);
  });
});
