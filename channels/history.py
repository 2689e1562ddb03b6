"""History and recovery: every broadcast on a topic with history gets a position, clients
that come back say where they were, and get what they missed once and in order.

Declare history on a channel class (``history = History(size=500, ttl=600)``); every topic
that routes to it keeps its recent broadcasts:

* **Position.** Each broadcast gets ``offset`` (+1 per topic) and the stream's ``epoch`` (new
  whenever the stream is lost). It reaches clients inside the broadcast's payload as
  ``"phx_pos": {"offset": 17, "epoch": "…"}``.
* **Recovery.** A client joins with ``{"phx_pos": {"offset": …, "epoch": …}}`` in its join
  params (the last position it saw). The server subscribes first, then replays what came
  after from the history, then goes live, dropping what it already replayed. The join reply
  carries ``"phx_recovery": {"recovered": bool, "epoch", "offset", "replayed"}`` (and a
  ``"reason"`` when not recovered: the position is older than the history, from another
  epoch, or malformed), so the app reloads its state when it must.
* **Storage.** One node: a bounded buffer per topic in memory. A cluster: a Redis stream per
  topic, offsets assigned by the same script that appends (every node agrees), appends
  pipelined.
* **Gap repair.** Each node delivers a topic's broadcasts in offset order: a message that
  arrives after a gap (its Redis link was down, another node's message is late) waits until
  the gap is filled from the stream; one already delivered is dropped.

The pure parts (:class:`Sequencer`, :func:`plan_recovery`, :func:`parse_position`) decide;
:class:`HistoryService` wires them to the stores, the pubsub and the sessions.
"""

from __future__ import annotations

import abc
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import trio

from channels.logutil import Throttled

if TYPE_CHECKING:
    from collections.abc import Iterable

    from channels.pubsub import FrameCache, PubSub, Subscriber

__all__ = [
    "POSITION_KEY",
    "RECOVERY_KEY",
    "AppendOutcomeUnknown",
    "Entry",
    "History",
    "HistoryService",
    "HistoryStore",
    "MemoryHistoryStore",
    "RecoveryPlan",
    "RedisHistoryStore",
    "Sequencer",
    "parse_position",
    "plan_recovery",
]

log = logging.getLogger("channels.history")

#: Where a position travels: in broadcast payloads, and in join params (the last one seen).
POSITION_KEY = "phx_pos"
#: Where the join reply says whether recovery worked.
RECOVERY_KEY = "phx_recovery"
#: The internal topic carrying positioned broadcasts between nodes.
HISTORY_TOPIC = "phx_history"
MAX_EPOCH_LENGTH = 64
#: How long a join's read of the history may take before the join is refused. Generous: a
#: node busy with a crowd of reconnecting clients answers late, and a refused recovery costs
#: the app a reload, while phoenix.js waits 10 s for a join reply (a shared read may wait for
#: the one before it, so a join waits at most about twice this).
_READ_TIMEOUT = 4.0
#: Replayed messages kept positioned with their frames, for the clients recovering together.
_REPLAY_CACHE = 4096
_MAX_CONFIG_CACHE = 100_000

#: What a store calls with ``(epoch, offset)`` once an append has its position.
Stored = Callable[[str, int], Awaitable[None]]


class History:
    """History for the topics of a channel class: the last ``size`` broadcasts per topic,
    each kept at most ``ttl`` seconds."""

    __slots__ = ("size", "ttl")

    def __init__(self, size: int = 100, ttl: float = 300.0) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError("History size must be an int >= 1")
        if not ttl > 0:
            raise ValueError("History ttl must be > 0 seconds")
        self.size = size
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"History(size={self.size}, ttl={self.ttl:g})"


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored broadcast."""

    offset: int
    event: str
    payload: Any
    at: float  # Unix time it was stored, in seconds


# -- the pure decisions ----------------------------------------------------------------------

def parse_position(value: Any) -> tuple[str, int] | None:
    """A client's ``phx_pos`` as ``(epoch, offset)``, or None if it is not a valid one."""
    if not isinstance(value, dict):
        return None
    epoch, offset = value.get("epoch"), value.get("offset")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH:
        return None
    if type(offset) is not int or not 0 <= offset < 2**63:
        return None
    return epoch, offset


def _last_n(value: Any) -> int | None:
    """``{"last": N}`` (a first join asking for the newest N entries) → N, else None."""
    if isinstance(value, dict) and len(value) == 1 and "last" in value:
        n = value["last"]
        if type(n) is int and n >= 0:
            return n
    return None


def position(epoch: str, offset: int) -> dict[str, Any]:
    return {"offset": offset, "epoch": epoch}


@dataclass(slots=True)
class RecoveryPlan:
    """What a recovering join does: whether it recovered, what to replay, what to tell."""

    recovered: bool
    epoch: str
    offset: int  # the last offset the client will have seen once the replay is done
    replay: list[Entry] = field(default_factory=list)
    reason: str | None = None

    def reply(self) -> dict[str, Any]:
        info: dict[str, Any] = {"recovered": self.recovered, "epoch": self.epoch,
                                "offset": self.offset, "replayed": len(self.replay)}
        if self.reason is not None:
            info["reason"] = self.reason
        return info


def plan_recovery(wanted: tuple[str, int] | None, epoch: str, top: int,
                  entries: Sequence[Entry]) -> RecoveryPlan:
    """Decide a recovering join.

    ``wanted`` is the client's last position (None if malformed); ``epoch`` and ``top`` are the
    stream's; ``entries`` are the stored entries after the client's offset, oldest first (as
    many as the history holds). Recovered means: same epoch, nothing between the client's
    offset and the first entry is missing, and the client is not ahead of the stream.
    """
    if wanted is None:
        return RecoveryPlan(False, epoch, top, reason="bad position")
    client_epoch, offset = wanted
    if client_epoch != epoch:
        return RecoveryPlan(False, epoch, top, reason="epoch changed")
    if offset > top:
        return RecoveryPlan(False, epoch, top, reason="position ahead of the history")
    replay = [e for e in entries if e.offset > offset]
    expected = offset + 1
    for entry in replay:
        if entry.offset != expected:
            return RecoveryPlan(False, epoch, top, reason="position older than the history")
        expected += 1
    if expected - 1 != top:
        return RecoveryPlan(False, epoch, top, reason="position older than the history")
    return RecoveryPlan(True, epoch, top, replay)


class Sequencer:
    """Per topic, the last position delivered on this node: decides, for each positioned
    message, whether to deliver it, drop it (already delivered), or first fill a gap."""

    DELIVER, DUPLICATE, GAP = "deliver", "duplicate", "gap"

    def __init__(self, max_topics: int = 100_000) -> None:
        self.max_topics = max_topics
        self._last: dict[str, tuple[str, int]] = {}

    def check(self, topic: str, epoch: str, offset: int) -> str:
        last = self._last.get(topic)
        if last is None or last[0] != epoch:
            return self.DELIVER  # first seen here, or a new stream: start from it
        if offset <= last[1]:
            return self.DUPLICATE
        if offset == last[1] + 1:
            return self.DELIVER
        return self.GAP

    def last(self, topic: str) -> tuple[str, int] | None:
        return self._last.get(topic)

    def start(self, topic: str, epoch: str, offset: int) -> None:
        """Where a topic this node has not delivered yet starts: its top when first joined
        here. Without it the first offset to arrive would be the start, and lower ones
        still on their way from other nodes would be dropped as duplicates."""
        if topic not in self._last:
            self.delivered(topic, epoch, offset)

    def delivered(self, topic: str, epoch: str, offset: int) -> None:
        last = self._last
        if topic not in last and len(last) >= self.max_topics:
            del last[next(iter(last))]
        last[topic] = (epoch, offset)


# -- stores ----------------------------------------------------------------------------------

class HistoryStore(abc.ABC):
    """Where positioned broadcasts are kept."""

    @abc.abstractmethod
    async def append(self, topic: str, config: History, event: str, payload: Any,
                     stored: Stored | None = None) -> tuple[str, int]:
        """Store a broadcast; returns its ``(epoch, offset)``.

        ``stored(epoch, offset)`` is awaited once the position is known, before this returns,
        and for the appends of one topic in offset order, whatever order the tasks that
        called ``append`` resume in (so whatever it sends goes out in that order).
        """

    @abc.abstractmethod
    async def since(self, topic: str, offset: int, config: History,
                    limit: int) -> tuple[str, int, list[Entry]]:
        """``(epoch, top offset, entries after offset)``, oldest first, at most ``limit``,
        none older than the ttl; a topic with no stream gets a new epoch and top 0."""

    @abc.abstractmethod
    async def reset(self, topic: str) -> None:
        """Drop the topic's stream: its next broadcast starts a new epoch."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()


class _Stream:
    __slots__ = ("entries", "top")

    def __init__(self, size: int) -> None:
        self.entries: deque[Entry] = deque(maxlen=size)
        self.top = 0


class MemoryHistoryStore(HistoryStore):
    """One node's history: a bounded deque per topic (evicted by size, and by ttl when
    read or written). The epoch is new at every start of the process."""

    def __init__(self, max_topics: int = 100_000) -> None:
        self.epoch = secrets.token_hex(8)
        self.max_topics = max_topics
        self._streams: dict[str, _Stream] = {}

    def stored(self) -> int:
        """Entries held, all topics together."""
        return sum(len(s.entries) for s in self._streams.values())

    def append_now(self, topic: str, config: History, event: str,
                   payload: Any) -> tuple[str, int]:
        stream = self._streams.get(topic)
        if stream is None or stream.entries.maxlen != config.size:
            if stream is None and len(self._streams) >= self.max_topics:
                self._evict_idle()
            old = stream
            stream = self._streams[topic] = _Stream(config.size)
            if old is not None:
                stream.top = old.top
                stream.entries.extend(old.entries)
        now = time.time()
        _expire(stream.entries, now - config.ttl)
        stream.top += 1
        stream.entries.append(Entry(stream.top, event, payload, now))
        return self.epoch, stream.top

    async def append(self, topic: str, config: History, event: str, payload: Any,
                     stored: Stored | None = None) -> tuple[str, int]:
        epoch, offset = self.append_now(topic, config, event, payload)
        if stored is not None:
            await stored(epoch, offset)
        return epoch, offset

    async def reset(self, topic: str) -> None:
        # Appends in memory never fail, so nothing ever needs a new epoch per topic (the
        # epoch is the process's).
        return None

    async def since(self, topic: str, offset: int, config: History,
                    limit: int) -> tuple[str, int, list[Entry]]:
        stream = self._streams.get(topic)
        if stream is None:
            return self.epoch, 0, []
        _expire(stream.entries, time.time() - config.ttl)
        if limit <= 0:
            return self.epoch, stream.top, []
        out = [e for e in stream.entries if e.offset > offset]
        return self.epoch, stream.top, out[:limit]

    def _evict_idle(self) -> None:
        # Topics whose newest entry expired go first; else the oldest-created topic.
        now = time.time()
        for topic, stream in list(self._streams.items()):
            if not stream.entries or stream.entries[-1].at < now - 3600:
                del self._streams[topic]
        if len(self._streams) >= self.max_topics:
            del self._streams[next(iter(self._streams))]


def _expire(entries: deque[Entry], before: float) -> None:
    while entries and entries[0].at < before:
        entries.popleft()


# Offsets are assigned by the script that appends, so every node agrees. A missing meta hash
# means the stream was lost (expired, Redis flushed or restarted empty): a new epoch starts.
_APPEND = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'top', 0)
end
local off = redis.call('HINCRBY', KEYS[2], 'top', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], off .. '-0', 'd', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {epoch, off}
"""

_SINCE = """
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'top')
if not meta[1] then
  meta[1] = ARGV[3]
  meta[2] = 0
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', meta[1], 'top', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {meta[1], meta[2], entries}
"""


class RedisHistoryStore(HistoryStore):
    """History in Redis streams, shared by a cluster: per topic ``{namespace}:hist:T`` (the
    stream, ids ``offset-0``, capped by size with approximate MAXLEN) and
    ``{namespace}:hist:T:meta`` (epoch and top offset), both expiring ``ttl`` after the last
    broadcast. Appends queued at the same time go out in one pipeline."""

    def __init__(self, url: str, namespace: str = "trio_channels", *,
                 command_timeout: float = 2.0, connect_timeout: float = 2.0,
                 max_batch: int = 256) -> None:
        import coredis

        self._coredis = coredis
        self.url = url
        self.namespace = namespace
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.max_batch = max_batch
        self._client: Any = None
        self._queue: deque[tuple[str, History, bytes, _Pending]] = deque()
        self._wakeup = trio.Event()
        self.appends = 0
        self.pipelines = 0
        # Epoch candidates, used only when a stream is new: a random prefix per store and a
        # counter are as unique as a fresh token each time, without a getrandom per append.
        self._epoch_prefix = secrets.token_hex(8)
        self._epoch_count = 0

    def _new_epoch(self) -> str:
        self._epoch_count += 1
        return f"{self._epoch_prefix}{self._epoch_count:x}"

    def _keys(self, topic: str) -> list[str]:
        base = f"{self.namespace}:hist:{topic}"
        return [base, base + ":meta"]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from coredis.retry import NoRetryPolicy

        started = False
        while True:
            client = self._coredis.Redis.from_url(
                self.url, decode_responses=False, retry_policy=NoRetryPolicy(),
                stream_timeout=self.command_timeout, connect_timeout=self.connect_timeout)
            try:
                async with client, trio.open_nursery() as nursery:
                    self._client = client
                    nursery.start_soon(self._writer)
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep_forever()
            except Exception as exc:
                log.warning("history store client failed (%s); opening a new one", exc)
            finally:
                self._client = None
                self._fail_queued(ConnectionError("the history store is not connected"))
            await trio.sleep(0.5)

    async def append(self, topic: str, config: History, event: str, payload: Any,
                     stored: Stored | None = None) -> tuple[str, int]:
        if self._client is None:
            raise ConnectionError("the history store is not connected")
        data = msgpack.packb([event, payload, time.time()], use_bin_type=True)
        pending = _Pending(stored)
        self._queue.append((topic, config, data, pending))
        self._wakeup.set()
        await pending.event.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def _writer(self) -> None:
        queue = self._queue
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
                try:
                    async with self._client.pipeline(transaction=False) as pipe:
                        requests = [
                            pipe.eval(_APPEND, keys=self._keys(topic),
                                      args=[self._new_epoch(), config.size,
                                            int(config.ttl * 1000), data])
                            for topic, config, data, _ in batch]
                    results = [await r for r in requests]
                except Exception as exc:
                    for *_, pending in batch:
                        # Sent or not: Redis may have run the appends before the link failed.
                        unknown = AppendOutcomeUnknown(f"{type(exc).__name__}: {exc}")
                        unknown.__cause__ = exc
                        pending.fail(unknown)
                    raise
                self.pipelines += 1
                self.appends += len(batch)
                # Redis ran the batch in order, so its offsets rise per topic: hand them on in
                # that order here, in this one task (the callers resume in any order).
                for (topic, *_, pending), reply in zip(batch, results, strict=True):
                    epoch = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
                    result = (epoch, int(reply[1]))
                    if pending.stored is not None:
                        try:
                            await pending.stored(*result)
                        except Exception:
                            log.exception("handing on the broadcast stored at %s on %s failed",
                                          result[1], topic)
                    pending.done(result)

    def _fail_queued(self, error: BaseException) -> None:
        while self._queue:
            self._queue.popleft()[3].fail(error)

    async def reset(self, topic: str) -> None:
        if self._client is None:
            raise ConnectionError("the history store is not connected")
        await self._client.delete(self._keys(topic))

    async def since(self, topic: str, offset: int, config: History,
                    limit: int) -> tuple[str, int, list[Entry]]:
        if self._client is None:
            raise ConnectionError("the history store is not connected")
        reply: Any = await self._client.eval(
            _SINCE, keys=self._keys(topic),
            args=[f"{offset + 1}-0", limit, self._new_epoch(), int(config.ttl * 1000)])
        epoch = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        top = int(reply[1])
        oldest = time.time() - config.ttl
        entries: list[Entry] = []
        for entry_id, fields in reply[2]:
            ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            event, payload, at = msgpack.unpackb(values[b"d"], raw=False,
                                                 strict_map_key=False)
            if at >= oldest:
                entries.append(Entry(int(ident.partition("-")[0]), event, payload, at))
        return epoch, top, entries


class AppendOutcomeUnknown(ConnectionError):
    """The link to the store failed while an append was on its way: it may be stored."""


class _SharedRead:
    """One history read shared by the joins of a topic that wait at the same time."""

    __slots__ = ("done", "error", "offsets", "result")

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.done = trio.Event()
        self.result: tuple[str, int, list[Entry]] | None = None
        self.error: str | None = None


class _Pending:
    __slots__ = ("error", "event", "result", "stored")

    def __init__(self, stored: Stored | None) -> None:
        self.stored = stored
        self.event = trio.Event()
        self.result: tuple[str, int] | None = None
        self.error: BaseException | None = None

    def done(self, result: tuple[str, int]) -> None:
        self.result = result
        self.event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()


# -- the service -----------------------------------------------------------------------------

class _HistorySubscriber:
    __slots__ = ("service",)

    def __init__(self, service: HistoryService) -> None:
        self.service = service

    def deliver(self, topic: str, event: str, payload: Any, cache: FrameCache) -> None:
        try:
            target, epoch, offset, ev, data = payload
        except (TypeError, ValueError):
            self.service._warn("malformed", logging.WARNING,
                               "malformed message on %s dropped", HISTORY_TOPIC)
            return
        self.service._enqueue(str(target), str(epoch), int(offset), str(ev), data, None)


class HistoryService:
    """Positions, stores and sequences the broadcasts of topics with history (the endpoint
    makes one when a channel class declares :class:`History`)."""

    def __init__(self, routes: Sequence[tuple[str, History]],
                 store: HistoryStore | None = None) -> None:
        self.routes = list(routes)
        self._store = store
        self._configs: dict[str, History | None] = {}
        self.sequencer = Sequencer()
        self._pubsub: PubSub | None = None
        self._shared = False
        self._queue: deque[tuple[str, str, int, str, Any, Subscriber | None]] = deque()
        self._wakeup = trio.Event()
        self._broken: set[str] = set()  # topics with broadcasts the store did not take
        self._warn = Throttled(log)
        # Counters.
        self.stored = 0
        self.delivered = 0
        self.duplicates = 0
        self.gaps_filled = 0
        self.lost = 0  # missing from the stream when a gap was filled (past retention)
        self.recoveries = 0
        self.recovery_failures = 0
        self.unstored = 0  # broadcasts delivered without a position (store down, binary)
        self.shared_reads = 0  # reads of the stream shared by the joins waiting for them
        self.shared_read_misses = 0  # joins a shared read did not cover (read on their own)
        self._nursery: trio.Nursery | None = None
        self._next_reads: dict[str, _SharedRead] = {}  # per topic, the read joins wait for
        self._reads_running: dict[str, trio.Event] = {}
        self._replays: dict[tuple[str, str, int], tuple[str, dict[str, Any], FrameCache]] = {}

    @classmethod
    def for_sockets(cls, sockets: Iterable[object]) -> HistoryService | None:
        """A service for the channel classes of these Socket classes that declare
        ``history``, or None."""
        routes: list[tuple[str, History]] = []
        for socket_cls in sockets:
            for pattern, channel_cls in getattr(socket_cls, "channels", {}).items():
                config = getattr(channel_cls, "history", None)
                if isinstance(config, History):
                    routes.append((pattern, config))
        return cls(routes) if routes else None

    @property
    def store(self) -> HistoryStore:
        if self._store is None:
            raise RuntimeError("history is not running")
        return self._store

    def config_for(self, topic: str) -> History | None:
        """The history of ``topic``: the first route whose pattern matches (as routing)."""
        configs = self._configs
        try:
            return configs[topic]
        except KeyError:
            pass
        found: History | None = None
        for pattern, config in self.routes:
            if (pattern.endswith("*") and topic.startswith(pattern[:-1])) or topic == pattern:
                found = config
                break
        if len(configs) >= _MAX_CONFIG_CACHE:
            configs.clear()
        configs[topic] = found
        return found

    def attach(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub
        pubsub.history = self

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            raise RuntimeError("HistoryService.attach() was not called")
        adapter = pubsub.adapter
        if self._store is None:
            from channels.redis import RedisAdapter

            if isinstance(adapter, RedisAdapter):
                self._store = RedisHistoryStore(adapter.url, adapter.namespace)
            else:
                self._store = MemoryHistoryStore()
        self._shared = not isinstance(self._store, MemoryHistoryStore)
        subscriber = _HistorySubscriber(self)
        pubsub.subscribe(HISTORY_TOPIC, subscriber)
        hooks = adapter.on_reconnect
        hooks.append(self._relinked)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._store.run)
                nursery.start_soon(self._dispatch)
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            pubsub.unsubscribe(HISTORY_TOPIC, subscriber)
            if self._relinked in hooks:
                hooks.remove(self._relinked)

    # -- broadcasting ----------------------------------------------------------------------------

    async def broadcast(self, topic: str, config: History, event: str, payload: Any,
                        exclude: Subscriber | None) -> None:
        """Store, position, and deliver everywhere in offset order."""
        assert self._pubsub is not None
        if not isinstance(payload, dict):
            # Binary payloads have no place for a position: delivered, not stored.
            self.unstored += 1
            await self._pubsub.local_broadcast(topic, event, payload, exclude=exclude)
            await self._pubsub.adapter.publish(topic, event, payload)
            return
        store = self._store
        try:
            if isinstance(store, MemoryHistoryStore):
                epoch, offset = store.append_now(topic, config, event, payload)
            else:
                if topic in self._broken:
                    # Broadcasts went out unstored: a new epoch, so that clients recovering
                    # across them are told they cannot (rather than silently miss them).
                    await self.store.reset(topic)
                    self._broken.discard(topic)

                async def stored(epoch: str, offset: int) -> None:
                    await self._positioned(topic, epoch, offset, event, payload, exclude)

                await self.store.append(topic, config, event, payload, stored)
                return
        except Exception as exc:
            # The broadcast still goes out (at most once, like any); the topic's stream gets a
            # new epoch once the store answers again, so recovering clients are told.
            self._broken.add(topic)
            self.unstored += 1
            if isinstance(exc, AppendOutcomeUnknown):
                # It may be in the stream (Redis ran the append, the reply was lost): sent now
                # without a position, it would reach a client twice, the second time in the
                # replay of a recovery across it (before the new epoch). It reaches clients
                # from the stream if it is there (gap repair, recovery); if not, the new epoch
                # tells them.
                self._warn("store", logging.WARNING,
                           "cannot tell whether a broadcast on %s was stored in its history "
                           "(%s): not delivering it without a position", topic, exc)
                return
            self._warn("store", logging.WARNING,
                       "cannot store a broadcast on %s in its history (%s): delivering it "
                       "without a position", topic, exc)
            await self._pubsub.local_broadcast(topic, event, payload, exclude=exclude)
            await self._pubsub.adapter.publish(topic, event, payload)
            return
        await self._positioned(topic, epoch, offset, event, payload, exclude)

    async def _positioned(self, topic: str, epoch: str, offset: int, event: str,
                          payload: dict[str, Any], exclude: Subscriber | None) -> None:
        """Send a stored broadcast on, here and to the other nodes: called in offset order."""
        assert self._pubsub is not None
        self.stored += 1
        positioned = {**payload, POSITION_KEY: position(epoch, offset)}
        self._enqueue(topic, epoch, offset, event, positioned, exclude)
        if self._shared:
            await self._pubsub.adapter.publish(HISTORY_TOPIC, "m",
                                               [topic, epoch, offset, event, positioned])

    def _start(self, topic: str, epoch: str, top: int) -> None:
        """A join read ``top``: start the topic's sequence there unless it already has one
        (or positions at or below it are still waiting to be delivered here)."""
        if self.sequencer.last(topic) is not None:
            return
        waiting = [item[2] for item in self._queue if item[0] == topic and item[1] == epoch]
        start = min([top, *(o - 1 for o in waiting if o >= 0)])
        self.sequencer.start(topic, epoch, start)

    def _enqueue(self, topic: str, epoch: str, offset: int, event: str, payload: Any,
                 exclude: Subscriber | None) -> None:
        self._queue.append((topic, epoch, offset, event, payload, exclude))
        self._wakeup.set()

    async def _dispatch(self) -> None:
        """Delivers positioned broadcasts in offset order per topic (one task, so a gap
        being filled holds back what follows it)."""
        queue = self._queue
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while queue:
                topic, epoch, offset, event, payload, exclude = queue.popleft()
                try:
                    if offset < 0:
                        await self._catch_up(topic)
                    else:
                        await self._sequence(topic, epoch, offset, event, payload, exclude)
                except Exception:
                    log.exception("delivering %r on %s failed", event, topic)

    async def _sequence(self, topic: str, epoch: str, offset: int, event: str, payload: Any,
                        exclude: Subscriber | None) -> None:
        assert self._pubsub is not None
        verdict = self.sequencer.check(topic, epoch, offset)
        if verdict == Sequencer.DUPLICATE:
            self.duplicates += 1
            return
        if verdict == Sequencer.GAP:
            last = self.sequencer.last(topic)
            assert last is not None
            await self._fill(topic, epoch, last[1], offset)
            if self.sequencer.check(topic, epoch, offset) == Sequencer.DUPLICATE:
                self.duplicates += 1
                return
        self.sequencer.delivered(topic, epoch, offset)
        self.delivered += 1
        await self._pubsub.local_broadcast(topic, event, payload, exclude=exclude)

    async def _fill(self, topic: str, epoch: str, after: int, before: int) -> None:
        """Deliver the stored entries between ``after`` and ``before`` (exclusive)."""
        assert self._pubsub is not None
        config = self.config_for(topic)
        entries: list[Entry] = []
        if config is not None:
            try:
                with trio.fail_after(2.0):
                    stream_epoch, _top, entries = await self.store.since(
                        topic, after, config, before - after - 1)
                if stream_epoch != epoch:
                    entries = []
            except (Exception, trio.TooSlowError) as exc:
                self._warn(("fill", topic), logging.WARNING,
                           "cannot fill a gap on %s from its history (%s)", topic, exc)
        filled = [e for e in entries if after < e.offset < before]
        self.lost += (before - after - 1) - len(filled)
        for entry in filled:
            self.gaps_filled += 1
            self.sequencer.delivered(topic, epoch, entry.offset)
            self.delivered += 1
            await self._pubsub.local_broadcast(
                topic, entry.event, {**entry.payload, POSITION_KEY: position(epoch, entry.offset)})

    async def _catch_up(self, topic: str) -> None:
        """Deliver what the stream holds past the last offset delivered here."""
        last = self.sequencer.last(topic)
        config = self.config_for(topic)
        if last is None or config is None:
            return
        try:
            with trio.fail_after(2.0):
                epoch, top, _ = await self.store.since(topic, last[1], config, 0)
        except (Exception, trio.TooSlowError) as exc:
            self._warn(("fill", topic), logging.WARNING,
                       "cannot catch up on %s from its history (%s)", topic, exc)
            return
        if epoch == last[0] and top > last[1]:
            await self._fill(topic, epoch, last[1], top + 1)
            now = self.sequencer.last(topic)
            if now is not None and now[0] == epoch and now[1] < top:
                self.sequencer.delivered(topic, epoch, top)  # the rest is past retention

    def _relinked(self) -> None:
        """Back on Redis after a gap: what other nodes published meanwhile is repaired when
        the next message of a topic arrives; topics with local subscribers are checked now."""
        pubsub = self._pubsub
        if pubsub is None or not self._shared:
            return
        for topic in list(self.sequencer._last):
            if pubsub.subscriber_count(topic):
                self._enqueue_catch_up(topic)

    def _enqueue_catch_up(self, topic: str) -> None:
        last = self.sequencer.last(topic)
        if last is not None:
            # A marker the dispatcher turns into a fill up to the stream's top.
            self._queue.append((topic, last[0], -1, "", None, None))
            self._wakeup.set()

    # -- recovering joins ------------------------------------------------------------------------

    async def recover(self, topic: str, config: History, wanted: Any) -> RecoveryPlan:
        """Read what a client that last saw ``wanted`` missed on ``topic`` (bounded by the
        history's size)."""
        last_n = _last_n(wanted)
        parsed = parse_position(wanted) if wanted is not None and last_n is None else None
        try:
            if wanted is None or parsed is not None:
                # A first join needs only where the topic stands, not its entries.
                epoch, top, entries = await self._read(
                    topic, config, parsed[1] if parsed is not None else None)
            else:
                with trio.fail_after(_READ_TIMEOUT):
                    epoch, top, entries = await self.store.since(topic, 0, config, config.size)
        except (Exception, trio.TooSlowError) as exc:
            self.recovery_failures += 1
            self._warn(("recover", topic), logging.WARNING,
                       "cannot read the history of %s (%s): recovery refused", topic, exc)
            return RecoveryPlan(False, "", 0, reason="history unavailable")
        self._start(topic, epoch, top)
        if wanted is None:
            return RecoveryPlan(False, epoch, top)  # a first join: here is where to start
        if last_n is not None:
            # A first join that wants the recent past (e.g. a chat's last messages).
            want = min(last_n, config.size)
            if want and top and (not entries or entries[-1].offset < top):
                # That read began at the oldest entry kept, and Redis trims streams only
                # approximately (it may keep more than size): read the newest ones.
                try:
                    with trio.fail_after(2.0):
                        again, _, newest = await self.store.since(
                            topic, max(0, top - want), config, want)
                    entries = newest if again == epoch else []
                except (Exception, trio.TooSlowError):
                    entries = []
            replay = [e for e in entries if e.offset <= top][-want:] if want else []
            return RecoveryPlan(False, epoch, top, replay)
        plan = plan_recovery(parsed, epoch, top, entries)
        if plan.recovered:
            self.recoveries += 1
        else:
            self.recovery_failures += 1
        return plan

    async def _read(self, topic: str, config: History,
                    offset: int | None) -> tuple[str, int, list[Entry]]:
        """``store.since(topic, offset)`` for a join (``offset`` None: where the topic stands,
        no entries). With a shared store, the joins of a topic waiting at the same time share
        one read, which starts after each of them subscribed (so it misses nothing a join
        needs): when a node's clients all come back at once (their node died), a topic's
        thousands of recovering joins cost a read or two instead of one each."""
        nursery = self._nursery
        if not self._shared or nursery is None:
            with trio.fail_after(_READ_TIMEOUT):
                return await self.store.since(topic, offset or 0, config,
                                              0 if offset is None else config.size)
        read = self._next_reads.get(topic)
        if read is None:
            read = self._next_reads[topic] = _SharedRead()
            nursery.start_soon(self._shared_read, topic, config, read)
        if offset is not None:
            read.offsets.append(offset)
        with trio.fail_after(2 * _READ_TIMEOUT + 1):  # this read and the one before it
            await read.done.wait()
        if read.result is None:
            raise ConnectionError(read.error or "the history read did not complete")
        epoch, top, entries = read.result
        if offset is None:
            return epoch, top, []
        if top > offset and (not entries or entries[-1].offset < top):
            # The shared read stopped short of what this join needs (it began further back
            # and hit its limit, or the stream holds less): a read of its own decides.
            self.shared_read_misses += 1
            with trio.fail_after(_READ_TIMEOUT):
                return await self.store.since(topic, offset, config, config.size)
        return epoch, top, [e for e in entries if e.offset > offset]

    async def _shared_read(self, topic: str, config: History, read: _SharedRead) -> None:
        try:
            while (previous := self._reads_running.get(topic)) is not None:
                await previous.wait()
            # From here on, joins of this topic wait for the next read: this one may have
            # begun before they subscribed.
            del self._next_reads[topic]
            self._reads_running[topic] = read.done
            self.shared_reads += 1
            offsets = read.offsets
            start = min(offsets) if offsets else 0
            limit = min(config.size + max(offsets) - start, 4 * config.size) if offsets else 0
            with trio.fail_after(_READ_TIMEOUT):
                read.result = await self.store.since(topic, start, config, limit)
        except (Exception, trio.TooSlowError) as exc:
            read.error = f"{type(exc).__name__}: {exc}"
        finally:
            if self._next_reads.get(topic) is read:
                del self._next_reads[topic]
            if self._reads_running.get(topic) is read.done:
                del self._reads_running[topic]
            read.done.set()

    def replay(self, topic: str, plan: RecoveryPlan) -> list[tuple[str, Any, FrameCache]]:
        """What a recovering join sends: ``(event, positioned payload, frame cache)`` per
        replayed entry. The clients of a crowd recovering together share each message's
        payload and frames, so it is encoded once per serializer, not once per client."""
        replays = self._replays
        epoch = plan.epoch
        out: list[tuple[str, Any, FrameCache]] = []
        for entry in plan.replay:
            key = (topic, epoch, entry.offset)
            item = replays.get(key)
            if item is None:
                if len(replays) >= _REPLAY_CACHE:
                    del replays[next(iter(replays))]
                positioned = {**entry.payload, POSITION_KEY: position(epoch, entry.offset)}
                item = replays[key] = (entry.event, positioned, {})
            out.append(item)
        return out

    def stats(self) -> dict[str, int]:
        return {"stored": self.stored, "delivered": self.delivered,
                "duplicates": self.duplicates, "gaps_filled": self.gaps_filled,
                "lost": self.lost, "recoveries": self.recoveries,
                "recovery_failures": self.recovery_failures, "unstored": self.unstored,
                "shared_reads": self.shared_reads, "shared_read_misses": self.shared_read_misses}

