// Fails when a relative link in README.md, docs/ or a package README points at nothing.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

const root = resolve(new URL("..", import.meta.url).pathname);
const files = [
  join(root, "README.md"),
  ...readdirSync(join(root, "docs"))
    .filter((f) => f.endsWith(".md"))
    .map((f) => join(root, "docs", f)),
  ...["packages", "examples"].flatMap((group) =>
    readdirSync(join(root, group))
      .map((name) => join(root, group, name, "README.md"))
      .filter((file) => existsSync(file)),
  ),
];
const broken = [];
for (const file of files) {
  const text = readFileSync(file, "utf8").replace(/```[\s\S]*?```/g, "");
  for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
    if (/^[a-z]+:/i.test(target) || target.startsWith("#")) continue;
    const path = resolve(dirname(file), target.split("#")[0]);
    if (!existsSync(path)) broken.push(`${file.slice(root.length + 1)} -> ${target}`);
  }
}
if (broken.length > 0) {
  console.error(`broken links:\n${broken.join("\n")}`);
  process.exit(1);
}
console.log(`docs: ${files.length} files, all relative links resolve`);
