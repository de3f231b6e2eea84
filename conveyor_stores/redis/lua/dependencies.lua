-- A parent's dependencies. ARGV[3] op, ARGV[4] id, ARGV[5..] op arguments.
-- op: page (after: position, or '' for the first page; limit) -> flat {position, record}
--     counts -> {pending, processed, failed, ignored}
--     leave (REMOVE CHILD DEPENDENCY of the job) -> 1 if it had a parent, else 0
--     prune (REMOVE UNPROCESSED CHILDREN of the job) -> how many children were removed
local op, id = ARGV[3], ARGV[4]
local jk = QB .. 'job:' .. id
if redis.call('EXISTS', jk) == 0 then return not_found(id) end
if op == 'page' then
  dep_index(QB, id)
  local low = '-inf'
  if ARGV[5] ~= '' then low = '(' .. ARGV[5] end
  local ranked = redis.call('ZRANGEBYSCORE', QB .. 'dord:' .. id, low, '+inf', 'WITHSCORES',
    'LIMIT', 0, tonumber(ARGV[6]))
  local out = {}
  local dk = QB .. 'deps:' .. id
  -- HMGET in slices: unpack() has a limit on how many values it spreads.
  for first = 1, #ranked, 2000 do
    local members = {}
    for k = first, math.min(first + 1999, #ranked), 2 do members[#members + 1] = ranked[k] end
    local records = redis.call('HMGET', dk, unpack(members))
    for k = 1, #members do
      out[#out + 1] = ranked[first + 2 * k - 1]
      out[#out + 1] = records[k]
    end
  end
  return out
elseif op == 'counts' then
  dep_index(QB, id)
  return redis.call('HMGET', jk, 'pend', 'dpro', 'dfai', 'dign')
elseif op == 'leave' then
  local p = redis.call('HMGET', jk, 'pid', 'pb')
  if not p[1] then return done(0) end
  redis.call('HDEL', jk, 'pid', 'pq', 'pb', 'pol')
  local d = dep_get(p[2], p[1], jk)
  if d and d.s == 'pending' then
    dep_delete(p[2], p[1], jk)
    release_check(p[2], p[1])
  end
  return done(1)
elseif op == 'prune' then
  local removed = 0
  for _, entry in ipairs(deps_in_order(QB, id)) do
    local ck, d = entry[1], entry[2]
    if d.s == 'pending' then
      local cs = redis.call('HGET', ck, 'state')
      if not cs then
        dep_delete(QB, id, ck)
      elseif cs ~= 'active' then
        remove_tree(d.b, d.i)
        removed = removed + 1
      end
    end
  end
  release_check(QB, id)
  return done(removed)
end
return redis.error_reply('unknown dependencies op ' .. tostring(op))
