-- One sidecar's call about its share of one dependency's fleet-wide limit.
-- Every call of every sidecar for a dependency runs this script on one hash,
-- KEYS[1] = "<namespace>:{<dependency>}", so Redis serialises them and Redis
-- Cluster keeps them on one node. Time is Redis's own (TIME), never a sidecar's.
--
-- The hash:
--   born   when this copy of the state began (ms, Redis time): a store
--          without it is empty (new, restarted, failed over, evicted)
--   gen    writes since born; a caller that saw more writes of the same born
--          than the store has now is talking to a copy that lost writes
--   lttl   the longest share_ttl a caller gave since born (the learning period)
--   i:<instance>  "nonce seq held expiry demand max ttl" of one live sidecar
--
-- ARGV: instance, nonce, seq, demand, keep, ttl_ms, max, seen_born, seen_gen, leaving, acked
--   keep: what the caller may still use from now on (it stops granting above
--         its share before it calls, and counts the permits it holds, those
--         of a fallback share too), or -1 when it uses nothing.
--   acked: the seq of the call whose answer gave the share the caller still
--         holds (0: none): if the store no longer has that call's write, it
--         lost writes.
-- Returns {status, share, target, born, gen, learning_left_ms, instances, fleet_max}
--   status 0 ok, 1 learning, 2 instance name in use by another live sidecar,
--   3 stale (a call older than one already seen from this sidecar).

if redis.replicate_commands then redis.replicate_commands() end

local key = KEYS[1]
local inst, nonce = ARGV[1], ARGV[2]
local seq = tonumber(ARGV[3])
local demand = tonumber(ARGV[4])
local keep = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local max = tonumber(ARGV[7])
local seen_born = tonumber(ARGV[8])
local seen_gen = tonumber(ARGV[9])
local leaving = ARGV[10] == '1'
local acked = tonumber(ARGV[11]) or 0

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local flat = redis.call('HGETALL', key)
local meta, peers = {}, {}
for i = 1, #flat, 2 do
  local field, value = flat[i], flat[i + 1]
  if string.sub(field, 1, 2) == 'i:' then
    local n, s, h, e, d, m, l = string.match(value, '^(%S+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
    if n then
      peers[string.sub(field, 3)] = { nonce = n, seq = tonumber(s), held = tonumber(h),
        expiry = tonumber(e), demand = tonumber(d), max = tonumber(m), ttl = tonumber(l) }
    end
  else
    meta[field] = value
  end
end

local born = tonumber(meta.born)
local gen = tonumber(meta.gen) or 0
local lttl = tonumber(meta.lttl) or 0
-- A copy that lost writes: the caller saw more writes of it than it has, or
-- holds a share from a call whose write is gone (its entry missing or
-- older). (A lapsed entry is never held: the caller stops using a share a
-- safety margin before it lapses here.)
-- While it learns, entries missing are expected (and no share is granted):
-- starting over again would wipe the re-claims of the others.
local mine_entry = peers[inst]
local lost = false
if born ~= nil and now >= born + lttl then
  lost = born == seen_born and gen < seen_gen
  if acked > 0 and keep > 0 and mine_entry == nil then lost = true end
  if mine_entry ~= nil and mine_entry.nonce == nonce and mine_entry.seq < acked then lost = true end
end
if born == nil or lost then
  -- Empty, or a copy that lost writes: start over. Shares granted before may
  -- still be in use for up to a share_ttl, so the store learns for that
  -- long: no new shares, only re-claims of held ones.
  redis.call('DEL', key)
  peers = {}
  born, gen, lttl = now, 0, 0
end
if ttl > lttl then lttl = ttl end

-- Lapsed shares are free again.
for name, p in pairs(peers) do
  if p.expiry <= now then
    redis.call('HDEL', key, 'i:' .. name)
    peers[name] = nil
  end
end

local me = peers[inst]
local function count()
  local n = 0
  for _ in pairs(peers) do n = n + 1 end
  return n
end
if me and me.nonce ~= nonce then
  return { 2, 0, 0, born, gen, 0, count(), max }
end
if me and seq <= me.seq then
  return { 3, me.held, 0, born, gen, 0, count(), max }
end

gen = gen + 1
redis.call('HSET', key, 'born', born, 'gen', gen, 'lttl', lttl)
redis.call('PEXPIRE', key, lttl * 4)
if leaving then
  redis.call('HDEL', key, 'i:' .. inst)
  peers[inst] = nil
  return { 0, 0, 0, born, gen, 0, count(), max }
end

-- What the others hold, and the limit in force: the lowest any live sidecar
-- is configured with.
local others, fleet_max, n = 0, max, 1
local demands = { { name = inst, d = demand } }
for name, p in pairs(peers) do
  if name ~= inst then
    others = others + p.held
    n = n + 1
    if p.max < fleet_max then fleet_max = p.max end
    demands[#demands + 1] = { name = name, d = p.demand }
  end
end
local free = fleet_max - others
if free < 0 then free = 0 end

-- The fair rule (Doorman's FairShare, with what nobody wants spread): in
-- order of demand, each gets min(demand, an equal part of what is left);
-- units left by the rounding go one each to the unsatisfied, by name; what
-- nobody wants is split equally between all, the rest one each by name.
table.sort(demands, function(a, b)
  if a.d ~= b.d then return a.d < b.d end
  return a.name < b.name
end)
local alloc, left = {}, fleet_max
for i, e in ipairs(demands) do
  local part = math.floor(left / (#demands - i + 1))
  local give = e.d
  if give > part then give = part end
  alloc[e.name] = give
  left = left - give
end
table.sort(demands, function(a, b) return a.name < b.name end)
for _, e in ipairs(demands) do
  if left == 0 then break end
  if alloc[e.name] < e.d then
    alloc[e.name] = alloc[e.name] + 1
    left = left - 1
  end
end
if left > 0 then
  local each = math.floor(left / #demands)
  local extra = left - each * #demands
  for i, e in ipairs(demands) do
    alloc[e.name] = alloc[e.name] + each
    if i <= extra then alloc[e.name] = alloc[e.name] + 1 end
  end
end
local target = alloc[inst]

local learning_left = born + lttl - now
local held
if learning_left > 0 then
  -- Learning: only what the caller still holds, never beyond what is free.
  held = 0
  if keep > 0 then
    held = keep
    if held > free then held = free end
  end
else
  -- The caller may still use `keep`: that stays counted until it says it
  -- uses less (what it held, and permits beyond it, of a fallback share,
  -- as far as they are free). It grows towards its target with what is
  -- free; it shrinks on its next call, once it has stopped granting above
  -- the target it is told now.
  local mine = 0
  if me then mine = me.held end
  local kept = keep
  if kept < 0 then kept = 0 end
  local cap = mine
  if free > cap then cap = free end
  if kept > cap then kept = cap end
  held = kept
  if target > kept then
    held = kept + math.min(target - kept, math.max(free - kept, 0))
  end
end

redis.call('HSET', key, 'i:' .. inst, string.format('%s %d %d %d %d %d %d',
  nonce, seq, held, now + ttl, demand, max, ttl))
local status = 0
if learning_left > 0 then status = 1 else learning_left = 0 end
return { status, held, target, born, gen, learning_left, n, fleet_max }
