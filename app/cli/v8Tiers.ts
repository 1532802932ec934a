/**
 * V8's compiler tiers for a command that ends (every command but `serve`, which runs for long and
 * keeps V8's defaults):
 *
 * - WebAssembly at the baseline tier only (`--liftoff-only`). undici parses HTTP with llhttp,
 *   WebAssembly that V8 compiles once more, optimised, on a worker thread, and Node waits for that
 *   compile before it exits: about 250 ms and as much CPU at the end of every run, for a parser
 *   whose whole time in a batch of 5,000 requests is some 60 ms.
 * - JavaScript optimised sooner: a quarter of V8 11.3's interrupt budget (67,584 bytes of bytecode
 *   run before a function is looked at for optimisation). A batch runs the same calls thousands of
 *   times, through the Effect runtime's many small functions; measured on Node 20 (5,000 and 20,000
 *   requests to a loopback upstream), the whole run takes 5-12 % less CPU, for 9-17 ms more
 *   before its first request (docs/benchmarks.md, "V8's interrupt budget"). Other V8 versions
 *   tier differently and keep their default.
 *
 * The launcher (scripts/bundleCli.ts) sets them before it compiles the bundle's files: V8 reads
 * the WebAssembly flag when it compiles a module, and keys its code cache (app/cli/compileCache.ts)
 * by its flags, so every file of a run is cached under the same ones.
 *
 * Node keeps a code cache of its own builtins, made under V8's default flags: a builtin first
 * loaded after the flags are set is compiled from its source. So a command that sends requests
 * loads the builtins it uses first (some 20 ms sooner to its first request).
 */
import { setFlagsFromString } from "node:v8"
import { commandIndex } from "./argv.js"

/** The V8 on which the interrupt budget was measured, and its budget there. */
const tunedV8 = { version: "11.3.", interruptBudget: 67_584 } as const

/**
 * The V8 flags a run of the command line given `args` (`process.argv` without node and the script)
 * sets, on the V8 whose version is `v8Version`.
 */
export const v8Flags = (args: ReadonlyArray<string>, v8Version: string): ReadonlyArray<string> => {
  if (commandOf(args) === "serve") return []
  return v8Version.startsWith(tunedV8.version)
    ? ["--liftoff-only", `--interrupt-budget=${tunedV8.interruptBudget / 4}`]
    : ["--liftoff-only"]
}

/** The subcommand, if any. */
const commandOf = (args: ReadonlyArray<string>): string | undefined => args[commandIndex(args)]

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
  "tls",
  "tty"
]

/**
 * Sets `v8Flags(args)` before any code of the bundle is compiled; for a command that sends
 * requests, after `load` (the launcher's `require`) has loaded the builtins it uses.
 */
export const setV8Tiers = (args: ReadonlyArray<string>, load: (id: string) => unknown): void => {
  const flags = v8Flags(args, process.versions.v8)
  if (flags.length > 0 && sendingCommands.has(commandOf(args))) builtinsOfRequests.forEach((name) => load(`node:${name}`))
  flags.forEach((flag) => setFlagsFromString(flag))
}
