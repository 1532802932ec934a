/**
 * Hand-made SVG charts of the goodput run, from the Simulator's timeline samples: the account's
 * cap and the requests in flight over time, as step lines (a sample holds until the next).
 */
import type { ClientLimitSample, ContenderResult, GoodputReport } from "./goodput.js"
import { timeLimitMs } from "./goodput.js"

interface Point {
  readonly t: number
  readonly value: number
}

interface Series {
  readonly label: string
  readonly color: string
  readonly width: number
  readonly dash?: string | undefined
  readonly points: ReadonlyArray<Point>
}

interface Frame {
  readonly left: number
  readonly top: number
  readonly width: number
  readonly height: number
  readonly maxSeconds: number
  readonly maxValue: number
}

const font = `font-family="system-ui, -apple-system, Segoe UI, sans-serif"`

const escape = (text: string): string => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

const round = (n: number): string => (Math.round(n * 10) / 10).toString()

const x = (frame: Frame, ms: number) => frame.left + (Math.min(ms / 1000, frame.maxSeconds) / frame.maxSeconds) * frame.width
const y = (frame: Frame, value: number) => frame.top + frame.height - (value / frame.maxValue) * frame.height

/** A step line: each value holds until the next point's time, the last one until `endMs`. */
const stepPath = (frame: Frame, points: ReadonlyArray<Point>, endMs: number): string => {
  const first = points[0]
  if (first === undefined) return ""
  const parts = [`M${round(x(frame, first.t))} ${round(y(frame, first.value))}`]
  for (const point of points.slice(1)) {
    parts.push(`H${round(x(frame, point.t))}`, `V${round(y(frame, point.value))}`)
  }
  parts.push(`H${round(x(frame, endMs))}`)
  return parts.join("")
}

/** A tick step of 1, 2 or 5 times a power of ten giving at most `most` ticks up to `max`. */
const tickStep = (max: number, most: number): number => {
  const raw = max / most
  const power = 10 ** Math.floor(Math.log10(raw))
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw) ?? raw
}

const ticks = (max: number, most: number): ReadonlyArray<number> => {
  const step = tickStep(max, most)
  return Array.from({ length: Math.floor(max / step + 1e-9) + 1 }, (_, i) => i * step)
}

/** Grid, axes and their labels. */
const axes = (frame: Frame, yLabel: string): string => {
  const bottom = frame.top + frame.height
  const xTicks = ticks(frame.maxSeconds, 10).map((s) =>
    `<line x1="${round(x(frame, s * 1000))}" y1="${frame.top}" x2="${round(x(frame, s * 1000))}" y2="${bottom}" stroke="#eee"/>` +
    `<text x="${round(x(frame, s * 1000))}" y="${bottom + 16}" text-anchor="middle">${s}</text>`
  )
  const yTicks = ticks(frame.maxValue, 5).map((v) =>
    `<line x1="${frame.left}" y1="${round(y(frame, v))}" x2="${frame.left + frame.width}" y2="${round(y(frame, v))}" stroke="#eee"/>` +
    `<text x="${frame.left - 6}" y="${round(y(frame, v) + 4)}" text-anchor="end">${v}</text>`
  )
  return [
    ...xTicks,
    ...yTicks,
    `<rect x="${frame.left}" y="${frame.top}" width="${frame.width}" height="${frame.height}" fill="none" stroke="#999"/>`,
    `<text x="${frame.left - 34}" y="${frame.top + frame.height / 2}" text-anchor="middle" transform="rotate(-90 ${
      frame.left - 34
    } ${frame.top + frame.height / 2})">${escape(yLabel)}</text>`
  ].join("\n")
}

const seriesPaths = (frame: Frame, series: ReadonlyArray<Series>, endMs: number): string =>
  series.map((s) =>
    `<path d="${stepPath(frame, s.points, endMs)}" fill="none" stroke="${s.color}" stroke-width="${s.width}"${
      s.dash === undefined ? "" : ` stroke-dasharray="${s.dash}"`
    } stroke-linejoin="round"/>`
  ).join("\n")

/** The series' keys in one row, each `columnWidth` wide. */
const legend = (left: number, top: number, columnWidth: number, series: ReadonlyArray<Series>): string =>
  series.map((s, i) => {
    const x0 = left + i * columnWidth
    return `<line x1="${x0}" y1="${top}" x2="${x0 + 26}" y2="${top}" stroke="${s.color}" stroke-width="${
      Math.max(2, s.width)
    }"${s.dash === undefined ? "" : ` stroke-dasharray="${s.dash}"`}/>` +
      `<text x="${x0 + 32}" y="${top + 4}">${escape(s.label)}</text>`
  }).join("\n")

const svg = (width: number, height: number, body: ReadonlyArray<string>): string =>
  [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${font} font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    ...body,
    `</svg>`,
    ""
  ].join("\n")

const capPoints = (result: { readonly timeline: ContenderResult["timeline"] }): ReadonlyArray<Point> =>
  result.timeline.map((sample) => ({ t: sample.t, value: sample.limit }))

const inFlightPoints = (result: { readonly timeline: ContenderResult["timeline"] }): ReadonlyArray<Point> =>
  result.timeline.map((sample) => ({ t: sample.t, value: sample.inFlight }))

const limiterPoints = (samples: ReadonlyArray<ClientLimitSample>): ReadonlyArray<Point> =>
  samples.map((sample) => ({ t: sample.t, value: sample.limit }))

const maxOf = (series: ReadonlyArray<Series>): number =>
  Math.max(1, ...series.flatMap((s) => s.points.map((point) => point.value)))

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`

/** weatherproof's run: the account cap, its requests in flight, its limiter's limit, and the oracle's. */
export const goodputChart = (report: GoodputReport): string => {
  const wp = report.weatherproof
  const series: ReadonlyArray<Series> = [
    { label: "account cap (Simulator)", color: "#222", width: 2.5, points: capPoints(wp) },
    { label: "oracle in flight", color: "#aaa", width: 1.5, dash: "5 3", points: inFlightPoints(report.oracle) },
    { label: "weatherproof limiter's limit", color: "#e08a00", width: 1.5, points: limiterPoints(wp.clientLimit) },
    { label: "weatherproof in flight (Simulator)", color: "#1f6fd1", width: 1.2, points: inFlightPoints(wp) }
  ]
  const endMs = Math.max(wp.makespanMs, report.oracle.makespanMs)
  const frame: Frame = {
    left: 60,
    top: 56,
    width: 840,
    height: 320,
    maxSeconds: Math.ceil(endMs / 1000),
    maxValue: Math.ceil((maxOf(series) + 2) / 8) * 8
  }
  const subtitle = `weatherproof ${seconds(wp.makespanMs)} (oracle ${seconds(report.oracle.makespanMs)}), ${
    wp.rateLimited
  } requests answered 429, ${wp.requestsReceived} sent for ${wp.completed} answers`
  return svg(960, 450, [
    `<text x="${frame.left}" y="22" font-size="14" font-weight="600">Goodput: 600 requests, account cap 24 → 6 → 32 (a step every 200 accepted)</text>`,
    `<text x="${frame.left}" y="40">${escape(subtitle)}</text>`,
    axes(frame, "requests in flight"),
    seriesPaths(frame, series, endMs),
    `<text x="${frame.left + frame.width / 2}" y="${frame.top + frame.height + 34}" text-anchor="middle">seconds since the first request</text>`,
    legend(frame.left, frame.top + frame.height + 60, 215, series)
  ])
}

/** One panel per contender (and the oracle), on a shared time axis. */
export const peersChart = (report: GoodputReport): string => {
  const panels: ReadonlyArray<{ readonly title: string; readonly timeline: ContenderResult["timeline"]; readonly endMs: number }> = [
    { title: `oracle: ${seconds(report.oracle.makespanMs)}`, timeline: report.oracle.timeline, endMs: report.oracle.makespanMs },
    ...[report.weatherproof, ...report.peers].map((result) => ({
      title: `${result.name}: ${result.finished ? seconds(result.makespanMs) : `unfinished after ${seconds(timeLimitMs)}`}, ${
        result.rateLimited
      } × 429, ${result.requestsReceived} requests sent`,
      timeline: result.timeline,
      endMs: result.makespanMs
    }))
  ]
  const maxMs = Math.max(...panels.map((panel) => panel.endMs))
  const panelHeight = 110
  const gap = 44
  const maxValue = Math.ceil((Math.max(...panels.flatMap((p) => p.timeline.map((s) => Math.max(s.limit, s.inFlight)))) + 2) / 8) * 8
  const body = panels.flatMap((panel, i) => {
    const frame: Frame = {
      left: 60,
      top: 60 + i * (panelHeight + gap),
      width: 840,
      height: panelHeight,
      maxSeconds: Math.ceil(maxMs / 1000),
      maxValue
    }
    const series: ReadonlyArray<Series> = [
      { label: "account cap", color: "#222", width: 2, points: capPoints(panel) },
      { label: "in flight", color: "#1f6fd1", width: 1.1, points: inFlightPoints(panel) }
    ]
    return [
      `<text x="${frame.left}" y="${frame.top - 8}" font-weight="600">${escape(panel.title)}</text>`,
      axes(frame, "in flight"),
      seriesPaths(frame, series, panel.endMs)
    ]
  })
  const height = 60 + panels.length * (panelHeight + gap) + 10
  return svg(960, height, [
    `<text x="60" y="24" font-size="14" font-weight="600">Goodput, every contender: account cap (black) and requests in flight (blue); seconds since the first request</text>`,
    ...body
  ])
}
