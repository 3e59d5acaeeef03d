/**
 * Secrets never reach the logs or the terminal: passwords in URLs, secret-looking query
 * parameters and `key=value` pairs, and object fields with secret-looking names.
 */

const mask = "***";
/** Query parameters and `key=value` pairs whose value is a secret. */
const secretParam = /^(password|passwd|pwd|pass|secret|token|access_?token|api_?key|apikey|auth|sslpassword|sslkey)$/i;
/** Object fields whose value is a secret (not "token": fencing tokens are not secrets). */
const secretField =
  /^(password|passwd|pwd|secret|secrets|authorization|api_?key|apikey|access_?key(_?id)?|secret_?access_?key|private_?key|credentials?|sasl|connection_?string|sslpassword)$/i;
const urlPattern = /\b[a-z][a-z0-9+.-]*:\/\/[^\s"'<>`]+/gi;
const pairPattern =
  /\b(password|passwd|pwd|secret|sslpassword|api_?key|apikey|access_?token)(\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s&;,"']+)/gi;

/** A URL with its password and secret query parameters masked. Not a URL: returned as is. */
export function redactUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return url;
  }
  let changed = false;
  if (parsed.password) {
    parsed.password = mask;
    changed = true;
  }
  for (const name of [...parsed.searchParams.keys()]) {
    if (secretParam.test(name)) {
      parsed.searchParams.set(name, mask);
      changed = true;
    }
  }
  if (!changed) return url;
  // URLSearchParams encodes "*" as is; keep the rest of the URL as the user wrote it.
  return parsed.toString().replaceAll("%2A", "*");
}

/** Text with every URL redacted and `password=...`-like pairs masked. */
export function redactText(text: string): string {
  return text.replace(urlPattern, (url) => redactUrl(url)).replace(pairPattern, `$1$2${mask}`);
}

/** A deep copy fit for a log line: strings redacted, secret fields masked, bigints as text. */
export function redact(value: unknown, depth = 0): unknown {
  if (typeof value === "string") return redactText(value);
  if (typeof value === "bigint") return value.toString();
  if (value === null || typeof value !== "object") return value;
  if (depth > 8) return "[deep]";
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.toISOString();
  if (value instanceof Error) return serializeError(value, depth);
  if (value instanceof Uint8Array) return `[${value.byteLength} bytes]`;
  if (Array.isArray(value)) return value.map((item) => redact(item, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    out[key] = secretField.test(key) && item !== undefined && item !== null ? mask : redact(item, depth + 1);
  }
  return out;
}

/** An error as a plain object (name, code, message, details, cause chain), redacted. */
export function serializeError(error: unknown, depth = 0): Record<string, unknown> {
  if (!(error instanceof Error)) return { message: redactText(String(error)) };
  const out: Record<string, unknown> = { name: error.name, message: redactText(error.message) };
  const { code, details } = error as { code?: unknown; details?: unknown };
  if (code !== undefined) out.code = code;
  if (details && typeof details === "object" && Object.keys(details).length > 0)
    out.details = redact(details, depth + 1);
  if (error.cause !== undefined && depth < 4) out.cause = serializeError(error.cause, depth + 1);
  return out;
}
