-- standing: operator blocks, automatic bans and live leases in force; drops what
-- has expired.
-- KEYS: 1 blocks hash  2 bans index  3 node leases hash  4 unblocks counter
-- ARGV: 1 node entries kept ms  2 bans to list, most time left first (0: only count)
-- Returns {{target, ms left, reason ...}, {member, ms left ...}, live leases, bans,
--   unblocks so far}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocks = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local exp, reason = string.match(all[i + 1], '^(%d+)\031(.*)$')
  if exp and tonumber(exp) > now then
    table.insert(blocks, all[i])
    table.insert(blocks, tonumber(exp) - now)
    table.insert(blocks, reason)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local bans = {}
local listed = tonumber(ARGV[2])
if listed > 0 then
  local b = redis.call('ZRANGE', KEYS[2], 0, listed - 1, 'REV', 'WITHSCORES')
  for i = 1, #b, 2 do
    table.insert(bans, b[i])
    table.insert(bans, tonumber(b[i + 1]) - now)
  end
end
local live = 0
local nodes = redis.call('HGETALL', KEYS[3])
local cut = now - tonumber(ARGV[1])
for i = 1, #nodes, 2 do
  local count, at = string.match(nodes[i + 1], '^(%d+):(%d+)$')
  if count and tonumber(at) > cut then
    live = live + tonumber(count)
  else
    redis.call('HDEL', KEYS[3], nodes[i])
  end
end
return {blocks, bans, live, redis.call('ZCARD', KEYS[2]),
  tonumber(redis.call('GET', KEYS[4]) or '0')}
