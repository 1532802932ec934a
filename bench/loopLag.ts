/**
 * A preload (`node --import …/loopLag.js`, through `NODE_OPTIONS`) that the benchmarks give a
 * measured process: it samples the event loop's delay (`monitorEventLoopDelay`) and, at exit,
 * writes it and the process's own resource usage as JSON to the file `BENCH_PROCESS_REPORT` names.
 * Nothing of it is in the CLI: a run without the preload pays nothing. The lag is the delay beyond
 * the 10 ms sampling interval: the longest time the loop could not run a timer.
 */
import { writeFileSync } from "node:fs"
import { monitorEventLoopDelay } from "node:perf_hooks"

/** What the preload writes. Delays in milliseconds, CPU in milliseconds, RSS in KiB. */
export interface ProcessReport {
  readonly lag: { readonly p50: number; readonly p99: number; readonly max: number }
  readonly cpuMs: number
  readonly maxRssKb: number
}

/** The sampling interval. The histogram records each interval whole, so the lag is what exceeds it. */
const resolutionMs = 10

const file = process.env["BENCH_PROCESS_REPORT"]
if (file !== undefined && file !== "") {
  const histogram = monitorEventLoopDelay({ resolution: resolutionMs })
  histogram.enable()
  process.once("exit", () => {
    histogram.disable()
    const usage = process.resourceUsage()
    const ms = (ns: number) => Math.max(0, ns / 1e6 - resolutionMs)
    const report: ProcessReport = {
      lag: { p50: ms(histogram.percentile(50)), p99: ms(histogram.percentile(99)), max: ms(histogram.max) },
      cpuMs: (usage.userCPUTime + usage.systemCPUTime) / 1000,
      maxRssKb: usage.maxRSS
    }
    writeFileSync(file, JSON.stringify(report))
  })
}
