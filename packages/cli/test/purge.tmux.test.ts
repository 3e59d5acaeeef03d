// `outbox purge` in a real terminal: tmux runs it, and the test reads the screen while it works.
import { execFile, execFileSync } from "node:child_process";
import { promisify } from "node:util";
import { migrate } from "@outbox/store-postgres";
import { freshIdentifier, pgUrl } from "@outbox/test-support/postgres";
import { waitFor } from "@outbox/test-support/wait";
import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { nodeArgs, packageDir, pgKafkaConfig } from "./process.js";

const exec = promisify(execFile);
const socket = `outbox-cli-test-${process.pid}`;
let pool: pg.Pool;
const table = freshIdentifier("cli_purge");

function requireTmux(): void {
  try {
    execFileSync("tmux", ["-V"], { stdio: "ignore" });
  } catch {
    throw new Error(
      "tmux is required for the purge progress test: install the Debian package `tmux` (apt-get install tmux)",
    );
  }
}

const quote = (value: string) => `'${value.replaceAll("'", `'\\''`)}'`;

beforeAll(async () => {
  requireTmux();
  pool = new pg.Pool({ connectionString: pgUrl });
  await migrate(pool, { table });
});

afterAll(async () => {
  await exec("tmux", ["-L", socket, "kill-server"]).catch(() => undefined);
  await pool?.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`);
  await pool?.end();
});

it("shows a progress bar while purging, in rows, and keeps pending and recent entries", async () => {
  const old = 60_000;
  // Published entries settled 40 to 8 days ago (purged), 500 settled yesterday (kept), 100 old but pending (kept).
  await pool.query(
    `INSERT INTO "${table}" (topic, key, payload, created_at, available_at, status, settled_at)
     SELECT 't', 'k' || (g % 50), '\\x00', ts, ts, 'published', ts + interval '1 second'
     FROM (SELECT g, now() - interval '40 days' + (g * interval '32 days' / $1::int) AS ts
           FROM generate_series(0, $1::int - 1) AS g) AS s`,
    [old],
  );
  await pool.query(
    `INSERT INTO "${table}" (topic, key, payload, created_at, available_at, status, settled_at)
     SELECT 't', NULL, '\\x00', now() - interval '1 day', now() - interval '1 day', 'published', now() - interval '1 day'
     FROM generate_series(1, 500)`,
  );
  await pool.query(
    `INSERT INTO "${table}" (topic, key, payload, created_at, available_at)
     SELECT 't', NULL, '\\x00', now() - interval '30 days', now() - interval '30 days' FROM generate_series(1, 100)`,
  );

  const env = [`OUTBOX_PG_URL=${pgUrl}`, `CLI_TEST_TABLE=${table}`, "TERM=xterm-256color"];
  const command = [
    `cd ${quote(packageDir)}`,
    `env ${env.map(quote).join(" ")} ${quote(process.execPath)} ${nodeArgs.map(quote).join(" ")} purge --older-than 7d --batch-size 100 --config ${quote(pgKafkaConfig)}`,
  ].join(" && ");
  await exec("tmux", [
    "-L",
    socket,
    "new-session",
    "-d",
    "-s",
    "purge",
    "-x",
    "160",
    "-y",
    "20",
    `${command}; echo EXIT=$?; sleep 600`,
  ]);

  const frames: string[] = [];
  const screen = await waitFor(
    async () => {
      const { stdout } = await exec("tmux", ["-L", socket, "capture-pane", "-p", "-t", "purge"]);
      if (frames.at(-1) !== stdout) frames.push(stdout);
      return stdout.includes("EXIT=") ? stdout : null;
    },
    180_000,
    "the purge to finish in tmux",
    30,
  );

  const bar = /purge \|[█░]+\| (\d+)% \| (\d+)\/(\d+) rows/;
  const progress = frames.map((frame) => bar.exec(frame)).filter((match) => match !== null);
  const partial = progress.filter((match) => Number(match[1]) > 0 && Number(match[1]) < 100);
  console.info(
    `[purge tmux] ${frames.length} distinct frames, ${partial.length} with a partial bar; final screen:\n${screen.trim()}`,
  );
  expect(partial.length).toBeGreaterThan(0);
  expect(screen).toMatch(new RegExp(`purge \\|█+\\| 100% \\| ${old}/${old} rows`));
  expect(screen).toContain(`purged ${old} entries`);
  expect(screen).toContain("EXIT=0");

  const { rows } = await pool.query(
    `SELECT status, count(*)::int AS n FROM "${table}" GROUP BY status ORDER BY status`,
  );
  expect(rows).toEqual([
    { status: "pending", n: 100 },
    { status: "published", n: 500 },
  ]);
}, 240_000);
