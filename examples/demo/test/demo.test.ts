import { PGlite } from "@electric-sql/pglite";
import { expect, it } from "vitest";
import { runDemo } from "../src/app.ts";

it("the main job publishes every order once per customer in order, retries the hiccup, rejects the invalid one", async () => {
  const db = await PGlite.create();
  const lines: string[] = [];
  const summary = await runDemo(db, (line) => lines.push(line));
  await db.close();
  expect(summary.placed).toBe(5);
  expect(summary.ordersInTable).toBe(5);
  expect(summary.rejected).toEqual([{ order: "o-bad", code: "OUTBOX_INVALID_ENTRY" }]);
  expect(summary.retried).toBe(1);
  expect(summary.backlog).toEqual({ pending: 0, dead: 0 });
  expect(summary.published.map((p) => p.order.id).sort()).toEqual(["o-1", "o-2", "o-3", "o-4", "o-5"]);
  const orderOf = (customer: string) => summary.published.filter((p) => p.key === customer).map((p) => p.order.id);
  expect(orderOf("ada")).toEqual(["o-1", "o-3"]);
  expect(orderOf("grace")).toEqual(["o-2", "o-5"]);
  expect(lines.at(-1)).toContain("5 events published");
});
