-- seed: counts of past events into the top lists' buckets of their minutes (`mxlimit
-- import-log --seed`). Each address and minute remembers the count it was given, in
-- a hash per hour that lives as long as the hour's buckets, and only what goes
-- beyond it is added: overlapping logs count each minute once. Every key is declared
-- and all share one hash tag (one cluster slot).
--
-- KEYS: the hashes of counts seeded, then the buckets written
-- ARGV: 1 entries kept per bucket  2 the number of hashes in KEYS
--       3 .. 2 + #KEYS: each key's expiry, ms since the epoch
--       then: n, n x (hash, field, count, address, network,
--                     address minute bucket, address hour bucket,
--                     network minute bucket, network hour bucket)
--       where hash and buckets are numbers in KEYS (0: none)
-- Returns {added, seen before}.
local keep = tonumber(ARGV[1])
local i = 3 + #KEYS
local n = tonumber(ARGV[i]); i = i + 1
local added, seen = 0, 0
for _ = 1, n do
  local hash, field, count = KEYS[tonumber(ARGV[i])], ARGV[i + 1], tonumber(ARGV[i + 2])
  local before = tonumber(redis.call('HGET', hash, field) or '0')
  if count > before then
    redis.call('HSET', hash, field, count)
    local add = count - before
    for b = 0, 3 do
      local k = tonumber(ARGV[i + 5 + b])
      if k > 0 then
        redis.call('ZINCRBY', KEYS[k], add, ARGV[i + 3 + math.floor(b / 2)])
      end
    end
    added = added + add
    seen = seen + before
  else
    seen = seen + count
  end
  i = i + 9
end
-- As `record` does: each bucket keeps its largest entries, and lives as long as a
-- bucket recorded at its time.
local hashes = tonumber(ARGV[2])
for k = 1, #KEYS do
  if k > hashes then
    local card = redis.call('ZCARD', KEYS[k])
    if card > keep then redis.call('ZREMRANGEBYRANK', KEYS[k], 0, card - keep - 1) end
  end
  redis.call('PEXPIREAT', KEYS[k], tonumber(ARGV[2 + k]))
end
return {added, seen}
