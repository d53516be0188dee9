-- One fenced ingest step: new jobs (deduplicated), undecodable events as dead letters, then the
-- cursor, all only while the caller's lease is current.
-- KEYS[1] lease, KEYS[2] cursor, KEYS[3] jobs, KEYS[4] dead, KEYS[5] backfill,
--   then KEYS[5 + i] the dedupe key of job i.
-- ARGV: holder, epoch, njobs, ndead, cursor ('' for none), dedupe ttl s, now ms, group,
--   then uuid, replay, payload per job, then uuid, replay, payload, reason per dead letter.
-- Returns {'fenced', holder, epoch} or {'ok', '1'/'0' per job (enqueued or duplicate)}.
local lease = redis.call('HMGET', KEYS[1], 'holder', 'epoch')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then
  return {'fenced', lease[1] or '', lease[2] or ''}
end
local njobs, ndead = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = ARGV[7]
if njobs > 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[8], '0', 'MKSTREAM')
end
local flags = {}
local a = 9
for i = 1, njobs do
  if redis.call('SET', KEYS[5 + i], now, 'NX', 'EX', ARGV[6]) then
    redis.call('XADD', KEYS[3], '*', 'uuid', ARGV[a], 'replay', ARGV[a + 1],
      'payload', ARGV[a + 2], 'enq', now)
    flags[i] = '1'
  else
    flags[i] = '0'
  end
  a = a + 3
end
for i = 1, ndead do
  redis.call('XADD', KEYS[4], '*', 'kind', 'undecodable', 'uuid', ARGV[a], 'replay', ARGV[a + 1],
    'payload', ARGV[a + 2], 'reason', ARGV[a + 3], 'deliveries', '0', 'dead', now)
  a = a + 4
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[2], ARGV[5])
  redis.call('DEL', KEYS[5])
end
return {'ok', table.concat(flags)}
