import type * as OtelApi from "@opentelemetry/api";

/*
 * OpenTelemetry is an optional peer: when @opentelemetry/api is installed, enqueue carries the
 * active W3C trace context in the entry headers and the relay opens a PRODUCER span per publish,
 * parented on that context. When it is absent, all of this is a no-op.
 */
let api: typeof OtelApi | null = null;

/*
 * Loaded synchronously where the runtime allows (Node >= 22.3: process.getBuiltinModule), so
 * the first enqueue already sees it. No top-level await: with one, `require("@outbox/core")`
 * from CommonJS fails (ERR_REQUIRE_ASYNC_MODULE). Elsewhere the API is imported in the
 * background and used from the moment it has loaded.
 */
type ModuleBuiltin = { createRequire(from: string): (id: string) => unknown };
const getBuiltinModule = (
  globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }
).process?.getBuiltinModule?.bind(globalThis.process);
const moduleBuiltin = getBuiltinModule?.("node:module") as ModuleBuiltin | undefined;
if (moduleBuiltin) {
  try {
    api = moduleBuiltin.createRequire(import.meta.url)("@opentelemetry/api") as typeof OtelApi;
  } catch {
    api = null;
  }
} else {
  import("@opentelemetry/api").then(
    (loaded) => {
      api = loaded;
    },
    () => undefined,
  );
}

const headerSetter: OtelApi.TextMapSetter<Record<string, string>> = {
  set: (carrier, key, value) => {
    carrier[key] = value;
  },
};
const headerGetter: OtelApi.TextMapGetter<Readonly<Record<string, string>>> = {
  get: (carrier, key) => carrier[key],
  keys: (carrier) => Object.keys(carrier),
};

/** Adds traceparent/tracestate of the active span, unless the caller set them already. */
export function injectTraceContext(headers: Record<string, string>): Record<string, string> {
  if (!api || headers.traceparent !== undefined) return headers;
  const active = api.trace.getSpan(api.context.active());
  if (!active) return headers;
  api.propagation.inject(api.context.active(), headers, headerSetter);
  return headers;
}

export interface PublishSpan {
  end(error?: unknown): void;
}

const noSpan: PublishSpan = { end: () => {} };

/** What a publish span records of an entry: fields of `OutboxEntry` (entry.ts imports this module, not the reverse). */
export interface TracedEntry {
  readonly id: string;
  readonly topic: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly idempotencyKey: string;
  readonly attempts: number;
}

export function startPublishSpan(entry: TracedEntry): PublishSpan {
  const otel = api;
  if (!otel) return noSpan;
  const parent = otel.propagation.extract(otel.context.active(), entry.headers, headerGetter);
  const span = otel.trace.getTracer("@outbox/core").startSpan(
    `${entry.topic} publish`,
    {
      kind: otel.SpanKind.PRODUCER,
      attributes: {
        "messaging.operation.type": "send",
        "messaging.destination.name": entry.topic,
        "messaging.message.id": entry.id,
        "outbox.idempotency_key": entry.idempotencyKey,
        "outbox.attempt": entry.attempts,
      },
    },
    parent,
  );
  return {
    end(error) {
      if (error !== undefined) {
        span.recordException(error instanceof Error ? error : String(error));
        span.setStatus({ code: otel.SpanStatusCode.ERROR });
      }
      span.end();
    },
  };
}
