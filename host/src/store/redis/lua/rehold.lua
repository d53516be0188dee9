-- Renews the holds a holder has on a name (crate::holds), whoever waits for it: a shared hold
-- keeps its place even while an exclusive request is registered.
-- KEYS[1] shared, KEYS[2] exclusive (as in hold.lua).
-- ARGV: holder, ttl_ms.
-- Returns 1 when the holder still held something on the name (now renewed), else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = 0
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
  held = 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ttl)
  held = 1
end
return held
