-- A parent's dependencies. ARGV[3] op, ARGV[4] id, ARGV[5..] op arguments.
-- op: page (after: position, or '' for the first page; limit) -> flat {position, record}
--     counts -> {pending, processed, failed, ignored}
--     leave (REMOVE CHILD DEPENDENCY of the job) -> 1 if it had a parent, else 0
--     prune (REMOVE UNPROCESSED CHILDREN of the job) -> how many children were removed
--     parents -> flat {queue, id, policy} of the job's parent links
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
  local parents = links(QB, id, jk)
  if #parents == 0 then return done(0) end
  redis.call('HDEL', jk, 'pid', 'pq', 'pb', 'pol')
  redis.call('DEL', QB .. 'plinks:' .. id)
  for _, l in ipairs(parents) do
    local d = dep_get(l[1], l[2], jk)
    if d and d.s == 'pending' then
      dep_delete(l[1], l[2], jk)
      release_check(l[1], l[2])
    end
  end
  return done(1)
elseif op == 'parents' then
  local out = {}
  for _, l in ipairs(links(QB, id, jk)) do
    out[#out + 1] = l[4]
    out[#out + 1] = l[2]
    out[#out + 1] = l[3]
  end
  return out
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
