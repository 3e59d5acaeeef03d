// Every export of these modules is public API; events.ts and otel.ts stay internal.
export * from "./backoff.js";
export * from "./clock.js";
export * from "./dead-letters.js";
export * from "./entry.js";
export * from "./errors.js";
export * from "./lock.js";
export * from "./pending-summary.js";
export * from "./publisher.js";
export * from "./relay.js";
export * from "./relay-activity.js";
export type * from "./store.js";
export * from "./wake-ups.js";
