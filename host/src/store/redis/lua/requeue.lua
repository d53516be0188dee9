-- Puts a 'job' dead letter back on the queue as a fresh job and removes the dead letter.
-- KEYS[1] dead, KEYS[2] jobs.
-- ARGV: id, now ms, group.
-- Returns {'ok', new id}, {'undecodable'}, {'damaged'} or {'missing'}.
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not entry then return {'missing'} end
local f = {}
for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
if f['kind'] == 'undecodable' then return {'undecodable'} end
if f['kind'] ~= 'job' or not f['uuid'] or not f['replay'] or not f['payload'] then
  return {'damaged'}
end
redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[3], '0', 'MKSTREAM')
local id = redis.call('XADD', KEYS[2], '*', 'uuid', f['uuid'], 'replay', f['replay'],
  'payload', f['payload'], 'enq', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return {'ok', id}
