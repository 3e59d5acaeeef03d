import { context, propagation, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
// The reference adapters by path: @outbox/memory depends on @outbox/core, so core takes no dependency on it back.
import { MemoryPublisher, MemoryStore } from "../../memory/src/index.js";
import { ManualClock, OutboxRelay, prepareMessages } from "../src/index.js";

const exporter = new InMemorySpanExporter();

beforeAll(() => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
});

afterAll(() => {
  trace.disable();
  context.disable();
  propagation.disable();
});

describe("OpenTelemetry (optional peer)", () => {
  it("adds nothing without an active span", () => {
    const [prepared] = prepareMessages({ topic: "t", payload: "x" }, { now: 0 });
    expect(prepared?.headers).toEqual({});
  });

  it("carries the enqueuing trace to a PRODUCER span per publish", async () => {
    const clock = new ManualClock();
    const store = new MemoryStore({ clock });
    const tracer = trace.getTracer("app");
    const traceId = await tracer.startActiveSpan("place order", async (span) => {
      await store.transaction((tx) => store.enqueue(tx, { topic: "orders", payload: "o1" }));
      span.end();
      return span.spanContext().traceId;
    });
    const relay = new OutboxRelay({ store, publisher: new MemoryPublisher(), clock });
    await relay.runOnce();
    const publishSpan = exporter.getFinishedSpans().find((s) => s.name === "orders publish");
    expect(publishSpan?.spanContext().traceId).toBe(traceId);
    expect(publishSpan?.kind).toBe(3); // SpanKind.PRODUCER
    expect(publishSpan?.attributes["messaging.destination.name"]).toBe("orders");
  });

  it("keeps a traceparent the caller set", () => {
    const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const [prepared] = trace.getTracer("app").startActiveSpan("x", (span) => {
      span.end();
      return prepareMessages({ topic: "t", payload: "x", headers: { traceparent } }, { now: 0 });
    });
    expect(prepared?.headers.traceparent).toBe(traceparent);
  });
});
