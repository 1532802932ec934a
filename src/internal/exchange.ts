/**
 * One HTTP exchange on an undici dispatcher, awaited by effects without a Node stream or a fiber
 * of its own: undici's handler callbacks hand over the status, the body's reads and its end, and
 * resume the effect waiting for them. `abort` ends the exchange with a reason of the caller's (a
 * deadline), which the waiting effect fails with. The transport's path over
 * `Transport.nodeHttpClient`; anything else goes through `@effect/platform`'s `HttpClient`.
 * `Exchanges` sends them so that pooled sockets are reused (see there).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type { IncomingHttpHeaders } from "node:http"
import type { Dispatcher } from "undici"

/** Reads held before undici is asked to pause the socket (a consumer slower than the upstream). */
const maxBuffered = 64

/** The options of a request: where it goes and what it carries. */
export interface Request {
  readonly origin: string
  readonly path: string
  readonly method: "POST"
  readonly headers: Readonly<Record<string, string>>
  readonly body: string | null
}

/** What `take` gives once the body ended. */
const noReads: ReadonlyArray<Buffer> = []

/**
 * Sends exchanges on an undici dispatcher so that a request takes the socket of an answer that has
 * just ended rather than opening a connection. undici gives such a socket back to its pool only at
 * the end of the event loop's turn (a `setImmediate`, in case the server closes a connection it
 * said it would keep), and a request dispatched before that finds every socket busy and connects
 * anew. The next call usually starts right as an answer ends (a limiter's waiter, a batch's next
 * line, a worker's next item): 16 workers sending 400 calls to a loopback upstream opened 26
 * connections where 16 serve, and each new connection costs a handshake and a socket.
 *
 * So, per origin, a request sent while answers that ended are about to give their sockets back
 * waits for the next of them (to the end of the turn at most); requests beyond those sockets go
 * at once.
 */
export class Exchanges {
  private readonly origins = new Map<string, Origin>()

  constructor(private readonly dispatcher: Dispatcher) {}

  send(request: Request): Exchange {
    const origin = this.originOf(request.origin)
    const exchange = new Exchange(request, origin)
    if (origin.waiting.length < origin.freeing) origin.waiting.push(exchange)
    else exchange.dispatch(this.dispatcher)
    return exchange
  }

  private originOf(name: string): Origin {
    let origin = this.origins.get(name)
    if (origin === undefined) {
      origin = new Origin(this.dispatcher)
      this.origins.set(name, origin)
    }
    return origin
  }
}

/** The sockets of one origin about to be given back, and the requests waiting for them. */
class Origin {
  freeing = 0
  readonly waiting: Array<Exchange> = []

  constructor(private readonly dispatcher: Dispatcher) {}

  /**
   * An answer ended. undici queues its socket's return (`setImmediate`) as this call returns; a
   * microtask runs after that, so the immediate queued there runs once the socket is back.
   */
  ended(): void {
    this.freeing++
    queueMicrotask(this.afterReturn)
  }

  private readonly afterReturn = (): void => {
    setImmediate(this.returned)
  }

  /** A socket is back: the next request held, if any, takes it (no more are held than sockets coming back). */
  private readonly returned = (): void => {
    this.freeing--
    this.waiting.shift()?.dispatch(this.dispatcher)
  }
}

export class Exchange implements Dispatcher.DispatchHandler {
  status = 0
  headers: IncomingHttpHeaders = {}
  private controller: Dispatcher.DispatchController | undefined
  private started = false
  private ended = false
  private reads: Array<Buffer> = []
  private failure: { readonly cause: unknown } | undefined
  private waiter: (() => void) | undefined
  /** Set by `readAll`: each read goes to it as it arrives instead of being held for `take`. */
  private onRead: ((bytes: Buffer) => void) | undefined

  constructor(private readonly request: Request, private readonly origin: Origin) {}

  /** Sends the request on `dispatcher`, unless the exchange was aborted while it waited for a socket. */
  dispatch(dispatcher: Dispatcher): void {
    if (this.failure !== undefined) return
    try {
      dispatcher.dispatch(this.request, this)
    } catch (error) {
      this.fail(error)
    }
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller
    if (this.failure !== undefined) controller.abort(this.failure.cause as Error)
  }

  onResponseStart(_: Dispatcher.DispatchController, status: number, headers: IncomingHttpHeaders): void {
    this.status = status
    this.headers = headers
    this.started = true
    this.wake()
  }

  onResponseData(controller: Dispatcher.DispatchController, bytes: Buffer): void {
    if (this.onRead !== undefined) return this.onRead(bytes)
    this.reads.push(bytes)
    if (this.reads.length >= maxBuffered) controller.pause()
    this.wake()
  }

  onResponseEnd(): void {
    this.ended = true
    this.origin.ended()
    this.wake()
  }

  onResponseError(_: Dispatcher.DispatchController, error: Error): void {
    this.fail(error)
  }

  /** Ends the exchange with `reason` unless it ended: a wait under way, and every later one, fails with it. */
  abort(reason: Error): void {
    if (this.ended) return
    this.fail(reason)
    this.controller?.abort(reason)
  }

  /** The status and headers arrived. */
  readonly response: Effect.Effect<void, unknown> = this.waitFor(() => this.started ? true : undefined)

  /** Every read that arrived since the last `take`, waiting for one; none once the body ended. */
  readonly take: Effect.Effect<ReadonlyArray<Buffer>, unknown> = this.waitFor(() => {
    if (this.reads.length > 0) {
      const reads = this.reads
      this.reads = []
      this.controller?.resume()
      return reads
    }
    return this.ended ? noReads : undefined
  })

  /** Hands every read to `add`, those held first, and waits for the body's end. */
  readAll(add: (bytes: Buffer) => void): Effect.Effect<void, unknown> {
    return Effect.suspend(() => {
      const held = this.reads
      this.reads = []
      for (const bytes of held) add(bytes)
      this.onRead = add
      this.controller?.resume()
      return this.end
    })
  }

  private readonly end: Effect.Effect<void, unknown> = this.waitFor(() => this.ended ? true : undefined)

  get isEnded(): boolean {
    return this.ended
  }

  private fail(cause: unknown): void {
    this.failure ??= { cause }
    this.wake()
  }

  private wake(): void {
    const waiter = this.waiter
    this.waiter = undefined
    waiter?.()
  }

  /**
   * Waits until `ready` gives a value (reads are handed over before a failure that came after
   * them); what is there already is answered without a wait. A wait carries no interruption
   * handler (a mask and a finalizer each): the call that runs the exchange aborts it as it ends
   * (`Wire.within`, `Wire.watchScoped`), and an interrupted wait's callback resumes nothing.
   */
  private waitFor<A>(ready: () => A | undefined): Effect.Effect<A, unknown> {
    const wait = Effect.async<A, unknown>((resume) => {
      const check = (): void => {
        const value = ready()
        if (value !== undefined) resume(Effect.succeed(value))
        else if (this.failure !== undefined) resume(Effect.fail(this.failure.cause))
        else this.waiter = check
      }
      check()
    })
    return Effect.suspend(() => {
      const value = ready()
      if (value !== undefined) return Effect.succeed(value)
      return this.failure !== undefined ? Effect.fail(this.failure.cause) : wait
    })
  }
}
