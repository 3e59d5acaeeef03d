import { usageError } from "./errors.js";

const units: Record<string, number> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};
const durationPattern = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$/;

/** "500ms", "30s", "5m", "12h", "7d", "2w" -> milliseconds. A bare number means milliseconds. */
export function parseDuration(text: string, option = "duration"): number {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const match = durationPattern.exec(trimmed);
  if (!match?.[1] || !match[2]) {
    throw usageError(`${option}: expected a duration like 500ms, 30s, 5m, 12h, 7d or 2w, got ${JSON.stringify(text)}`, {
      option,
    });
  }
  return Math.round(Number(match[1]) * (units[match[2]] as number));
}

/** A moment: an ISO date/time, or a duration meaning "that long ago". */
export function parseMoment(text: string, now: number, option = "time"): Date {
  if (durationPattern.test(text.trim())) return new Date(now - parseDuration(text, option));
  const date = new Date(text);
  if (/^\d{4}-\d{2}-\d{2}/.test(text.trim()) && !Number.isNaN(date.getTime())) return date;
  throw usageError(
    `${option}: expected an ISO date (2024-05-01T00:00:00Z) or a duration ago (7d), got ${JSON.stringify(text)}`,
    {
      option,
    },
  );
}

export function parsePositiveInt(text: string, option: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(value) || value <= 0) {
    throw usageError(`${option}: expected a positive integer, got ${JSON.stringify(text)}`, { option });
  }
  return value;
}
