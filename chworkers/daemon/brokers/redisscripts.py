"""The Lua scripts that keep a Redis Stream source's manifests consistent.

Each runs atomically in Redis, so no other consumer acts between its checks and its
writes (docs/brokers.md, "A batch's life"). Keys: the stream, the set of live manifests'
tokens, and one manifest (a string key, the batch's token and ids as JSON, with a TTL).
Ids travel as JSON (one argument: packing 100,000 arguments costs the client more than
the script), and are passed on in chunks of 1,000 because Redis's Lua cannot ``unpack``
arbitrarily many values. What needs no check goes without a script (the Lua costs Redis
more than the commands): a batch's acknowledgement and the removal of its manifest are
one ``MULTI``/``EXEC`` (:meth:`~chworkers.daemon.brokers.redismanifests.GroupManifests.complete`).
"""

from __future__ import annotations

#: KEYS: stream, manifests (a set of the live manifests' tokens), manifest, consumers (a
#: hash: the name of each consumer that announced itself -> its claim_idle in ms).
#: ARGV: group, consumer, token, body (JSON with the ids), ttl_ms, lowest id, highest id,
#: fresh ("1": every id came from this consumer's reads of new entries, in order).
#: Refuses ({"gone", id}) when an id is no longer pending for this consumer (claimed by
#: another, or acknowledged): only the consumer that holds every entry of a batch may
#: write its manifest, and a claimer looks manifests up only after its claim, so no
#: entry is ever in two manifests. Else writes the manifest and returns {"ok", check}.
#:
#: The check: looking each id up costs Redis about a microsecond per id (the XPENDING
#: reply made into Lua tables, most of the script's time). A fresh batch can skip it
#: ({"ok", "fresh"}) when its lowest id was delivered to this consumer once, less than
#: half the smallest claim_idle announced ago, and its highest id is still pending for
#: it: reads deliver new entries in order, so every id of the batch was delivered since,
#: none was idle for long enough to be claimed by a consumer that announced its
#: claim_idle (and claims nothing sooner), and a Redis that lost writes (a failover, a
#: restart) lost the delivery of the highest id with any before it. Every consumer of
#: the group must have announced itself: one that did not (a daemon of an older
#: version, or any other client) may claim at any time, so then every id is checked
#: ({"ok", "all"}), as is every batch with claimed or re-read entries.
WRITE_MANIFEST = """
local function fresh()
  if ARGV[8] ~= '1' then
    return false
  end
  local announced = redis.call('HGETALL', KEYS[4])
  local claim_idle = {}
  local least = nil
  for i = 1, #announced, 2 do
    local ms = tonumber(announced[i + 1])
    claim_idle[announced[i]] = ms
    if least == nil or ms < least then
      least = ms
    end
  end
  if least == nil then
    return false
  end
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    for i = 1, #consumer, 2 do
      if consumer[i] == 'name' and claim_idle[consumer[i + 1]] == nil then
        return false
      end
    end
  end
  local low = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[6], ARGV[6], 1, ARGV[2])
  if #low == 0 or low[1][4] ~= 1 or low[1][3] * 2 >= least then
    return false
  end
  return #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[7], ARGV[7], 1, ARGV[2]) == 1
end

local check = 'fresh'
if not fresh() then
  check = 'all'
  local ids = cjson.decode(ARGV[4])['ids']
  local n = #ids
  local limit = n * 2 + 1000
  local reply = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[6], ARGV[7], limit, ARGV[2])
  local mine = {}
  for _, entry in ipairs(reply) do
    mine[entry[1]] = true
  end
  for _, id in ipairs(ids) do
    if not mine[id] then
      if #reply < limit or #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) == 0 then
        return {'gone', id}
      end
    end
  end
end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[3])
return {'ok', check}
"""

#: KEYS: stream. ARGV: group, consumer, lowest id, highest id, the ids of one batch (JSON).
#: Resets the idle time of those ids still pending for this consumer (XCLAIM JUSTID to
#: itself: not counted as a delivery), so that a live daemon's in-flight entries are not
#: claimed; returns how many it touched. One XPENDING over the batch's range finds them
#: (an XPENDING per id cost Redis about 10 us per entry, every claim_idle / 4); ids it
#: could not see (the range held more of this consumer's entries than asked for: a batch
#: with claimed entries far apart) are looked up one by one.
TOUCH = """
local ids = cjson.decode(ARGV[5])
local want = {}
for _, id in ipairs(ids) do
  want[id] = true
end
local limit = #ids * 2 + 1000
local reply = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[4], limit, ARGV[2])
local mine = {}
for _, entry in ipairs(reply) do
  if want[entry[1]] then
    mine[#mine + 1] = entry[1]
    want[entry[1]] = nil
  end
end
if #reply >= limit then
  for _, id in ipairs(ids) do
    if want[id] and #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) > 0 then
      mine[#mine + 1] = id
    end
  end
end
local touched = 0
for first = 1, #mine, 1000 do
  local chunk = {KEYS[1], ARGV[1], ARGV[2], 0}
  for i = first, math.min(#mine, first + 999) do
    chunk[#chunk + 1] = mine[i]
  end
  chunk[#chunk + 1] = 'JUSTID'
  touched = touched + #redis.call('XCLAIM', unpack(chunk))
end
return touched
"""
