"""Where a room lives: owner leases with fencing tokens, and room snapshots.

A :class:`LeaseStore` is the only shared state rooms need. Each room name has at most one
*owner lease* at a time: ``acquire`` grants it to one node with a *fencing token* that is
larger than every token granted for that name before, ``renew`` keeps it, ``release`` gives it
up. Snapshots are written only by the current lease holder with a token no lower than the one
stored (a paused or partitioned ex-owner cannot overwrite its successor's state).

:class:`MemoryLeaseStore` is the single-node default; :class:`RedisLeaseStore` is shared by the
nodes of a cluster. Each operation is one Redis command (a Lua script where it must be atomic).
"""

from __future__ import annotations

import abc
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

log = logging.getLogger("channels.placement")

__all__ = ["Lease", "LeaseStore", "MemoryLeaseStore", "RedisLeaseStore"]


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted owner lease: ``node`` holds ``name`` with fencing ``token``."""

    name: str
    node: str
    token: int

    @property
    def value(self) -> str:
        """The lease's value as stored: ``node|token``."""
        return f"{self.node}|{self.token}"


def parse_owner(value: str | bytes | None) -> tuple[str, int] | None:
    """``b"node|17"`` → ``("node", 17)``; None for a missing or malformed value."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    node, sep, token = text.rpartition("|")
    if not sep or not token.isdigit():
        return None
    return node, int(token)


class LeaseStore(abc.ABC):
    """Owner leases and snapshots, shared by every node that may host a room."""

    @abc.abstractmethod
    async def acquire(self, name: str, node: str, lease: float) -> Lease | tuple[str, int] | None:
        """Grant ``name`` to ``node`` for ``lease`` seconds if nobody holds it.

        Returns the new :class:`Lease`, or ``(holder node, holder token)`` if another lease
        is live (None if it could not be read).
        """

    @abc.abstractmethod
    async def renew(self, leases: Sequence[Lease], lease: float) -> list[bool]:
        """Extend each lease by ``lease`` seconds; False where it is held by someone else.

        A lease the store lost (e.g. Redis restarted empty) is granted again to its holder.
        """

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give the lease up if it is still ours."""

    @abc.abstractmethod
    async def owners(self, names: Sequence[str]) -> list[tuple[str, int] | None]:
        """The current holder of each name, or None."""

    @abc.abstractmethod
    async def save(self, lease: Lease, data: bytes, ttl: float | None) -> bool:
        """Store a snapshot if ``lease`` is still held and no newer token wrote one."""

    @abc.abstractmethod
    async def load(self, name: str) -> bytes | None:
        """The last snapshot of ``name``, or None."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the store's connections until cancelled (the rooms service runs this)."""
        task_status.started()
        await trio.sleep_forever()


class MemoryLeaseStore(LeaseStore):
    """One node's leases and snapshots, in memory (the single-node default).

    Lease times are not enforced here: a single node is always its own rooms' owner.
    """

    def __init__(self) -> None:
        self._owners: dict[str, Lease] = {}
        self._snapshots: dict[str, tuple[int, bytes]] = {}
        self._tokens = itertools.count(1)

    async def acquire(self, name: str, node: str, lease: float) -> Lease | tuple[str, int] | None:
        cur = self._owners.get(name)
        if cur is not None:
            return cur.node, cur.token
        granted = self._owners[name] = Lease(name, node, next(self._tokens))
        return granted

    async def renew(self, leases: Sequence[Lease], lease: float) -> list[bool]:
        out = []
        for held in leases:
            cur = self._owners.setdefault(held.name, held)
            out.append(cur == held)
        return out

    async def release(self, lease: Lease) -> None:
        if self._owners.get(lease.name) == lease:
            del self._owners[lease.name]

    async def owners(self, names: Sequence[str]) -> list[tuple[str, int] | None]:
        out: list[tuple[str, int] | None] = []
        for name in names:
            cur = self._owners.get(name)
            out.append(None if cur is None else (cur.node, cur.token))
        return out

    async def save(self, lease: Lease, data: bytes, ttl: float | None) -> bool:
        if self._owners.get(lease.name) != lease:
            return False
        cur = self._snapshots.get(lease.name)
        if cur is not None and cur[0] > lease.token:
            return False
        self._snapshots[lease.name] = (lease.token, data)
        return True

    async def load(self, name: str) -> bytes | None:
        cur = self._snapshots.get(name)
        return None if cur is None else cur[1]


# Tokens never go backwards, even when Redis restarts empty: a token is at least Redis's clock
# in microseconds, so a later takeover always carries a larger token than an earlier one.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local t = redis.call('TIME')
local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
local e = redis.call('INCR', KEYS[2])
if e < floor then
  e = floor
  redis.call('SET', KEYS[2], string.format('%d', e))
end
local v = ARGV[1] .. '|' .. string.format('%d', e)
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return {1, v}
"""

# 1 renewed, 2 re-granted (the key was lost), 0 held by someone else.
_RENEW = """
local out = {}
for i, k in ipairs(KEYS) do
  local v = ARGV[i + 1]
  local cur = redis.call('GET', k)
  if cur == v then
    redis.call('PEXPIRE', k, ARGV[1])
    out[i] = 1
  elseif not cur then
    redis.call('SET', k, v, 'PX', ARGV[1])
    out[i] = 2
  else
    out[i] = 0
  end
end
return out
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_SAVE = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
if tonumber(ARGV[1]) < cur then return 0 end
redis.call('HSET', KEYS[1], 't', ARGV[1], 'd', ARGV[2])
if tonumber(ARGV[4]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
else
  redis.call('PERSIST', KEYS[1])
end
return 1
"""

_RENEW_BATCH = 500


class RedisLeaseStore(LeaseStore):
    """Leases and snapshots in Redis, shared by a cluster's nodes.

    Keys, for a room name ``N``: ``{namespace}:room:N:owner`` (``node|token``, with the lease
    as its TTL), ``{namespace}:room:N:epoch`` (the last token) and ``{namespace}:room:N:snap``
    (a hash: token ``t``, data ``d``).
    """

    def __init__(self, url: str, namespace: str = "trio_channels", *,
                 command_timeout: float = 2.0, connect_timeout: float = 2.0) -> None:
        self.url = url
        self.namespace = namespace
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self._current: coredis.Redis[bytes] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a client open (it connects on demand and again after Redis restarts)."""
        started = False
        while True:
            client: coredis.Redis[bytes] = coredis.Redis.from_url(
                self.url,
                decode_responses=False,
                # A lease operation is never retried blindly: the rooms layer decides.
                retry_policy=NoRetryPolicy(),
                stream_timeout=self.command_timeout,
                connect_timeout=self.connect_timeout,
            )
            try:
                async with client:
                    self._current = client
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep_forever()
            except Exception as exc:
                log.warning("room store client failed (%s); opening a new one", exc)
            finally:
                self._current = None
            await trio.sleep(0.5)

    @property
    def _client(self) -> coredis.Redis[bytes]:
        client = self._current
        if client is None:
            raise coredis.exceptions.ConnectionError("the room store is not connected")
        return client

    def _key(self, name: str, kind: str) -> str:
        return f"{self.namespace}:room:{name}:{kind}"

    async def acquire(self, name: str, node: str, lease: float) -> Lease | tuple[str, int] | None:
        reply: Any = await self._client.eval(
            _ACQUIRE, keys=[self._key(name, "owner"), self._key(name, "epoch")],
            args=[node, max(1, int(lease * 1000))])
        granted = int(reply[0]) == 1
        owner = parse_owner(reply[1])
        if owner is None:
            return None
        if granted:
            return Lease(name, owner[0], owner[1])
        return owner

    async def renew(self, leases: Sequence[Lease], lease: float) -> list[bool]:
        out: list[bool] = []
        ms = max(1, int(lease * 1000))
        for start in range(0, len(leases), _RENEW_BATCH):
            batch = leases[start:start + _RENEW_BATCH]
            reply: Any = await self._client.eval(
                _RENEW, keys=[self._key(held.name, "owner") for held in batch],
                args=[ms, *(held.value for held in batch)])
            out.extend(int(r) != 0 for r in reply)
        return out

    async def release(self, lease: Lease) -> None:
        await self._client.eval(_RELEASE, keys=[self._key(lease.name, "owner")],
                                args=[lease.value])

    async def owners(self, names: Sequence[str]) -> list[tuple[str, int] | None]:
        if not names:
            return []
        values: Any = await self._client.mget([self._key(n, "owner") for n in names])
        return [parse_owner(v) for v in values]

    async def save(self, lease: Lease, data: bytes, ttl: float | None) -> bool:
        reply: Any = await self._client.eval(
            _SAVE, keys=[self._key(lease.name, "snap"), self._key(lease.name, "owner")],
            args=[lease.token, data, lease.value, int((ttl or 0) * 1000)])
        return int(reply) == 1

    async def load(self, name: str) -> bytes | None:
        data: Any = await self._client.hget(self._key(name, "snap"), "d")
        return data if isinstance(data, bytes) else None
