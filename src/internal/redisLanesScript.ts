/**
 * The Lua script behind the Redis lane coordinator (`redisDispatcher.ts`): one script, the
 * operation its first argument, so every operation sees the same helpers and runs atomically.
 * Time is the server's (`TIME`), never a client's.
 *
 * State, under `base` (`{prefix}:lanes`) and each lane's key `L` (`{prefix}:pool:lane:<account>:<model>`,
 * or `{prefix}:limiter:<name>`):
 * - `L:leases`, `A:leases` (`A` the lane's account key): sorted sets of lease ids scored by their
 *   expiry (server ms). Every operation on a lane first drops the expired ones.
 * - `L:state`: a hash, `limit` (the integer the grant reads), `epoch` (the adaptive limit's stamp),
 *   `version` and `aimd` (its serialised state, compared and set by `commit`), `account`
 *   (`A`), `cap` (the account's cap over all its lanes, -1 for none), `dropTo` (the limit a 429 leads to at most, from the last commit),
 *   and once a 429 came `lowered`, `loweredEpoch`, `loweredUntil` (see "lower"). `A:lanes` lists an account's lanes.
 * - `L:accepted`: the leases whose requests were accepted upstream, scored as in `L:leases` (a
 *   refresh of one moves both): added by `commit` for leases still held, dropped with the lease. A
 *   set of leases, not a count, so that no failure can leave it off the truth for good: an
 *   acceptance committed twice counts once, one committed after its end counts nowhere, and one
 *   the server lost (restarted, or from an older snapshot) is missing only until its lease ends.
 * - `L:q:interactive:returning`, `L:q:interactive`, `L:q:batch:returning`, `L:q:batch`: sorted
 *   sets of waiting tickets, served in that order, as `WaitQueues` serves a process's: a caller
 *   back for another attempt (its first met a 429, or failed over) waits ahead of the calls of its
 *   priority not yet sent. Within a queue, the owners take turns (see `scoreOn`): a ticket's score
 *   is its round times `span` plus its arrival order (`base:seq`, an `INCR` counter) modulo
 *   `span`. `L:q:<queue>:rounds` is a hash of each owner's last round on that queue, `L:state`'s
 *   `served:q:<queue>` the round of its last grant.
 * - `base:ticket:<id>` (an id is `<owner>.<sequence>`, a lease's its ticket's): a hash, `owner`,
 *   `ttl` (the lease's, ms), `presence` (its owner's, ms), `queue` (which of a lane's queues:
 *   `interactive`, `batch:returning`…), `lanes` (space separated), `order`; once granted also
 *   `granted` (the grant's message) until its lease (whose id is the ticket's) is released or it
 *   expires. A lease granted to a waiting ticket lasts its owner's presence until the owner's
 *   heartbeat refreshes it: an owner dead while its tickets waited holds each for that long, not
 *   for a lease TTL.
 * - `base:process:<owner>`: the owner's presence (a TTL refreshed by its heartbeat); `base:processes`
 *   a sorted set of owners scored by the expiry of their presence, `base:reporting` the same of
 *   the owners that say which lanes they use (earlier versions do not), and `L:users` of the
 *   owners that hold or wait on lane `L`, scored alike: an owner's share of a lane (see the
 *   coordinator) is its limit divided by itself, the lane's other users and every owner that does
 *   not report (each may be one).
 * - Channel `base:grants:<owner>`: each grant, `<ticket> <lane> <in-flight> <epoch> <limit>` (the
 *   lane's in-flight count with it).
 *
 * Every key has a TTL: leases, queues and state `idle` ms after their last use, tickets three
 * lease TTLs while waiting and one once granted, presence as the heartbeat says.
 *
 * @internal
 */
export const script = `
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local op, base, idle = ARGV[1], ARGV[2], tonumber(ARGV[3])

local function split(text)
  local parts = {}
  for part in string.gmatch(text or "", "%S+") do parts[#parts + 1] = part end
  return parts
end

local function ticketKey(id) return base .. ":ticket:" .. id end

-- A lane's queues, in the order they are served.
local queues = { ":q:interactive:returning", ":q:interactive", ":q:batch:returning", ":q:batch" }

local function touch(lane)
  for _, suffix in ipairs({ ":leases", ":accepted", ":state", ":users" }) do redis.call("PEXPIRE", lane .. suffix, idle) end
  for _, queue in ipairs(queues) do
    redis.call("PEXPIRE", lane .. queue, idle)
    redis.call("PEXPIRE", lane .. queue .. ":rounds", idle)
  end
end

-- Arrival order breaks ties within a round: the low part of a ticket's score.
local span = 1048576

-- A new ticket's score on a lane's queue (\`queue\` one of \`queues\`): start-time fair queuing
-- across owners. An owner's tickets go in rounds, one per round from the round being served on, so
-- the owners take turns: one that queued hundreds while the lane was stalled (a batch's read-ahead)
-- holds back another's first ticket by a round, not by all of them. An owner's own tickets keep
-- their order; within a round, arrival decides. Written as an integer: Lua's default format keeps
-- 14 digits.
local function scoreOn(lane, queue, owner, order)
  local rounds = lane .. queue .. ":rounds"
  local serving = tonumber(redis.call("HGET", lane .. ":state", "served" .. queue)) or 0
  local round = math.max(serving, tonumber(redis.call("HGET", rounds, owner)) or 0) + 1
  redis.call("HSET", rounds, owner, round)
  return string.format("%.0f", round * span + order % span)
end

local function purge(key)
  redis.call("ZREMRANGEBYSCORE", key, "-inf", now)
  return redis.call("ZCARD", key)
end

-- Marks \`owner\` alive (and reporting the lanes it uses) for \`presence\` ms; answers the processes alive.
local function present(owner, presence)
  redis.call("SET", base .. ":process:" .. owner, 1, "PX", presence)
  for _, set in ipairs({ ":processes", ":reporting" }) do
    redis.call("ZADD", base .. set, now + presence, owner)
    redis.call("PEXPIRE", base .. set, presence)
  end
  return purge(base .. ":processes")
end

-- Marks \`owner\` a user of \`lane\` for \`presence\` ms. The set's TTL is the lane's: the grant that
-- follows on every lane marked touches it.
local function uses(lane, owner, presence)
  redis.call("ZADD", lane .. ":users", now + presence, owner)
end

-- The processes alive that do not say which lanes they use, of \`processes\` alive: each may use any.
local function unreported(processes)
  return math.max(0, processes - purge(base .. ":reporting"))
end

-- The processes other than \`owner\` that may use \`lane\`: its users and the \`silent\` ones that do not report.
local function othersOn(lane, owner, silent)
  local users = purge(lane .. ":users")
  if redis.call("ZSCORE", lane .. ":users", owner) then users = users - 1 end
  return users + silent
end

-- Takes a ticket out of every queue it waits in.
local function unqueue(id, lanes)
  for _, lane in ipairs(lanes) do
    for _, queue in ipairs(queues) do redis.call("ZREM", lane .. queue, id) end
  end
end

-- The ticket first in line on a lane, the queue it waits in and its score.
local function headOf(lane)
  for _, queue in ipairs(queues) do
    local head = redis.call("ZRANGE", lane .. queue, 0, 0, "WITHSCORES")
    if #head > 0 then return head[1], queue, tonumber(head[2]) end
  end
  return nil
end

-- Notes the round of a ticket granted from a lane's queue: new tickets go in rounds after it.
local function noteServed(lane, queue, score)
  local round = math.floor(score / span)
  local field = "served" .. queue
  if round > (tonumber(redis.call("HGET", lane .. ":state", field)) or 0) then
    redis.call("HSET", lane .. ":state", field, round)
  end
end

-- Grants the lane's free permits to the heads of its queues, in their order. Answers the
-- grant message of \`wanted\` if it was granted.
local function grant(lane, wanted)
  local state = redis.call("HMGET", lane .. ":state", "limit", "epoch", "account", "cap")
  local limit, epoch = tonumber(state[1]) or 1, state[2] or "0"
  local account, cap = state[3], tonumber(state[4]) or -1
  local answer = nil
  while true do
    local inFlight = purge(lane .. ":leases")
    if inFlight >= limit then break end
    if account and cap >= 0 and purge(account .. ":leases") >= cap then break end
    local id, queue, score = headOf(lane)
    if id == nil then break end
    local ticket = redis.call("HMGET", ticketKey(id), "owner", "ttl", "lanes", "granted", "presence")
    if ticket[1] == false or ticket[4] ~= false or redis.call("EXISTS", base .. ":process:" .. ticket[1]) == 0 then
      -- Gone, granted already, or its owner is dead: it waits nowhere any more. A waiting ticket
      -- goes too, so that an owner alive after all (its presence lapsed) finds it gone and queues it again.
      unqueue(id, split(ticket[3] or lane))
      unqueue(id, { lane })
      if ticket[1] ~= false and ticket[4] == false then redis.call("DEL", ticketKey(id)) end
    else
      -- The caller placing the ticket is alive now; another owner may have died while it waited.
      local ttl = tonumber(ticket[2])
      local expiry = now + (id == wanted and ttl or math.min(ttl, tonumber(ticket[5]) or ttl))
      unqueue(id, split(ticket[3]))
      noteServed(lane, queue, score)
      redis.call("ZADD", lane .. ":leases", expiry, id)
      if account then redis.call("ZADD", account .. ":leases", expiry, id) end
      local message = id .. " " .. lane .. " " .. (inFlight + 1) .. " " .. epoch .. " " .. limit
      redis.call("HSET", ticketKey(id), "granted", message)
      redis.call("PEXPIRE", ticketKey(id), ttl)
      -- The ticket the caller placed learns of its grant in the reply.
      if id == wanted then answer = message else redis.call("PUBLISH", base .. ":grants:" .. ticket[1], message) end
    end
  end
  touch(lane)
  if account then
    redis.call("PEXPIRE", account .. ":leases", idle)
    redis.call("PEXPIRE", account .. ":lanes", idle)
  end
  return answer
end

-- After permits came back on a lane: under an account cap any lane of the account may take them.
local function granted(lane)
  local state = redis.call("HMGET", lane .. ":state", "account", "cap")
  if state[1] and (tonumber(state[2]) or -1) >= 0 then
    for _, other in ipairs(redis.call("SMEMBERS", state[1] .. ":lanes")) do grant(other) end
  else
    grant(lane)
  end
end

local function releaseLease(lane, id)
  redis.call("DEL", ticketKey(id))
  redis.call("ZREM", lane .. ":leases", id)
  redis.call("ZREM", lane .. ":accepted", id)
  local account = redis.call("HGET", lane .. ":state", "account")
  if account then redis.call("ZREM", account .. ":leases", id) end
  granted(lane)
end

-- Releases \`owner\`'s leases on \`lane\` whose ids are not in \`listed\` and whose sequence is
-- at most \`upTo\` (see "heartbeat").
local function releaseUnlisted(lane, owner, listed, upTo)
  local prefix = owner .. "."
  for _, id in ipairs(redis.call("ZRANGE", lane .. ":leases", 0, -1)) do
    local sequence = string.sub(id, 1, #prefix) == prefix and tonumber(string.sub(id, #prefix + 1))
    if sequence and sequence <= upTo and not listed[id] then releaseLease(lane, id) end
  end
end

-- A grant the owner asks about (its message lost): its lease lasts a TTL from now, the owner
-- taking it; one that lapsed meanwhile may be another's, so the ticket goes ("") and its owner
-- places it again.
local function heldGrant(id, message, ttl)
  local lane = split(message)[2]
  if (tonumber(redis.call("ZSCORE", lane .. ":leases", id)) or 0) <= now then
    releaseLease(lane, id)
    return ""
  end
  redis.call("ZADD", lane .. ":leases", now + ttl, id)
  local account = redis.call("HGET", lane .. ":state", "account")
  if account then redis.call("ZADD", account .. ":leases", now + ttl, id) end
  return message
end

-- Sets up a lane's state from its spec (ARGV from \`i\`: lane, account or "", cap, limit, whether
-- the limit is fixed (1) or a seed (0), the adaptive limit's highest or -1); answers the lane. A
-- fixed limit holds the lane for a lease's \`ttl\` from each placement or heartbeat of a process
-- that has it (\`fixedUntil\`): an adaptive process's commits and lowerings leave it be meanwhile.
-- So does the lowest highest of the processes on the lane (\`highest\`, each asserting its own
-- likewise): the commits keep the limit under it (an account's \`concurrency: 2\` in one process
-- holds the others' calls too).
local function ensureLane(i, ttl)
  local lane, account, cap, limit, fixed, highest = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5])
  local stateKey = lane .. ":state"
  if fixed == "1" then
    redis.call("HSET", stateKey, "limit", limit, "fixedUntil", now + ttl)
  else
    redis.call("HSETNX", stateKey, "limit", limit)
  end
  if highest and highest >= 0 then
    local standing = redis.call("HMGET", stateKey, "highest", "highestUntil", "limit")
    local lowest, lowestUntil = tonumber(standing[1]), tonumber(standing[2]) or 0
    -- Written when it lapsed, for a lower one, or to renew one's own in the second half of its
    -- TTL: not on every placement (a call each).
    if now >= lowestUntil or highest < lowest or (highest == lowest and lowestUntil - now < ttl / 2) then
      redis.call("HSET", stateKey, "highest", highest, "highestUntil", now + ttl)
      if tonumber(standing[3]) > highest then redis.call("HSET", stateKey, "limit", highest) end
    end
  end
  redis.call("HSETNX", stateKey, "epoch", 0)
  redis.call("HSETNX", stateKey, "version", 0)
  if account ~= "" then
    redis.call("HSET", stateKey, "account", account, "cap", cap)
    redis.call("SADD", account .. ":lanes", lane)
  end
  return lane
end

if op == "place" then
  -- ARGV: owner, ticket, queue (which of \`queues\`, without ":q:"), lease ttl, the owner's
  -- presence, then per lane: lane, account (or ""), cap, limit, whether the limit is fixed (1)
  -- or a seed (0), the adaptive limit's highest (or -1). Marks the owner alive (a server that restarted empty knows it again before its
  -- next heartbeat), queues the ticket on exactly these lanes (keeping its place on those it waits
  -- on already, in the same queue; on another, it goes in its owner's next round there), marks
  -- the owner a user of each, and grants what it can. Answers its grant (or false) and the
  -- processes alive.
  local owner, id, queue, ttl, presence = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
  local processes = present(owner, presence)
  local key = ticketKey(id)
  local ticket = redis.call("HMGET", key, "granted", "order", "lanes")
  if ticket[1] then return { ticket[1], processes } end
  local order = tonumber(ticket[2]) or redis.call("INCR", base .. ":seq")
  redis.call("PEXPIRE", base .. ":seq", idle)
  local lanes = {}
  for i = 9, #ARGV, 6 do lanes[#lanes + 1] = ensureLane(i, ttl) end
  local queued = ":q:" .. queue
  local scores = {}
  for i, lane in ipairs(lanes) do scores[i] = redis.call("ZSCORE", lane .. queued, id) end
  unqueue(id, split(ticket[3]))
  redis.call("HSET", key, "owner", owner, "ttl", ttl, "presence", presence, "queue", queue, "lanes", table.concat(lanes, " "), "order", order)
  redis.call("PEXPIRE", key, 3 * ttl)
  for i, lane in ipairs(lanes) do
    redis.call("ZADD", lane .. queued, scores[i] or scoreOn(lane, queued, owner, order), id)
    uses(lane, owner, presence)
  end
  local answer = false
  for _, lane in ipairs(lanes) do answer = grant(lane, id) or answer end
  return { answer, processes }
elseif op == "cancel" then
  -- ARGV: ticket. Leaves its queues, or hands back the permit granted meanwhile.
  local key = ticketKey(ARGV[4])
  local ticket = redis.call("HMGET", key, "lanes", "granted")
  redis.call("DEL", key)
  if ticket[2] then
    releaseLease(split(ticket[2])[2], ARGV[4])
  else
    unqueue(ARGV[4], split(ticket[1]))
  end
  return false
elseif op == "release" then
  -- ARGV: lane, lease.
  releaseLease(ARGV[4], ARGV[5])
  return false
elseif op == "heartbeat" then
  -- ARGV: owner, lease ttl, presence ms, 0, or for full lists (every lease the owner holds and
  -- every ticket it waits on) the last sequence of the owner's ids they may hold, then counts and lists: leases as (lane, id) pairs,
  -- waiting tickets, lanes in use (each as \`place\` gives it), then the count of those it holds or
  -- waits on and their indices in that list. Refreshes (or re-adds) the leases, answers each ticket's state
  -- ("w" waiting, its grant, or "" gone: a grant whose lease lapsed too), marks the owner a user of the lanes it holds or
  -- waits on, grants on the lanes, and answers each lane's limit, epoch, in-flight, its account's
  -- in-flight and the other processes that use it (\`othersOn\`), and the processes alive. Full, it also releases
  -- the owner's leases on those lanes that are in neither list: their release was lost (Redis
  -- failed as it was sent), or the server came back from a snapshot taken while they were held.
  -- Each would hold a permit until it expired, a lease TTL; a lease granted to a listed ticket is
  -- kept, its owner not told yet, and so is one of a later sequence: its ticket was placed after
  -- the lists were taken, its \`place\` sent before this heartbeat.
  local owner, ttl, presence, upTo = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local processes = present(owner, presence)
  -- The lanes first: a server that restarted empty learns each lane's account before the leases
  -- held on it are added back, so that they count against the account's cap again.
  local used = 8 + 2 * tonumber(ARGV[8]) + 1
  used = used + tonumber(ARGV[used]) + 1
  local lanes = {}
  for j = 1, tonumber(ARGV[used]) do lanes[j] = ensureLane(used + 6 * j - 5, ttl) end
  local busy = used + 6 * #lanes + 1
  for j = 1, tonumber(ARGV[busy]) do uses(lanes[tonumber(ARGV[busy + j])], owner, presence) end
  local listed = {}
  local i = 8
  local leases = tonumber(ARGV[i])
  for j = 1, leases do
    local lane, id = ARGV[i + 2 * j - 1], ARGV[i + 2 * j]
    listed[id] = true
    redis.call("ZADD", lane .. ":leases", now + ttl, id)
    redis.call("ZADD", lane .. ":accepted", "XX", now + ttl, id)
    local account = redis.call("HGET", lane .. ":state", "account")
    if account then redis.call("ZADD", account .. ":leases", now + ttl, id) end
  end
  i = i + 2 * leases + 1
  local tickets = tonumber(ARGV[i])
  local states = {}
  for j = 1, tickets do
    listed[ARGV[i + j]] = true
    local id = ARGV[i + j]
    local key = ticketKey(id)
    local ticket = redis.call("HMGET", key, "granted", "owner")
    if ticket[1] then states[j] = heldGrant(id, ticket[1], ttl)
    elseif ticket[2] then
      redis.call("PEXPIRE", key, 3 * ttl)
      states[j] = "w"
    else states[j] = "" end
  end
  local laneStates = {}
  local silent = unreported(processes)
  for j, lane in ipairs(lanes) do
    if upTo > 0 then releaseUnlisted(lane, owner, listed, upTo) end
    grant(lane)
    local state = redis.call("HMGET", lane .. ":state", "limit", "epoch", "account")
    local accountInFlight = state[3] and purge(state[3] .. ":leases") or 0
    laneStates[j] = { tonumber(state[1]) or -1, tonumber(state[2]) or 0, purge(lane .. ":leases"), accountInFlight, othersOn(lane, owner, silent) }
  end
  return { processes, states, laneStates }
elseif op == "read" then
  -- ARGV: lane, then the leases of ends about to be applied whose acceptances were committed
  -- before. Its shared adaptive state: version, state (or false), limit, epoch, in-flight,
  -- accepted (the leases in \`L:accepted\`, and those of the ends given that it no longer holds:
  -- applying an end takes its lease off the count, which their release already did).
  local lane = ARGV[4]
  local state = redis.call("HMGET", lane .. ":state", "version", "aimd", "limit", "epoch")
  local inFlight = purge(lane .. ":leases")
  local accepted = purge(lane .. ":accepted")
  for i = 5, #ARGV do
    if not redis.call("ZSCORE", lane .. ":accepted", ARGV[i]) then accepted = accepted + 1 end
  end
  return { tonumber(state[1]) or 0, state[2], tonumber(state[3]) or -1, tonumber(state[4]) or 0, inFlight, accepted }
elseif op == "lower" then
  -- ARGV: lane, the epoch a 429 was granted in, the in-flight its process saw, the limit's
  -- minimum, how long the lowering holds (ms). Unless the epoch moved (a decrease was committed
  -- since), the limit goes under the level of the 429 (the higher of that in-flight and the
  -- lane's count) and to the last commit's \`dropTo\`, as the decrease that the 429's commit brings
  -- would. Until that commit moves the epoch (or the time is up: its process died), commits of the
  -- epoch keep the limit that low. Answers the limit and epoch.
  local lane = ARGV[4]
  local stateKey = lane .. ":state"
  local state = redis.call("HMGET", stateKey, "limit", "epoch", "dropTo", "lowered", "loweredEpoch", "fixedUntil")
  local limit, epoch = tonumber(state[1]), tonumber(state[2]) or 0
  if limit and epoch == tonumber(ARGV[5]) and now >= (tonumber(state[6]) or 0) then
    local below = math.max(tonumber(ARGV[6]), purge(lane .. ":leases")) - 1
    below = math.max(tonumber(ARGV[7]), math.min(below, tonumber(state[3]) or below))
    if tonumber(state[5]) == epoch then below = math.min(below, tonumber(state[4])) end
    redis.call("HSET", stateKey, "lowered", below, "loweredEpoch", epoch, "loweredUntil", now + tonumber(ARGV[8]))
    if below < limit then
      limit = below
      redis.call("HSET", stateKey, "limit", limit)
    end
  end
  return { limit or -1, epoch }
elseif op == "commit" then
  -- ARGV: lane, the version read, state, limit, epoch, the limit a 429 of that state leads to at
  -- most, then the leases of the requests accepted (those still held join \`L:accepted\`). Sets
  -- them if no one did since, the limit within a lowering of the epoch (see "lower"), and answers
  -- the limit set, or -1; a limit that grew grants at once.
  local lane = ARGV[4]
  local stateKey = lane .. ":state"
  local current = redis.call("HMGET", stateKey, "version", "limit", "lowered", "loweredEpoch", "loweredUntil", "fixedUntil", "highest", "highestUntil")
  if (tonumber(current[1]) or 0) ~= tonumber(ARGV[5]) then return -1 end
  local limit = tonumber(ARGV[7])
  if current[4] == ARGV[8] and now < (tonumber(current[5]) or 0) then limit = math.min(limit, tonumber(current[3])) end
  -- A fixed limit standing (see ensureLane) is the lane's: the adaptive state is kept, not its limit.
  if now < (tonumber(current[6]) or 0) then limit = tonumber(current[2]) end
  if now < (tonumber(current[8]) or 0) then limit = math.min(limit, tonumber(current[7])) end
  redis.call("HSET", stateKey, "version", tonumber(ARGV[5]) + 1, "aimd", ARGV[6], "limit", limit, "epoch", ARGV[8], "dropTo", ARGV[9])
  for i = 10, #ARGV do
    local expiry = redis.call("ZSCORE", lane .. ":leases", ARGV[i])
    if expiry then redis.call("ZADD", lane .. ":accepted", expiry, ARGV[i]) end
  end
  if limit > (tonumber(current[2]) or 0) then granted(lane) else touch(lane) end
  return limit
end
return redis.error_reply("unknown operation " .. tostring(op))
`
