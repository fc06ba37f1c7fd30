-- record: one flush of a limiter's tallies into the operator's ledger. Every key is
-- declared and all share one hash tag (one cluster slot).
--
-- KEYS: 1 the index of automatic bans  2 the nodes' live leases
--       3..10 this minute's and this hour's bucket of each top list, in the order
--       (bad address, bad network, refused address, refused network) x (minute, hour)
-- ARGV: 1 entries kept per bucket  2 minute buckets kept ms  3 hour buckets kept ms
--       4 node entries kept ms
--       then: n, n x (top list 0..3, source, count)   top-list counts
--       then: n, n x (member, ban ms)                 bans imposed
--       then: n, n x (node, leases)                   leases renewed by each node
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[1])

local i = 5
local touched = {}
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local list, member, count = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local m, h = 3 + 2 * list, 4 + 2 * list
  redis.call('ZINCRBY', KEYS[m], count, member)
  redis.call('ZINCRBY', KEYS[h], count, member)
  touched[m] = tonumber(ARGV[2])
  touched[h] = tonumber(ARGV[3])
end
-- Each bucket keeps its largest entries: memory stays bounded however many sources
-- attack, and the heavy hitters are the ones kept.
for k, ttl in pairs(touched) do
  local card = redis.call('ZCARD', KEYS[k])
  if card > keep then redis.call('ZREMRANGEBYRANK', KEYS[k], 0, card - keep - 1) end
  redis.call('PEXPIRE', KEYS[k], ttl)
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
for _ = 1, n do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1] .. ':' .. now)
  i = i + 2
end
if n > 0 then redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4])) end
return 1
