import { PGlite } from "@electric-sql/pglite";
import { runDemo } from "./app.ts";

// The main job on the embedded default: PGlite is real PostgreSQL compiled to WASM, in this process.
const db = await PGlite.create();
const summary = await runDemo(db, (line) => console.log(line));
await db.close();
if (summary.backlog.pending !== 0 || summary.published.length !== summary.placed) process.exitCode = 1;
