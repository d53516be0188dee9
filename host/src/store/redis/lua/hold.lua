-- Takes or renews a hold (crate::holds).
-- KEYS[1] shared: zset holder -> expiry ms;  KEYS[2] exclusive: string, the exclusive holder.
-- ARGV: holder, mode ('shared' or 'exclusive'), ttl_ms.
-- Returns 1 when held, else 0. An exclusive attempt registers the holder even when it returns 0,
-- so new shared holds wait for it. Time is Redis's own, so replicas' clocks do not matter.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return 0 end
if ARGV[2] == 'shared' then
  if owner then return 1 end
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
local others = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then others = others - 1 end
if others > 0 then return 0 end
return 1
