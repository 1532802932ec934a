/**
 * The plain client the batch CLI is measured against: what a user writes without weatherproof. It
 * reads an OpenAI-format batch file, sends every body through `p-limit(N)` over undici (`request`
 * with a keep-alive `Agent`) or Node's `fetch`, retries a 429, a 5xx or a failed connection inside
 * its slot with full-jitter backoff (as openai-node does), and writes one result line per request.
 *
 *   node plainClient.js <input.jsonl> <output.jsonl> --concurrency N --http undici|fetch
 *
 * `DEEPSEEK_API_KEY` and `DEEPSEEK_BASE_URL` as for the CLI. Exits 1 if a request failed.
 */
import { createWriteStream, readFileSync } from "node:fs"
import pLimit from "p-limit"
import { Agent, request } from "undici"

interface InputLine {
  readonly custom_id: string
  readonly body: unknown
}

interface Answer {
  readonly status: number
  readonly body: unknown
}

const flag = (name: string): string | undefined => {
  const at = process.argv.indexOf(name)
  return at < 0 ? undefined : process.argv[at + 1]
}

const [input, output] = process.argv.slice(2)
const concurrency = Number(flag("--concurrency") ?? "16")
const http = flag("--http") ?? "undici"
const url = `${(process.env["DEEPSEEK_BASE_URL"] ?? "").replace(/\/+$/, "")}/chat/completions`
const headers = { authorization: `Bearer ${process.env["DEEPSEEK_API_KEY"] ?? ""}`, "content-type": "application/json" }

const agent = new Agent({ keepAliveTimeout: 4_000 })

const post = async (body: string): Promise<Answer> => {
  if (http === "fetch") {
    const response = await fetch(url, { method: "POST", headers, body })
    return { status: response.status, body: await response.json() }
  }
  const response = await request(url, { method: "POST", headers, body, dispatcher: agent })
  return { status: response.statusCode, body: await response.body.json() }
}

const maxRetries = 10
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** `post`, a failed connection as a status 0 (a retry); the last one thrown with its cause's code. */
const postOnce = async (body: string, last: boolean): Promise<Answer> => {
  try {
    return await post(body)
  } catch (error) {
    if (last) {
      const cause = (error as { cause?: { code?: string; message?: string } }).cause
      throw new Error(`${String(error)} (${cause?.code ?? cause?.message ?? "no cause"}) after ${maxRetries} retries`)
    }
    return { status: 0, body: undefined }
  }
}

/** Full jitter from 500 ms doubling to 8 s (openai-node's numbers). */
const send = async (body: string): Promise<Answer> => {
  for (let retry = 0;; retry++) {
    const answer = await postOnce(body, retry === maxRetries)
    if ((answer.status !== 0 && answer.status !== 429 && answer.status < 500) || retry === maxRetries) return answer
    await sleep(Math.random() * Math.min(8_000, 500 * 2 ** retry))
  }
}

const main = async () => {
  const lines = readFileSync(input!, "utf8").split("\n").filter((line) => line.trim() !== "")
  const out = createWriteStream(output!)
  const limit = pLimit(concurrency)
  let failed = 0
  await Promise.all(lines.map((text) =>
    limit(async () => {
      const line = JSON.parse(text) as InputLine
      const answer = await send(JSON.stringify({ ...(line.body as object), stream: false }))
      if (answer.status !== 200) failed++
      out.write(`${JSON.stringify({ custom_id: line.custom_id, response: { status_code: answer.status, body: answer.body } })}\n`)
    })
  ))
  await new Promise((resolve) => out.end(resolve))
  await agent.close()
  process.exitCode = failed === 0 ? 0 : 1
}

void main()
