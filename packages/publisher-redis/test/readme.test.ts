import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { uniqueName } from "@outbox/conformance";
import { closeClients, newClient, redisUrl } from "@outbox/test-support/redis";
import { afterAll, expect, it, vi } from "vitest";

afterAll(closeClients);

/** Runs the README's Quick start as written, with the in-memory store holding one entry. */
it("the README quick start runs: the relay publishes, the consumer decodes the entry", async () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const snippet = /## Quick start\n\n```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  expect(snippet).toBeDefined();
  const topic = uniqueName("readme");
  const module = [
    'import { MemoryPublisher, MemoryStore } from "@outbox/core";',
    "const store = new MemoryStore();",
    `await store.transaction((tx) => store.enqueue(tx, { topic: ${JSON.stringify(topic)}, key: "k", payload: new Uint8Array([0, 255]), headers: { "x-h": "ü" }, idempotencyKey: "idem-1" }));`,
    (snippet as string)
      .replace('from "@outbox/publisher-redis"', 'from "../src/index.js"')
      .replace('"events:orders"', JSON.stringify(`events:${topic}`)),
  ].join("\n");
  const file = fileURLToPath(new URL(`./${topic}.generated.ts`, import.meta.url));
  writeFileSync(file, module);
  const log = vi.spyOn(console, "log").mockImplementation(() => {});
  process.env.REDIS_URL = redisUrl;
  try {
    await import(/* @vite-ignore */ file);
    expect(log).toHaveBeenCalledTimes(1);
    expect(log).toHaveBeenCalledWith(
      expect.stringMatching(/^\d+-\d+$/),
      "idem-1",
      { "x-h": "ü" },
      new Uint8Array([0, 255]),
    );
  } finally {
    log.mockRestore();
    rmSync(file, { force: true });
    const admin = await newClient();
    await admin.del(`events:${topic}`);
  }
});
