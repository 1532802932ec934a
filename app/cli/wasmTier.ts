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
 */
import { setFlagsFromString } from "node:v8"

/** The V8 flags a run of the command line given `args` (`process.argv` without node and the script) sets. */
export const wasmFlags = (args: ReadonlyArray<string>): ReadonlyArray<string> =>
  commandOf(args) === "serve" ? [] : ["--liftoff-only"]

/** The subcommand: the first argument that is not an option. */
const commandOf = (args: ReadonlyArray<string>): string | undefined => args.find((arg) => !arg.startsWith("-"))

/** Sets `wasmFlags(args)`; before any WebAssembly is compiled. */
export const setWasmTier = (args: ReadonlyArray<string>): void => wasmFlags(args).forEach((flag) => setFlagsFromString(flag))
