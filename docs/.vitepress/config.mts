import { existsSync, readFileSync, statSync } from "node:fs";
import { posix } from "node:path";
import { fileURLToPath } from "node:url";
import { type DefaultTheme, defineConfig } from "vitepress";

// Written by docs/scripts/generate.mjs (`pnpm docs:build` runs it first).
const generated = fileURLToPath(new URL("../.generated/site.json", import.meta.url));
if (!existsSync(generated)) throw new Error("docs/.generated/site.json is missing: run `pnpm docs:gen` first");
const site = JSON.parse(readFileSync(generated, "utf8")) as {
  adapters: { dir: string; role: string; title: string }[];
  api: string[];
};
// The API sidebar lists the packages only: each package's index lists its exports (a sidebar of every
// export, inlined into each of ~300 pages, would weigh 180 KB a page).
const apiSidebar = (
  JSON.parse(
    readFileSync(fileURLToPath(new URL("../api/typedoc-sidebar.json", import.meta.url)), "utf8"),
  ) as DefaultTheme.SidebarItem[]
).map(({ text, link }) => ({ text, link }));

const repoRoot = fileURLToPath(new URL("../../", import.meta.url));
const repoUrl = "https://github.com/outbox-ts/outbox";

/**
 * Pages in docs/ link to files outside docs/ relatively (so they work on GitHub and for
 * scripts/check-docs.mjs): a package's README becomes its page on the site, anything else its GitHub URL.
 */
export function siteLink(target: string, relativePath: string): string {
  if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith("/") || target.startsWith("#")) return target;
  const [path = "", hash] = target.split("#");
  const anchor = hash ? `#${hash}` : "";
  const resolved = posix.normalize(posix.join("docs", posix.dirname(relativePath), path));
  if (resolved.startsWith("docs/")) return target;
  const pkg = /^packages\/([^/]+)\/?(README\.md)?$/.exec(resolved);
  if (pkg && site.adapters.some((a) => a.dir === pkg[1])) return `/adapters/${pkg[1]}${anchor}`;
  const full = `${repoRoot}${resolved}`;
  const kind = existsSync(full) && statSync(full).isDirectory() ? "tree" : "blob";
  return `${repoUrl}/${kind}/main/${resolved === "." ? "" : resolved}${anchor}`;
}

const packages = (role: string): DefaultTheme.SidebarItem => ({
  text: role,
  collapsed: false,
  items: site.adapters.filter((a) => a.role === role).map((a) => ({ text: a.title, link: `/adapters/${a.dir}` })),
});

const base = process.env.DOCS_BASE ?? "/";

export default defineConfig({
  title: "outbox",
  description: "The transactional outbox for Node.js: at-least-once, per-key order, fencing.",
  base,
  head: [["link", { rel: "icon", type: "image/svg+xml", href: `${base}favicon.svg` }]],
  lang: "en",
  srcExclude: ["scripts/**", "test/**", ".screenshots/**", "public/**"],
  lastUpdated: false,
  vite: { build: { chunkSizeWarningLimit: 1500 } },
  // Dead links fail the build (VitePress' default); localhost links would only be examples.
  ignoreDeadLinks: "localhostLinks",
  markdown: {
    theme: { light: "github-light", dark: "github-dark" },
    config(md) {
      md.core.ruler.push("outbox-repo-links", (state) => {
        const relativePath = (state.env as { relativePath?: string }).relativePath ?? "";
        for (const token of state.tokens) {
          for (const child of token.children ?? []) {
            const href = child.type === "link_open" ? child.attrGet("href") : null;
            if (href) child.attrSet("href", siteLink(href, relativePath));
          }
        }
      });
    },
  },
  themeConfig: {
    nav: [
      {
        text: "Guide",
        link: "/getting-started",
        activeMatch: "^/(getting-started|stack-picker|concepts|guarantees|inbox|claim-contract|capture-modes)",
      },
      { text: "Operations", link: "/operations", activeMatch: "^/(operations|troubleshooting|benchmarks)" },
      { text: "Packages", link: "/adapters/", activeMatch: "^/adapters/" },
      { text: "API", link: "/api/", activeMatch: "^/api/" },
    ],
    sidebar: {
      "/api/": [{ text: "API reference", link: "/api/" }, ...apiSidebar],
      "/": [
        {
          text: "Guide",
          items: [
            { text: "Getting started", link: "/getting-started" },
            { text: "Stack picker", link: "/stack-picker" },
            { text: "Concepts", link: "/concepts" },
            { text: "Guarantees", link: "/guarantees" },
            { text: "Exactly-once effects (inbox)", link: "/inbox" },
            { text: "The claim contract", link: "/claim-contract" },
            { text: "Capture modes (experimental)", link: "/capture-modes" },
          ],
        },
        {
          text: "Operations",
          items: [
            { text: "Running in production", link: "/operations" },
            { text: "Troubleshooting & FAQ", link: "/troubleshooting" },
            { text: "Benchmarks", link: "/benchmarks" },
          ],
        },
        {
          text: "Extending",
          items: [
            { text: "Writing an adapter", link: "/conformance" },
            { text: "Adapter conventions", link: "/adapter-conventions" },
          ],
        },
        {
          text: "Packages",
          link: "/adapters/",
          items: ["Core", "Stores", "Publishers", "Locks"].map(packages),
        },
        { text: "API reference", link: "/api/" },
      ],
    },
    search: { provider: "local" },
    socialLinks: [{ icon: "github", link: "https://github.com/outbox-ts/outbox" }],
    editLink: {
      // Generated pages have no file of their own under docs/: link to what generates them. The
      // function runs in the browser too, so it uses nothing from outside itself.
      pattern: ({ filePath }) => {
        const repo = "https://github.com/outbox-ts/outbox";
        const api = /^api\/@outbox\/([a-z0-9-]+)\.md$/.exec(filePath);
        if (api) return `${repo}/edit/main/packages/${api[1]}/src/index.ts`;
        const page = /^adapters\/([a-z0-9-]+)\.md$/.exec(filePath);
        if (page && page[1] !== "index") return `${repo}/edit/main/packages/${page[1]}/README.md`;
        if (/^(api|adapters)\/|^(benchmarks|stack-picker)\.md$/.test(filePath)) {
          return `${repo}/edit/main/docs/scripts/generate.mjs`;
        }
        return `${repo}/edit/main/docs/${filePath}`;
      },
      text: "Edit this page",
    },
    outline: { level: [2, 3] },
    footer: { message: "MIT licensed" },
  },
});
