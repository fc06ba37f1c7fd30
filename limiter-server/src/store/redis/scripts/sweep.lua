-- sweep: after a node's epoch changed, free its leases of other epochs, network by
-- network, until the lease entries read reach a budget (the network that reaches it
-- is finished; the caller sends the rest again). Leases taken without an epoch
-- (callers that send none on Connect) are never freed by an epoch change; they are
-- renewed by session id or expire by their TTL.
-- KEYS: for each network, 1 leases  2 index
-- ARGV: 1 node  2 epoch  3 budget (lease entries read)
-- Returns {networks done, freed}
local node, epoch, budget = ARGV[1], ARGV[2], tonumber(ARGV[3])
local read, freed, done = 0, 0, 0
for k = 1, #KEYS, 2 do
  local held = redis.call('ZRANGE', KEYS[k], 0, -1)
  local gone = {}
  for i = 1, #held do
    local m = held[i]
    local n, e = string.match(m, '^[^\031]*\031([^\031]*)\031([^\031]*)\031')
    if n == node and e ~= epoch and e ~= '' then
      gone[#gone + 1] = m
    end
  end
  for i = 1, #gone, 500 do
    local last = math.min(i + 499, #gone)
    redis.call('ZREM', KEYS[k], unpack(gone, i, last))
    redis.call('ZREM', KEYS[k + 1], unpack(gone, i, last))
  end
  freed = freed + #gone
  done = done + 1
  read = read + #held + 1
  if read >= budget then break end
end
return {done, freed}
