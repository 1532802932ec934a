/**
 * Cross-origin access to the API for the web pages the browser guard lets through (`auth.ts`):
 * any page when the gateway has keys (the key is the check), this machine's own pages when it has
 * none. Chat clients that run in the browser call the OpenAI API from the page: without CORS
 * their preflight got a 404 and they could read no answer. Only the API's routes are opened (chat
 * completions and models, which take the gateway key); the status page, `/status.json` and
 * `/metrics`, which need no key, stay readable by their own origin only.
 */
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import type * as Http from "node:http"

/** The API's routes: chat completions and models, with or without `/v1`, in any case (as the router matches them). */
export const isApiPath = (path: string): boolean => /^(?:\/v1)?\/(?:chat\/completions|models(?:\/.*)?)$/i.test(path)

/** What an answer to a page says: any origin may read it, its `Retry-After` and its cache status. */
const answerHeaders = {
  "access-control-allow-origin": "*",
  "access-control-expose-headers": "retry-after, x-weatherproof-cache-status"
} as const

/** The answer to a page's preflight: its method and headers may be sent; browsers keep it 10 minutes. */
export const preflight = (request: Http.IncomingMessage): HttpServerResponse.HttpServerResponse =>
  HttpServerResponse.empty({
    status: 204,
    headers: {
      ...answerHeaders,
      "access-control-allow-methods": "GET, POST, OPTIONS",
      "access-control-allow-headers": request.headers["access-control-request-headers"] ?? "authorization, content-type",
      "access-control-max-age": "600"
    }
  })

/**
 * Lets the page read the answer: set on Node's response before anything is written, so every
 * answer carries it, a stream's too (the chat route writes those itself).
 */
export const allowPageToRead = (response: Http.ServerResponse): void => {
  for (const [name, value] of Object.entries(answerHeaders)) response.setHeader(name, value)
}
