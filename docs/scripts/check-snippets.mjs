// `pnpm docs:check`: every TypeScript sample on the docs site compiles.
// - ```ts blocks in docs/*.md and in the packages' READMEs (each README is a page of the site),
// - the stack picker's programs (docs/.generated/stacks/*.ts; run `pnpm docs:gen` first),
// - `<<< @/...` includes must point at an existing file (those files are compiled by their package).
// Each block is compiled as its own ES module against the workspace sources (the "@outbox/source"
// condition) with the repo's strict settings. A block may use names it does not declare (a fragment
// continues an earlier one: `store`, `pool`, ...) only if snippet-preludes.mjs types them; any other
// unknown name, and every other compiler error, fails the check.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { known, preludes, skips } from "./snippet-preludes.mjs";

const docs = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const root = resolve(docs, "..");
const failures = [];

// ---------------------------------------------------------------------------------------------
// Collect the samples

/** @type {{ id: string, source: string, file: string, line: number, code: string }[]} */
const samples = [];
const includes = [];

function docPages(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      // generated pages come from sources checked here already; scripts/test are not pages
      return ["adapters", "api", "scripts", "test", "node_modules"].includes(entry.name) || entry.name.startsWith(".")
        ? []
        : docPages(path);
    }
    return entry.name.endsWith(".md") && !["benchmarks.md", "stack-picker.md"].includes(relative(docs, path))
      ? [path]
      : [];
  });
}

const readmes = readdirSync(join(root, "packages"))
  .map((dir) => join(root, "packages", dir, "README.md"))
  .filter((file) => existsSync(file));

for (const file of [...docPages(docs), ...readmes]) {
  const source = relative(root, file);
  const text = readFileSync(file, "utf8");
  const lines = text.split("\n");
  let heading = "";
  let block = null;
  let index = 0;
  lines.forEach((line, number) => {
    if (block) {
      if (/^```\s*$/.test(line)) {
        if (block.lang) {
          index += 1;
          const key = `${source} › ${block.heading}`;
          if (!(key in skips)) {
            const where = source.startsWith("packages/") ? dirname(file) : join(docs, ".generated", "snippets");
            const base = source.replace(/[^a-z0-9]+/gi, "-");
            samples.push({
              key,
              id: `${source}:${block.line}`,
              source,
              file: join(where, `.docs-snippet-${base}-${index}.ts`),
              line: block.line,
              code: block.lines.join("\n"),
            });
          }
        }
        block = null;
      } else block.lines.push(line);
      return;
    }
    const fence = /^```(\S*)/.exec(line);
    if (fence) {
      block = { lang: /^(ts|typescript)$/.test(fence[1] ?? "") ? "ts" : "", lines: [], line: number + 1, heading };
      return;
    }
    const title = /^#{1,6}\s+(.+)$/.exec(line);
    if (title) heading = title[1].trim();
    const include = /^<<<\s+@\/(\S+?)(?:\{[^}]*\})?(?:\s|$)/.exec(line);
    if (include) includes.push({ source, line: number + 1, target: include[1].replace(/#.*$/, "") });
  });
}

for (const include of includes) {
  if (!existsSync(join(docs, include.target))) {
    failures.push(`${include.source}:${include.line}: <<< @/${include.target} points at nothing`);
  }
}

const stacksDir = join(docs, ".generated", "stacks");
if (!existsSync(stacksDir)) {
  failures.push("docs/.generated/stacks is missing: run `pnpm docs:gen` first");
} else {
  for (const name of readdirSync(stacksDir).filter((f) => f.endsWith(".ts"))) {
    const file = join(stacksDir, name);
    samples.push({ id: relative(root, file), source: "stack-picker", file, line: 1, code: readFileSync(file, "utf8") });
  }
}

// ---------------------------------------------------------------------------------------------
// Compile

const config = ts.readConfigFile(join(root, "tsconfig.base.json"), ts.sys.readFile);
const parsed = ts.parseJsonConfigFileContent(config.config, ts.sys, root);
const options = {
  ...parsed.options,
  noEmit: true,
  declaration: false,
  declarationMap: false,
  sourceMap: false,
  customConditions: ["@outbox/source"],
};
const packageDirs = readdirSync(join(root, "packages")).map((dir) => join(root, "packages", dir));

function compile(virtual) {
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.fileExists = (name) => virtual.has(name) || fileExists.call(host, name);
  host.readFile = (name) => virtual.get(name) ?? readFile.call(host, name);
  host.getSourceFile = (name, language, ...rest) =>
    virtual.has(name)
      ? ts.createSourceFile(name, virtual.get(name), language, true)
      : getSourceFile.call(host, name, language, ...rest);
  // A sample imports what a user would install; resolve it from its package, else from any package of the repo.
  const cache = ts.createModuleResolutionCache(root, (name) => name, options);
  host.resolveModuleNameLiterals = (literals, containingFile, redirected, compilerOptions, sourceFile) =>
    literals.map((literal) => {
      const name = literal.text;
      const mode = ts.getModeForUsageLocation(sourceFile, literal, compilerOptions);
      const first = ts.resolveModuleName(name, containingFile, compilerOptions, host, cache, redirected, mode);
      if (first.resolvedModule || !virtual.has(containingFile)) return first;
      for (const dir of packageDirs) {
        const retry = ts.resolveModuleName(name, join(dir, "index.ts"), compilerOptions, host, cache, redirected, mode);
        if (retry.resolvedModule) return retry;
      }
      return first;
    });
  const program = ts.createProgram([...virtual.keys()], options, host);
  const byFile = new Map();
  for (const file of virtual.keys()) {
    const sourceFile = program.getSourceFile(file);
    byFile.set(
      file,
      sourceFile ? [...program.getSyntacticDiagnostics(sourceFile), ...program.getSemanticDiagnostics(sourceFile)] : [],
    );
  }
  return byFile;
}

const render = (code) => `${code}\nexport {};\n`;
const started = Date.now();
// Stale keys warn only: other people edit these pages, and a renamed heading must not fail their build.
const stale = [];
for (const key of [...Object.keys(skips), ...Object.keys(known)]) {
  const [file = "", heading] = key.split(" › ");
  const text = existsSync(join(root, file)) ? readFileSync(join(root, file), "utf8") : "";
  if (!new RegExp(`^#{1,6}\\s+${heading?.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\s*$`, "m").test(text)) {
    stale.push(`docs/scripts/snippet-preludes.mjs: "${key}" matches no heading: update or remove it`);
  }
}
const first = compile(new Map(samples.map((sample) => [sample.file, render(sample.code)])));

// Free names: typed by a prelude, or a failure.
const prefixed = new Map();
for (const sample of samples) {
  const missing = new Set();
  for (const diagnostic of first.get(sample.file) ?? []) {
    if (![2304, 2552, 2582, 18004].includes(diagnostic.code)) continue;
    const name = /'([^']+)'/.exec(ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n"))?.[1];
    if (name) missing.add(name);
  }
  const declarations = [];
  for (const name of missing) {
    const declaration = preludes[sample.source]?.[name] ?? preludes["*"]?.[name];
    if (declaration) declarations.push(declaration);
  }
  // imports first: a module's import declarations may come anywhere, but keep them readable
  declarations.sort((a, b) => Number(b.startsWith("import")) - Number(a.startsWith("import")));
  sample.prelude = declarations.length;
  prefixed.set(sample.file, `${declarations.join("\n")}${declarations.length > 0 ? "\n" : ""}${render(sample.code)}`);
}
const second = compile(prefixed);

const warnings = [];
for (const sample of samples) {
  const expected = sample.key ? known[sample.key] : undefined;
  const diagnostics = second.get(sample.file) ?? [];
  if (expected && diagnostics.length === 0) {
    warnings.push(
      `${sample.id}: compiles now: remove "${sample.key}" from \`known\` in docs/scripts/snippet-preludes.mjs`,
    );
  }
  const report = expected ? warnings : failures;
  for (const diagnostic of diagnostics) {
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n");
    let line = sample.line;
    if (diagnostic.file && diagnostic.start !== undefined) {
      const position = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start).line - sample.prelude;
      line = sample.source === "stack-picker" ? position + 1 : sample.line + 1 + position;
    }
    const where = sample.source === "stack-picker" ? sample.id : sample.source;
    const hint =
      diagnostic.code === 2304 || diagnostic.code === 2552
        ? ` (declare it in the sample, or type it in docs/scripts/snippet-preludes.mjs under "${sample.source}")`
        : "";
    report.push(`${where}:${line}: TS${diagnostic.code}: ${message}${hint}${expected ? ` [known: ${expected}]` : ""}`);
  }
}

for (const warning of [...stale, ...warnings]) console.warn(`docs:check warning: ${warning}`);
const seconds = ((Date.now() - started) / 1000).toFixed(1);
if (failures.length > 0) {
  console.error(failures.join("\n"));
  console.error(`docs:check: ${failures.length} problems in ${samples.length} samples (${seconds} s)`);
  process.exit(1);
}
const knownFailing = samples.filter(
  (sample) => sample.key && known[sample.key] && (second.get(sample.file) ?? []).length > 0,
).length;
console.log(
  `docs:check: ${samples.length - knownFailing} samples compile, ${knownFailing} known not to (warnings above) (${samples.filter((s) => s.source === "stack-picker").length} stack programs, ${includes.length} includes, ${Object.keys(skips).length} skipped blocks) in ${seconds} s`,
);
