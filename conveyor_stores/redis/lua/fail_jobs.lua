-- fail_jobs. ARGV from 3: (id, token, reason, stacktrace JSON, retry_at or '') groups of
-- five. Returns 1/0 per item.
local out = {}
for k = 3, #ARGV, 5 do
  local id, reason, retry_at = ARGV[k], ARGV[k + 2], ARGV[k + 4]
  local jk = QB .. 'job:' .. id
  local v = redis.call('HMGET', jk, 'state', 'tok', 'cx')
  if v[1] ~= 'active' or v[2] ~= ARGV[k + 1] then
    out[#out + 1] = 0
  else
    redis.call('HINCRBY', jk, 'att', 1)
    redis.call('HSET', jk, 'fr', reason, 'st', ARGV[k + 3])
    redis.call('HDEL', jk, 'tok', 'lu')
    if v[3] then
      final_failure(QB, id, v[3], true)
    elseif retry_at == '' then
      final_failure(QB, id, reason, true)
    elseif tonumber(retry_at) <= NOW then
      enter_waiting(QB, id, jk, 'active')
    else
      enter_delayed(QB, id, jk, 'active', retry_at)
    end
    out[#out + 1] = 1
  end
end
return done(out)
