-- take_jobs. ARGV[3] limit, ARGV[4] token, ARGV[5] lock_until, ARGV[6] rate max ('' none),
-- ARGV[7] rate duration. Returns {next_run_at, rate_limited_until, concurrency_limited,
-- job, job, ...} where each job is {id, field, value, ...}.
local limit = tonumber(ARGV[3])
local token, lock_until = ARGV[4], ARGV[5]

local due = redis.call('ZRANGEBYSCORE', QB .. 'delayed', '-inf', NOW_S)
for _, id in ipairs(due) do
  enter_waiting(QB, id, QB .. 'job:' .. id, 'delayed')
end

local function next_run()
  local first = redis.call('ZRANGE', QB .. 'delayed', 0, 0, 'WITHSCORES')
  return first[2] or false
end

if redis.call('HEXISTS', QB .. 'meta', 'paused') == 1 then
  redis.call('DEL', QB .. 'marker')
  return done({ next_run(), false, false })
end
if limit <= 0 then return done({ next_run(), false, false }) end

-- MANUAL RATE LIMIT: the queue's meta field 'lim': nothing is taken before it.
local lim = redis.call('HGET', QB .. 'meta', 'lim')
if lim and NOW < tonumber(lim) then return done({ next_run(), lim, false }) end

-- GLOBAL CONCURRENCY: the queue's meta field 'conc'; the script runs alone, so the
-- active count it reads is the one it leaves at most 'conc'.
local conc = tonumber(redis.call('HGET', QB .. 'meta', 'conc') or '')
if conc then
  local room = conc - redis.call('ZCARD', QB .. 'active')
  if room <= 0 then return done({ next_run(), false, 1 }) end
  if room < limit then limit = room end
end

local wstart, wcount
if ARGV[6] ~= '' then
  local most, duration = tonumber(ARGV[6]), tonumber(ARGV[7])
  local w = redis.call('HMGET', QB .. 'meta', 'rl_start', 'rl_count')
  wstart, wcount = tonumber(w[1] or ''), tonumber(w[2] or '')
  if not wstart or NOW >= wstart + duration then
    wstart, wcount = NOW, 0
  end
  local room = most - wcount
  if room <= 0 then
    return done({ next_run(), fmt(wstart + duration), false })
  end
  if room < limit then limit = room end
end

local out = { false, false, false }
local popped = redis.call('ZPOPMIN', QB .. 'wait', limit)
local taken = #popped / 2
if taken > 0 then
  -- Active jobs are listed in the order they started: one block of order numbers.
  local order = redis.call('INCRBY', PB .. 'seq', taken) - taken
  for k = 1, #popped, 2 do
    local id = string.sub(popped[k], 17)
    local jk = QB .. 'job:' .. id
    order = order + 1
    redis.call('HSET', jk, 'state', 'active', 'tok', token, 'lu', lock_until, 'pat', NOW_S)
    redis.call('ZADD', QB .. 'active', order, id)
    emit(QB, 'active', id)
    local job = redis.call('HGETALL', jk)
    job[#job + 1] = id
    out[#out + 1] = job
  end
  if wstart then
    redis.call('HSET', QB .. 'meta', 'rl_start', fmt(wstart), 'rl_count', wcount + taken)
  end
end
if redis.call('EXISTS', QB .. 'wait') == 0 then redis.call('DEL', QB .. 'marker') end
out[1] = next_run()
return done(out)
