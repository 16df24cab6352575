"""The Lua scripts: the single source of the cache's protocol with Redis, and the shapes of their
replies. Every store (sync, asyncio, cluster), the binlog watcher and the CLI run these, never a
copy of them.

Why Lua: a hit must cost one round trip, and the checks that make a store or a bump safe (is the
epoch still the same? are the versions still those read before the SQL ran? is a writer between its
database commit and its bump?) must happen atomically with the write they guard.

Data model, per namespace (every key has a TTL):

- ``clock``: hash ``{e: epoch, n: counter}``. Every bump takes the next counter value; the epoch is
  a random token chosen when the hash is created, so if Redis loses it (restart, eviction, FLUSHALL)
  every older entry dies with it, and a restarted counter can never make one look fresh.
- ``v:<server>:<schema.table>``: the counter value of the table's last bump. A missing one is
  recreated from the current counter: no write can have happened after that value was handed out.
- ``w:<server>:<schema.table>``: sorted set of writers (scored by lease deadline) that announced a
  commit and have not bumped yet. While one is alive, readers neither serve nor store that table.
- ``e:<digest>``: an entry (see serialization.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final, NamedTuple


class LuaScript(NamedTuple):
    """A script and its SHA1, as EVALSHA wants it (computed here: no round trip to learn it)."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> LuaScript:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


_ENSURE_CLOCK: Final = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch, 'n', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
"""

_WRITER_ALIVE: Final = """
local now
local function writer_alive(key)
  if redis.call('EXISTS', key) == 0 then return false end
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return redis.call('ZCOUNT', key, now, '+inf') > 0
end
"""

# KEYS: clock, entry, lock, n version keys, n + 1 writing markers (the last: all tables), and with
#       require_watcher the binlog watcher's heartbeat
# ARGV: epoch for a new clock, ttl (ms) of keys created here, n, the transaction's snapshot counter
#       ('' before its first lookup), entry header, lock token, lock ttl (ms; 0: no lock),
#       '1' if the last key is a heartbeat that must exist
# -> {epoch, counter, writer alive (0/1; 2: no watcher), payload or nil, locked (0/1),
#     corrupt (0/1), v1, ..., vn}
# The payload comes back only if the entry was written for this key, in this format, against these
# exact versions; otherwise, if the result may be stored at all, the caller tries to take the lock.
LOOKUP: Final = LuaScript.of(
    _ENSURE_CLOCK
    + _WRITER_ALIVE
    + """
local n = tonumber(ARGV[3])
local versions = {}
for i = 1, n do
  local v = redis.call('GET', KEYS[3 + i])
  if not v then
    -- unknown history: the current counter is safe (every write bumps to a newer value, so no
    -- entry recorded this value for this table unless it was computed after the table's last write)
    v = redis.call('HGET', KEYS[1], 'n')
    redis.call('SET', KEYS[3 + i], v, 'PX', ARGV[2])
  end
  versions[i] = v
end
local counter = tonumber(redis.call('HGET', KEYS[1], 'n'))
local snapshot = tonumber(ARGV[4]) or counter
local reply = {epoch, counter, 0, false, 0, 0}
local usable = true
local markers_end = #KEYS
if ARGV[8] == '1' then
  -- nobody follows the binlog: writes by other clients may go unseen, as if a writer were busy
  markers_end = markers_end - 1
  if redis.call('EXISTS', KEYS[#KEYS]) == 0 then reply[3] = 2; usable = false end
end
for i = n + 4, markers_end do
  if writer_alive(KEYS[i]) then reply[3] = 1; usable = false end
end
for i = 1, n do
  reply[6 + i] = tonumber(versions[i])
  if tonumber(versions[i]) > snapshot then usable = false end
end
if not usable then return reply end
local entry = redis.call('GET', KEYS[2])
local head = ARGV[5] .. epoch .. ':' .. table.concat(versions, ',') .. ';'
if entry and string.sub(entry, 1, #head) == head then
  reply[4] = string.sub(entry, #head + 1)
  return reply
end
if entry and string.sub(entry, 1, #ARGV[5]) ~= ARGV[5] then reply[6] = 1 end
if tonumber(ARGV[7]) > 0 and redis.call('SET', KEYS[3], ARGV[6], 'NX', 'PX', ARGV[7]) then
  reply[5] = 1
end
return reply
"""
)

_RELEASE_LOCK: Final = """
local function release_lock(token)
  if redis.call('GET', KEYS[3]) == token then redis.call('DEL', KEYS[3]) end
end
"""

# KEYS: as LOOKUP
# ARGV: epoch, entry ttl (ms), n, entry bytes, lock token, version 1, ..., version n
# -> 1 if stored, 0 if anything it depends on moved since the lookup (the lock is released anyway)
STORE: Final = LuaScript.of(
    _WRITER_ALIVE
    + _RELEASE_LOCK
    + """
local n = tonumber(ARGV[3])
local ttl = tonumber(ARGV[2])
release_lock(ARGV[5])
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then return 0 end
for i = 1, n do
  if redis.call('GET', KEYS[3 + i]) ~= ARGV[5 + i] then return 0 end
end
for i = n + 4, #KEYS do
  if writer_alive(KEYS[i]) then return 0 end
end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ttl)
-- what the entry depends on must not expire before it (an early expiry is safe, only wasteful)
for i = 1, n do
  if redis.call('PTTL', KEYS[3 + i]) < ttl then redis.call('PEXPIRE', KEYS[3 + i], ttl) end
end
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""
)

# KEYS: clock, entry, lock; ARGV: lock token
RELEASE: Final = LuaScript.of(_RELEASE_LOCK + "release_lock(ARGV[1])\nreturn 1\n")

# KEYS: clock, n version keys, m writing markers
# ARGV: epoch for a new clock, ttl (ms), n, mode ('announce' | 'finish' | 'publish'),
#       writer token, lease (ms), new epoch ('' unless every table is invalidated), channel
# -> the counter value given to the tables
# Every bump is also published on the channel (for near caches, near.py), in the same script, so
# before the writer's reply exists: "<epoch>\n<counter>\n<1 if every table>\n<version key>...".
BUMP: Final = LuaScript.of(
    _ENSURE_CLOCK
    + """
local n = tonumber(ARGV[3])
local mode = ARGV[4]
local c = redis.call('HINCRBY', KEYS[1], 'n', 1)
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'e', ARGV[7]) end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
for i = 1, n do
  redis.call('SET', KEYS[1 + i], c, 'PX', ARGV[2])
end
if mode ~= 'publish' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local lease = tonumber(ARGV[6])
  for i = n + 2, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if mode == 'announce' then
      redis.call('ZADD', KEYS[i], now + lease, ARGV[5])
      if redis.call('PTTL', KEYS[i]) < lease then redis.call('PEXPIRE', KEYS[i], lease) end
    else
      redis.call('ZREM', KEYS[i], ARGV[5])
    end
  end
end
local message = {redis.call('HGET', KEYS[1], 'e'), c, ARGV[7] ~= '' and '1' or '0'}
for i = 1, n do message[3 + i] = KEYS[1 + i] end
redis.call('PUBLISH', ARGV[8], table.concat(message, '\\n'))
return c
"""
)


# The binlog watcher's own keys (binlog.py), not part of the cache protocol above.
# KEYS: lease, position, heartbeat
# ARGV: watcher token, mode ('hold' | 'release'), lease ttl (ms), position ('' keeps it),
#       position ttl (ms), heartbeat ttl (ms; 0 leaves the heartbeat alone)
# -> 1 while this watcher holds the lease (taking it when free), 0 when another one does. Nothing
#    is written by a watcher that lost its lease: a standby that took over owns the position.
WATCHER_LUA: Final = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1])
  if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5]) end
if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[6]) end
return 1
"""


class LookupReply(NamedTuple):
    epoch: str
    clock: int
    writer_alive: bool
    payload: bytes | None
    """The entry's payload, only if it is valid for this key and these versions."""
    locked: bool
    """This caller took the lock: it computes the result and stores it."""
    corrupt: bool
    """An entry was there but is not one of ours (garbage, another key's, another format)."""
    versions: tuple[int, ...]
    watcher_missing: bool = False
    """``require_watcher`` is on and no binlog watcher's heartbeat is alive."""


class EntryKeys(NamedTuple):
    """The keys one cached statement touches, in the order the scripts expect them."""

    clock: str
    entry: str
    lock: str
    versions: Sequence[str]
    writing: Sequence[str]
    heartbeat: str | None = None
    """The binlog watcher's heartbeat, checked by the lookup only (``require_watcher``)."""

    def all(self) -> list[str]:
        return [self.clock, self.entry, self.lock, *self.versions, *self.writing]
