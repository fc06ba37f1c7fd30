-- resolve: find sessions a heartbeat names without their address, in the node's
-- session index (written by Connects without an epoch), and keep the found entries
-- another index TTL. At most a heartbeat chunk of sessions per call.
-- KEYS: the index entries of the sessions (all under the node's hash tag)
-- ARGV: 1 index ttl ms
-- Returns, per key, "network tag␟address", or "" when the session is not indexed.
local ttl = ARGV[1]
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('GETEX', KEYS[i], 'PX', ttl) or ''
end
return out
