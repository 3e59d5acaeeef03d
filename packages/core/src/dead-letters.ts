import type { OutboxEntry } from "./entry.js";
import { OutboxError, OutboxErrorCode } from "./errors.js";
import type { ListDeadOptions } from "./store.js";

/**
 * Longest filter value `listDead` takes, in UTF-16 code units: above every topic and key a store
 * keeps by default, and a bound on what one request (a dashboard query string) makes a store match.
 */
export const maxDeadLetterFilterLength = 4_096;

/** `listDead`'s filters, checked: what a store matches dead entries against. */
export interface DeadLetterFilter {
  readonly topic?: string;
  /** `null`: entries without a key only. */
  readonly key?: string | null;
  readonly errorContains?: string;
}

function invalid(name: string, value: unknown, rule: string): OutboxError {
  const shown = typeof value === "string" ? `a string of ${value.length} characters` : JSON.stringify(value);
  return new OutboxError(OutboxErrorCode.InvalidOptions, `listDead: ${name} must be ${rule}, got ${shown}`, {
    details: { option: name },
  });
}

function filterText(name: string, value: unknown, rule: string): string {
  // Empty matches nothing (topic, key) or everything (errorContains): either way an empty form
  // field sent as is, not a question a caller means to ask.
  if (typeof value !== "string" || value.length === 0 || value.length > maxDeadLetterFilterLength) {
    throw invalid(name, value, rule);
  }
  // No entry can hold a lone surrogate (enqueue refuses them), and stores would each encode it differently.
  if (!value.isWellFormed()) throw invalid(name, value, `${rule} (it has a lone UTF-16 surrogate)`);
  return value;
}

const textRule = `a non-empty string of at most ${maxDeadLetterFilterLength} characters`;

/**
 * Checks `listDead`'s filter options (`topic`, `key`, `errorContains`) and returns those given.
 * Stores call it first, so that every store refuses the same inputs with OUTBOX_INVALID_OPTIONS
 * (`details.option` names the option); `limit` and `after` stay the store's to check.
 */
export function deadLetterFilter(options: ListDeadOptions | undefined): DeadLetterFilter {
  if (options === undefined) return {};
  if (typeof options !== "object" || options === null) throw invalid("options", options, "an object");
  const filter: { topic?: string; key?: string | null; errorContains?: string } = {};
  if (options.topic !== undefined) filter.topic = filterText("topic", options.topic, textRule);
  if (options.key !== undefined) {
    filter.key = options.key === null ? null : filterText("key", options.key, `null or ${textRule}`);
  }
  if (options.errorContains !== undefined) {
    filter.errorContains = filterText("errorContains", options.errorContains, textRule);
  }
  return filter;
}

/**
 * Whether a dead entry matches a checked filter, as the in-memory store decides it: topic and key
 * exactly, `errorContains` a substring of `lastError` after JavaScript's `toLowerCase()` of both.
 * For stores that filter in their own process (and tools that filter what a store without
 * `capabilities.deadLetterFilters` returned).
 */
export function matchesDeadLetterFilter(
  entry: Pick<OutboxEntry, "topic" | "key" | "lastError">,
  filter: DeadLetterFilter,
): boolean {
  if (filter.topic !== undefined && entry.topic !== filter.topic) return false;
  if (filter.key !== undefined && entry.key !== filter.key) return false;
  if (filter.errorContains !== undefined) {
    return entry.lastError?.toLowerCase().includes(filter.errorContains.toLowerCase()) === true;
  }
  return true;
}
