-- Hands this consumer the jobs idle past min_idle (at most max), dead-lettering those delivered
-- max_deliveries times already.
-- KEYS[1] jobs, KEYS[2] dead.
-- ARGV: consumer, min_idle_ms, max, max_deliveries, now ms, group, scan (pending entries looked at).
-- Returns {claimed, dead}: claimed = {{id, deliveries, {field, value, ...}}, ...}, dead = the
-- jobs dead-lettered here, {{uuid, payload, reason}, ...} (for their journals).
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[6], '0', 'MKSTREAM')
local max, maxd = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local dead = {}
local pending = redis.call('XPENDING', KEYS[1], ARGV[6], 'IDLE', ARGV[2], '-', '+', ARGV[7])
for _, p in ipairs(pending) do
  local id, delivered = p[1], tonumber(p[4])
  if delivered >= maxd then
    local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
    if entry then
      local f = {}
      for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
      local reason = 'delivered ' .. delivered .. ' times without finishing (max ' .. maxd ..
        '): its worker crashed or stalled each time'
      redis.call('XADD', KEYS[2], '*', 'kind', 'job', 'uuid', f['uuid'] or '',
        'replay', f['replay'] or '', 'payload', f['payload'] or '',
        'reason', reason, 'deliveries', delivered, 'dead', ARGV[5])
      dead[#dead + 1] = {f['uuid'] or '', f['payload'] or '', reason}
    end
    redis.call('XACK', KEYS[1], ARGV[6], id)
    redis.call('XDEL', KEYS[1], id)
  elseif #out < max then
    local claimed = redis.call('XCLAIM', KEYS[1], ARGV[6], ARGV[1], ARGV[2], id)
    if claimed[1] then
      out[#out + 1] = {claimed[1][1], delivered + 1, claimed[1][2]}
    end
  end
end
return {out, dead}
