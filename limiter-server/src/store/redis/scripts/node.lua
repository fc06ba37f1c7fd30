-- node: a heartbeat's first step. Says whether the node's epoch changed (or is seen
-- first); then the limiter reads the node's network registry, a page at a time, frees
-- the old epoch's leases, and only then records the new epoch (a sweep cut short is
-- tried again by the next heartbeat). At most one such sweep per node per `sweep gap`:
-- a caller that changes epochs on every heartbeat makes no more.
-- KEYS: 1 the node's epoch  2 the node's last sweep
-- ARGV: 1 epoch  2 registry ttl ms  3 sweep gap ms
-- Returns 0 same epoch, 1 first epoch seen, 2 epoch changed, 3 changed but swept
-- within the gap (the sweep waits)
local old = redis.call('GET', KEYS[1])
if old == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 0
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', tonumber(ARGV[3])) then
  return 3
end
if not old then return 1 end
return 2
