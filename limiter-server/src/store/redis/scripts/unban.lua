-- unban: lift one level's automatic ban and forget its bad recipients and offences.
-- KEYS: 1 ban  2.. the level's logs (bad recipients, each offence kind)
-- Returns 1 if a ban was in force.
local had = redis.call('PTTL', KEYS[1]) > 0
redis.call('DEL', unpack(KEYS))
if had then return 1 end
return 0
