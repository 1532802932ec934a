/**
 * Runs the bundled command line (`dist/cli/main.cjs` and its chunks, CommonJS) with a V8 code
 * cache, so a start compiles only what changed since the last. Node 22's
 * `module.enableCompileCache()` does this for every module; Node 20 has no such API, and none for
 * ES modules, so the bundle's files are CommonJS and compiled here, through `vm.Script` and its
 * `cachedData`. The launcher (`dist/cli/weatherproof.js`, see scripts/bundleCli.ts) loads `main.cjs`
 * through `load` and runs the command line it exports.
 *
 * - Each file's cache is keyed by a hash of its path and its source (a cache V8 accepts for a
 *   different source of the same length would run the wrong code; one made for the same source at
 *   another path keeps that path, which stack traces would then name) and Node's version and
 *   architecture. V8 rejects a cache made by another V8 or with other flags; it is made again.
 * - A file whose cache was missing or rejected has it written when the process exits, with every
 *   function compiled meanwhile; atomically (a temporary file renamed), so a concurrent start reads
 *   the old one or the new one.
 * - The directory: `WEATHERPROOF_COMPILE_CACHE`, or `<tmpdir>/weatherproof-compile-cache-<uid>`;
 *   `WEATHERPROOF_COMPILE_CACHE=0` or Node's `NODE_DISABLE_COMPILE_CACHE=1` turns it off. The
 *   directory is made if missing, its parents never. Code from a directory another user can write
 *   to would run as ours: a directory not owned by this user, or writable by its group or others,
 *   is not used (with a warning when it was named).
 * - Each build writes new files, so the directory keeps the `maxCacheFiles` newest.
 * - The cache is an optimisation: any failure to read or write it leaves the run as it is.
 * - With source maps on (`--enable-source-maps`), Node's own `require` runs the files: it maps
 *   stack traces to the sources, which it does not do for code compiled through `vm.Script`.
 */
import { createHash } from "node:crypto"
import * as NodeFs from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import * as NodePath from "node:path"
import * as Vm from "node:vm"

/** The directory of the cache, or undefined for none (turned off, or not safe to use). */
const cacheDirectory = (env: NodeJS.ProcessEnv = process.env): string | undefined => {
  const chosen = env["WEATHERPROOF_COMPILE_CACHE"]
  if (chosen === "0" || env["NODE_DISABLE_COMPILE_CACHE"] === "1") return undefined
  const named = chosen !== undefined && chosen !== ""
  const directory = named
    ? NodePath.resolve(chosen)
    : NodePath.join(tmpdir(), `weatherproof-compile-cache-${process.getuid?.() ?? "user"}`)
  try {
    // Not its parents: a mistyped path would make a tree, and under /proc Node's recursive mkdir never returns.
    makeDirectory(directory)
    if (isPrivate(NodeFs.lstatSync(directory))) return directory
  } catch {
    // Not created, or gone: the same as not private.
  }
  if (named) {
    process.stderr.write(
      `weatherproof: WEATHERPROOF_COMPILE_CACHE=${directory} is not used: not a directory of this user that only it can write to\n`
    )
  }
  return undefined
}

/** Makes `directory` (mode 0700) unless it is there. */
const makeDirectory = (directory: string): void => {
  try {
    NodeFs.mkdirSync(directory, { mode: 0o700 })
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error
  }
}

/** How many cache files the directory keeps: a build's files are some ten. */
const maxCacheFiles = 100

/** A real directory of this user that no one else can write to. */
const isPrivate = (stats: NodeFs.Stats): boolean =>
  stats.isDirectory() && (process.getuid === undefined || stats.uid === process.getuid()) && (stats.mode & 0o022) === 0

/** A CommonJS module as the bundle's code uses it. */
interface Module {
  exports: unknown
}

/** A compiled file whose cache is to be written at exit. */
interface Pending {
  readonly script: Vm.Script
  readonly cacheFile: string
}

/**
 * Runs `entry`, a CommonJS file, and the files it requires by relative paths, each compiled with
 * its code cache; other requires (Node's builtins) go to Node. Returns the entry's exports.
 */
export const load = (entry: string): unknown =>
  process.sourceMapsEnabled ? createRequire(entry)(entry) : loadCached(entry, cacheDirectory())

/** `load` with the cache in `directory` (none when undefined). */
const loadCached = (entry: string, directory: string | undefined): unknown => {
  const modules = new Map<string, Module>()
  const pending: Array<Pending> = []

  const loadFile = (file: string): unknown => {
    const loaded = modules.get(file)
    if (loaded !== undefined) return loaded.exports
    const module: Module = { exports: {} }
    modules.set(file, module)
    const bytes = NodeFs.readFileSync(file)
    const source = bytes.toString("utf8")
    const cacheFile = directory === undefined ? undefined : NodePath.join(directory, cacheName(file, bytes))
    const cachedData = cacheFile === undefined ? undefined : readCache(cacheFile)
    const script = new Vm.Script(wrap(source), cachedData === undefined ? { filename: file } : { filename: file, cachedData })
    if (cacheFile !== undefined && (cachedData === undefined || script.cachedDataRejected === true)) {
      pending.push({ script, cacheFile })
    }
    const nodeRequire = createRequire(file)
    const require = (specifier: string): unknown =>
      specifier.startsWith(".") ? loadFile(NodePath.resolve(NodePath.dirname(file), specifier)) : nodeRequire(specifier)
    const body = script.runInThisContext() as (...args: ReadonlyArray<unknown>) => void
    body.call(module.exports, module.exports, require, module, file, NodePath.dirname(file))
    return module.exports
  }

  process.once("exit", () => {
    if (directory === undefined || pending.length === 0) return
    pending.forEach(writeCache)
    prune(directory)
  })
  return loadFile(entry)
}

/** The function a file's source is the body of, as Node wraps a CommonJS module: on the source's first line, so lines keep their numbers. */
const wrap = (source: string): string => `(function (exports, require, module, __filename, __dirname) {${source}\n})`

/**
 * Hashes the file's bytes as read (the same name as its text would give): hashing the text copied
 * the whole source into one string and encoded it again, some 10 ms of a batch's start (its nine
 * files, 1.1 MB), where the bytes take about 1.
 */
const cacheName = (file: string, bytes: Uint8Array): string =>
  `${createHash("sha256").update(`${file}\0`).update(bytes).digest("hex").slice(0, 32)}-${process.version}-${process.arch}.cache`

const readCache = (file: string): Buffer | undefined => {
  try {
    return NodeFs.readFileSync(file)
  } catch {
    return undefined
  }
}

const writeCache = ({ cacheFile, script }: Pending): void => {
  const temporary = `${cacheFile}.${process.pid}.tmp`
  try {
    NodeFs.writeFileSync(temporary, script.createCachedData(), { mode: 0o600 })
    NodeFs.renameSync(temporary, cacheFile)
  } catch {
    NodeFs.rm(temporary, { force: true }, () => {})
  }
}

/** Removes the oldest cache files beyond `maxCacheFiles`. */
const prune = (directory: string): void => {
  try {
    const files = NodeFs.readdirSync(directory)
      .filter((name) => name.endsWith(".cache"))
      .map((name) => NodePath.join(directory, name))
    if (files.length <= maxCacheFiles) return
    const byAge = files.map((file) => ({ file, mtime: NodeFs.statSync(file).mtimeMs })).sort((a, b) => a.mtime - b.mtime)
    for (const { file } of byAge.slice(0, files.length - maxCacheFiles)) NodeFs.rmSync(file, { force: true })
  } catch {
    // Another process pruned meanwhile, or the directory went: the next write prunes again.
  }
}
