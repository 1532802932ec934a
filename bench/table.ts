/**
 * Tables for the terminal and for Markdown, from the same rows.
 */

export type Row = ReadonlyArray<string>

/** Columns padded to their widest cell; the first column left-aligned, the others right. */
export const text = (header: Row, rows: ReadonlyArray<Row>): string => {
  const widths = header.map((_, column) => Math.max(...[header, ...rows].map((row) => (row[column] ?? "").length)))
  const line = (row: Row) =>
    row.map((cell, column) => column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!)).join("  ")
  return [line(header), widths.map((width) => "-".repeat(width)).join("  "), ...rows.map(line)].join("\n")
}

/** A GitHub-flavoured Markdown table, numbers right-aligned. */
export const markdown = (header: Row, rows: ReadonlyArray<Row>): string =>
  [
    `| ${header.join(" | ")} |`,
    `| ${header.map((_, column) => column === 0 ? "---" : "---:").join(" | ")} |`,
    ...rows.map((row) => `| ${row.join(" | ")} |`)
  ].join("\n")

/** A target's verdict, as printed. */
export const verdict = (met: boolean): string => met ? "MET" : "MISSED"
