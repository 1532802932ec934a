/**
 * Bundles the `weatherproof` command line (`bin/weatherproof.ts`, the package's `bin`) into
 * `dist/cli/`: one ESM entry, `weatherproof.js`, and code-split chunks under `chunks/`, with source
 * maps. Start-up is what this is for: unbundled, the CLI resolves and loads some 600 modules before
 * it parses its arguments. Every dynamic import stays a chunk of its own, so a command's code (and
 * the simulator, the gateway, the progress bar, ioredis) still loads only when it runs; tree-shaking
 * drops what nothing uses (effect/Schema's FastCheck re-export pulls in all of fast-check
 * unbundled).
 *
 * Everything is bundled but Node's builtins: the CLI does not depend on which versions of its
 * dependencies sit beside it (only the gateway's status page reads uPlot's files from the installed
 * `uplot` when it serves them). The library (`dist/src`, `exports`) is not bundled: users'
 * bundlers take it as it is.
 *
 * `npm run build` runs this after `tsc` (`node dist/scripts/bundleCli.js`); the tests that run the
 * CLI as a process call `bundleCli` with an output directory of their own.
 */
import * as esbuild from "esbuild"
import { realpathSync } from "node:fs"
import { rm } from "node:fs/promises"
import * as NodePath from "node:path"
import { fileURLToPath } from "node:url"

/** The repository's root directory (this file is `scripts/` in the sources, `dist/scripts/` built). */
const repoRoot = fileURLToPath(new URL(import.meta.url.includes("/dist/scripts/") ? "../.." : "..", import.meta.url))

/** Where `npm run build` writes the bundle; package.json's `bin` is `dist/cli/weatherproof.js`. */
export const defaultOutdir = NodePath.join(repoRoot, "dist", "cli")

/**
 * Bundled CommonJS dependencies call `require` for Node's builtins, which an ES module does not
 * have: each output file defines it. The alias keeps the banner's import clear of bundled names.
 */
const requireBanner = [
  `import { createRequire as __weatherproofCreateRequire } from "node:module";`,
  `const require = __weatherproofCreateRequire(import.meta.url);`
].join(" ")

/**
 * undici's index loads all of undici (fetch, WebSocket, caches, mocks, proxies): 535 KB of the
 * 990 KB `batch` loads, of which it uses 300 KB (some 20 ms of start-up). What the library and
 * `@effect/platform-node`'s undici client use is `Agent`, `buildConnector`, `getGlobalDispatcher`
 * and the request API the index puts on every dispatcher: every import of `undici` gets these,
 * from their own modules. An import of anything else fails the build (`import-is-undefined` is an
 * error below); test/cliProcess.test.ts checks the request API.
 */
const undiciParts: esbuild.Plugin = {
  name: "undici-parts",
  setup(build) {
    build.onResolve({ filter: /^undici$/ }, () => ({ path: "undici", namespace: "undici-parts" }))
    build.onLoad({ filter: /.*/, namespace: "undici-parts" }, () => ({
      resolveDir: repoRoot,
      loader: "js",
      contents: [
        // As undici's index does: `request`, `stream`, … on every dispatcher (the balance probe's HttpClient uses them).
        `import Dispatcher from "undici/lib/dispatcher/dispatcher.js"`,
        `import api from "undici/lib/api/index.js"`,
        `Object.assign(Dispatcher.prototype, api)`,
        `import Agent from "undici/lib/dispatcher/agent.js"`,
        `import buildConnector from "undici/lib/core/connect.js"`,
        `import { getGlobalDispatcher } from "undici/lib/global.js"`,
        `export { Agent, buildConnector, getGlobalDispatcher }`,
        `export default { Agent, buildConnector, getGlobalDispatcher }`
      ].join("\n")
    }))
  }
}

/** The build options for an output directory. */
export const buildOptions = (outdir: string): esbuild.BuildOptions & { readonly metafile: true } => ({
  absWorkingDir: repoRoot,
  entryPoints: { weatherproof: "bin/weatherproof.ts" },
  outdir,
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  // ES modules where a package offers both: they tree-shake, CommonJS does not.
  mainFields: ["module", "main"],
  chunkNames: "chunks/[name]-[hash]",
  banner: { js: requireBanner },
  minify: true,
  sourcemap: "linked",
  // The sources are not shipped: the maps give files and lines to stack traces, not the code.
  sourcesContent: false,
  legalComments: "linked",
  plugins: [undiciParts],
  logOverride: { "import-is-undefined": "error" },
  metafile: true,
  logLevel: "warning"
})

/**
 * Writes the bundle into `outdir` (emptied first, so no chunk of an earlier build stays) and returns
 * esbuild's result, whose metafile says which sources each output file holds.
 */
export const bundleCli = async (outdir: string = defaultOutdir): Promise<esbuild.BuildResult<{ metafile: true }>> => {
  await rm(outdir, { recursive: true, force: true })
  return esbuild.build(buildOptions(outdir))
}

const isEntryPoint = (): boolean => {
  const script = process.argv[1]
  return script !== undefined && realpathSync(script) === fileURLToPath(import.meta.url)
}

if (isEntryPoint()) await bundleCli()
