import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { describe, expect, it } from "@effect/vitest"
import * as ConfigError from "effect/ConfigError"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Accounts from "../src/Accounts.js"

const secrets = ["sk-literal-aaaa", "sk-env-bbbb", "sk-env-cccc", "sk-misplaced-dddd"]

const environment = ConfigProvider.fromMap(
  new Map([
    ["DEEPSEEK_KEY_A", "sk-env-bbbb"],
    ["ALT_KEYS", "sk-env-cccc, sk-env-dddd"],
    ["BLANK", " , "],
    ["PASTED", "sk-env-eeee\nsk-env-ffff"]
  ])
)

const valid = {
  accounts: [
    {
      name: "a",
      provider: "deepseek",
      baseUrl: "https://api.deepseek.com",
      keys: ["sk-literal-aaaa", "env:DEEPSEEK_KEY_A"]
    },
    { name: "b", provider: "deepseek", baseUrl: "https://api.deepseek.com/", keys: ["env:ALT_KEYS"], concurrency: 4 },
    {
      name: "alt",
      provider: "openai-compatible",
      baseUrl: "http://127.0.0.1:8080/v1",
      keys: ["env:ALT_KEYS"],
      fallback: true,
      models: { "deepseek-v4-flash": "other-model" },
      concurrency: { initial: 16, max: 64, backoff: 0.8 }
    }
  ]
}

const withAccount = (patch: Record<string, unknown>, index = 0) => ({
  accounts: valid.accounts.map((account, i) => (i === index ? { ...account, ...patch } : account))
})

/** The issues of a decode that must fail, checked to hold no key. */
const issuesOf = (input: unknown) =>
  Effect.gen(function*() {
    const error = yield* Effect.flip(Accounts.decode(input, "accounts.json"))
    expect(error._tag).toBe("AccountsError")
    expect(error.source).toBe("accounts.json")
    for (const secret of secrets) expect(error.message).not.toContain(secret)
    return error.issues
  }).pipe(Effect.withConfigProvider(environment))

describe("Accounts.make", () => {
  it("fills in what the file defaults: DeepSeek's provider and base URL, not a fallback, no model names of its own", () => {
    const keys = [Redacted.make("sk-made")]
    expect(Accounts.make({ name: "main", keys })).toEqual({
      name: "main",
      keys,
      provider: "deepseek",
      baseUrl: "https://api.deepseek.com",
      fallback: false,
      models: {}
    })
    expect(Accounts.make({ name: "alt", keys, provider: "openai-compatible", baseUrl: "https://llm.example.com/v1", fallback: true }))
      .toMatchObject({ provider: "openai-compatible", baseUrl: "https://llm.example.com/v1", fallback: true, models: {} })
  })
})

describe("Accounts", () => {
  it.effect("decodes a valid file, reading env: keys as redacted values", () =>
    Effect.gen(function*() {
      const accounts = yield* Accounts.decode(valid)
      expect(accounts.map((a) => [a.name, a.provider, a.fallback])).toEqual([
        ["a", "deepseek", false],
        ["b", "deepseek", false],
        ["alt", "openai-compatible", true]
      ])
      expect(accounts.map((a) => a.keys.map(Redacted.value))).toEqual([
        ["sk-literal-aaaa", "sk-env-bbbb"],
        ["sk-env-cccc", "sk-env-dddd"],
        ["sk-env-cccc", "sk-env-dddd"]
      ])
      // What names a key in messages (its variable is no secret); a key written in the file has none.
      expect(accounts.map((a) => a.keySources)).toEqual([
        [undefined, "DEEPSEEK_KEY_A"],
        ["ALT_KEYS", "ALT_KEYS"],
        ["ALT_KEYS", "ALT_KEYS"]
      ])
      expect(accounts[0]?.models).toEqual({})
      expect(accounts[2]?.models).toEqual({ "deepseek-v4-flash": "other-model" })
      expect(accounts.map((a) => a.concurrency)).toEqual([undefined, 4, { initial: 16, max: 64, backoff: 0.8 }])
      expect(JSON.stringify(accounts)).not.toContain("sk-")
    }).pipe(Effect.withConfigProvider(environment)))

  it.effect("names the variable of a missing or empty env: key, and a key no header can carry, with its path", () =>
    Effect.gen(function*() {
      const issues = yield* issuesOf(
        withAccount({ keys: ["env:DEEPSEEK_KEY_B", "sk-literal-aaaa", "env:BLANK", "env:PASTED", "sk-literal\tgggg"] }, 1)
      )
      expect(issues).toEqual([
        "accounts[1].keys[0]: environment variable DEEPSEEK_KEY_B is not set",
        "accounts[1].keys[2]: environment variable BLANK is empty",
        "accounts[1].keys[3]: environment variable PASTED: key#1 holds a space, a line break or another character a request header cannot carry (keys are separated by commas)",
        "accounts[1].keys[4]: holds a space, a line break or another character a request header cannot carry"
      ])
    }))

  it.effect("reports a bad URL, empty keys and an unknown provider with their paths", () =>
    Effect.gen(function*() {
      expect(yield* issuesOf(withAccount({ baseUrl: "ftp://example.com" }))).toEqual([
        "accounts[0].baseUrl: expected an http(s) URL"
      ])
      expect(yield* issuesOf(withAccount({ baseUrl: "not a url" }, 2))).toEqual([
        "accounts[2].baseUrl: expected an http(s) URL"
      ])
      // Credentials in it would reach traces (url.full); a query would have the path appended after it.
      expect(yield* issuesOf(withAccount({ baseUrl: "http://svc:s3cret@127.0.0.1:8080" }))).toEqual([
        "accounts[0].baseUrl: expected an http(s) URL without credentials (user:password@): keys are given apart from it"
      ])
      expect(yield* issuesOf(withAccount({ baseUrl: "https://llm.example/v1?api_key=s3cret" }))).toEqual([
        "accounts[0].baseUrl: expected an http(s) URL without a ?query or #fragment: /chat/completions is appended to it"
      ])
      const withCredentials = yield* Effect.flip(Accounts.fromEnv.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(
        new Map([["DEEPSEEK_API_KEY", "sk-one"], ["DEEPSEEK_BASE_URL", "https://user:s3cret@llm.example"]])
      ))))
      expect(String(withCredentials)).toContain("expected an http(s) URL without credentials (user:password@)")
      expect(String(withCredentials)).not.toContain("s3cret")
      expect(yield* issuesOf(withAccount({ keys: [] }, 1))).toEqual(["accounts[1].keys: expected at least one key"])
      expect(yield* issuesOf(withAccount({ provider: "azure" }))).toEqual([
        `accounts[0].provider: expected "deepseek" or "openai-compatible"`
      ])
    }))

  it.effect("takes every adaptive option a pool's lanes use, and refuses maxQueued (a lane's calls wait in the pool's queue)", () =>
    Effect.gen(function*() {
      const adaptive = {
        initial: 4, min: 2, max: 64, backoff: 0.8, fallBackoff: 0.3, holdRounds: 3, holdRequests: 20, fallHoldShare: 0.2,
        holdGrowth: 2, queueDelayRise: 3, queueDelayWindows: 2, latencyRise: 5, overloadShare: 0.6, overloadFloor: 0.4,
        queueDelayFloor: 100
      }
      const withConcurrency = (concurrency: unknown) => ({ accounts: [{ ...valid.accounts[1], concurrency }] })
      const [account] = yield* Accounts.decode(withConcurrency(adaptive))
      expect(account?.concurrency).toEqual(adaptive)
      expect(yield* issuesOf(withConcurrency({ maxQueued: 0 }))).toEqual([
        expect.stringMatching(/^accounts\[0\]\.concurrency\.maxQueued: is unexpected/)
      ])
    }).pipe(Effect.withConfigProvider(environment)))

  it.effect("takes an account's breaker options, durations in milliseconds or as text, and refuses what the pool sets itself", () =>
    Effect.gen(function*() {
      const breaker = {
        window: 30000, buckets: 6, failureRatio: 1, minimumThroughput: 10, openFor: 5000, maxOpenFor: 60000, canaries: 2
      }
      const withBreaker = (breaker: unknown) => ({ accounts: [{ ...valid.accounts[1], breaker }] })
      const [account] = yield* Accounts.decode(withBreaker(breaker))
      expect(account?.breaker).toEqual(breaker)
      expect((yield* Accounts.decode(valid))[0]?.breaker).toBeUndefined()
      // "openFor": 30 is 30 ms; "30s" says what was meant, as the command line's flags do.
      const [written] = yield* Accounts.decode(withBreaker({ window: "1m30s", openFor: "30s", maxOpenFor: "5m" }))
      expect(written?.breaker).toEqual({ window: 90000, openFor: 30000, maxOpenFor: 300000 })
      const duration = "expected milliseconds > 0 or a duration such as 30s, 500ms, 2m or 1h"
      expect(yield* issuesOf(withBreaker({ failureRatio: 0, openFor: -1, window: "1 minute", maxOpenFor: "0s", canaries: 1.5 }))).toEqual([
        `accounts[0].breaker.window: ${duration}`,
        "accounts[0].breaker.failureRatio: expected a number > 0 and ≤ 1",
        `accounts[0].breaker.openFor: ${duration}`,
        `accounts[0].breaker.maxOpenFor: ${duration}`,
        "accounts[0].breaker.canaries: expected an integer ≥ 1"
      ])
      // 429s are the lanes' limiters', and the pool sends a half-open account no more than its canaries.
      for (const field of ["countLoadShed", "halfOpenPolicy"]) {
        expect(yield* issuesOf(withBreaker({ [field]: "wait" }))).toEqual([
          expect.stringMatching(new RegExp(`^accounts\\[0\\]\\.breaker\\.${field}: is unexpected`))
        ])
      }
      expect(yield* issuesOf(withBreaker(0.5))).toEqual(["accounts[0].breaker: expected circuit breaker options"])
    }).pipe(Effect.withConfigProvider(environment)))

  it.effect("reports duplicate names and a pool of fallbacks only", () =>
    Effect.gen(function*() {
      expect(yield* issuesOf(withAccount({ name: "a" }, 2))).toEqual([
        `accounts[2].name: duplicate name "a" (also accounts[0])`
      ])
      // A name shaped like a key (a key pasted there) is refused, not quoted: a name is shown.
      const pasted = "sk-0f3a9c2b7d4e4b1a8c6d2e9f0a1b3c5d"
      const twice = { accounts: [{ ...valid.accounts[0], name: pasted }, { ...valid.accounts[1], name: "gsk_0f3a9c2b7d4e4b1a8c6d2e9f0a" }] }
      expect(yield* issuesOf(twice)).toEqual([0, 1].map((i) => `accounts[${i}].name: expected a name, not something shaped like a key (it is shown)`))
      const onlyFallbacks = { accounts: [{ ...valid.accounts[0], fallback: true }] }
      expect(yield* issuesOf(onlyFallbacks)).toEqual(["accounts: expected at least one account that is not a fallback"])
    }))

  it.effect("refuses a key held by two accounts at one origin (one upstream account counted twice), without echoing it", () =>
    Effect.gen(function*() {
      const account = (name: string, baseUrl: string, keys: ReadonlyArray<string>) => ({ name, provider: "deepseek", baseUrl, keys })
      const issues = yield* issuesOf({
        accounts: [
          account("a", "https://api.deepseek.com", ["sk-literal-aaaa"]),
          account("b", "https://api.deepseek.com/v1", ["env:ALT_KEYS", "env:DEEPSEEK_KEY_A"]),
          account("c", "https://api.deepseek.com", ["sk-env-bbbb", "sk-literal-aaaa", "sk-env-cccc"]),
          // Another origin: another upstream, whose keys are its own.
          account("elsewhere", "https://llm.example.com", ["sk-literal-aaaa"])
        ]
      })
      expect(issues).toEqual([
        `accounts[2].keys: a key accounts[1] ("b") holds too, at the same origin: an account's keys share its cap, so a key belongs in one account only`,
        `accounts[2].keys: a key accounts[0] ("a") holds too, at the same origin: an account's keys share its cap, so a key belongs in one account only`
      ])
      expect(JSON.stringify(issues)).not.toMatch(/sk-/)
    }))

  it.effect("refuses an account that lists one key twice (it would be sent again after a 401), without echoing it", () =>
    Effect.gen(function*() {
      const issues = yield* issuesOf({
        accounts: [{ name: "a", provider: "deepseek", baseUrl: "https://api.deepseek.com", keys: ["sk-env-bbbb", "env:DEEPSEEK_KEY_A"] }]
      })
      expect(issues).toEqual([`accounts[0].keys: holds one key twice (directly or through an env: reference)`])
    }))

  it.effect("reports every wrong type at once, without echoing a value that may be a key", () =>
    Effect.gen(function*() {
      const issues = yield* issuesOf({
        accounts: [
          {
            name: 7,
            provider: "deepseek",
            baseUrl: "https://api.deepseek.com",
            keys: "sk-misplaced-dddd",
            fallback: "yes",
            models: { "deepseek-v4-flash": 3 },
            concurrency: { initial: 0, limit: 3 },
            key: "sk-misplaced-dddd"
          },
          "sk-misplaced-dddd",
          { ...valid.accounts[1], keys: [42, "env:not a name", ""], concurrency: 2.5 }
        ]
      })
      expect(issues).toEqual([
        `accounts[0].key: is unexpected, expected: ` +
        `"name" | "provider" | "baseUrl" | "keys" | "fallback" | "models" | "concurrency" | "accountConcurrency" | "breaker"`,
        "accounts[0].name: expected a name",
        "accounts[0].keys: expected a list of keys",
        "accounts[0].fallback: expected true or false",
        `accounts[0].models["deepseek-v4-flash"]: expected a model name`,
        expect.stringMatching(/^accounts\[0\]\.concurrency\.limit: is unexpected/),
        "accounts[0].concurrency.initial: expected an integer ≥ 1",
        "accounts[1]: expected an account object",
        "accounts[2].keys[0]: expected a key, or env:NAME",
        "accounts[2].keys[1]: expected env:NAME with NAME an environment variable name",
        "accounts[2].keys[2]: expected a key, or env:NAME, not an empty string",
        "accounts[2].concurrency: expected an integer ≥ 1"
      ])
      expect(yield* issuesOf("sk-misplaced-dddd")).toEqual([`(root): expected an object with an "accounts" list`])
      expect(yield* issuesOf({ accounts: [] })).toEqual(["accounts: expected at least one account"])
      expect(yield* issuesOf({ accounts: [{ ...valid.accounts[0], concurrency: { min: 8, max: 4 } }] })).toEqual([
        "accounts[0].concurrency.max: expected at least min (8), got 4"
      ])
    }))

  it.scoped("loads a file, and reports an unreadable file or invalid JSON without quoting it", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped()
      yield* fs.writeFileString(`${dir}/ok.json`, JSON.stringify(valid))
      yield* fs.writeFileString(`${dir}/bad.json`, `{"accounts": [{"keys": [sk-misplaced-dddd]}]}`)
      expect((yield* Accounts.load(`${dir}/ok.json`)).map((a) => a.name)).toEqual(["a", "b", "alt"])
      const bad = yield* Effect.flip(Accounts.load(`${dir}/bad.json`))
      expect(bad.source).toBe(`${dir}/bad.json`)
      expect(bad.issues[0]).toMatch(/^not valid JSON/)
      expect(bad.message).not.toContain("sk-misplaced")
      // Where, as a line and column of the file; what, when V8 says it without quoting the file.
      yield* fs.writeFileString(`${dir}/comma.json`, `{\n  "accounts": [\n    {"name": "a",}\n  ]\n}`)
      expect((yield* Effect.flip(Accounts.load(`${dir}/comma.json`))).issues).toEqual([
        "not valid JSON (line 3, column 18: Expected double-quoted property name)"
      ])
      yield* fs.writeFileString(`${dir}/twice.json`, `{"accounts": []}\n{}`)
      expect((yield* Effect.flip(Accounts.load(`${dir}/twice.json`))).issues).toEqual([
        "not valid JSON (line 2, column 1: Unexpected non-whitespace character after JSON)"
      ])
      // A field given twice (two "keys" lists merged by hand): JSON would keep the last list only.
      yield* fs.writeFileString(`${dir}/repeated.json`, `{"accounts": [{"name": "a", "keys": ["sk-first-1"],\n  "keys": ["sk-second-2"]}]}`)
      expect((yield* Effect.flip(Accounts.load(`${dir}/repeated.json`))).issues).toEqual([
        `line 2, column 3: "keys" is given twice in one object (JSON keeps only the last)`
      ])
      const missing = yield* Effect.flip(Accounts.load(`${dir}/missing.json`))
      expect(missing.issues[0]).toMatch(/^cannot read the file/)
    }).pipe(Effect.provide(NodeFileSystem.layer), Effect.withConfigProvider(environment)))

  it.effect("fromEnv: one default account from DEEPSEEK_API_KEY and DEEPSEEK_BASE_URL", () =>
    Effect.gen(function*() {
      const [account, ...rest] = yield* Accounts.fromEnv.pipe(
        Effect.withConfigProvider(
          ConfigProvider.fromMap(
            new Map([["DEEPSEEK_API_KEY", "sk-one,sk-two"], ["DEEPSEEK_BASE_URL", "http://127.0.0.1:9/"]])
          )
        )
      )
      expect(rest).toEqual([])
      expect(account).toMatchObject({
        name: "default",
        provider: "deepseek",
        baseUrl: "http://127.0.0.1:9/",
        fallback: false
      })
      expect(account?.keys.map(Redacted.value)).toEqual(["sk-one", "sk-two"])

      const defaulted = yield* Accounts.fromEnv.pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DEEPSEEK_API_KEY", "sk-one"]])))
      )
      expect(defaulted[0]?.baseUrl).toBe("https://api.deepseek.com")
      // An env file's blank entry is unset, as for the other variables.
      const blankUrl = yield* Accounts.fromEnv.pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DEEPSEEK_API_KEY", "sk-one"], ["DEEPSEEK_BASE_URL", ""]])))
      )
      expect(blankUrl[0]?.baseUrl).toBe("https://api.deepseek.com")

      // A key pasted into DEEPSEEK_BASE_URL by mistake is not echoed in the error.
      const misplaced = yield* Effect.flip(Accounts.fromEnv.pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DEEPSEEK_API_KEY", "sk-one"], ["DEEPSEEK_BASE_URL", "sk-misplaced-dddd"]])))
      ))
      expect(String(misplaced)).toContain(`expected an http(s) URL such as https://api.deepseek.com, got "sk-***"`)
      expect(String(misplaced)).not.toContain("misplaced-dddd")

      const missing = yield* Effect.flip(
        Accounts.fromEnv.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map())))
      )
      expect(ConfigError.isMissingDataOnly(missing)).toBe(true)
      expect(String(missing)).toContain("DEEPSEEK_API_KEY")
      // Empty, or only commas: no key, told as an unset one is (missing data).
      const blank = yield* Effect.flip(
        Accounts.fromEnv.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DEEPSEEK_API_KEY", " , "]]))))
      )
      expect(ConfigError.isMissingDataOnly(blank)).toBe(true)
      expect(String(blank)).toContain("DEEPSEEK_API_KEY")
      // A key file pasted whole (one key a line): no header could carry it, said by its label.
      const pasted = yield* Effect.flip(Accounts.fromEnv.pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DEEPSEEK_API_KEY", "sk-one,sk-two\nsk-misplaced-dddd"]])))
      ))
      expect(ConfigError.isMissingDataOnly(pasted)).toBe(false)
      expect(String(pasted)).toContain("DEEPSEEK_API_KEY")
      expect(String(pasted)).toContain("key#2 holds a space, a line break or another character a request header cannot carry")
      expect(String(pasted)).not.toContain("misplaced-dddd")
    }))
})
