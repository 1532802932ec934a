/**
 * `@effect/ai` on DeepSeek through weatherproof: the program uses only `@effect/ai`'s
 * `LanguageModel` API; the layer at the bottom routes every call through weatherproof's
 * resilient client (retries, limits, breaker, failover, cost records).
 *
 * It streams the model's reasoning and answer as they arrive. When the model calls the tool,
 * the toolkit answers it, and the next turn sends the call, its reasoning and the result back,
 * until the model answers without calling a tool.
 *
 * Run with DEEPSEEK_API_KEY set (and DEEPSEEK_BASE_URL for another OpenAI-compatible API).
 */
import { LanguageModel, Prompt, Tool, Toolkit } from "@effect/ai"
import { NodeRuntime } from "@effect/platform-node"
import { Chunk, Console, Effect, Layer, Schema, Stream } from "effect"
import { Resilient } from "weatherproof"
import * as AiLanguageModel from "weatherproof/AiLanguageModel"

const GetForecast = Tool.make("GetForecast", {
  description: "Tomorrow's weather forecast for a city",
  parameters: { city: Schema.String },
  success: Schema.Struct({ sky: Schema.String, highCelsius: Schema.Number })
})

const Forecasts = Toolkit.make(GetForecast)

const ForecastsLive = Forecasts.toLayer({
  GetForecast: ({ city }) => Effect.succeed({ sky: city === "Oslo" ? "rain" : "sun", highCelsius: 14 })
})

const write = (text: string) => Effect.sync(() => process.stdout.write(text))

/** One turn, streamed to the terminal as it arrives; returns every part of it. */
const streamTurn = (prompt: Prompt.Prompt) =>
  LanguageModel.streamText({ prompt, toolkit: Forecasts }).pipe(
    Stream.tap((part) => {
      switch (part.type) {
        case "reasoning-start":
          return write("(thinking) ")
        case "reasoning-delta":
        case "text-delta":
          return write(part.delta)
        case "reasoning-end":
        case "text-end":
          return write("\n")
        case "tool-call":
          return Console.log(`-> ${part.name}(${JSON.stringify(part.params)})`)
        case "tool-result":
          return Console.log(`<- ${JSON.stringify(part.result)}`)
        default:
          return Effect.void
      }
    }),
    Stream.runCollect,
    Effect.map(Chunk.toReadonlyArray)
  )

const program = Effect.gen(function*() {
  let prompt = Prompt.make("Should I take an umbrella in Oslo tomorrow?")
  for (let turn = 1; turn <= 5; turn++) {
    const parts = yield* streamTurn(prompt)
    // The assistant turn (reasoning, text, tool calls) and the tool results join the conversation.
    prompt = Prompt.merge(prompt, Prompt.fromResponseParts(parts))
    const finish = parts.find((part) => part.type === "finish")
    if (finish?.reason !== "tool-calls") {
      return yield* Console.log(`tokens: ${finish?.usage.inputTokens} in (${finish?.usage.cachedInputTokens} cached), ` +
        `${finish?.usage.outputTokens} out (${finish?.usage.reasoningTokens} reasoning)`)
    }
  }
})

// DeepSeek in thinking mode, through the resilient client configured from the environment.
const DeepSeek = AiLanguageModel.model("deepseek-v4-flash", { thinking: { type: "enabled" } }).pipe(
  Layer.provide(Resilient.layerConfig)
)

NodeRuntime.runMain(program.pipe(Effect.provide([DeepSeek, ForecastsLive])))
