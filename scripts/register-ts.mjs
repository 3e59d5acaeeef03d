// Lets plain `node` run the workspace's TypeScript sources (the "@outbox/source" export
// condition): they import siblings as "./x.js" (NodeNext style) while only x.ts exists.
// Used by tests that run a relay in a child process and by the benches.
import { registerHooks } from "node:module";

registerHooks({
  resolve(specifier, context, nextResolve) {
    try {
      return nextResolve(specifier, context);
    } catch (error) {
      const fromTs = context.parentURL?.endsWith(".ts");
      if (fromTs && error?.code === "ERR_MODULE_NOT_FOUND" && /^\.{1,2}\/.*\.js$/.test(specifier)) {
        return nextResolve(`${specifier.slice(0, -3)}.ts`, context);
      }
      throw error;
    }
  },
});
