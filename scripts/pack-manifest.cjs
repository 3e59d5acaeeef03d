// pnpm hook for `pnpm pack` / `pnpm publish` (pnpm >= 10.28), used only through
// `npm_config_pnpmfile=scripts/pack-manifest.cjs` (a root .pnpmfile.cjs would change the lockfile):
// the published package.json keeps what installs and runs the package, and drops what only makes
// sense inside this repository (scripts that build, test or bench from source; devDependencies on
// private workspace packages and pinned test drivers).
module.exports = {
  hooks: {
    beforePacking(pkg) {
      delete pkg.scripts;
      delete pkg.devDependencies;
      return pkg;
    },
  },
};
