/**
 * `ConcurrencyLimiter.makeRedis`: one lane of the Redis lane coordinator (`redisDispatcher.ts`)
 * behind the limiter's `Service`, shared by every limiter of the same name on the same prefix.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as MetricLabel from "effect/MetricLabel"
import * as Scope from "effect/Scope"
import type { AcquireOptions, Permit, RedisOptions, Service, Snapshot } from "../ConcurrencyLimiter.js"
import { Redis } from "../Redis.js"
import * as Limiter from "./concurrencyLimiter.js"
import { AccountSlot, type LaneGrant } from "./dispatcher.js"
import * as RedisLanes from "./redisDispatcher.js"

const noneExcluded: ReadonlySet<number> = new Set()

export const makeRedis = (
  options: RedisOptions,
  leaseTtl: Duration.Duration
): Effect.Effect<Service, never, Redis | Scope.Scope> =>
  Effect.gen(function*() {
    const redis = yield* Redis
    const clock = yield* Effect.clock
    const limit = options.permits ?? (yield* Effect.sync(() => Limiter.adaptiveConfig(options)))
    const maxQueued = options.maxQueued ?? Infinity
    const tags = [MetricLabel.make("limiter", options.name)]
    const publish = (): void => {
      Limiter.limitGauge.unsafeUpdate(lane.limit, tags)
      Limiter.inFlightGauge.unsafeUpdate(lane.inFlight, tags)
      Limiter.queuedGauge.unsafeUpdate(lanes.queued(), tags)
    }
    const slot = new AccountSlot(0, false, Infinity)
    const lanes = yield* RedisLanes.make(
      redis,
      [slot],
      () => ({ key: redis.key("limiter", options.name), account: undefined, limit }),
      // Its one lane's gauges are published once it is made (below); its counter starts at 0 then.
      { opened: () => Limiter.droppedCounter.unsafeUpdate(0, tags), changed: publish, roomMayHaveGrown: () => {} },
      { leaseTtl }
    )
    const lane = lanes.laneOf(slot, options.name)
    const hooks: Limiter.PermitHooks = {
      classify: options.classify,
      refills: () => lanes.queued() > 0 && lane.inFlight <= lane.limit,
      changed: publish,
      dropped: () => Limiter.droppedCounter.unsafeUpdate(1, tags)
    }
    const permitOf = (grant: LaneGrant) => Limiter.makePermit(lane.policy, lane, grant, clock, hooks)
    const release = (grant: LaneGrant) => () => {
      lanes.release(grant)
      publish()
    }

    /** Waits for the server's grant (every entry queues); the queue's place is given up on interruption. */
    const enter = (
      acquireOptions: AcquireOptions | undefined,
      restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
    ): Effect.Effect<LaneGrant, Limiter.QueueFull> =>
      Effect.suspend(() => {
        if (lanes.queued() >= maxQueued) return Effect.fail(new Limiter.QueueFull({ queued: lanes.queued() }))
        const entry = lanes.enter(options.name, acquireOptions?.priority ?? "interactive", noneExcluded, acquireOptions?.returning)
        if (entry._tag === "Granted") return Effect.succeed(entry.grant)
        const { waiter } = entry
        publish()
        const leave = () => lanes.cancel(waiter)
        return Effect.map(Limiter.awaitWake(waiter.wake, restore, acquireOptions?.abandonWhen, () => lanes.queued(), leave, publish), () => waiter.grant!)
      })

    const acquire = (acquireOptions?: AcquireOptions): Effect.Effect<Permit, Limiter.QueueFull, Scope.Scope> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(enter(acquireOptions, restore), (grant) => {
          const { permit, settle } = permitOf(grant)
          return Effect.flatMap(Effect.scope, (scope) =>
            Effect.as(Scope.addFinalizer(scope, Effect.sync(() => Limiter.settleThenRelease(settle, release(grant)))), permit))
        })
      )

    const withPermit: Service["withPermit"] = (use, acquireOptions) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(enter(acquireOptions, restore), (grant) => {
          const { permit, settle } = permitOf(grant)
          return Effect.flatMap(Effect.exit(restore(Limiter.effectOf(use, permit))), (exit) => {
            Limiter.settleThenRelease(settle, release(grant), exit)
            return exit
          })
        })
      )

    const snapshot = Effect.sync((): Snapshot => ({ limit: lane.limit, inFlight: lane.inFlight, queued: lanes.queued() }))
    publish()
    return { acquire, withPermit, snapshot }
  })
