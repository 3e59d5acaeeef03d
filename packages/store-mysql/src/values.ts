import { createHash } from "node:crypto";
import { type Fence, type OutboxEntry, OutboxError, OutboxErrorCode } from "@outbox/core";
import type { Row } from "./queryable.js";

const idPattern = /^[0-9]{1,19}$/;
const maxBigint = 9223372036854775807n;
/** DECIMAL(65,0). */
const maxTokenDigits = 65;
export const maxColumnChars = 1024;
const maxLockNameChars = 255;
/** TEXT holds 65,535 bytes; a UTF-16 unit is at most 3 UTF-8 bytes. */
const maxErrorChars = 16_000;
export const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

export function positiveInteger(value: unknown, name: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `${name} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

/** Keeps well-formed ids (bigint text); others cannot name an entry and are ignored. */
export function validIds(ids: readonly string[]): string[] {
  return ids.filter((id) => typeof id === "string" && idPattern.test(id) && BigInt(id) <= maxBigint);
}

export function bytes(text: string): Buffer {
  return Buffer.from(utf8.encode(text.toWellFormed()));
}

export function nullableBytes(text: string | null): Buffer | null {
  return text === null ? null : bytes(text);
}

export function toBuffer(value: Uint8Array): Buffer {
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

export function text(value: unknown): string {
  if (value instanceof Uint8Array) return utf8Decoder.decode(value);
  return String(value);
}

export function nullableText(value: unknown): string | null {
  return value === null || value === undefined ? null : text(value);
}

export function num(value: unknown): number {
  return Number(value);
}

export function nullableNum(value: unknown): number | null {
  return value === null || value === undefined ? null : Number(value);
}

export function hashHex(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("hex");
  return String(value);
}

/** First 16 bytes of SHA-256 over the key's UTF-8 bytes: the key's index column. */
export function keyHash(key: string): Buffer {
  return createHash("sha256").update(utf8.encode(key)).digest().subarray(0, 16);
}

/**
 * A LIKE pattern matching `text` anywhere, its wildcards taken literally. The escape is `!`: a
 * backslash in a literal means something else under NO_BACKSLASH_ESCAPES.
 */
export function likeContains(text: string): string {
  return `%${text.replaceAll(/[!%_]/g, "!$&")}%`;
}

export function cleanError(error: unknown): string {
  const message = String(error);
  return message.length > maxErrorChars ? `${message.slice(0, maxErrorChars - 1)}…` : message;
}

export function checkFence(fence: Fence | undefined): void {
  if (!fence) return;
  if (typeof fence.lock !== "string" || fence.lock.length === 0 || fence.lock.length > maxLockNameChars) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `fence.lock must be a non-empty string of at most ${maxLockNameChars} characters`,
    );
  }
  if (typeof fence.token !== "bigint" || fence.token.toString().replace("-", "").length > maxTokenDigits) {
    throw new OutboxError(OutboxErrorCode.InvalidOptions, `fence.token must be a bigint of at most 65 digits`);
  }
}

export function checkClaimer(claimer: unknown): string {
  if (typeof claimer !== "string" || claimer.length === 0 || claimer.length > maxColumnChars) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `claimer must be a non-empty string of at most ${maxColumnChars} characters`,
    );
  }
  return claimer;
}

export function toEntry(row: Row, attempts: number): OutboxEntry {
  const id = String(row.id);
  const payload = row.payload as Uint8Array;
  return {
    id,
    topic: text(row.topic),
    key: nullableText(row.entry_key),
    payload: new Uint8Array(payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.byteLength)),
    headers: JSON.parse(text(row.headers)) as Record<string, string>,
    idempotencyKey: nullableText(row.idempotency_key) ?? id,
    createdAt: new Date(num(row.created_at)),
    availableAt: new Date(num(row.available_at)),
    attempts,
    lastError: nullableText(row.last_error),
  };
}
