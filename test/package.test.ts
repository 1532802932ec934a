/**
 * The package as users install it: `exports` lists the public modules and nothing else, the
 * tarball ships the compiled library, CLI and docs (no sources, tests or benchmarks), and in a
 * fresh project with only the peer dependencies beside it every public module imports, first or
 * after any other, while `internal/` cannot be imported at all.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import ts from "typescript"
import {
  docsProject,
  expectedExports,
  optionalPeerEntries,
  packageName,
  type PackedPackage,
  packedPackage,
  publicModules,
  repoRoot,
  run
} from "./support/packedPackage.js"

const readJson = async (file: string) => JSON.parse(await fs.readFile(file, "utf8"))

/** Runs `script` as an ES module in a fresh `node` in `cwd`, with `args` as `process.argv.slice(1)`. */
const node = (cwd: string, script: string, args: ReadonlyArray<string>) =>
  Effect.tryPromise({
    try: () => run(process.execPath, ["--input-type=module", "-e", script, ...args], { cwd, timeoutMs: 30_000 }),
    catch: (error) => error as Error
  }).pipe(Effect.map(({ stdout }) => stdout))

describe("package.json", () => {
  it("exports '.' and every public module of src/, and nothing else", async () => {
    const { exports } = await readJson(path.join(repoRoot, "package.json"))
    const expected = expectedExports(await publicModules())
    const names = (entries: object) => Object.keys(entries)
    expect({
      missing: names(expected).filter((name) => !(name in exports)),
      unexpected: names(exports).filter((name) => !(name in expected)),
      wrongTargets: names(expected).filter((name) =>
        name in exports && JSON.stringify(exports[name]) !== JSON.stringify(expected[name])
      )
    }).toEqual({ missing: [], unexpected: [], wrongTargets: [] })
  })

  it("maps each public module to its types for a resolution that reads no exports (node10), and nothing else", async () => {
    const { typesVersions } = await readJson(path.join(repoRoot, "package.json"))
    const modules = await publicModules()
    expect(typesVersions).toEqual({ "*": Object.fromEntries(modules.map((name) => [name, [`./dist/src/${name}.d.ts`]])) })
  })
})

// -----------------------------------------------------------------------------
// Import order: each entry point first, in a fresh process, then all the others
// -----------------------------------------------------------------------------

/**
 * Imports `process.argv.slice(1)` in order and prints `{}`, or, at the first that fails, which
 * one threw what and where in the package.
 */
const importInOrder = String.raw`
let failure = {}
for (const specifier of process.argv.slice(1)) {
  try {
    await import(specifier)
  } catch (error) {
    const where = String(error?.stack ?? "").match(/node_modules\/weatherproof\/([^\s)]+?:\d+):\d+/)
    failure = { specifier, error: String(error) + (where === null ? "" : " at " + where[1]) }
    break
  }
}
console.log(JSON.stringify(failure))
`

const specifierOf = (exportName: string) =>
  exportName === "." ? packageName : `${packageName}/${exportName.slice("./".length)}`

/** What went wrong importing `first` first, then `rest`; undefined when nothing did. */
const importFirst = (projectDir: string, first: string, rest: ReadonlyArray<string>) =>
  node(projectDir, importInOrder, [first, ...rest]).pipe(
    Effect.flatMap((output) =>
      Effect.try({
        try: () => JSON.parse(output.trim().split("\n").at(-1) ?? "") as { specifier?: string; error?: string },
        catch: () => new Error(`printed ${output}`)
      })
    ),
    Effect.map(({ error, specifier }) =>
      error === undefined ? undefined : `${first} first: importing ${specifier} threw ${error}`
    ),
    Effect.catchAll((error) => Effect.succeed(`${first} first: ${error.message}`))
  )

// -----------------------------------------------------------------------------
// Module graph of the shipped JavaScript
// -----------------------------------------------------------------------------

/** Each module of `dir` (relative path) with the modules of `dir` it imports. */
const moduleGraph = async (dir: string): Promise<ReadonlyMap<string, ReadonlyArray<string>>> => {
  const files = (await fs.readdir(dir, { recursive: true })).filter((file) => file.endsWith(".js")).sort()
  const graph = new Map<string, ReadonlyArray<string>>()
  for (const file of files) {
    const { importedFiles } = ts.preProcessFile(await fs.readFile(path.join(dir, file), "utf8"), true, false)
    graph.set(
      file,
      importedFiles
        .map((imported) => imported.fileName)
        .filter((name) => name.startsWith("."))
        .map((name) => path.posix.join(path.posix.dirname(file), name))
    )
  }
  return graph
}

/** The shortest import chain from `start` back to itself, if there is one. */
const cycleThrough = (graph: ReadonlyMap<string, ReadonlyArray<string>>, start: string) => {
  const cameFrom = new Map<string, string>()
  const queue = [start]
  for (let at = queue.shift(); at !== undefined; at = queue.shift()) {
    for (const next of graph.get(at) ?? []) {
      if (next === start) {
        const chain = [at]
        while (chain[0] !== start) chain.unshift(cameFrom.get(chain[0]!)!)
        return [...chain, start]
      }
      if (!cameFrom.has(next)) {
        cameFrom.set(next, at)
        queue.push(next)
      }
    }
  }
  return undefined
}

/** Every import cycle, once, as `a.js → b.js → a.js` (starting from its first module in order). */
const importCycles = (graph: ReadonlyMap<string, ReadonlyArray<string>>): ReadonlyArray<string> => {
  const seen = new Set<string>()
  const cycles: Array<string> = []
  for (const module of graph.keys()) {
    const cycle = seen.has(module) ? undefined : cycleThrough(graph, module)
    if (cycle === undefined) continue
    cycle.forEach((member) => seen.add(member))
    cycles.push(cycle.join(" → "))
  }
  return cycles
}

/** The files under docs/, as paths in the package. */
const docFiles = async (): Promise<ReadonlyArray<string>> => {
  const dir = path.join(repoRoot, "docs")
  const entries = await fs.readdir(dir, { recursive: true })
  const isFile = await Promise.all(entries.map((entry) => fs.stat(path.join(dir, entry)).then((stat) => stat.isFile())))
  return entries.filter((_, i) => isFile[i]).map((entry) => `docs/${entry.split(path.sep).join("/")}`)
}

/** The doc comment a file starts with, if any. */
const leadingDoc = (text: string): string | undefined =>
  (ts.getLeadingCommentRanges(text, 0) ?? [])
    .map((range) => text.slice(range.pos, range.end))
    .find((comment) => comment.startsWith("/**"))

// -----------------------------------------------------------------------------

describe("the packed package, installed with only its peer dependencies", () => {
  let packed: PackedPackage
  beforeAll(async () => {
    packed = await packedPackage()
  }, 240_000)

  it("ships dist/src, the bundled CLI, the docs, README.md and LICENSE, and no sources, tests, benchmarks or unbundled CLI", async () => {
    const { exports, bin } = await readJson(path.join(packed.packageDir, "package.json"))
    const targets = Object.values(exports as Record<string, Record<string, string>>)
      .flatMap((conditions) => Object.values(conditions))
      .map((target) => target.replace(/^\.\//, ""))
    const docs = await docFiles()
    const cli = `${bin.weatherproof}`
    // The launcher and the command line it runs (scripts/bundleCli.ts), with their source maps.
    const main = path.posix.join(path.posix.dirname(cli), "main.cjs")
    const required = ["package.json", "README.md", "LICENSE", cli, `${cli}.map`, main, `${main}.map`, ...targets, ...docs]
    const forbidden = /^(src|test|bench|bin|app|scripts|dist\/(bench|test|bin|app|scripts))\//
    expect({
      missing: required.filter((file) => !packed.files.includes(file)),
      unwanted: packed.files.filter((file) => forbidden.test(file))
    }).toEqual({ missing: [], unwanted: [] })
  })

  it("its library's source maps carry their sources, which it does not ship: a test runner reading them finds every file", async () => {
    const maps = packed.files.filter((file) => file.startsWith("dist/src/") && file.endsWith(".js.map"))
    expect(maps.length).toBeGreaterThan(20)
    const missing: Array<string> = []
    for (const file of maps) {
      const { sources, sourcesContent } = await readJson(path.join(packed.packageDir, file))
      sources.forEach((source: string, i: number) => {
        if (typeof sourcesContent?.[i] !== "string") missing.push(`${file}: ${source}`)
      })
    }
    expect(missing).toEqual([])
  })

  it.live("runs its bin as installed: --version, and the demo (the whole batch path) verified", () =>
    Effect.gen(function*() {
      const bin = path.join(packed.projectDir, "node_modules", ".bin", "weatherproof")
      const weatherproof = (args: ReadonlyArray<string>) =>
        Effect.promise(() => run(process.execPath, [bin, ...args], { cwd: packed.projectDir, timeoutMs: 60_000 }))
      expect((yield* weatherproof(["--version"])).stdout.trim()).toBe("0.1.0")
      const demo = yield* weatherproof(["demo", "--requests", "40"])
      expect(demo.stdout).toContain("requests:  40 (40 succeeded, 0 failed")
      expect(demo.stdout).toContain("verified:  every answer matches its request")
    }), 90_000)

  it.live("imports every public entry point first, then all the others, without an error", () =>
    Effect.gen(function*() {
      const { exports } = yield* Effect.promise(() => readJson(path.join(packed.packageDir, "package.json")))
      const names = Object.keys(exports)
      // An entry point that needs an optional peer is imported where that peer is installed.
      const entries = names.filter((name) => !(name in optionalPeerEntries)).map(specifierOf)
      const withPeers = names.map(specifierOf)
      const docsDir = yield* Effect.promise(docsProject)
      const failures = yield* Effect.forEach(
        [
          ...entries.map((first) => importFirst(packed.projectDir, first, entries.filter((entry) => entry !== first))),
          ...Object.keys(optionalPeerEntries).map(specifierOf).map((first) =>
            importFirst(docsDir, first, withPeers.filter((entry) => entry !== first))
          )
        ],
        (check) => check,
        { concurrency: Math.max(2, Math.min(8, os.availableParallelism())) }
      )
      expect(failures.filter((failure) => failure !== undefined)).toEqual([])
    }), 120_000)

  it.live("loads an optional peer only for the entry point that needs it", () =>
    Effect.gen(function*() {
      const { exports } = yield* Effect.promise(() => readJson(path.join(packed.packageDir, "package.json")))
      for (const [entry, peer] of Object.entries(optionalPeerEntries)) {
        const failure = yield* importFirst(packed.projectDir, specifierOf(entry), [])
        expect(failure, entry).toContain(peer)
      }
      const others = Object.keys(exports).filter((name) => !(name in optionalPeerEntries)).map(specifierOf)
      expect(yield* importFirst(packed.projectDir, others[0]!, others.slice(1))).toBeUndefined()
    }), 60_000)

  // Node loads an ES module by `require` from 20.19 on (`process.features.require_module`).
  it.live.skipIf(process.features.require_module !== true)(
    "a CommonJS program requires every entry point and calls through it, beside effect's own CommonJS build",
    () =>
      Effect.gen(function*() {
        const { exports } = yield* Effect.promise(() => readJson(path.join(packed.packageDir, "package.json")))
        const entries = Object.keys(exports).filter((name) => !(name in optionalPeerEntries)).map(specifierOf)
        const script = String.raw`
          const { Effect, Redacted } = require("effect")
          for (const entry of process.argv.slice(1)) require(entry)
          const { Resilient, Simulator } = require("weatherproof")
          const ask = (content) =>
            Effect.flatMap(Resilient.Resilient, (client) =>
              client.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content }] }))
          const program = Effect.gen(function*() {
            const simulator = yield* Simulator.make({ limit: 2 })
            const client = Resilient.layerDefault({ baseUrl: simulator.baseUrl, keys: [Redacted.make(Simulator.defaultKey)] })
            return yield* Effect.forEach(["q1", "q2", "q3"], ask, { concurrency: 3 }).pipe(Effect.provide(client))
          })
          Effect.runPromise(Effect.scoped(program)).then((answers) =>
            console.log(JSON.stringify(answers.map((answer) => answer.choices[0].message.content)))
          )
        `
        const { stdout } = yield* Effect.promise(() =>
          run(process.execPath, ["--input-type=commonjs", "-e", script, ...entries], { cwd: packed.projectDir, timeoutMs: 30_000 })
        )
        // The Simulator answers with what it was asked.
        const contents: ReadonlyArray<string> = JSON.parse(stdout)
        expect(contents.map((content, i) => content.startsWith(`echo:q${i + 1}`))).toEqual([true, true, true])
      }),
    60_000
  )

  it("has no import cycle among its modules (an internal imports only types from its public module)", async () => {
    expect(importCycles(await moduleGraph(path.join(packed.packageDir, "dist", "src")))).toEqual([])
  })

  it.live("cannot import internal/ or any other path that exports does not list", () =>
    Effect.gen(function*() {
      const attempts = [
        `${packageName}/internal/concurrencyLimiter`,
        `${packageName}/internal/anything`,
        `${packageName}/dist/src/internal/concurrencyLimiter.js`,
        `${packageName}/dist/src/ConcurrencyLimiter.js`
      ]
      const script = String.raw`
        const codes = {}
        for (const specifier of process.argv.slice(1)) {
          codes[specifier] = await import(specifier).then(() => "imported", (error) => error.code ?? String(error))
        }
        console.log(JSON.stringify(codes))
      `
      const output = yield* Effect.orDie(node(packed.projectDir, script, attempts))
      expect(JSON.parse(output)).toEqual(
        Object.fromEntries(attempts.map((specifier) => [specifier, "ERR_PACKAGE_PATH_NOT_EXPORTED"]))
      )
    }))

  it("types every public entry point under each module resolution TypeScript has, node10 included, and no internal one", async () => {
    const { exports } = await readJson(path.join(packed.packageDir, "package.json"))
    const file = path.join(packed.projectDir, "entries.ts")
    const entries = Object.keys(exports).map(specifierOf)
    await fs.writeFile(file, [...entries, `${packageName}/internal/text`].map((entry, i) => `import * as M${i} from "${entry}"\nvoid M${i}\n`).join(""))
    const unresolved = (moduleResolution: ts.ModuleResolutionKind, module: ts.ModuleKind) =>
      ts.getPreEmitDiagnostics(ts.createProgram([file], { moduleResolution, module, target: ts.ScriptTarget.ES2022, noEmit: true, skipLibCheck: true }))
        .map((diagnostic) => ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n").match(/Cannot find module '([^']+)'/)?.[1] ?? "other")
    // node10 reads no `exports`: `typesVersions` takes its place for the types.
    for (const [resolution, module] of [
      [ts.ModuleResolutionKind.Node10, ts.ModuleKind.CommonJS],
      [ts.ModuleResolutionKind.NodeNext, ts.ModuleKind.NodeNext],
      [ts.ModuleResolutionKind.Bundler, ts.ModuleKind.ESNext]
    ] as const) {
      expect(unresolved(resolution, module), ts.ModuleResolutionKind[resolution]).toEqual([`${packageName}/internal/text`])
    }
  }, 60_000)

  it("keeps each module's leading doc comment in its .d.ts", async () => {
    const problems: Array<string> = []
    for (const name of ["index", ...(await publicModules())]) {
      const doc = leadingDoc(await fs.readFile(path.join(repoRoot, "src", `${name}.ts`), "utf8"))
      const declarations = path.join(packed.packageDir, "dist", "src", `${name}.d.ts`)
      const shipped = leadingDoc(await fs.readFile(declarations, "utf8").catch(() => ""))
      if (doc === undefined) problems.push(`${name}: src/${name}.ts starts with no doc comment`)
      else if (shipped !== doc) problems.push(`${name}: dist/src/${name}.d.ts lacks the module's doc comment`)
    }
    // TypeScript drops a file's first comment from the .d.ts with the import it is attached to
    // when that import is elided; a blank line after the comment detaches it, and it is kept.
    expect(problems, "a blank line between the doc comment and the first import keeps it").toEqual([])
  })
})
