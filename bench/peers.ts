/**
 * The peers: plain Node clients built from popular libraries, each sending a scenario's requests
 * over undici to the Simulator, as a user of that library would write it.
 *
 * Shared by all of them, so only the policy differs:
 * - one undici `Agent` per run (keep-alive, unlimited sockets, idle sockets dropped after 4 s,
 *   before the Simulator's 5 s), the same bytes weatherproof sends;
 * - a call fails on any status but 200 (and on a wrong answer, which is never retried); 429,
 *   5xx and connection errors are retried;
 * - backoff: exponential from 500 ms, doubling, capped at 8 s (openai-node's numbers), with
 *   each library's own jitter, and up to 30 retries, so that every peer can finish the batch;
 * - a run stops retrying when its `signal` aborts (the bench's time limit);
 * - one bound of 16 in flight over every model of a mixed batch: none of these libraries knows
 *   of per-model caps, and a user would put the batch behind one limiter.
 */
import Bottleneck from "bottleneck"
import {
  bulkhead,
  circuitBreaker,
  ExponentialBackoff,
  handleWhen,
  retry,
  SamplingBreaker,
  wrap
} from "cockatiel"
import pLimit from "p-limit"
import pRetry from "p-retry"
import { Agent, request } from "undici"
import { defaultKey } from "../src/Simulator.js"
import type { BenchRequest } from "./scenario.js"

/** A non-200 answer. */
export class HttpStatusError extends Error {
  constructor(readonly status: number) {
    super(`HTTP ${status}`)
  }
}

/** A 200 whose content is not the Simulator's answer: a bug, never retried. */
export class WrongAnswer extends Error {
  override readonly name = "WrongAnswer"
}

/** The run was stopped by the bench's time limit. */
export class Stopped extends Error {
  override readonly name = "Stopped"
}

const retryable = (error: unknown): boolean => !(error instanceof WrongAnswer || error instanceof Stopped)

/** What the circuit breaker counts as the upstream failing: 429, 5xx, connection errors. */
const upstreamFailure = (error: unknown): boolean =>
  error instanceof HttpStatusError ? error.status === 429 || error.status >= 500 : retryable(error)

export const backoff = { baseMs: 500, capMs: 8_000, maxRetries: 30 } as const

/** AWS's full jitter: U(0, 1) · min(cap, base · 2^retry). */
const fullJitterMs = (retryIndex: number): number =>
  Math.random() * Math.min(backoff.capMs, backoff.baseMs * 2 ** retryIndex)

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Sends one request and checks its answer. */
export type Send = (request: BenchRequest) => Promise<void>

/** A keep-alive HTTP client of one run. */
export const makeClient = (baseUrl: string, signal: AbortSignal): { readonly send: Send; readonly close: () => Promise<void> } => {
  const agent = new Agent({ keepAliveTimeout: 4_000 })
  const url = `${baseUrl}/chat/completions`
  const headers = { authorization: `Bearer ${defaultKey}`, "content-type": "application/json" }
  const send: Send = async (benchRequest) => {
    if (signal.aborted) throw new Stopped("time limit")
    const response = await request(url, { method: "POST", headers, body: benchRequest.wire, dispatcher: agent })
    const text = await response.body.text()
    if (response.statusCode !== 200) throw new HttpStatusError(response.statusCode)
    const completion = JSON.parse(text) as { choices?: Array<{ message?: { content?: string } }> }
    if (completion.choices?.[0]?.message?.content !== `echo:${benchRequest.marker}`) throw new WrongAnswer(text)
  }
  return { send, close: () => agent.close() }
}

/** A peer: sends every request with `send`, resolves when all are settled. */
export interface Peer {
  readonly name: string
  readonly policy: string
  readonly run: (
    requests: ReadonlyArray<BenchRequest>,
    send: Send,
    signal: AbortSignal
  ) => Promise<ReadonlyArray<PromiseSettledResult<unknown>>>
}

const settleAll = (requests: ReadonlyArray<BenchRequest>, call: (request: BenchRequest) => Promise<unknown>) =>
  Promise.allSettled(requests.map(call))

/** Every request at once, each retried on its own with full-jitter backoff. */
const naive: Peer = {
  name: "naive fan-out",
  policy: "every request at once; full-jitter exponential backoff",
  run: (requests, send, signal) =>
    settleAll(requests, async (benchRequest) => {
      for (let retryIndex = 0;; retryIndex++) {
        try {
          return await send(benchRequest)
        } catch (error) {
          if (retryIndex >= backoff.maxRetries || !retryable(error) || signal.aborted) throw error
          await sleep(fullJitterMs(retryIndex))
        }
      }
    })
}

/** `limit(() => pRetry(call))`: the common composition; a retry waits inside its slot. */
const pLimitRetry: Peer = {
  name: "p-limit + p-retry",
  policy: "p-limit(16) around p-retry (randomized exponential backoff); backoff holds the slot",
  run: (requests, send, signal) => {
    const limit = pLimit(16)
    return settleAll(requests, (benchRequest) =>
      limit(() =>
        pRetry(() => send(benchRequest), {
          retries: backoff.maxRetries,
          factor: 2,
          minTimeout: backoff.baseMs,
          maxTimeout: backoff.capMs,
          randomize: true,
          signal,
          shouldRetry: ({ error }) => retryable(error)
        })
      ))
  }
}

/** The cockatiel policy of both benchmarks. */
export const makeCockatielPolicy = () =>
  wrap(
    retry(handleWhen(retryable), {
      maxAttempts: backoff.maxRetries,
      backoff: new ExponentialBackoff({ initialDelay: backoff.baseMs, maxDelay: backoff.capMs })
    }),
    circuitBreaker(handleWhen(upstreamFailure), {
      halfOpenAfter: 10_000,
      breaker: new SamplingBreaker({ threshold: 0.2, duration: 30_000 })
    }),
    bulkhead(16, Infinity)
  )

/**
 * `wrap(retry, breaker, bulkhead)`, outermost first, Polly's recommended order: a call backing off
 * holds no bulkhead slot, and the breaker sees each attempt. The breaker is the README's
 * `SamplingBreaker` example (20 % failures over 30 s opens it for 10 s), counting 429, 5xx and
 * connection errors; retries also retry a call the open circuit refused.
 */
const cockatielPolicy: Peer = {
  name: "cockatiel",
  policy: "retry (decorrelated-jitter backoff) ∘ SamplingBreaker(20 % / 30 s, open 10 s) ∘ bulkhead(16)",
  run: (requests, send, signal) => {
    const policy = makeCockatielPolicy()
    return settleAll(requests, (benchRequest) => policy.execute(() => send(benchRequest), signal))
  }
}

/** Bottleneck's own retry (the `failed` event): a retried job keeps its slot while it waits. */
const bottleneck: Peer = {
  name: "Bottleneck",
  policy: "maxConcurrent 16; retry from the `failed` event (full jitter); backoff holds the slot",
  run: (requests, send, signal) => {
    const limiter = new Bottleneck({ maxConcurrent: 16 })
    limiter.on("failed", (error: unknown, job: Bottleneck.EventInfoRetryable) =>
      job.retryCount < backoff.maxRetries && retryable(error) && !signal.aborted
        ? fullJitterMs(job.retryCount)
        : undefined)
    return settleAll(requests, (benchRequest) => limiter.schedule(() => send(benchRequest)))
  }
}

export const peers: ReadonlyArray<Peer> = [naive, pLimitRetry, cockatielPolicy, bottleneck]
