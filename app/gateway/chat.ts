/**
 * `POST /v1/chat/completions`: an OpenAI chat completion request in, through the resilient
 * client, the upstream's answer out, every field as the upstream sent it.
 *
 * - Clients authenticate with a gateway key; the upstream keys stay in the process.
 * - `x-weatherproof-priority: interactive | batch` (default interactive) chooses the lane of the
 *   per-account queues; `x-weatherproof-task` routes the request (see `Router`);
 *   `x-weatherproof-cache: auto | force | bypass` (default auto) is the call's `ResponseCache` mode;
 *   an answer says whether it came from the cache in `x-weatherproof-cache-status`.
 * - A client waiting for its first content is kept alive (see `keepAlive.ts`); when more clients
 *   wait than `maxWaiting` (a batch one: nine tenths of it), a new one gets a 429 with `Retry-After`.
 * - A stream is retried and fails over only before its first content reaches the client. A
 *   failure after it ends the stream with a `data: {"error": …}` event and no `[DONE]`.
 */
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as Http from "node:http"
import type { ChatCompletion, ChatCompletionChunk } from "../../src/ChatSchema.js"
import { ChatCompletionRequest } from "../../src/ChatSchema.js"
import type { Priority } from "../../src/ConcurrencyLimiter.js"
import { Resilient } from "../../src/Resilient.js"
import type { CallOptions } from "../../src/Resilient.js"
import * as ExactJson from "../../src/internal/exactJson.js"
import * as SchemaFastPath from "../../src/internal/schemaFastPath.js"
import * as SchemaIssues from "../../src/internal/schemaIssues.js"
import { withModelLeftToRouter } from "../../src/internal/routedModel.js"
import type { Scrubber } from "../../src/internal/scrubber.js"
import * as StreamPull from "../../src/internal/streamPull.js"
import { clipped, maxJsonDepth, nestsTooDeep, notJsonSaying } from "../../src/internal/text.js"
import { Router, type RoutingRefused, Task } from "../../src/Router.js"
import {
  BadRequest,
  errorBody,
  errorHeaders,
  type ErrorReply,
  type GatewayError,
  GatewayBusy,
  internalError,
  replyOf,
  ShuttingDown,
  type Unauthorized,
  UnknownModel
} from "./errors.js"
import { awaitFirst, JsonKeepAlive, Latch, sseKeepAlive, unbufferedHeaders } from "./keepAlive.js"
import { Tally, type Traffic } from "./traffic.js"
import { eventStream, sendJsonNow, sendNow } from "./write.js"

export interface Settings {
  readonly keepAliveInterval: Duration.Duration
  /** The largest request body read; a larger one is a 400. */
  readonly maxBodyBytes: number
  /** More clients than this waiting for their first content: a new request gets a 429. */
  readonly maxWaiting: number
  /** The models served (`GET /v1/models`): a request routed to any other is refused. */
  readonly models: ReadonlySet<string>
  readonly authorize: (authorization: string | undefined) => Effect.Effect<void, Unauthorized>
  readonly scrub: Scrubber
}

/**
 * A chat request as the handler reads and answers it: Node's request and response, and the scope
 * the request's call, permit and stream live in until its answer's last byte (or its client left).
 */
export interface Exchange {
  readonly incoming: Http.IncomingMessage
  readonly response: Http.ServerResponse
  readonly scope: Scope.Scope
}

const utf8 = new TextEncoder()
const done = utf8.encode("data: [DONE]\n\n")

/**
 * `x-weatherproof-cache-status` on an answer whose headers go with it: `hit` when it came without
 * a request of its own (from the response cache, or from an identical call in flight), `miss`
 * when the upstream answered it. An answer whose 200 the keep-alives committed has none.
 */
const cacheStatus = { hit: { "x-weatherproof-cache-status": "hit" }, miss: { "x-weatherproof-cache-status": "miss" } } as const

/**
 * How many clients may be waiting when a request of each priority arrives: batch requests leave
 * the last tenth of the queue to interactive ones, so a batch job sent through the gateway cannot
 * lock interactive clients out with 429s.
 */
export const waitingCaps = (maxWaiting: number): Readonly<Record<Priority, number>> => ({
  interactive: maxWaiting,
  batch: Math.max(1, maxWaiting - Math.ceil(maxWaiting / 10))
})

/** How many distinct models not served are logged: a client cannot flood the log with names. */
const maxUnservedTold = 20

/** Whether a call sent a request of its own: its `onExchange`. */
class Exchanged {
  private sent = false
  readonly told = (): void => {
    this.sent = true
  }
  get status(): keyof typeof cacheStatus {
    return this.sent ? "miss" : "hit"
  }
}

/** A completion's answer, its body written by `sendJsonNow`: the status and headers it is written with and returned as. */
const jsonAnswers = {
  hit: HttpServerResponse.empty({ status: 200, headers: { "content-type": "application/json", ...cacheStatus.hit } }),
  miss: HttpServerResponse.empty({ status: 200, headers: { "content-type": "application/json", ...cacheStatus.miss } })
} as const

const eventHeaders = {
  hit: { "content-type": "text/event-stream", ...unbufferedHeaders, ...cacheStatus.hit },
  miss: { "content-type": "text/event-stream", ...unbufferedHeaders, ...cacheStatus.miss }
} as const

// --- answers ----------------------------------------------------------------------------------

const shuttingDown = replyOf(new ShuttingDown())

/**
 * The reply a failed call gets. An interrupted call was cut by the drain (a client that went away
 * reads nothing); a defect is logged (scrubbed) and answered as a 500.
 */
const replyOfCause = (cause: Cause.Cause<GatewayError>, scrub: Scrubber): Effect.Effect<ErrorReply> =>
  Option.match(Cause.failureOption(cause), {
    onSome: (error) => Effect.succeed(replyOf(error)),
    onNone: () =>
      Cause.isInterruptedOnly(cause)
        ? Effect.succeed(shuttingDown)
        : Effect.as(Effect.logError(`gateway: request failed: ${scrub(Cause.pretty(cause))}`), internalError)
  })

const errorResponse = (reply: ErrorReply, scrub: Scrubber) =>
  HttpServerResponse.unsafeJson(errorBody(reply, scrub), { status: reply.status, headers: errorHeaders(reply) })

const eventText = (data: unknown): string => `data: ${JSON.stringify(data)}\n\n`

const sseEvent = (data: unknown): Uint8Array => utf8.encode(eventText(data))

/**
 * A batch of chunks (one upstream read) as one buffer of SSE events: one allocation and one
 * write to the client's socket per read, whatever the number of events in it.
 */
const sseEvents = (chunks: ReadonlyArray<ChatCompletionChunk>): Uint8Array => utf8.encode(chunks.map(eventText).join(""))

// --- the request ------------------------------------------------------------------------------

const mebibyte = 1024 * 1024

/** `bytes` in MiB when whole, else in bytes. */
const sizeText = (bytes: number): string => bytes % mebibyte === 0 ? `${bytes / mebibyte} MiB` : `${bytes} bytes`

const tooLarge = (maxBodyBytes: number) => new BadRequest({ message: `the request body is larger than ${sizeText(maxBodyBytes)}` })

const notJson = (error: unknown, text: string) => new BadRequest({ message: notJsonSaying("the request body is not JSON", error, text) })
const cutShort = new BadRequest({ message: "the request body was cut short: the client's connection failed while sending it" })
const empty = new BadRequest({ message: "the request body is empty: expected a JSON object, a chat completion request" })
const notUtf8 = new BadRequest({ message: "the request body is not valid UTF-8" })

/** Refuses bytes that are not UTF-8 (never sent upstream altered); drops a leading byte order mark. */
const utf8Decoder = new TextDecoder("utf-8", { fatal: true })

/** A compressed body (OpenAI's clients send none): refused by name rather than read as bytes that are not JSON. */
const encoded = (encoding: string) =>
  new BadRequest({ message: `the request body is encoded (content-encoding: ${clipped(encoding, 50)}): send it as plain JSON` })

/**
 * The body as JSON, read from Node's request. `request.json` runs a fiber to build a cached
 * effect and reads through a stream: a fifth of the gateway's time before its upstream call,
 * at one client.
 */
const readJson = (
  incoming: Http.IncomingMessage,
  response: Http.ServerResponse,
  maxBodyBytes: number
): Effect.Effect<unknown, BadRequest> =>
  Effect.async((resume) => {
    const encoding = incoming.headers["content-encoding"]?.trim().toLowerCase()
    if (encoding !== undefined && encoding !== "" && encoding !== "identity") {
      return resume(Effect.fail(encoded(encoding)))
    }
    // A client that asks before sending its body (`Expect: 100-continue`, as curl does for a large
    // one) is told to go on only now, its key checked: one refused, or over the limit it declares,
    // never sends it.
    if (incoming.headers.expect !== undefined) {
      if (Number(incoming.headers["content-length"]) > maxBodyBytes) return resume(Effect.fail(tooLarge(maxBodyBytes)))
      response.writeContinue()
    }
    const parts: Array<Buffer> = []
    let size = 0
    const onData = (part: Buffer) => {
      size += part.length
      if (size <= maxBodyBytes) parts.push(part)
      else {
        detach()
        resume(Effect.fail(tooLarge(maxBodyBytes)))
      }
    }
    const onEnd = () => {
      detach()
      let text: string
      try {
        text = utf8Decoder.decode(Buffer.concat(parts, size))
      } catch {
        return resume(Effect.fail(notUtf8))
      }
      if (text === "") return resume(Effect.fail(empty))
      try {
        resume(Effect.succeed(ExactJson.parse(text)))
      } catch (error) {
        resume(Effect.fail(notJson(error, text)))
      }
    }
    const onError = () => {
      detach()
      resume(Effect.fail(cutShort))
    }
    const detach = () => {
      incoming.off("data", onData)
      incoming.off("end", onEnd)
      incoming.off("error", onError)
    }
    incoming.on("data", onData)
    incoming.on("end", onEnd)
    incoming.on("error", onError)
    return Effect.sync(detach)
  })

/**
 * Stops at the first problem: checking every one of a large invalid body (200,000 messages of
 * the wrong shape) held the event loop, and every other client, for about a second.
 */
const decodeRequest = SchemaFastPath.decodeUnknownEither(ChatCompletionRequest)
const decodeTask = Schema.decodeUnknownEither(Task)

/** The longest schema complaint sent back: a huge body is not echoed to its client. */
const maxMessageLength = 1000

/** The body as a chat completion request; a missing `model` is left to the router (as `""`). */
const parseBody = (body: unknown): Either.Either<ChatCompletionRequest, BadRequest> => {
  if (!Predicate.isRecord(body)) {
    return Either.left(new BadRequest({ message: `the request body is ${SchemaIssues.jsonKind(body)}, not a JSON object` }))
  }
  if (nestsTooDeep(body)) {
    return Either.left(new BadRequest({ message: `the request body nests arrays and objects deeper than ${maxJsonDepth} levels` }))
  }
  return Either.mapLeft(decodeRequest(withModelLeftToRouter(body)), (error) =>
    new BadRequest({
      message: clipped(`invalid chat completion request: ${SchemaIssues.describeIssues(error).join("; ")}`, maxMessageLength),
      param: SchemaIssues.firstPlace(error)
    }))
}

const taskOf = (header: string | undefined): Either.Either<Task | undefined, BadRequest> =>
  header === undefined ? Either.right(undefined) : Either.mapLeft(decodeTask(header), () =>
    new BadRequest({
      message: `x-weatherproof-task must be one of ${Task.literals.join(", ")}`,
      param: "x-weatherproof-task"
    }))

/** A header that must be one of `values`, `fallback` when absent. */
const oneOf = <const A extends string>(name: string, values: ReadonlyArray<A>, fallback: A) =>
(header: string | undefined): Either.Either<A, BadRequest> =>
  header === undefined
    ? Either.right(fallback)
    : values.includes(header as A)
    ? Either.right(header as A)
    : Either.left(new BadRequest({ message: `${name} must be one of ${values.join(", ")}`, param: name }))

const priorityOf = oneOf("x-weatherproof-priority", ["interactive", "batch"], "interactive")
const cacheModeOf = oneOf("x-weatherproof-cache", ["auto", "force", "bypass"], "auto")

/** A request's call options: its priority always set, from its header or the default. */
type RequestOptions = CallOptions & { readonly priority: Priority }

/** A request admitted: the call to make. */
interface Admitted {
  readonly request: ChatCompletionRequest
  readonly options: RequestOptions
}

/** Why a request is refused before any call. */
type Refused = Unauthorized | BadRequest | RoutingRefused | UnknownModel | GatewayBusy

/**
 * A request header that names one of a few values, as Node gives it (every one but `set-cookie`
 * joined into one value), in lower case: its value is a token, in any case (`BYPASS`, `Batch`).
 */
const tokenOf = (headers: Http.IncomingHttpHeaders, name: string): string | undefined => {
  const value = headers[name]
  return typeof value === "string" ? value.toLowerCase() : undefined
}

/** A request's body as a chat completion request and its headers as its call's task and options, or why not; checked in that order. */
const parseRequest = (
  json: unknown,
  headers: Http.IncomingHttpHeaders
): Either.Either<
  { readonly body: ChatCompletionRequest; readonly task: Task | undefined; readonly options: RequestOptions },
  BadRequest
> =>
  Either.map(
    // `Either.all` gives the first `Left` in the order of the keys.
    Either.all({
      body: parseBody(json),
      task: taskOf(tokenOf(headers, "x-weatherproof-task")),
      priority: priorityOf(tokenOf(headers, "x-weatherproof-priority")),
      cache: cacheModeOf(tokenOf(headers, "x-weatherproof-cache"))
    }),
    ({ body, cache, priority, task }) => ({ body, task, options: { priority, cache } })
  )

/** What the pump hands over after the first events: the SSE events of each batch of chunks, then how the upstream stream ended. */
type Item =
  | { readonly _tag: "Events"; readonly bytes: Uint8Array }
  | { readonly _tag: "Ended"; readonly exit: Exit.Exit<void, GatewayError> }

const ignore = (): void => undefined

/**
 * A stream's items after its first events: held until the answer attaches its reader (the
 * socket's writer, or a late answer's queue), then handed to it synchronously as they come.
 */
class Rest {
  private held: Array<Item> = []
  private reader: ((item: Item) => void) | undefined

  push(item: Item): void {
    if (this.reader === undefined) this.held.push(item)
    else this.reader(item)
  }

  /** Hands `reader` the items held, then each one as it comes. */
  attach(reader: (item: Item) => void): void {
    this.reader = reader
    const held = this.held
    this.held = []
    for (const item of held) reader(item)
  }
}

/**
 * DeepSeek's usage arrives in a last chunk with `choices: []` because the transport always asks
 * for it (the ledger needs it); a client that did not ask does not get that chunk.
 */
const isUnaskedUsage = (wantsUsage: boolean) => (chunk: ChatCompletionChunk): boolean =>
  !wantsUsage && chunk.choices.length === 0 && chunk.usage !== undefined && chunk.usage !== null

// --- the handler ------------------------------------------------------------------------------

/**
 * The chat completions handler, for a request's `Exchange`: the call, its permit and its stream
 * live in the exchange's scope until the answer's last byte, or until the client disconnects.
 */
export const make = (settings: Settings, traffic: Traffic) =>
  Effect.gen(function*() {
    const resilient = yield* Resilient
    const router = yield* Router
    const { scrub } = settings

    // Each of the first models asked for that no account serves is logged once, with what would
    // serve it: a gateway pointed at another provider serves the table's models until told its own.
    const unservedTold = new Set<string>()
    const unserved = (model: string): Effect.Effect<never, UnknownModel> => {
      const refused = Effect.fail(new UnknownModel({ model }))
      if (unservedTold.has(model) || unservedTold.size >= maxUnservedTold) return refused
      unservedTold.add(model)
      return Effect.zipRight(
        Effect.logWarning(scrub(
          `gateway: a client asked for the model ${JSON.stringify(clipped(model, 100))}, which no account serves (a 404): ` +
            `to serve it, list it in WEATHERPROOF_PRICING_FILE (with its price) or in an account's models (--accounts)`
        )),
        refused
      )
    }

    /** The error answer of `cause`, counted (with its code) by `count`. */
    const failed = (cause: Cause.Cause<GatewayError>, count: Pick<Tally, "answered">) =>
      Effect.map(replyOfCause(cause, scrub), (reply) => {
        count.answered(reply.status, reply.status, reply.code)
        return errorResponse(reply, scrub)
      })

    /** `failed`, written at once (`sendNow`) and counted. */
    const failedNow = (http: Exchange, tally: Tally) => (cause: Cause.Cause<GatewayError>) =>
      Effect.map(failed(cause, tally), (response) => sendNow(http.response, response))

    /**
     * The error body that ends a committed answer (a JSON body, or a stream's error event),
     * counted under its 200 as the failure it tells.
     */
    const lateError = (cause: Cause.Cause<GatewayError>, encode: (body: unknown) => Uint8Array, tally: Tally) =>
      Effect.map(replyOfCause(cause, scrub), (reply) => {
        tally.answered(200, reply.status, reply.code)
        return encode(errorBody(reply, scrub))
      })

    /** The `[DONE]` that ends a stream answered in full, counted. */
    const finished = (tally: Tally): Uint8Array => {
      tally.answered(200)
      return done
    }

    const waitingCap = waitingCaps(settings.maxWaiting)

    const keepAliveSettings = {
      interval: settings.keepAliveInterval,
      onKeepAlive: () => traffic.keptAlive()
    }

    /**
     * Runs `effect` in a fiber of the request's scope, tracked so the drain deadline can interrupt
     * it. Its failure is the caller's to observe (and answer): not logged by the runtime as an
     * unhandled error (at debug level, one stack trace per failed stream).
     */
    const forkTracked = <A, E>(effect: Effect.Effect<A, E>, scope: Scope.Scope) =>
      Effect.tap(Effect.withUnhandledErrorLogLevel(Effect.forkIn(effect, scope), Option.none()), (fiber) => traffic.track(fiber))

    /**
     * A completion, called in the request's own fiber (tracked, so the drain deadline can cut it):
     * a fiber of its own per request, to wait for it beside a keep-alive timer, cost a fifth of the
     * gateway's CPU per answer under load. The keep-alives are a Node timer writing to the
     * response (`JsonKeepAlive`). How the call ended is written by `answer`: an answer as soon as
     * the transport read it (`onAnswer`), so the client does not wait for the attempt to settle;
     * a call cut by the drain from its exit handler (its fiber is interrupted); a client that went
     * away gets nothing.
     */
    const completion = (
      http: Exchange,
      request: ChatCompletionRequest,
      options: CallOptions,
      tally: Tally
    ) =>
      Effect.withFiberRuntime<HttpServerResponse.HttpServerResponse>((fiber) => {
        traffic.track(fiber)
        const keepAlive = new JsonKeepAlive(http.response, keepAliveSettings)
        const exchanged = new Exchanged()
        const answer = (exit: Exit.Exit<ChatCompletion, GatewayError>) => {
          keepAlive.stop()
          if (!keepAlive.committed) {
            return Exit.match(exit, {
              onFailure: failedNow(http, tally),
              onSuccess: (answer) =>
                Effect.sync(() => {
                  tally.answered(200)
                  return sendJsonNow(http.response, answer, jsonAnswers[exchanged.status])
                })
            })
          }
          const body = Exit.match(exit, {
            onFailure: (cause) => lateError(cause, (body) => utf8.encode(JSON.stringify(body)), tally),
            onSuccess: (answer) =>
              Effect.sync(() => {
                tally.answered(200)
                return utf8.encode(JSON.stringify(answer))
              })
          })
          return Effect.map(body, (bytes) => keepAlive.end(bytes))
        }
        // Answered once: as soon as the transport read the answer (the permit, cost and counts
        // settle after), else from the exit handler when the drain cut the call, else after it.
        let answered: HttpServerResponse.HttpServerResponse | undefined
        const answerOnce = (exit: Exit.Exit<ChatCompletion, GatewayError>) =>
          answered === undefined
            ? Effect.tap(answer(exit), (response) => {
              answered = response
            })
            : Effect.succeed(answered)
        const onAnswer = (completion: ChatCompletion) => Effect.asVoid(answerOnce(Exit.succeed(completion)))
        // However the call ends (one exit handler for both): it no longer waits, and a call the
        // drain cut is answered at once.
        const ended = (exit: Exit.Exit<ChatCompletion, GatewayError>) => {
          traffic.stopWaiting()
          const settled = Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause) && traffic.draining
            ? Effect.asVoid(answerOnce(exit))
            : Effect.sync(() => keepAlive.stop())
          return Effect.as(settled, exit)
        }
        const called = Effect.uninterruptibleMask((restore) => {
          traffic.startWaiting()
          // Suspended: a throw while the call is built is a defect its handler sees, not a waiting slot kept for good.
          const call = Effect.suspend(() => resilient.create(request, { ...options, onAnswer, onExchange: exchanged.told }))
          return Effect.matchCauseEffect(restore(call), {
            onFailure: (cause) => ended(Exit.failCause(cause)),
            onSuccess: (completion) => ended(Exit.succeed(completion))
          })
        })
        return Effect.flatMap(called, answerOnce)
      })

    /**
     * Runs the upstream stream in a fiber of its own, tracked so the drain deadline can interrupt
     * it. The events of its first read (or how it ended without any) go to `first`, counted as
     * waiting until then; those of each later read to `rest`, then how it ended.
     */
    const pump = (upstream: Stream.Stream<ChatCompletionChunk, GatewayError>, wantsUsage: boolean, scope: Scope.Scope) =>
      Effect.gen(function*() {
        const first = new Latch<Uint8Array | undefined, GatewayError>()
        const rest = new Rest()
        const unasked = isUnaskedUsage(wantsUsage)
        let counted = false
        const arrived = (exit: Exit.Exit<Uint8Array | undefined, GatewayError>) => {
          if (counted) traffic.stopWaiting()
          counted = false
          first.done(exit)
        }
        const run = Effect.suspend(() => {
          counted = true
          traffic.startWaiting()
          return StreamPull.forEachChunk(upstream, (chunks) =>
            Effect.sync(() => {
              const kept = Chunk.toReadonlyArray(chunks).filter((chunk) => !unasked(chunk))
              if (kept.length === 0) return
              const bytes = sseEvents(kept)
              if (first.isDone) rest.push({ _tag: "Events", bytes })
              else arrived(Exit.succeed(bytes))
            }))
        })
        const fiber = yield* forkTracked(run, scope)
        // A fiber tells its exit even when interrupted before it ran.
        fiber.addObserver((exit) =>
          first.isDone
            ? rest.push({ _tag: "Ended", exit })
            : arrived(Exit.map(exit, () => undefined))
        )
        return { first, rest }
      })

    /** The error event that ends a stream cut after its first content (and no `[DONE]`). */
    const cutShort = (cause: Cause.Cause<GatewayError>, tally: Tally) =>
      Effect.suspend(() => {
        traffic.streamCut()
        return lateError(cause, sseEvent, tally)
      })

    /**
     * The answer of a stream whose first content came within the keep-alive interval: its 200
     * and `head` written at once, then each later read's events as the pump hands them over (no
     * queue, no fiber between the pump and the socket), then `[DONE]` on a clean end, or an error
     * event on a failure (the drain deadline included). Waits for the end, so the call, its
     * permit and its stream live in the request's scope until the last byte. What a slow client
     * has not read yet waits in Node's response (an answer is bounded by its `max_tokens`).
     */
    const relay = (
      http: Exchange,
      rest: Rest,
      head: Uint8Array | undefined,
      tally: Tally,
      exchanged: Exchanged
    ) =>
      Effect.suspend(() => {
        const out = eventStream(http.response, eventHeaders[exchanged.status])
        if (head === undefined) {
          out.end(finished(tally))
          return Effect.succeed(out.response)
        }
        out.write(head)
        return Effect.async<HttpServerResponse.HttpServerResponse>((resume) => {
          rest.attach((item) => {
            if (item._tag === "Events") return out.write(item.bytes)
            if (Exit.isSuccess(item.exit)) {
              out.end(finished(tally))
              return resume(Effect.succeed(out.response))
            }
            resume(Effect.map(cutShort(item.exit.cause, tally), (event) => {
              out.end(event)
              return out.response
            }))
          })
          // The client went away: what is still to come has nowhere to go.
          return Effect.sync(() => rest.attach(ignore))
        })
      })

    /** The events that follow the keep-alives of a late answer, from its first content on. */
    const lateEvents = (rest: Rest, head: Uint8Array | undefined, tally: Tally): Stream.Stream<Uint8Array> => {
      if (head === undefined) return Stream.sync(() => finished(tally))
      const following = Stream.unwrap(Effect.map(Queue.unbounded<Item>(), (queue) => {
        rest.attach((item) => Queue.unsafeOffer(queue, item))
        let ended = false
        return Stream.repeatEffectOption(Effect.suspend(() =>
          ended ? Effect.fail(Option.none()) : Effect.flatMap(Queue.take(queue), (item) => {
            if (item._tag === "Events") return Effect.succeed(item.bytes)
            ended = true
            return Exit.isSuccess(item.exit) ? Effect.sync(() => finished(tally)) : cutShort(item.exit.cause, tally)
          })
        ))
      }))
      return Stream.concat(Stream.succeed(head), following)
    }

    const stream = (http: Exchange, request: ChatCompletionRequest, options: CallOptions, tally: Tally) =>
      Effect.gen(function*() {
        const exchanged = new Exchanged()
        const { first, rest } = yield* pump(
          resilient.stream(request, { ...options, onExchange: exchanged.told }),
          request.stream_options?.include_usage === true,
          http.scope
        )
        return yield* awaitFirst(first, {
          ...keepAliveSettings,
          keepAlive: sseKeepAlive,
          contentType: "text/event-stream",
          headers: unbufferedHeaders,
          ready: (exit) =>
            Exit.match(exit, {
              onFailure: failedNow(http, tally),
              onSuccess: (head) => relay(http, rest, head, tally, exchanged)
            }),
          late: (exit) =>
            Exit.match(exit, {
              onFailure: (cause) => Stream.fromEffect(lateError(cause, sseEvent, tally)),
              onSuccess: (head) => lateEvents(rest, head, tally)
            })
        })
      })

    /**
     * Everything that can refuse a request before any call: auth, the body, headers, routing, the
     * queue. Combinators, not a generator: this runs for every request.
     */
    const admit = ({ incoming, response }: Exchange): Effect.Effect<Admitted, Refused> =>
      Effect.zipRight(
        settings.authorize(incoming.headers.authorization),
        Effect.flatMap(readJson(incoming, response, settings.maxBodyBytes), (json): Effect.Effect<Admitted, Refused> => {
          const parsed = parseRequest(json, incoming.headers)
          if (Either.isLeft(parsed)) return Effect.fail(parsed.left)
          const { body, options, task } = parsed.right
          return Effect.flatMap(router.route(body, { task }), ({ request }): Effect.Effect<Admitted, Refused> =>
            !settings.models.has(request.model)
              ? unserved(request.model)
              : traffic.waiting >= waitingCap[options.priority]
              ? Effect.fail(new GatewayBusy({ waiting: traffic.waiting }))
              : Effect.succeed({ request, options }))
        })
      )

    /** The answer to `http`, counted by `tally` as it ends (a stream's at its last event). */
    const answerTo = (http: Exchange, tally: Tally) =>
      Effect.matchCauseEffect(admit(http), {
        onFailure: (cause) => failed(cause, tally),
        onSuccess: ({ options, request }) =>
          request.stream === true ? stream(http, request, options, tally) : completion(http, request, options, tally)
      })

    // The request is counted and its end added to its scope in one step: an interruption between
    // the two would leave it counted for good (and a drain waiting for it). Its scope closes
    // after its last byte is written, or when its client left (then unanswered, counted as such);
    // it is in flight until that byte is sent.
    const entered = (tally: Tally, http: Exchange) =>
      Effect.uninterruptible(
        Effect.zipRight(
          Scope.addFinalizer(http.scope, Effect.sync(() => {
            tally.ended()
            traffic.leaveWhenSent(http.response)
          })),
          Effect.sync(() => traffic.enter())
        )
      )

    return (http: Exchange): Effect.Effect<HttpServerResponse.HttpServerResponse> =>
      Effect.suspend(() => {
        if (traffic.draining) return failed(Cause.fail(new ShuttingDown()), traffic)
        const tally = new Tally(traffic)
        return Effect.zipRight(entered(tally, http), answerTo(http, tally))
      })
  })
