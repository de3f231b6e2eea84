-- release_jobs. ARGV from 3: (id, token) pairs. Returns 1/0 per item.
local out = {}
for k = 3, #ARGV, 2 do
  local id = ARGV[k]
  local jk = QB .. 'job:' .. id
  local v = redis.call('HMGET', jk, 'state', 'tok', 'cx')
  if v[1] ~= 'active' or v[2] ~= ARGV[k + 1] then
    out[#out + 1] = 0
  elseif v[3] then
    final_failure(QB, id, v[3], true)
    out[#out + 1] = 1
  else
    redis.call('HDEL', jk, 'tok', 'lu')
    enter_waiting(QB, id, jk, 'active')
    out[#out + 1] = 1
  end
end
return done(out)
