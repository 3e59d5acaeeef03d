// Regenerates sql/schema.sql from schemaSql() (reads the TypeScript source).
import { writeFile } from "node:fs/promises";
import { schemaSql } from "@outbox/store-mysql";

await writeFile(new URL("../sql/schema.sql", import.meta.url), schemaSql());
