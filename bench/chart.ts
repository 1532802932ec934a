/**
 * Hand-made SVG charts of a goodput scenario's runs, from the Simulator's timeline samples: each
 * model's cap and its requests in flight over time, as step lines (a sample holds until the next).
 */
import type { Sample } from "../src/Simulator.js"
import type { ClientLimitSample, GoodputReport } from "./goodput.js"
import { results, timeLimitMs } from "./goodput.js"
import { capAt, describeCaps, type Model, nextChangeAfter } from "./scenario.js"

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

type Timeline = ReadonlyArray<Sample>

/**
 * A model's cap over a run: a cap that moves by time drawn from its schedule (the Simulator
 * samples it only when something happens, so a quiet spell would hide its steps), any other from
 * the samples.
 */
const capPoints = (model: Model, timeline: Timeline, endMs: number): ReadonlyArray<Point> => {
  if (model.caps._tag !== "ByTime") return timeline.map((sample) => ({ t: sample.t, value: sample.limit }))
  const points: Array<Point> = []
  for (let t: number | undefined = 0; t !== undefined && t < endMs; t = nextChangeAfter(model.caps, t)) {
    points.push({ t, value: capAt(model.caps, t, 0) })
  }
  return points
}

const inFlightPoints = (timeline: Timeline): ReadonlyArray<Point> =>
  timeline.map((sample) => ({ t: sample.t, value: sample.inFlight }))

const limiterPoints = (samples: ReadonlyArray<ClientLimitSample>): ReadonlyArray<Point> =>
  samples.map((sample) => ({ t: sample.t, value: sample.limit }))

const maxOf = (series: ReadonlyArray<Series>): number =>
  Math.max(1, ...series.flatMap((s) => s.points.map((point) => point.value)))

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`

/** A scale top above `max` with some room, in steps of 8. */
const topOf = (max: number): number => Math.ceil((max + 2) / 8) * 8

const title = (report: GoodputReport): string =>
  `Goodput, ${report.scenario.title}: ${report.scenario.requests.length} requests`

/**
 * weatherproof's run, a panel per model: the model's cap, its requests in flight, its limiter's
 * limit, and the oracle's in flight.
 */
export const goodputChart = (report: GoodputReport): string => {
  const wp = report.weatherproof
  const models = report.scenario.models
  const panelHeight = models.length === 1 ? 320 : 200
  const gap = 40
  const endMs = Math.max(wp.makespanMs, report.oracle.makespanMs)
  const seriesOf = (model: Model): ReadonlyArray<Series> => {
    const serving = model.serving
    const result = wp.byModel[serving]!
    return [
      { label: "cap (Simulator)", color: "#222", width: 2.5, points: capPoints(model, result.timeline, endMs) },
      { label: "oracle in flight", color: "#aaa", width: 1.5, dash: "5 3", points: inFlightPoints(report.oracle.byModel[serving]!.timeline) },
      { label: "weatherproof limiter's limit", color: "#e08a00", width: 1.5, points: limiterPoints(result.clientLimit) },
      { label: "weatherproof in flight (Simulator)", color: "#1f6fd1", width: 1.2, points: inFlightPoints(result.timeline) }
    ]
  }
  const maxValue = topOf(Math.max(...models.map((model) => maxOf(seriesOf(model)))))
  const panelTop = (i: number) => (models.length === 1 ? 56 : 76) + i * (panelHeight + gap)
  const panels = models.flatMap((model, i) => {
    const frame: Frame = { left: 60, top: panelTop(i), width: 840, height: panelHeight, maxSeconds: Math.ceil(endMs / 1000), maxValue }
    const result = wp.byModel[model.serving]!
    const heading = models.length === 1
      ? []
      : [`<text x="${frame.left}" y="${frame.top - 8}" font-weight="600">${escape(
        `${model.serving}: cap ${describeCaps(model.caps)}, ${result.rateLimited} × 429, last answer ${seconds(result.doneMs)} (oracle ${
          seconds(report.oracle.byModel[model.serving]!.doneMs)
        })`
      )}</text>`]
    return [...heading, axes(frame, "requests in flight"), seriesPaths(frame, seriesOf(model), endMs)]
  })
  const bottom = panelTop(models.length) - gap
  const subtitle = `weatherproof ${seconds(wp.makespanMs)} (oracle ${seconds(report.oracle.makespanMs)}), ${
    wp.rateLimited
  } requests answered 429, ${wp.requestsReceived} sent for ${wp.completed} answers`
  return svg(960, bottom + 74, [
    `<text x="60" y="22" font-size="14" font-weight="600">${escape(title(report))}</text>`,
    `<text x="60" y="40">${escape(subtitle)}</text>`,
    ...panels,
    `<text x="${60 + 840 / 2}" y="${bottom + 34}" text-anchor="middle">seconds since the first request</text>`,
    legend(60, bottom + 60, 215, seriesOf(models[0]!))
  ])
}

/** Colours of a panel's models, in the scenario's order. */
const modelColors = ["#1f6fd1", "#2a9d3a"]
const capDashes = [undefined, "6 3"]

/** One panel per contender (and the oracle), on a shared time axis: each model's cap and its requests in flight. */
export const peersChart = (report: GoodputReport): string => {
  const models = report.scenario.models
  const panels: ReadonlyArray<{ readonly title: string; readonly timelines: ReadonlyArray<Timeline>; readonly endMs: number }> = [
    {
      title: `oracle: ${seconds(report.oracle.makespanMs)}`,
      timelines: models.map((model) => report.oracle.byModel[model.serving]!.timeline),
      endMs: report.oracle.makespanMs
    },
    ...results(report).map((result) => ({
      title: `${result.name}: ${result.finished ? seconds(result.makespanMs) : `unfinished after ${seconds(timeLimitMs)}`}, ${
        result.rateLimited
      } × 429, ${result.requestsReceived} requests sent`,
      timelines: models.map((model) => result.byModel[model.serving]!.timeline),
      endMs: result.makespanMs
    }))
  ]
  const maxMs = Math.max(...panels.map((panel) => panel.endMs))
  const panelHeight = 110
  const gap = 44
  const maxValue = topOf(Math.max(...panels.flatMap((p) => p.timelines.flat().map((s) => Math.max(s.limit, s.inFlight)))))
  const seriesOf = (timelines: ReadonlyArray<Timeline>, endMs: number): ReadonlyArray<Series> =>
    models.flatMap((model, i) => [
      { label: `${model.serving} cap`, color: "#222", width: 2, dash: capDashes[i], points: capPoints(model, timelines[i]!, endMs) },
      { label: `${model.serving} in flight`, color: modelColors[i]!, width: 1.1, points: inFlightPoints(timelines[i]!) }
    ])
  const top = models.length === 1 ? 76 : 100
  const body = panels.flatMap((panel, i) => {
    const frame: Frame = {
      left: 60,
      top: top + i * (panelHeight + gap),
      width: 840,
      height: panelHeight,
      maxSeconds: Math.ceil(maxMs / 1000),
      maxValue
    }
    return [
      `<text x="${frame.left}" y="${frame.top - 8}" font-weight="600">${escape(panel.title)}</text>`,
      axes(frame, "in flight"),
      seriesPaths(frame, seriesOf(panel.timelines, panel.endMs), panel.endMs)
    ]
  })
  const height = top + panels.length * (panelHeight + gap) + 10
  const subtitle = models.length === 1
    ? "every contender: the cap (black) and requests in flight (blue); seconds since the first request"
    : "every contender: each model's cap and requests in flight; seconds since the first request"
  return svg(960, height, [
    `<text x="60" y="24" font-size="14" font-weight="600">${escape(title(report))}</text>`,
    `<text x="60" y="42">${escape(subtitle)}</text>`,
    ...(models.length === 1 ? [] : [legend(60, 66, 215, seriesOf(panels[0]!.timelines, panels[0]!.endMs))]),
    ...body
  ])
}
