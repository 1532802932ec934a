/**
 * Tables for the terminal and for Markdown, from the same rows.
 */

export type Row = ReadonlyArray<string>

/** Columns padded to their widest cell; the first `leftColumns` left-aligned, the others right. */
export const text = (header: Row, rows: ReadonlyArray<Row>, leftColumns = 1): string => {
  const widths = header.map((_, column) => Math.max(...[header, ...rows].map((row) => (row[column] ?? "").length)))
  const line = (row: Row) =>
    row.map((cell, column) => column < leftColumns ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!)).join("  ")
  return [line(header), widths.map((width) => "-".repeat(width)).join("  "), ...rows.map(line)].join("\n")
}

/** A GitHub-flavoured Markdown table, the first `leftColumns` left-aligned, the others (numbers) right. */
export const markdown = (header: Row, rows: ReadonlyArray<Row>, leftColumns = 1): string =>
  [
    `| ${header.join(" | ")} |`,
    `| ${header.map((_, column) => column < leftColumns ? "---" : "---:").join(" | ")} |`,
    ...rows.map((row) => `| ${row.join(" | ")} |`)
  ].join("\n")

/** A target's verdict, as printed. */
export const verdict = (met: boolean): string => met ? "MET" : "MISSED"

/**
 * `ratio` to two decimals, or to as many more as tell it from `bound`: a CPU ratio of 1.504 that
 * missed a target of 1.5× printed as "1.50×" read as met.
 */
export const ratioText = (ratio: number, bound: number): string => {
  let digits = 2
  while (digits < 6 && ratio !== bound && Number(ratio.toFixed(digits)) === bound) digits++
  return ratio.toFixed(digits)
}
