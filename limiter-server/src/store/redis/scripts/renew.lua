-- renew: extend the leases of a node's live sessions, each found by its member, in one
-- network or, on one server, several. A session comes with the member under the
-- heartbeat's epoch and, when that is not held, the member taken without an epoch
-- (or "" for none). An expired or freed lease is not brought back. At most a
-- heartbeat chunk of sessions per call.
-- KEYS: for each network, 1 leases  2 index
-- ARGV: 1 lease ttl ms, then for each network how many sessions follow, then those
--       sessions as member, other member pairs
-- Returns the leases renewed in each network.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local function live(key, m)
  local until_ms = redis.call('ZSCORE', key, m)
  return until_ms and tonumber(until_ms) > now
end
local out, a = {}, 2
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[a])
  local renewed = 0
  for i = a + 1, a + 2 * n, 2 do
    local m = ARGV[i]
    if not live(KEYS[k], m) then
      m = ARGV[i + 1]
      if m == '' or not live(KEYS[k], m) then m = nil end
    end
    if m then
      redis.call('ZADD', KEYS[k], 'XX', now + ttl, m)
      renewed = renewed + 1
    end
  end
  if renewed > 0 then
    redis.call('PEXPIREAT', KEYS[k], now + ttl, 'GT')
    redis.call('PEXPIREAT', KEYS[k + 1], now + ttl, 'GT')
  end
  out[#out + 1] = renewed
  a = a + 2 * n + 1
end
return out
