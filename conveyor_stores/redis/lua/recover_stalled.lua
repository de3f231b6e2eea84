-- recover_stalled. ARGV[3] max_stalled_count. Returns {id, failed (1/0), ...}.
local most = tonumber(ARGV[3])
local out = {}
for _, id in ipairs(redis.call('ZRANGE', QB .. 'active', 0, -1)) do
  local jk = QB .. 'job:' .. id
  local lu = tonumber(redis.call('HGET', jk, 'lu') or '')
  if lu and lu < NOW then
    local count = redis.call('HINCRBY', jk, 'stc', 1)
    local cancelled = redis.call('HGET', jk, 'cx')
    redis.call('HDEL', jk, 'tok', 'lu')
    emit(QB, 'stalled', id, '{"count":' .. count .. '}')
    if cancelled then
      final_failure(QB, id, cancelled, true)
      out[#out + 1] = id
      out[#out + 1] = 1
    elseif count > most then
      redis.call('HSET', jk, 'fr', 'job stalled more than allowable limit')
      final_failure(QB, id, 'job stalled more than allowable limit', true)
      out[#out + 1] = id
      out[#out + 1] = 1
    else
      enter_waiting(QB, id, jk, 'active')
      out[#out + 1] = id
      out[#out + 1] = 0
    end
  end
end
return done(out)
