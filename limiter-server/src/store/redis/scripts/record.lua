-- record: one flush of the limiters' tallies into the operator's ledger. All ledger
-- keys share one hash tag (the key given and the names built from ARGV[1]).
--
-- KEYS: 1 the index of automatic bans
-- ARGV: 1 ledger key base  2 entries kept per bucket  3 minute buckets kept ms
--       4 hour buckets kept ms  5 node entries kept ms
--       then: n, n × (metric code, source, count)   top-list counts
--       then: n, n × (member, ban ms)               bans imposed
--       then: n, n × (node, leases)                 leases renewed by each node
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local base = ARGV[1]
local keep = tonumber(ARGV[2])
local minute, hour = math.floor(now / 60000), math.floor(now / 3600000)

local i = 6
local touched = {}
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local code, member, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local m = base .. 't:' .. code .. ':m:' .. minute
  local h = base .. 't:' .. code .. ':h:' .. hour
  redis.call('ZINCRBY', m, count, member)
  redis.call('ZINCRBY', h, count, member)
  touched[m] = tonumber(ARGV[3])
  touched[h] = tonumber(ARGV[4])
end
-- Each bucket keeps its largest entries: memory stays bounded however many sources
-- attack, and the heavy hitters are the ones kept.
for key, ttl in pairs(touched) do
  local card = redis.call('ZCARD', key)
  if card > keep then redis.call('ZREMRANGEBYRANK', key, 0, card - keep - 1) end
  redis.call('PEXPIRE', key, ttl)
end

n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[i + 1]), ARGV[i])
  i = i + 2
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- The index lives as long as its longest ban.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[1], tonumber(last[2])) end

n = tonumber(ARGV[i]); i = i + 1
local leases = base .. 'leases'
for _ = 1, n do
  redis.call('HSET', leases, ARGV[i], ARGV[i + 1] .. ':' .. now)
  i = i + 2
end
if n > 0 then redis.call('PEXPIRE', leases, tonumber(ARGV[5])) end
return 1
