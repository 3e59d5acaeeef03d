// What every broker's consumer helper (@outbox/publisher-*/inbox) needs the same way: option checks
// that throw OUTBOX_INVALID_OPTIONS naming the option, and the user's callbacks guarded, so that one
// that throws is logged instead of breaking a key's chain of deliveries.
import { OutboxError, OutboxErrorCode } from "@outbox/core";
import type { HandleResult } from "./inbox.js";
import { positiveInteger } from "./stored.js";

export function invalidOption(option: string, message: string): OutboxError {
  return new OutboxError(OutboxErrorCode.InvalidOptions, message, { details: { option } });
}

export function nonNegativeOption(value: unknown, option: string): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw invalidOption(option, `${option} must be a finite number >= 0, got ${String(value)}`);
  }
  return value;
}

export function positiveIntegerOption(value: unknown, option: string): number {
  return positiveInteger(value, option);
}

export function nonEmptyOption(value: unknown, option: string): string {
  if (typeof value !== "string" || value.length === 0)
    throw invalidOption(option, `${option} must be a non-empty string`);
  return value;
}

/** `D`: what onResult gets with each result; `E`: what onError gets (a helper may report errors of no delivery). */
export interface HelperCallbackOptions<D, R extends string, E = D> {
  onResult?: ((result: HandleResult<unknown>, delivery: D) => void) | undefined;
  onError?: ((error: unknown, delivery: E, reason: R) => void) | undefined;
}

export interface GuardedCallbacks<D, R extends string, E = D> {
  /** console.warn, labelled with the helper and the inbox's consumer. */
  warn(what: string, error: unknown): void;
  onResult(result: HandleResult<unknown>, delivery: D): void;
  /** Without the user's onError: console.warn, except for the `quiet` reasons (expected, e.g. held back). */
  onError(error: unknown, delivery: E, reason: R): void;
}

/** `label`, e.g. "@outbox/publisher-rabbitmq/inbox orders": what each warning starts with. */
export function guardedCallbacks<D, R extends string, E = D>(
  label: string,
  options: HelperCallbackOptions<D, R, E>,
  quiet: readonly R[] = [],
): GuardedCallbacks<D, R, E> {
  const warn = (what: string, error: unknown) => console.warn(`[${label}] ${what}:`, error);
  return {
    warn,
    onResult(result, delivery) {
      try {
        options.onResult?.(result, delivery);
      } catch (error) {
        warn("onResult threw", error);
      }
    },
    onError(error, delivery, reason) {
      if (options.onError === undefined) {
        if (!quiet.includes(reason)) warn(reason, error);
        return;
      }
      try {
        options.onError(error, delivery, reason);
      } catch (thrown) {
        warn("onError threw", thrown);
      }
    },
  };
}
