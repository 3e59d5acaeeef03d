// Generates the docs site's derived pages from their single sources of truth:
// - docs/adapters/<dir>.md       from packages/<dir>/README.md (links rewritten for the site)
// - docs/benchmarks.md           from the "Bench"/"Benchmark"/"Performance" sections of those READMEs
// - docs/stack-picker.md and docs/.generated/stacks/*.ts   from docs/scripts/stacks.mjs
// - docs/api/                    from the TSDoc of each package's public exports (typedoc)
// - docs/.generated/site.json    what the sidebar lists
// A package without a README yet is left out with a warning; everything else that fails, fails the build.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, posix, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { composeStack, installLine, locks, publishers, stores } from "./stacks.mjs";

const docs = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const root = resolve(docs, "..");
const repoUrl = "https://github.com/outbox-ts/outbox";
const warnings = [];

/** The packages the site documents, in sidebar order; any other public package found is appended. */
const expected = [
  ["core", "Core"],
  ["memory", "Core"],
  ["conformance", "Core"],
  ["cli", "Core"],
  ["store-postgres", "Stores"],
  ["store-mysql", "Stores"],
  ["store-mongodb", "Stores"],
  ["publisher-kafka", "Publishers"],
  ["publisher-redis", "Publishers"],
  ["publisher-rabbitmq", "Publishers"],
  ["publisher-pubsub", "Publishers"],
  ["lock-postgres", "Locks"],
  ["lock-redis", "Locks"],
  ["lock-etcd", "Locks"],
];
const roleOf = (dir) =>
  dir.startsWith("store-")
    ? "Stores"
    : dir.startsWith("publisher-")
      ? "Publishers"
      : dir.startsWith("lock-")
        ? "Locks"
        : "Core";

function packageJson(dir) {
  const file = join(root, "packages", dir, "package.json");
  return existsSync(file) ? JSON.parse(readFileSync(file, "utf8")) : null;
}

const discovered = readdirSync(join(root, "packages")).filter((dir) => {
  const pkg = packageJson(dir);
  return pkg && !pkg.private && !expected.some(([name]) => name === dir);
});
const all = [...expected, ...discovered.map((dir) => [dir, roleOf(dir)])];
const documented = all.filter(([dir]) => existsSync(join(root, "packages", dir, "README.md")));
const missing = all.filter(([dir]) => !documented.some(([name]) => name === dir)).map(([dir]) => dir);
if (missing.length > 0) {
  warnings.push(`no README yet (page left out): ${missing.map((dir) => `packages/${dir}`).join(", ")}`);
}
const pageOf = new Set(documented.map(([dir]) => dir));

// ---------------------------------------------------------------------------------------------
// Markdown helpers

/** Splits markdown into fenced code blocks and prose, so rewrites never touch code. */
function mapProse(markdown, transform) {
  return markdown
    .split(/(^```[\s\S]*?^```[ \t]*$)/m)
    .map((part, index) => (index % 2 === 1 ? part : transform(part)))
    .join("");
}

/** A link target in a README (relative to packages/<dir>/, or an absolute GitHub URL) -> a site or GitHub link. */
function rewriteTarget(target, fromDir) {
  if (target.startsWith("#")) return target;
  let repoPath;
  const github = /^https:\/\/github\.com\/outbox-ts\/outbox\/(?:blob|tree)\/main\/(.*)$/.exec(target);
  if (github) repoPath = github[1];
  else if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith("/")) return target;
  else repoPath = posix.normalize(posix.join(fromDir, target));
  const [path, hash] = repoPath.split("#");
  const anchor = hash ? `#${hash}` : "";
  const pkg = /^packages\/([^/]+)\/?(README\.md)?$/.exec(path ?? "");
  if (pkg?.[1] && pageOf.has(pkg[1])) return `/adapters/${pkg[1]}${anchor}`;
  const doc = /^docs\/(.+)\.md$/.exec(path ?? "");
  if (doc && existsSync(join(root, path))) return `/${doc[1] === "index" ? "" : doc[1]}${anchor}`;
  const kind = existsSync(join(root, path ?? "")) && !/\.[a-z0-9]+$/i.test(path ?? "") ? "tree" : "blob";
  return `${repoUrl}/${kind}/main/${(path ?? "").replace(/\/$/, "")}${anchor}`;
}

function rewriteLinks(markdown, fromDir) {
  return mapProse(markdown, (prose) =>
    prose.replace(/(!?\[[^\]]*\]\()([^)\s]+)((?:\s+"[^"]*")?\))/g, (_, open, target, close) => {
      return `${open}${rewriteTarget(target, fromDir)}${close}`;
    }),
  );
}

/** Escapes what Vue would read as template syntax in prose: `{{` and tags that are not HTML. */
function escapeVue(markdown) {
  return mapProse(markdown, (prose) =>
    prose
      .split(/(`[^`\n]*`)/)
      .map((part, index) =>
        index % 2 === 1
          ? part
          : part
              .replace(/\{\{/g, "&#123;&#123;")
              .replace(
                /<(?!\/?(a|b|br|code|details|summary|em|i|img|kbd|p|pre|span|strong|sub|sup|table|tbody|td|th|thead|tr|div|!--)[\s>/])/gi,
                "&lt;",
              ),
      )
      .join(""),
  );
}

function write(file, text) {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, text);
}

// ---------------------------------------------------------------------------------------------
// Adapter pages

rmSync(join(docs, "adapters"), { recursive: true, force: true });
const site = { adapters: [], missing };
for (const [dir, role] of documented) {
  const source = `packages/${dir}/README.md`;
  const readme = readFileSync(join(root, source), "utf8");
  const title = /^#\s+(.+)$/m.exec(readme)?.[1]?.trim() ?? `@outbox/${dir}`;
  const pkg = packageJson(dir);
  const body = escapeVue(rewriteLinks(readme, `packages/${dir}/`)).replace(
    /^#\s+.+$/m,
    (heading) =>
      `${heading}\n\n::: info ${pkg?.version ? `v${pkg.version} · ` : ""}the package's README\nThis page is [\`${source}\`](${repoUrl}/blob/main/${source}), the same text npm shows. Edit it there.\n:::`,
  );
  write(
    join(docs, "adapters", `${dir}.md`),
    `---\ntitle: ${JSON.stringify(title)}\neditLink: false\n---\n\n<!-- generated by docs/scripts/generate.mjs from ${source}: edit the README -->\n\n${body}`,
  );
  site.adapters.push({ dir, role, title, description: pkg?.description ?? "" });
}
const byRole = (role) => site.adapters.filter((adapter) => adapter.role === role);
write(
  join(docs, "adapters", "index.md"),
  `# Packages\n\nEach page is the package's own README (the single source of truth, also shown on npm).\n\n${[
    "Core",
    "Stores",
    "Publishers",
    "Locks",
  ]
    .map(
      (role) =>
        `## ${role}\n\n| package | what |\n|---|---|\n${byRole(role)
          .map(
            (adapter) =>
              `| [\`${adapter.title}\`](./${adapter.dir}.md) | ${adapter.description.replace(/\|/g, "\\|")} |`,
          )
          .join("\n")}\n`,
    )
    .join(
      "\n",
    )}${missing.length > 0 ? `\nNot documented yet (no README at build time): ${missing.map((dir) => `\`${dir}\``).join(", ")}.\n` : ""}`,
);

// ---------------------------------------------------------------------------------------------
// Benchmarks: the figures tables recorded in the READMEs

function parseTable(lines) {
  const cells = (line) =>
    line
      .trim()
      .replace(/^\||\|$/g, "")
      .split("|")
      .map((cell) => cell.trim());
  const [header, , ...rows] = lines;
  return { headers: cells(header), rows: rows.map(cells) };
}

const numberOf = (cell) => {
  const match = /^\**([\d,]+(?:\.\d+)?)/.exec(cell.replace(/\*\*/g, ""));
  return match ? Number(match[1].replace(/,/g, "")) : null;
};

/** Turns a figures table into a chart: series = the throughput columns (".../s"), labels = the columns before them. */
function chartOf(table) {
  const seriesColumns = table.headers.map((header, index) => (/\/s\b/.test(header) ? index : -1)).filter((i) => i >= 0);
  if (seriesColumns.length === 0) return null;
  const first = seriesColumns[0];
  const labelColumns = table.headers.map((_, index) => index).filter((index) => index < first);
  const rows = table.rows
    .map((row) => ({
      label: labelColumns
        .map((index) => {
          const header = table.headers[index];
          const value = (row[index] ?? "").replace(/[*`]/g, "");
          return /^\d[\d,]*$/.test(value) && header ? `${header} ${value}` : value;
        })
        .filter(Boolean)
        .join(" · "),
      values: seriesColumns.map((index) => numberOf(row[index] ?? "")),
    }))
    .filter((row) => row.values.some((value) => value !== null));
  const unit = /entries\/s/.test(table.headers[first] ?? "") ? "entries/s" : "msg/s";
  return {
    unit,
    series: seriesColumns.map((index) =>
      (table.headers[index] ?? "").replace(/\s*\((?:msg|entries)\/s[^)]*\)/, "").replace(/[*`]/g, ""),
    ),
    rows,
  };
}

const benchSections = [];
for (const [dir] of documented) {
  const readme = readFileSync(join(root, "packages", dir, "README.md"), "utf8");
  const match = /^##\s+(Bench\w*|Performance|Figures)\s*$([\s\S]*?)(?=^##\s|(?![\s\S]))/im.exec(readme);
  if (!match) continue;
  const section = match[2] ?? "";
  const tableLines = [];
  for (const line of mapProse(section, (prose) => prose).split("\n")) {
    if (line.trim().startsWith("|")) tableLines.push(line);
    else if (tableLines.length > 0) break;
  }
  const chart = tableLines.length >= 3 ? chartOf(parseTable(tableLines)) : null;
  if (!chart) warnings.push(`packages/${dir}/README.md has a bench section without a figures table (no chart)`);
  const title = site.adapters.find((adapter) => adapter.dir === dir)?.title ?? dir;
  const anchor = (match[1] ?? "").toLowerCase().replace(/\s+/g, "-");
  benchSections.push({ dir, title, chart, anchor, text: section.trim() });
}
const demote = (markdown) => mapProse(markdown, (prose) => prose.replace(/^(#{2,5})\s/gm, "#$1 "));
write(
  join(docs, "benchmarks.md"),
  `---\ntitle: Benchmarks\neditLink: false\n---\n\n<!-- generated by docs/scripts/generate.mjs from the packages' READMEs: edit those -->\n\n# Benchmarks\n\n${readFileSync(join(docs, "scripts", "benchmarks-intro.md"), "utf8").trim()}\n\n${benchSections
    .map(
      (section) =>
        `## ${section.title}\n\n${section.chart ? `<BenchChart :chart='${JSON.stringify(section.chart).replace(/'/g, "&#39;")}' />\n\n` : ""}From [the package's README](/adapters/${section.dir}#${section.anchor}):\n\n${escapeVue(demote(rewriteLinks(section.text, `packages/${section.dir}/`)))}\n`,
    )
    .join("\n")}`,
);
site.benchmarks = benchSections.map((section) => section.dir);

// ---------------------------------------------------------------------------------------------
// Stack picker: every store x publisher x lock as a whole program

rmSync(join(docs, ".generated", "stacks"), { recursive: true, force: true });
const combos = [];
for (const store of stores) {
  for (const publisher of publishers) {
    for (const lock of locks) {
      const id = `${store.id}-${publisher.id}-${lock.id}`;
      write(join(docs, ".generated", "stacks", `${id}.ts`), composeStack(store, publisher, lock));
      combos.push({ id, install: installLine(store, publisher, lock) });
    }
  }
}
const option = (part) => `<option value="${part.id}">${part.label}</option>`;
write(
  join(docs, "stack-picker.md"),
  `---\ntitle: Stack picker\neditLink: false\noutline: false\n---\n\n<!-- generated by docs/scripts/generate.mjs from docs/scripts/stacks.mjs: edit that -->\n\n<script setup>\nimport { ref, computed } from "vue";\nconst store = ref("postgres");\nconst publisher = ref("kafka");\nconst lock = ref("none");\nconst id = computed(() => \`\${store.value}-\${publisher.value}-\${lock.value}\`);\n</script>\n\n# Stack picker\n\n${readFileSync(join(docs, "scripts", "stack-picker-intro.md"), "utf8").trim()}\n\n<div class="stack-picker">\n<label>Store <select v-model="store" data-test="store">${stores.map(option).join("")}</select></label>\n<label>Publisher <select v-model="publisher" data-test="publisher">${publishers.map(option).join("")}</select></label>\n<label>Lock <select v-model="lock" data-test="lock">${locks.map(option).join("")}</select></label>\n</div>\n\n${combos
    .map(
      (combo) =>
        `<div v-show="id === '${combo.id}'" class="stack" data-stack="${combo.id}">\n\n**Install**\n\n\`\`\`sh\n${combo.install}\n\`\`\`\n\n**The program** (type-checked in CI)\n\n<<< @/.generated/stacks/${combo.id}.ts\n\n</div>\n`,
    )
    .join("\n")}\n${readFileSync(join(docs, "scripts", "stack-picker-outro.md"), "utf8").trim()}\n`,
);

// ---------------------------------------------------------------------------------------------
// API reference (typedoc + typedoc-plugin-markdown + typedoc-vitepress-theme)

rmSync(join(docs, "api"), { recursive: true, force: true });
const apiPackages = all
  .map(([dir]) => dir)
  .filter((dir) => existsSync(join(root, "packages", dir, "src", "index.ts")) && !packageJson(dir)?.private);
const typedoc = join(root, "node_modules", ".bin", "typedoc");
const run = spawnSync(
  typedoc,
  ["--options", "typedoc.json", ...apiPackages.flatMap((dir) => ["--entryPoints", `../packages/${dir}`])],
  { cwd: docs, encoding: "utf8", env: { ...process.env, FORCE_COLOR: "0", NO_COLOR: "1" } },
);
const output = `${run.stdout}\n${run.stderr}`;
if (run.status !== 0) {
  console.error(output);
  throw new Error(`typedoc failed (exit ${run.status})`);
}
const typedocWarnings = output
  .split("\n")
  .filter((line) => /\[warning\]/i.test(line) && !/Found \d+ errors/.test(line));
if (typedocWarnings.length > 0) {
  warnings.push(`typedoc: ${typedocWarnings.length} warnings:\n  ${typedocWarnings.join("\n  ")}`);
}
write(
  join(docs, "api", "index.md"),
  `# API reference\n\nGenerated from the TSDoc comments of each package's public exports (\`src/index.ts\`).\n\n${apiPackages
    .map((dir) => `- [\`@outbox/${dir}\`](./@outbox/${dir}.md)`)
    .join("\n")}\n`,
);
site.api = apiPackages;

write(join(docs, ".generated", "site.json"), `${JSON.stringify(site, null, 2)}\n`);
for (const warning of warnings) console.warn(`docs warning: ${warning}`);
console.log(
  `docs: ${site.adapters.length} package pages, ${benchSections.length} benchmark sections, ${combos.length} stacks, API for ${apiPackages.length} packages`,
);
