-- Applies writes to the keys of one hash slot, in one step: Redis runs a
-- script whole, so readers see all of a checkpoint's writes or none.
--
-- KEYS[1]  the slot's checkpoint marker: "<run>:<checkpoint>", the last
--          checkpoint of this run applied to the slot
-- KEYS[2]  the checkpoint's staged writes (a JSON array)
-- ARGV[1]  the run: markers of other runs (a fresh start) do not count
-- ARGV[2]  the checkpoint; 0 applies ARGV[3]'s writes, with no marker
-- ARGV[3]  writes, when ARGV[2] is 0
--
-- Each write is [key, value, version, expires_at, version_key]: value is
-- a JSON text, an array of hash fields and values, or null for a delete;
-- version and expires_at (ms since the epoch) are decimal texts or null.
-- A write older than the version kept under version_key changes nothing.
--
-- Returns 1 if it applied the writes, 0 if they were applied before.
local run, checkpoint = ARGV[1], tonumber(ARGV[2])
local staged
if checkpoint > 0 then
  local marker = redis.call('GET', KEYS[1])
  if marker then
    local colon = string.find(marker, ':', 1, true)
    if colon and string.sub(marker, 1, colon - 1) == run
        and tonumber(string.sub(marker, colon + 1)) >= checkpoint then
      redis.call('DEL', KEYS[2])
      return 0
    end
  end
  staged = redis.call('GET', KEYS[2])
  if not staged then
    return redis.error_reply('the staged writes of checkpoint ' .. checkpoint ..
      ' (' .. KEYS[2] .. ') are gone')
  end
else
  staged = ARGV[3]
end

local null = cjson.null
for _, write in ipairs(cjson.decode(staged)) do
  local key, value, version, expires, version_key =
    write[1], write[2], write[3], write[4], write[5]
  local newer = true
  if version ~= null then
    local kept = redis.call('GET', version_key)
    newer = not kept or tonumber(kept) <= tonumber(version)
  end
  if newer then
    redis.call('DEL', key)
    if type(value) == 'table' then
      if #value > 0 then
        redis.call('HSET', key, unpack(value))
        if expires ~= null then
          redis.call('PEXPIREAT', key, expires)
        end
      end
    elseif value ~= null then
      if expires ~= null then
        redis.call('SET', key, value, 'PXAT', expires)
      else
        redis.call('SET', key, value)
      end
    end
    if version ~= null then
      -- A delete's version stays (a tombstone), so that an older upsert
      -- arriving late does not bring the key back.
      if value ~= null and expires ~= null then
        redis.call('SET', version_key, version, 'PXAT', expires)
      else
        redis.call('SET', version_key, version)
      end
    end
  end
end

if checkpoint > 0 then
  redis.call('SET', KEYS[1], run .. ':' .. checkpoint)
  redis.call('DEL', KEYS[2])
end
return 1
