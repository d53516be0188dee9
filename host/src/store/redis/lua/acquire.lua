-- Takes a channel's lease when it is free or expired (a new epoch), or renews it for its holder.
-- KEYS[1] lease, KEYS[2] epoch.
-- ARGV: holder, ttl_ms.
-- Returns the epoch, or -1 when another holds it.
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('HGET', KEYS[1], 'epoch'))
end
if holder then return -1 end
local epoch = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'epoch', epoch)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return epoch
