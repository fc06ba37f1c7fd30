-- node: a heartbeat's first step. Records the node's epoch and says whether it
-- changed (or is seen first): then the limiter reads the node's network registry, a
-- page at a time, to free the old epoch's leases.
-- KEYS: 1 the node's epoch
-- ARGV: 1 epoch  2 registry ttl ms
-- Returns 0 same epoch, 1 first epoch seen, 2 epoch changed
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
if not old then return 1 elseif old ~= ARGV[1] then return 2 end
return 0
