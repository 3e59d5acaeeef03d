import { afterEach, describe, expect, it, vi } from "vitest";
import { OutboxError, OutboxErrorCode, WakeUpListeners } from "../src/index.js";

afterEach(() => {
  vi.useRealTimers();
});

describe("WakeUpListeners", () => {
  it("folds a burst into a leading and a trailing call per window", () => {
    vi.useFakeTimers();
    const hub = new WakeUpListeners({ debounceMs: 10, onError: () => undefined });
    let calls = 0;
    hub.add(() => {
      calls += 1;
    });
    for (let i = 0; i < 50; i++) hub.wake();
    expect(calls).toBe(1);
    vi.advanceTimersByTime(10);
    expect(calls).toBe(2);
    vi.advanceTimersByTime(10);
    expect(calls).toBe(2);
  });

  it("calls on every wake-up without a window, and not after the listener is removed", () => {
    const hub = new WakeUpListeners({ onError: () => undefined });
    let calls = 0;
    const remove = hub.add(() => {
      calls += 1;
    });
    hub.wake();
    hub.wake();
    remove();
    hub.wake();
    expect(calls).toBe(2);
    expect(hub.size).toBe(0);
  });

  it("reports a throwing listener and still calls the others", () => {
    const errors: unknown[] = [];
    const hub = new WakeUpListeners({ onError: (error) => errors.push(error) });
    let called = false;
    hub.add(() => {
      throw new Error("listener bug");
    });
    hub.add(() => {
      called = true;
    });
    hub.wake();
    expect(called).toBe(true);
    expect(errors).toHaveLength(1);
    expect(OutboxError.is(errors[0], OutboxErrorCode.InvalidOptions)).toBe(true);
  });

  it("clear() drops the listeners and the pending trailing call", () => {
    vi.useFakeTimers();
    const hub = new WakeUpListeners({ debounceMs: 10, onError: () => undefined });
    let calls = 0;
    hub.add(() => {
      calls += 1;
    });
    hub.wake();
    hub.wake();
    hub.clear();
    vi.advanceTimersByTime(20);
    expect(calls).toBe(1);
  });
});
