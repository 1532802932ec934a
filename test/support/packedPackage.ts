/**
 * The package as a user gets it: `npm pack` of this repository, installed into a fresh project
 * with only the peer dependencies beside it (`effect`, `@effect/platform`,
 * `@effect/platform-node`), at the versions this repository is tested with.
 *
 * Packing and installing take seconds, and vitest runs test files in separate workers, so the
 * installed project is cached under the OS temp dir, keyed by a hash of the tarball and the
 * versions installed beside it, and built under a lock: the first worker installs, the others
 * (and later runs) reuse it. Every child process has a timeout, and so has the wait for the lock.
 */
import { execFile } from "node:child_process"
import { createHash } from "node:crypto"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { setTimeout as sleep } from "node:timers/promises"
import { fileURLToPath } from "node:url"
import { bundleCli, defaultOutdir as bundleDir } from "../../scripts/bundleCli.js"

/** The repository's root directory. */
export const repoRoot = fileURLToPath(new URL("../..", import.meta.url))

/** The package's name, as users import it. */
export const packageName = "weatherproof"

/** The public modules: every `src/<Name>.ts` except `index.ts`, sorted. */
export const publicModules = async (): Promise<ReadonlyArray<string>> =>
  (await fs.readdir(path.join(repoRoot, "src")))
    .filter((file) => file.endsWith(".ts") && !file.endsWith(".d.ts") && file !== "index.ts")
    .map((file) => file.slice(0, -".ts".length))
    .sort()

/**
 * An entry point's conditions: its types, and its ES module for `import` and `require` alike (Node
 * loads an ES module by `require` from 20.19 on).
 */
const conditionsOf = (name: string) => ({ types: `./dist/src/${name}.d.ts`, default: `./dist/src/${name}.js` })

/** What `exports` in package.json must be: `.` and `./<Name>` for every public module. */
export const expectedExports = (modules: ReadonlyArray<string>) =>
  Object.fromEntries([
    [".", conditionsOf("index")],
    ...modules.map((name) => [`./${name}`, conditionsOf(name)])
  ])

/** The peer dependencies a user installs beside the package. */
const peers = ["effect", "@effect/platform", "@effect/platform-node"]

/**
 * What the docs' examples import besides the package and its peers: test tools, Node's types,
 * the optional peer `@effect/ai` (with its own peers) of `weatherproof/AiLanguageModel`, the
 * OpenTelemetry SDK and OTLP exporters of the tracing set-up, and the plain `openai` client.
 */
const docsTools = [
  "@effect/vitest",
  "vitest",
  "@types/node",
  "@effect/ai",
  "@effect/experimental",
  "@effect/rpc",
  "@effect/opentelemetry",
  "@opentelemetry/sdk-trace-base",
  "@opentelemetry/sdk-metrics",
  "@opentelemetry/exporter-trace-otlp-http",
  "@opentelemetry/exporter-metrics-otlp-http",
  "openai"
]

/** Entry points that need an optional peer dependency, and that peer. */
export const optionalPeerEntries: Readonly<Record<string, string>> = { "./AiLanguageModel": "@effect/ai" }

export interface PackedPackage {
  /** Paths inside the tarball, relative to the package root. */
  readonly files: ReadonlyArray<string>
  /** A project with the tarball and its peers installed (and nothing else at its top). */
  readonly projectDir: string
  /** The installed package, `<projectDir>/node_modules/weatherproof`. */
  readonly packageDir: string
}

const cacheRoot = path.join(os.tmpdir(), "weatherproof-packed")
const lockWaitMs = 120_000
const unusedCacheMaxAgeMs = 24 * 60 * 60 * 1000

// -----------------------------------------------------------------------------
// Child processes
// -----------------------------------------------------------------------------

/**
 * The environment for npm, without what `npm test` exports to its scripts about *this* package
 * (`npm_package_*`, `npm_config_local_prefix`, …), so a nested npm works on its own directory.
 */
const npmEnv = (): NodeJS.ProcessEnv =>
  Object.fromEntries(
    Object.entries(process.env).filter(([name]) =>
      !/^(npm_package_|npm_lifecycle_|npm_config_local_prefix$|npm_command$|INIT_CWD$)/i.test(name)
    )
  )

/** Runs a command; resolves with its stdout, rejects with its output when it fails or times out. */
export const run = (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly cwd: string; readonly timeoutMs: number; readonly env?: NodeJS.ProcessEnv }
): Promise<{ readonly stdout: string; readonly stderr: string }> =>
  new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      { cwd: options.cwd, env: options.env ?? process.env, timeout: options.timeoutMs, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) =>
        error === null
          ? resolve({ stdout, stderr })
          : reject(new Error([
            `in ${options.cwd}: ${error.message}`,
            ...(error.killed ? [`(killed after ${options.timeoutMs} ms)`] : []),
            stdout,
            stderr
          ].join("\n")))
    )
  })

const npm = (args: ReadonlyArray<string>, cwd: string, timeoutMs: number) =>
  run("npm", args, { cwd, timeoutMs, env: npmEnv() })

const installFlags = ["--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts"]

// -----------------------------------------------------------------------------
// Lock: one directory, created atomically (a renamed temp dir holding the owner's pid)
// -----------------------------------------------------------------------------

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

const ownerOf = async (lock: string): Promise<number | undefined> => {
  const text = await fs.readFile(path.join(lock, "pid"), "utf8").catch(() => undefined)
  return text === undefined ? undefined : Number(text)
}

const withLock = async <A>(body: () => Promise<A>): Promise<A> => {
  await fs.mkdir(cacheRoot, { recursive: true })
  const lock = path.join(cacheRoot, "lock")
  const deadline = Date.now() + lockWaitMs
  for (;;) {
    const mine = await fs.mkdtemp(path.join(cacheRoot, "lock-"))
    await fs.writeFile(path.join(mine, "pid"), String(process.pid))
    const taken = await fs.rename(mine, lock).then(() => true, () => false)
    if (taken) break
    await fs.rm(mine, { recursive: true, force: true })
    const owner = await ownerOf(lock)
    if (owner !== undefined && !isAlive(owner)) {
      await fs.rm(lock, { recursive: true, force: true })
      continue
    }
    if (Date.now() > deadline) throw new Error(`${lock} is still held by process ${owner} after ${lockWaitMs} ms`)
    await sleep(200)
  }
  try {
    return await body()
  } finally {
    await fs.rm(lock, { recursive: true, force: true })
  }
}

// -----------------------------------------------------------------------------
// Build: only when dist/ is older than the sources (CI builds it in `npm install`)
// -----------------------------------------------------------------------------

const builtDirs = ["src", "bin", "app"]
const distDir = path.join(repoRoot, "dist")

const filesUnder = async (dir: string, extension: string): Promise<ReadonlyArray<string>> => {
  const entries = await fs.readdir(dir, { recursive: true }).catch(() => [])
  return entries
    .filter((file) => file.endsWith(extension) && !file.endsWith(".d.ts"))
    .map((file) => path.join(dir, file))
}

const mtimeOf = (file: string) => fs.stat(file).then((stat) => stat.mtimeMs, () => undefined)

/**
 * Whether dist/ misses a source's output, has an output older than its source, or one without a
 * source, or the CLI's bundle (built from all of them) is older than a source.
 */
const isStale = async (): Promise<boolean> => {
  let newestSource = 0
  for (const dir of builtDirs) {
    const sources = (await filesUnder(path.join(repoRoot, dir), ".ts")).map((file) => path.relative(repoRoot, file))
    const outputs = new Set(
      (await filesUnder(path.join(distDir, dir), ".js")).map((file) => path.relative(distDir, file))
    )
    if (sources.length !== outputs.size) return true
    for (const source of sources) {
      const output = source.replace(/\.ts$/, ".js")
      if (!outputs.has(output)) return true
      const sourceTime = (await mtimeOf(path.join(repoRoot, source))) ?? 0
      if (sourceTime > ((await mtimeOf(path.join(distDir, output))) ?? 0)) return true
      newestSource = Math.max(newestSource, sourceTime)
    }
  }
  return ((await mtimeOf(path.join(bundleDir, "weatherproof.js"))) ?? 0) < newestSource
}

const ensureBuilt = async (): Promise<void> => {
  if (!(await isStale())) return
  for (const dir of builtDirs) await fs.rm(path.join(distDir, dir), { recursive: true, force: true })
  const tsc = path.join(repoRoot, "node_modules", "typescript", "bin", "tsc")
  await run(process.execPath, [tsc, "-p", "tsconfig.build.json"], { cwd: repoRoot, timeoutMs: 120_000 })
  await bundleCli()
}

// -----------------------------------------------------------------------------
// Pack and install
// -----------------------------------------------------------------------------

/** The version of `name` this repository has installed. */
const installedVersion = async (name: string): Promise<string> =>
  JSON.parse(await fs.readFile(path.join(repoRoot, "node_modules", name, "package.json"), "utf8")).version

const versionsOf = async (names: ReadonlyArray<string>): Promise<Record<string, string>> =>
  Object.fromEntries(await Promise.all(names.map(async (name) => [name, await installedVersion(name)] as const)))

const isReady = (dir: string) => fs.access(path.join(dir, "ready")).then(() => true, () => false)

/** Marks `dir` complete (and recently used, for pruning). */
const markReady = (dir: string) => fs.writeFile(path.join(dir, "ready"), "")

const emptyDir = async (dir: string) => {
  await fs.rm(dir, { recursive: true, force: true })
  await fs.mkdir(dir, { recursive: true })
}

/** Makes `dir` a project that depends on `dependencies` and installs them; `extraFlags` go to npm. */
const installProject = async (
  dir: string,
  name: string,
  dependencies: Record<string, string>,
  extraFlags: ReadonlyArray<string> = []
) => {
  const manifest = { name, private: true, type: "module", dependencies }
  await fs.writeFile(path.join(dir, "package.json"), JSON.stringify(manifest, null, 2))
  await npm(["install", ...installFlags, ...extraFlags], dir, 120_000)
  await markReady(dir)
}

/** Removes cached projects nobody used for a day (each run takes well under a minute). */
const pruneUnused = async (keep: string) => {
  for (const entry of await fs.readdir(cacheRoot)) {
    const dir = path.join(cacheRoot, entry)
    if (dir === keep || entry === "lock") continue
    const usedAt = (await mtimeOf(path.join(dir, "ready"))) ?? (await mtimeOf(dir)) ?? 0
    if (Date.now() - usedAt > unusedCacheMaxAgeMs) await fs.rm(dir, { recursive: true, force: true })
  }
}

const packAndInstall = (): Promise<PackedPackage> =>
  withLock(async () => {
    await ensureBuilt()
    const staging = await fs.mkdtemp(path.join(cacheRoot, "pack-"))
    try {
      const pack = ["pack", "--ignore-scripts", "--json", "--pack-destination", staging]
      const { stdout } = await npm(pack, repoRoot, 60_000)
      const [packed] = JSON.parse(stdout) as ReadonlyArray<{ filename: string; files: ReadonlyArray<{ path: string }> }>
      if (packed === undefined) throw new Error(`npm pack printed no package: ${stdout}`)
      const tarball = await fs.readFile(path.join(staging, packed.filename))
      const peerVersions = await versionsOf(peers)
      const besides = JSON.stringify({ ...peerVersions, ...(await versionsOf(docsTools)) })
      const key = createHash("sha256").update(tarball).update(besides).digest("hex").slice(0, 16)
      const projectDir = path.join(cacheRoot, key)
      if (await isReady(projectDir)) {
        await markReady(projectDir)
      } else {
        await emptyDir(projectDir)
        await fs.writeFile(path.join(projectDir, "weatherproof.tgz"), tarball)
        const dependencies = { [packageName]: "file:weatherproof.tgz", ...peerVersions }
        await installProject(projectDir, "weatherproof-user", dependencies)
      }
      await pruneUnused(projectDir)
      return {
        files: packed.files.map((file) => file.path).sort(),
        projectDir,
        packageDir: path.join(projectDir, "node_modules", packageName)
      }
    } finally {
      await fs.rm(staging, { recursive: true, force: true })
    }
  })

let packedOnce: Promise<PackedPackage> | undefined

/** The packed and installed package, once per process (and reused across processes and runs). */
export const packedPackage = (): Promise<PackedPackage> => (packedOnce ??= packAndInstall())

/**
 * A project for the docs' examples and the entry points that need an optional peer: `docs/`
 * inside the packed package's project, with the tarball, its peers and the tools of `docsTools`
 * installed there on their own (so the package resolves its optional peers from there).
 */
const installDocsProject = async (): Promise<string> => {
  const { projectDir } = await packedPackage()
  const docsDir = path.join(projectDir, "docs")
  await withLock(async () => {
    if (await isReady(docsDir)) return markReady(docsDir)
    await emptyDir(docsDir)
    const dependencies = { [packageName]: "file:../weatherproof.tgz", ...(await versionsOf([...peers, ...docsTools])) }
    return installProject(docsDir, "weatherproof-docs", dependencies)
  })
  return docsDir
}

let docsOnce: Promise<string> | undefined

/** The directory of the docs' project (see `installDocsProject`), once per process. */
export const docsProject = (): Promise<string> => (docsOnce ??= installDocsProject())
