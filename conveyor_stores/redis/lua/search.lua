-- search (read only). ARGV from 3: folded text or '', name or '', states joined by '|'
-- or '', limit, after score and after id ('' and '' for the first page), budget.
-- Walks the queue's "all" index (score created_at; ties in member order) newest first,
-- looking at no more than budget jobs. Returns {resume score, resume id, ids...}: the
-- matching ids in order, at most limit; resume is '' when nothing after them matches.
local text, name, states_s = ARGV[3], ARGV[4], ARGV[5]
local limit, budget = tonumber(ARGV[6]), tonumber(ARGV[9])
local key = QB .. 'all'
local wanted = nil
if states_s ~= '' then
  wanted = {}
  for s in string.gmatch(states_s, '[^|]+') do wanted[s] = true end
end

-- Byte order, whatever the server's collation locale.
local function below(a, b)
  local n = math.min(#a, #b)
  for k = 1, n do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local pos = 0
if ARGV[7] ~= '' then
  local after_score, after_id = ARGV[7], ARGV[8]
  local rank = redis.call('ZREVRANK', key, after_id)
  local score = rank and redis.call('ZSCORE', key, after_id)
  if rank and tonumber(score) == tonumber(after_score) then
    pos = rank + 1
  else
    -- The job the page ended on is gone: start below every job that sorts before it.
    pos = redis.call('ZCOUNT', key, '(' .. after_score, '+inf')
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, after_score, after_score)) do
      if not below(member, after_id) then pos = pos + 1 end
    end
  end
end

local function contains(s)
  return string.find(string.lower(s), text, 1, true) ~= nil
end

local found = {}
local scanned = 0
local last_score, last_id = nil, nil
while scanned < budget and #found <= limit do
  local chunk = redis.call('ZREVRANGE', key, pos, pos + 99, 'WITHSCORES')
  if #chunk == 0 then break end
  for k = 1, #chunk, 2 do
    local id = chunk[k]
    scanned = scanned + 1
    last_score, last_id = chunk[k + 1], id
    local v = redis.call('HMGET', QB .. 'job:' .. id, 'name', 'data', 'state')
    if v[1] and (name == '' or v[1] == name) and (not wanted or wanted[v[3]])
        and (text == '' or contains(id) or contains(v[1]) or contains(v[2])) then
      found[#found + 1] = { chunk[k + 1], id }
      if #found > limit then break end
    end
    if scanned >= budget then break end
  end
  pos = pos + 100
end

local out = { '', '' }
local count = math.min(#found, limit)
for k = 1, count do out[#out + 1] = found[k][2] end
if #found > limit then
  out[1], out[2] = found[limit][1], found[limit][2]
elseif scanned >= budget and last_id then
  out[1], out[2] = last_score, last_id
end
return out
