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

  describe("subscribe() with a wake source", () => {
    function countingSource(failStart = false) {
      const calls = { start: 0, stop: 0 };
      return {
        calls,
        source: {
          start: async () => {
            calls.start += 1;
            if (failStart) throw new Error("cannot listen");
          },
          stop: async () => {
            calls.stop += 1;
          },
        },
      };
    }

    it("starts the source for the first subscriber and stops it after the last, once", async () => {
      const hub = new WakeUpListeners({ onError: () => undefined });
      const { calls, source } = countingSource();
      const first = await hub.subscribe(() => undefined, source);
      const second = await hub.subscribe(() => undefined, source);
      expect(calls).toEqual({ start: 1, stop: 0 });
      await first();
      await first();
      expect(calls).toEqual({ start: 1, stop: 0 });
      await second();
      expect(calls).toEqual({ start: 1, stop: 1 });
      expect(hub.size).toBe(0);
      await hub.subscribe(() => undefined, source);
      expect(calls).toEqual({ start: 2, stop: 1 });
      await hub.close();
      expect(calls).toEqual({ start: 2, stop: 2 });
      await hub.close();
      expect(calls.stop).toBe(2);
    });

    it("keeps no listener when the source fails to start, and tries again on the next subscribe", async () => {
      const hub = new WakeUpListeners({ onError: () => undefined });
      const failing = countingSource(true);
      await expect(hub.subscribe(() => undefined, failing.source)).rejects.toThrow("cannot listen");
      expect(hub.size).toBe(0);
      const working = countingSource();
      await hub.subscribe(() => undefined, working.source);
      expect(working.calls.start).toBe(1);
      expect(hub.size).toBe(1);
    });

    it("without a source it only adds the listener", async () => {
      const hub = new WakeUpListeners({ onError: () => undefined });
      let calls = 0;
      const unsubscribe = await hub.subscribe(() => {
        calls += 1;
      });
      hub.wake();
      await unsubscribe();
      hub.wake();
      expect(calls).toBe(1);
    });
  });
});
