/**
 * The processes the batch CLI's benchmarks measure (`batchCost`, `startup`, `scale`): the CLI as a
 * user runs it (the bundle, `node dist/cli/weatherproof.js batch …`) and the plain client beside it
 * (`plainClient.ts`), each a child process measured from outside: CPU time and peak RSS by
 * `/usr/bin/time` (Debian package `time`; without it, the child's own `process.resourceUsage()`
 * at exit), event-loop lag by the `loopLag.ts` preload.
 */
import { spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as NodePath from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import type { ProcessReport } from "./loopLag.js"

export const cliEntry = fileURLToPath(new URL("../cli/weatherproof.js", import.meta.url))
export const plainClientEntry = fileURLToPath(new URL("./plainClient.js", import.meta.url))
const loopLagPreload = fileURLToPath(new URL("./loopLag.js", import.meta.url))

const timeCommand = "/usr/bin/time"

/** Where a run's CPU and RSS figures come from. */
export const measuredBy = existsSync(timeCommand) ? "/usr/bin/time" : "process.resourceUsage() at exit (no /usr/bin/time)"

/** A child process that ran to its end. */
export interface Measured {
  readonly code: number | null
  /** From the spawn to the exit. */
  readonly wallMs: number
  /** User + system CPU time. */
  readonly cpuMs: number
  readonly maxRssMb: number
  /** Event-loop delay beyond the sampling interval, in ms. */
  readonly lag: ProcessReport["lag"]
  readonly stdout: string
  readonly stderr: string
}

/** A scratch directory, removed by `done`. */
export const scratch = (): { readonly dir: string; readonly done: () => void } => {
  const dir = mkdtempSync(NodePath.join(tmpdir(), "weatherproof-bench-"))
  return { dir, done: () => rmSync(dir, { recursive: true, force: true }) }
}

/** An OpenAI-format batch input of `count` chat requests, `content(i)` each. */
export const writeBatchInput = (path: string, count: number, content: (i: number) => string): void =>
  writeFileSync(
    path,
    Array.from({ length: count }, (_, i) =>
      `${
        JSON.stringify({
          custom_id: `r-${i + 1}`,
          method: "POST",
          url: "/v1/chat/completions",
          body: { model: "deepseek-v4-flash", messages: [{ role: "user", content: content(i + 1) }] }
        })
      }\n`).join("")
  )

/** The environment of a run against `baseUrl` with one key. */
export const upstreamEnv = (baseUrl: string, key: string): Record<string, string> => ({
  DEEPSEEK_API_KEY: key,
  DEEPSEEK_BASE_URL: baseUrl
})

/** Runs `node <args>` to its end (killed after `timeoutMs`), measured. */
export const runMeasured = (
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  timeoutMs: number
): Promise<Measured> => {
  const work = scratch()
  const timeFile = NodePath.join(work.dir, "time")
  const reportFile = NodePath.join(work.dir, "report.json")
  const command = measuredBy === "/usr/bin/time"
    ? [timeCommand, "-f", "%U %S %M", "-o", timeFile, process.execPath, ...args]
    : [process.execPath, ...args]
  return new Promise<Measured>((resolve, reject) => {
    const startedAt = performance.now()
    const child = spawn(command[0]!, command.slice(1), {
      env: {
        PATH: process.env["PATH"] ?? "",
        NODE_OPTIONS: `--import=${loopLagPreload}`,
        BENCH_PROCESS_REPORT: reportFile,
        ...env
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (data: Buffer) => (stdout += data.toString()))
    child.stderr.on("data", (data: Buffer) => (stderr += data.toString()))
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs)
    child.once("error", reject)
    child.once("close", (code) => {
      clearTimeout(timer)
      const wallMs = performance.now() - startedAt
      try {
        const report = JSON.parse(readFileSync(reportFile, "utf8")) as ProcessReport
        const outside = measuredBy === "/usr/bin/time" ? readTime(timeFile) : undefined
        resolve({
          code,
          wallMs,
          cpuMs: outside?.cpuMs ?? report.cpuMs,
          maxRssMb: (outside?.maxRssKb ?? report.maxRssKb) / 1024,
          lag: report.lag,
          stdout,
          stderr
        })
      } catch (error) {
        reject(new Error(`${args.join(" ")} ended (${code}) without its report: ${stderr.slice(-2000)} (${String(error)})`))
      } finally {
        work.done()
      }
    })
  })
}

/** `%U %S %M` of GNU time, last line (earlier ones are its notes, e.g. a non-zero exit). */
const readTime = (file: string): { readonly cpuMs: number; readonly maxRssKb: number } => {
  const [user, system, rss] = readFileSync(file, "utf8").trim().split("\n").at(-1)!.split(" ").map(Number)
  return { cpuMs: (user! + system!) * 1000, maxRssKb: rss! }
}

/**
 * What a failed process's stderr says, in one line: its first line that starts with an error's
 * name and message (`TypeError: fetch failed`; a crash prints its stack and Node's version after
 * it), else its last three lines.
 */
export const stderrGist = (stderr: string): string => {
  const lines = stderr.trim().split("\n").map((line) => line.trim()).filter((line) => line !== "")
  return lines.find((line) => /^\w*Error\b[^:]*: /.test(line)) ?? lines.slice(-3).join(" / ")
}

/** The middle value. */
export const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

/** Lines of a file. */
export const countLines = (path: string): number =>
  readFileSync(path, "utf8").split("\n").filter((line) => line.trim() !== "").length
