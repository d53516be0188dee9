-- Extends a lease still held by this holder at this epoch.
-- KEYS[1] lease.
-- ARGV: holder, epoch, ttl_ms.
-- Returns 1 when renewed, 0 when the lease is not ours.
local lease = redis.call('HMGET', KEYS[1], 'holder', 'epoch')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
