import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { uniqueName } from "@outbox/conformance";
import { closeClients, newClient, redisUrl } from "@outbox/test-support/redis";
import { afterAll, expect, it, vi } from "vitest";

afterAll(closeClients);

/** Runs the README's Quick start as written, with the in-memory store and publisher. */
it("the README quick start runs: the relay leads, then releases the lock on stop()", async () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const snippet = /## Quick start\n\n```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  expect(snippet).toBeDefined();
  const lockName = uniqueName("readme");
  const module = [
    'import { MemoryPublisher, MemoryStore } from "@outbox/core";',
    "const store = new MemoryStore();",
    "const publisher = new MemoryPublisher();",
    (snippet as string)
      .replace('from "@outbox/lock-redis"', 'from "../src/index.js"')
      .replace('name: "orders-outbox"', `name: ${JSON.stringify(lockName)}`),
  ].join("\n");
  const file = fileURLToPath(new URL(`./readme-${lockName}.generated.ts`, import.meta.url));
  writeFileSync(file, module);
  const log = vi.spyOn(console, "log").mockImplementation(() => {});
  process.env.REDIS_URL = redisUrl;
  try {
    await import(/* @vite-ignore */ file);
    expect(log).toHaveBeenCalledWith("leading with token", expect.any(BigInt));
    const admin = await newClient();
    expect(await admin.exists(`outbox:lock:{${lockName}}`)).toBe(0); // released by stop()
    expect(await admin.exists(`outbox:lock:{${lockName}}:fence`)).toBe(1);
  } finally {
    log.mockRestore();
    rmSync(file, { force: true });
  }
});
