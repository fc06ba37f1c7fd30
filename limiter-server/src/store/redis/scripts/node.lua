-- node: a heartbeat's first step. Says whether the node's epoch changed (or is seen
-- first); then the limiter reads the node's network registry, a page at a time, frees
-- the old epoch's leases, and only then records the new epoch (a sweep cut short is
-- tried again by the next heartbeat). At most `max sweeps` such sweeps per node in a
-- window: restarts get theirs at once, a caller that changes epochs on every heartbeat
-- no more than that.
-- KEYS: 1 the node's epoch  2 the node's sweeps in the window
-- ARGV: 1 epoch  2 registry ttl ms  3 window ms  4 max sweeps
-- Returns 0 same epoch, 1 first epoch seen, 2 epoch changed, 3 changed but the window
-- is spent (the sweep waits for a heartbeat after it)
local old = redis.call('GET', KEYS[1])
if old == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 0
end
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3])) end
if n > tonumber(ARGV[4]) then return 3 end
if not old then return 1 end
return 2
