// Regenerates sql/schema.sql from schemaSql() (run after `pnpm build`: it imports the built package).
import { writeFile } from "node:fs/promises";
import { schemaSql } from "@outbox/store-postgres";

await writeFile(new URL("../sql/schema.sql", import.meta.url), schemaSql());
