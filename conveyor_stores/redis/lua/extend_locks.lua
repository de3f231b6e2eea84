-- extend_locks. ARGV[3] lock_until, then (id, token) pairs. Returns the extended ids.
local out = {}
for k = 4, #ARGV, 2 do
  local id = ARGV[k]
  local jk = QB .. 'job:' .. id
  local v = redis.call('HMGET', jk, 'state', 'tok')
  if v[1] == 'active' and v[2] == ARGV[k + 1] then
    redis.call('HSET', jk, 'lu', ARGV[3])
    out[#out + 1] = id
  end
end
return out
