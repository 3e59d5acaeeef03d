import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { uniqueName } from "@outbox/conformance";
import { afterAll, expect, it, vi } from "vitest";
import { closeClients, etcdHosts, newClient } from "./support.js";

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
      .replace('from "@outbox/lock-etcd"', 'from "../src/index.js"')
      .replace('name: "orders-outbox"', `name: ${JSON.stringify(lockName)}`),
  ].join("\n");
  const file = fileURLToPath(new URL(`./readme-${lockName}.generated.ts`, import.meta.url));
  writeFileSync(file, module);
  const log = vi.spyOn(console, "log").mockImplementation(() => {});
  process.env.ETCD_HOSTS = etcdHosts.join(",");
  try {
    await import(/* @vite-ignore */ file);
    expect(log).toHaveBeenCalledWith("leading with token", expect.any(BigInt));
    const admin = newClient();
    expect(await admin.get(`outbox/lock/${lockName}`).string()).toBeNull(); // released by stop()
  } finally {
    log.mockRestore();
    rmSync(file, { force: true });
  }
});
