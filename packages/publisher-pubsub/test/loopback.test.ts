// A client pointed at the emulator stays on loopback: it must not look up or reach Google's
// metadata server (metadata.google.internal, 169.254.169.254) or anything else but the emulator.
import { createRequire } from "node:module";
import type { Socket } from "node:net";
import { makeEntry } from "@outbox/conformance";
import { afterEach, expect, it, vi } from "vitest";
import { createPubSubPublisher } from "../src/index.js";
import { newPubSub, uniqueTopic } from "./support/pubsub.js";

// The modules' own objects (what net and the HTTP clients call), not read-only ESM namespaces.
const require = createRequire(import.meta.url);
const dns = require("node:dns") as typeof import("node:dns");
const net = require("node:net") as typeof import("node:net");

afterEach(() => {
  vi.restoreAllMocks();
});

/** The host a Socket#connect call goes to, whichever of its signatures was used. */
function hostOf(args: unknown[]): string {
  const [first, second] = args;
  if (typeof first === "object" && first !== null) {
    const options = first as { host?: string; path?: string };
    return options.host ?? options.path ?? "localhost";
  }
  return typeof second === "string" ? second : "localhost";
}

it("publishes through the emulator without looking up or connecting to any other host", async () => {
  const contacted: string[] = [];
  const warnings: string[] = [];
  const lookup = dns.lookup;
  vi.spyOn(dns, "lookup").mockImplementation(((hostname: string, ...rest: unknown[]) => {
    contacted.push(hostname);
    return (lookup as (...args: unknown[]) => unknown)(hostname, ...rest);
  }) as typeof dns.lookup);
  const connect = net.Socket.prototype.connect;
  vi.spyOn(net.Socket.prototype, "connect").mockImplementation(function (this: Socket, ...args: unknown[]) {
    contacted.push(hostOf(args));
    return (connect as (...inner: unknown[]) => Socket).apply(this, args);
  } as typeof net.Socket.prototype.connect);
  const emitWarning = process.emitWarning;
  vi.spyOn(process, "emitWarning").mockImplementation(((warning: string | Error, ...rest: unknown[]) => {
    warnings.push(typeof warning === "string" ? String(rest[0] ?? warning) : warning.name);
    return (emitWarning as (...args: unknown[]) => void).call(process, warning, ...rest);
  }) as typeof process.emitWarning);

  const pubsub = newPubSub();
  const topic = uniqueTopic("loopback");
  await pubsub.createTopic(topic);
  const publisher = createPubSubPublisher({ pubsub });
  const outcomes = await publisher.publish([makeEntry({ topic, key: "k" })]);
  await publisher.close();
  await pubsub.close();

  expect(outcomes.map((outcome) => outcome.status)).toEqual(["published"]);
  expect(contacted.length, "the client must have connected to the emulator").toBeGreaterThan(0);
  expect(contacted.filter((host) => !["127.0.0.1", "localhost", "::1"].includes(host))).toEqual([]);
  expect(warnings).not.toContain("MetadataLookupWarning");
});
