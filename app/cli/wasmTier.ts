/**
 * WebAssembly at V8's baseline tier only (Liftoff) for a command that ends. undici parses HTTP
 * with llhttp, WebAssembly that V8 compiles once more, optimised, on a worker thread, and Node
 * waits for that compile before it exits: about 250 ms and as much CPU at the end of every run,
 * for a parser whose whole time in a batch of 5,000 requests is some 60 ms. `serve` runs for long
 * and keeps V8's default.
 *
 * The launcher (scripts/bundleCli.ts) sets it before it compiles the bundle's files: V8 reads the
 * flag when it compiles a WebAssembly module, and keys its code cache (app/cli/compileCache.ts) by
 * its flags, so every file of a run is cached under the same ones.
 *
 * Node keeps a code cache of its own builtins, made under V8's default flags: a builtin first
 * loaded after the flag is set is compiled from its source. So a command that sends requests
 * loads the builtins it uses first (some 20 ms sooner to its first request).
 */
import { setFlagsFromString } from "node:v8"

/** The V8 flags a run of the command line given `args` (`process.argv` without node and the script) sets. */
export const wasmFlags = (args: ReadonlyArray<string>): ReadonlyArray<string> =>
  commandOf(args) === "serve" ? [] : ["--liftoff-only"]

/** The subcommand: the first argument that is not an option. */
const commandOf = (args: ReadonlyArray<string>): string | undefined => args.find((arg) => !arg.startsWith("-"))

/** The commands that send requests and end. */
const sendingCommands: ReadonlySet<string | undefined> = new Set(["batch", "demo"])

/**
 * The builtins `batch` loads besides the launcher's (undici, `@effect/platform-node`), as
 * `process.moduleLoadList` lists them, and `dns`, for an upstream named by its host name. One
 * missing here only loads later; the demo's simulator loads a few more.
 */
const builtinsOfRequests: ReadonlyArray<string> = [
  "assert",
  "diagnostics_channel",
  "dns",
  "fs/promises",
  "http",
  "http2",
  "net",
  "perf_hooks",
  "readline",
  "readline/promises",
  "stream",
  "stream/promises",
  "string_decoder",
  "tls"
]

/**
 * Sets `wasmFlags(args)`, before any WebAssembly is compiled; for a command that sends requests,
 * after `load` (the launcher's `require`) has loaded the builtins it uses.
 */
export const setWasmTier = (args: ReadonlyArray<string>, load: (id: string) => unknown): void => {
  const flags = wasmFlags(args)
  if (flags.length > 0 && sendingCommands.has(commandOf(args))) builtinsOfRequests.forEach((name) => load(`node:${name}`))
  flags.forEach((flag) => setFlagsFromString(flag))
}
