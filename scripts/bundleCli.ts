/**
 * Bundles the `weatherproof` command line (`bin/weatherproof.ts`, the package's `bin`) into
 * `dist/cli/`, with source maps:
 * - `weatherproof.js`, the launcher: it runs `main.cjs` through app/cli/compileCache.ts, which keeps
 *   V8's compilation of each file between runs (most of a start otherwise goes to compiling);
 * - `main.cjs`, which runs the command line, and code-split chunks under `chunks/`. esbuild splits
 *   ES modules only; each file is then turned into CommonJS, which Node 20 can compile with a cache.
 *
 * Start-up is what this is for: unbundled, the CLI resolves and loads some 600 modules before it
 * parses its arguments. Every dynamic import stays a chunk of its own, so a command's code (and
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
import { chmod, mkdir, rm, writeFile } from "node:fs/promises"
import * as NodePath from "node:path"
import { fileURLToPath } from "node:url"
import { withDataExports } from "./chunkExports.js"

/** The repository's root directory (this file is `scripts/` in the sources, `dist/scripts/` built). */
const repoRoot = fileURLToPath(new URL(import.meta.url.includes("/dist/scripts/") ? "../.." : "..", import.meta.url))

/** Where `npm run build` writes the bundle; package.json's `bin` is `dist/cli/weatherproof.js`. */
export const defaultOutdir = NodePath.join(repoRoot, "dist", "cli")

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

/** Options both builds share. */
const common = {
  absWorkingDir: repoRoot,
  bundle: true,
  platform: "node",
  target: "node20",
  minify: true,
  logLevel: "warning"
} as const satisfies esbuild.BuildOptions

/**
 * The command line's build: `main` (bin/weatherproof.ts, which the launcher runs) and its chunks, ES modules as
 * esbuild splits them, written as `.cjs` files that `cjsOf` turns into CommonJS. What the sources
 * read as `import.meta.url` is `__importMetaUrl`, which `cjsOf` defines in each file that reads it.
 */
export const buildOptions = (outdir: string): esbuild.BuildOptions & { readonly metafile: true; readonly write: false } => ({
  ...common,
  entryPoints: { main: "bin/weatherproof.ts" },
  outdir,
  splitting: true,
  format: "esm",
  outExtension: { ".js": ".cjs" },
  // ES modules where a package offers both: they tree-shake, CommonJS does not.
  mainFields: ["module", "main"],
  chunkNames: "chunks/[name]-[hash]",
  define: { "import.meta.url": "__importMetaUrl" },
  // Inline, for `cjsOf` to map its output back to the sources.
  sourcemap: "inline",
  // The sources are not shipped: the maps give files and lines to stack traces, not the code.
  sourcesContent: false,
  legalComments: "linked",
  plugins: [undiciParts],
  logOverride: { "import-is-undefined": "error" },
  metafile: true,
  write: false
})

/**
 * The launcher, `weatherproof.js` (package.json's `bin`): it sets V8's compiler tiers for the
 * command (app/cli/v8Tiers.ts), then runs `main.cjs` through the compile cache. It is CommonJS
 * (`launcherPackage` says so for its directory): an ES module entry loads Node's ES module loader,
 * some 6 ms of every start, and nothing of the CLI needs it.
 */
const launcherOptions = (outdir: string): esbuild.BuildOptions => ({
  ...common,
  stdin: {
    contents: [
      `import { load } from "./app/cli/compileCache.ts"`,
      `import { setV8Tiers } from "./app/cli/v8Tiers.ts"`,
      `import { join } from "node:path"`,
      `setV8Tiers(process.argv.slice(2), require)`,
      `const main = load(join(__dirname, "main.cjs"))`,
      `;(main as typeof import("./bin/weatherproof.ts")).run()`
    ].join("\n"),
    resolveDir: repoRoot,
    sourcefile: "weatherproof-launcher.ts",
    loader: "ts"
  },
  outfile: NodePath.join(outdir, "weatherproof.js"),
  format: "cjs",
  banner: { js: "#!/usr/bin/env node" },
  sourcemap: "linked",
  sourcesContent: false
})

/** `dist/cli/package.json`: the package is ES modules; the launcher, `weatherproof.js`, beside it is CommonJS. */
const launcherPackage = `${JSON.stringify({ type: "commonjs" })}\n`

/** Defines what the sources read as `import.meta.url` in a CommonJS file. */
const importMetaUrl = `var __importMetaUrl = require("node:url").pathToFileURL(__filename).href;`

/**
 * One file of the split build as CommonJS: esbuild splits only ES modules, and Node 20 caches the
 * compilation of none (app/cli/compileCache.ts). Dynamic imports become requires (a `vm.Script`
 * has no loader for `import()`); the file's source map follows the inline one through. Each file
 * is plain CommonJS, which Node's own `require` runs too. Its exports are values where they cannot
 * change (scripts/chunkExports.ts): a call into another chunk then runs no getter.
 */
const cjsOf = async (file: esbuild.OutputFile): Promise<ReadonlyArray<readonly [string, string]>> => {
  // bin/weatherproof.ts's hashbang: `main.cjs` is not the bin (the line stays, so the source map's lines hold).
  const { code, map } = await esbuild.transform(withDataExports(file.text.replace(/^#![^\n]*/, "")), {
    banner: file.text.includes("__importMetaUrl") ? importMetaUrl : "",
    format: "cjs",
    platform: "node",
    target: "node20",
    supported: { "dynamic-import": false },
    minify: true,
    sourcemap: "external",
    sourcefile: NodePath.basename(file.path)
  })
  return [
    [file.path, `${code}//# sourceMappingURL=${NodePath.basename(file.path)}.map\n`],
    [`${file.path}.map`, map]
  ]
}

/**
 * Writes the bundle into `outdir` (emptied first, so no chunk of an earlier build stays) and returns
 * esbuild's result for `main` and its chunks, whose metafile says which sources each file holds.
 */
export const bundleCli = async (outdir: string = defaultOutdir): Promise<esbuild.BuildResult<{ metafile: true }>> => {
  await rm(outdir, { recursive: true, force: true })
  const built = await esbuild.build(buildOptions(outdir))
  const files = await Promise.all(
    built.outputFiles.map((file) => file.path.endsWith(".cjs") ? cjsOf(file) : [[file.path, file.text] as const])
  )
  await Promise.all(files.flat().map(async ([path, text]) => {
    await mkdir(NodePath.dirname(path), { recursive: true })
    await writeFile(path, text)
  }))
  await esbuild.build(launcherOptions(outdir))
  await writeFile(NodePath.join(outdir, "package.json"), launcherPackage)
  await chmod(NodePath.join(outdir, "weatherproof.js"), 0o755)
  return built
}

const isEntryPoint = (): boolean => {
  const script = process.argv[1]
  return script !== undefined && realpathSync(script) === fileURLToPath(import.meta.url)
}

if (isEntryPoint()) await bundleCli()
