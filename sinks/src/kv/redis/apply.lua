-- Applies writes to the keys of one hash slot, in one step: Redis runs a
-- script whole, so readers see all of a checkpoint's writes or none.
--
-- KEYS[1]  the slot's checkpoint marker: "<run>:<checkpoint>", the last
--          checkpoint of this run applied to the slot
-- KEYS[2]  the checkpoint's staged writes (a list)
-- ARGV[1]  the run: markers of other runs (a fresh start) do not count
-- ARGV[2]  the checkpoint; 0 applies the writes in ARGV[4..], with no marker
-- ARGV[3]  "1" if values are hashes, "0" if they are JSON texts
--
-- A write is five texts, an empty one meaning none: the key; the value (a
-- JSON text, or a JSON array of a hash's fields and values; none for a
-- delete); the version and the expiry (ms since the epoch), in decimal;
-- the key that keeps the version. A write older than the version kept
-- changes nothing.
--
-- Returns 1 if it applied the writes, 0 if they were applied before.
local run, checkpoint, hash = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local writes, first
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
  writes = redis.call('LRANGE', KEYS[2], 0, -1)
  if #writes == 0 then
    return redis.error_reply('ERR the staged writes of checkpoint ' .. checkpoint ..
      ' (' .. KEYS[2] .. ') are gone')
  end
  first = 1
else
  writes = ARGV
  first = 4
end

for i = first, #writes, 5 do
  local key, value, version, expires, version_key =
    writes[i], writes[i + 1], writes[i + 2], writes[i + 3], writes[i + 4]
  local newer = true
  if version ~= '' then
    local kept = redis.call('GET', version_key)
    newer = not kept or tonumber(kept) <= tonumber(version)
  end
  if newer then
    if value == '' then
      redis.call('DEL', key)
    elseif hash then
      -- A hash is replaced whole: no field of the old value stays.
      redis.call('DEL', key)
      local fields = cjson.decode(value)
      if #fields > 0 then
        redis.call('HSET', key, unpack(fields))
        if expires ~= '' then
          redis.call('PEXPIREAT', key, expires)
        end
      end
    elseif expires ~= '' then
      redis.call('SET', key, value, 'PXAT', expires)
    else
      redis.call('SET', key, value)
    end
    if version ~= '' then
      -- A delete's version stays (a tombstone), so that an older upsert
      -- arriving late does not bring the key back.
      if value ~= '' and expires ~= '' then
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
