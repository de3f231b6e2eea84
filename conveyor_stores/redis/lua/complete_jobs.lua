-- complete_jobs. ARGV from 3: (id, token, return_value) triples. Returns 1/0 per item.
local out = {}
local finished = 0
local order = redis.call('INCRBY', PB .. 'seq', (#ARGV - 2) / 3) - (#ARGV - 2) / 3
for k = 3, #ARGV, 3 do
  local id, rv = ARGV[k], ARGV[k + 2]
  local jk = QB .. 'job:' .. id
  local v = redis.call('HMGET', jk, 'state', 'tok', 'pid', 'pb', 'att', 'kc', 'cx', 'grp')
  order = order + 1
  if v[1] ~= 'active' or v[2] ~= ARGV[k + 1] then
    out[#out + 1] = 0
  elseif v[7] then
    -- CANCEL REQUEST: fails for good with the request's reason instead.
    redis.call('HSET', jk, 'att', (tonumber(v[5]) or 0) + 1)
    final_failure(QB, id, v[7], true)
    out[#out + 1] = 1
  else
    redis.call('ZREM', QB .. 'active', id)
    redis.call('ZADD', QB .. 'completed', order, id)
    if v[8] then
      group_move(QB, v[8], 'active', 'completed')
    end
    -- An empty token and lock stand for none (one call fewer than HDEL).
    redis.call('HSET', jk, 'state', 'completed', 'rv', rv, 'fat', NOW_S,
      'att', (tonumber(v[5]) or 0) + 1, 'tok', '', 'lu', '')
    emit(QB, 'completed', id, cjson.encode({ return_value = rv }))
    if v[3] then
      -- each parent's dependency on it (a DAG's shared job has several)
      for _, l in ipairs(links(QB, id, jk)) do
        local d = dep_get(l[1], l[2], jk)
        if d then
          local was = d.s
          dep_put(l[1], l[2], jk, { q = d.q, i = d.i, b = d.b, s = 'processed', v = rv })
          if was == 'pending' then release_check(l[1], l[2]) end
        end
      end
    end
    retain(QB, id, 'completed', v[6])
    finished = finished + 1
    out[#out + 1] = 1
  end
end
if finished > 0 then count_finished(QB, 'completed', finished) end
return done(out)
