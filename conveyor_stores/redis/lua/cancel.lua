-- cancel. ARGV[3] op, then:
--   cancel: ARGV[4] id, ARGV[5] reason -> how many were cancelled (CANCEL)
--   requests: ARGV[4..] ids -> flat {id, reason, ...} of those with a CANCEL REQUEST
local op = ARGV[3]
if op == 'requests' then
  local out = {}
  for k = 4, #ARGV do
    local v = redis.call('HMGET', QB .. 'job:' .. ARGV[k], 'state', 'cx')
    if v[1] == 'active' and v[2] then
      out[#out + 1] = ARGV[k]
      out[#out + 1] = v[2]
    end
  end
  return out
end
if op ~= 'cancel' then return redis.error_reply('unknown cancel op ' .. tostring(op)) end
local id, why = ARGV[4], ARGV[5]
local jk = QB .. 'job:' .. id
local state = redis.call('HGET', jk, 'state')
if not state then return not_found(id) end
if state == 'completed' or state == 'failed' then return done(0) end
-- The job and its unfinished descendants (found below finished ones too), parents first.
local subtree = { { QB, id, jk } }
local seen = { [jk] = true }
local stack = { { QB, id } }
while #stack > 0 do
  local node = table.remove(stack)
  for _, entry in ipairs(deps_in_order(node[1], node[2])) do
    local ck, d = entry[1], entry[2]
    local cs = redis.call('HGET', ck, 'state')
    if cs and not seen[ck] then
      seen[ck] = true
      if cs ~= 'completed' and cs ~= 'failed' then subtree[#subtree + 1] = { d.b, d.i, ck } end
      stack[#stack + 1] = { d.b, d.i }
    end
  end
end
local n = 0
local data = cjson.encode({ reason = why })
-- Children before parents, the job last.
for k = #subtree, 1, -1 do
  local base, jid, key = subtree[k][1], subtree[k][2], subtree[k][3]
  local v = redis.call('HMGET', key, 'state', 'cx')
  -- A failure above (a shared job's other parent) may have finished or removed it.
  if v[1] and v[1] ~= 'completed' and v[1] ~= 'failed' then
    if k ~= 1 then
      -- Its parents in the subtree are cancelled too (or finished): their dependencies
      -- fail, no policy. Parents outside the subtree see its FINAL FAILURE below.
      for _, l in ipairs(links(base, jid, key)) do
        if seen[l[1] .. 'job:' .. l[2]] then
          local d = dep_get(l[1], l[2], key)
          if d and d.s == 'pending' then
            dep_put(l[1], l[2], key, { q = d.q, i = d.i, b = d.b, s = 'failed', r = why })
          end
        end
      end
    end
    if v[1] == 'active' then
      if not v[2] then
        redis.call('HSET', key, 'cx', why)
        emit(base, 'cancelled', jid, data)
        n = n + 1
      end
    else
      emit(base, 'cancelled', jid, data)
      final_failure(base, jid, why, true)
      n = n + 1
    end
  end
end
return done(n)
