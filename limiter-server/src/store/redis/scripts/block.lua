-- block: an operator's block, with its expiry on Redis time.
-- KEYS: 1 blocks hash   ARGV: 1 target  2 ttl ms  3 reason
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], exp .. '\031' .. ARGV[3])
-- The list lives as long as its longest block.
if redis.call('PEXPIRETIME', KEYS[1]) < exp then redis.call('PEXPIREAT', KEYS[1], exp) end
return 1
