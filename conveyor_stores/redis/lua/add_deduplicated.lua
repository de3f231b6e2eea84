-- add_deduplicated: DEDUPLICATION of the store protocol. The arguments of add_jobs come
-- first (one group of one job), then the deduplication id, its ttl ('' = none), extend
-- and replace ('1'/'0'), the new job's id and delay. Entries live in the hash
-- "<base>dedup": field = deduplication id, value = {"j": job id, "x": expires_at or ""}.
-- Returns {job id, 1 if written else 0}.
local DID, TTL_S, EXT, REPL = ARGV[#ARGV - 5], ARGV[#ARGV - 4], ARGV[#ARGV - 3], ARGV[#ARGV - 2]
local NEW_ID, DELAY = ARGV[#ARGV - 1], tonumber(ARGV[#ARGV])
local dk = QB .. 'dedup'
local raw = redis.call('HGET', dk, DID)
if raw then
  local entry = cjson.decode(raw)
  local jk = QB .. 'job:' .. entry.j
  local state = redis.call('HGET', jk, 'state')
  local live = false
  if state then
    if entry.x == '' then
      live = state ~= 'completed' and state ~= 'failed'
    else
      live = NOW < tonumber(entry.x)
    end
  end
  if live then
    if REPL == '1' and state == 'delayed' then
      redis.call('HSET', jk, 'data', ARGV[9])
      enter_delayed(QB, entry.j, jk, 'delayed', fmt(NOW + DELAY))
    end
    if EXT == '1' and TTL_S ~= '' then
      redis.call('HSET', dk, DID, cjson.encode({ j = entry.j, x = fmt(NOW + tonumber(TTL_S)) }))
    end
    emit(QB, 'deduplicated', entry.j,
      cjson.encode({ deduplication_id = DID, deduplicated_job_id = NEW_ID }))
    return done({ entry.j, 0 })
  end
end

local function add_one()
@ADD_JOBS
end

local written = add_one()
if type(written) == 'table' and written.err then return written end
if written[1] == 1 then
  local x = ''
  if TTL_S ~= '' then x = fmt(NOW + tonumber(TTL_S)) end
  redis.call('HSET', dk, DID, cjson.encode({ j = NEW_ID, x = x }))
end
return { NEW_ID, written[1] }
