"""The Redis adapter: the nodes of a cluster share broadcasts through Redis pub/sub.

Each node subscribes to one broadcast channel, ``{namespace}:bc``, and to its own direct channel,
``{namespace}:node:{name}``. Broadcasts are queued by :meth:`RedisAdapter.publish` (never a Redis
round trip on the broadcast path) and a publisher task coalesces everything queued into one
``PUBLISH`` per run of same-channel messages, so throughput grows with load and the order of one
node's messages is preserved.

Envelope (msgpack, bytes kept as ``bin``, strings as ``str``)::

    [version, sender, incarnation, mode, target, [[topic, event, payload], ...]]

``version`` is :data:`ENVELOPE_VERSION` and is always the first element of an array, so later
formats stay recognisable. ``mode`` is ``"except"`` (every node but ``target``, which is the
sender: broadcasts) or ``"only"`` (``target`` alone: direct messages).

Delivery is at most once: messages published while a node is away from Redis are dropped (and
counted), never queued for later. A node name is unique in the cluster: ``{namespace}:alive:{name}``
holds the incarnation of its live owner with a short TTL that the owner refreshes (see
:class:`RedisAdapter`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import random
import secrets
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import coredis
import coredis.exceptions
import msgpack  # type: ignore[import-untyped, unused-ignore]
import trio
from coredis.retry import NoRetryPolicy

from channels.logutil import Throttled
from channels.pubsub import Adapter, PubSub, ReconnectHook

log = logging.getLogger("channels.redis")

ENVELOPE_VERSION = 1
MODE_EXCEPT = "except"
MODE_ONLY = "only"


# Compare-and-refresh of the liveness key, atomic so two processes never both own a name.
# Returns {1, own} refreshed, {2, own} created (absent or lapsed), {0, other, pttl_ms} held.
_TOUCH = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, cur}
elseif not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, ARGV[1]}
end
return {0, cur, redis.call('PTTL', KEYS[1])}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_REFRESHED, _CREATED, _HELD = 1, 2, 0


class NodeNameInUse(RuntimeError):
    """Another live node already uses this node name."""


class MalformedEnvelope(ValueError):
    """An envelope that cannot be decoded (not msgpack, or not the expected shape)."""


class UnknownEnvelopeVersion(ValueError):
    """An envelope in a format this node does not understand (a newer or older node)."""

    def __init__(self, version: object) -> None:
        super().__init__(f"unknown envelope format version {version!r}")
        self.version = version


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded envelope. ``messages`` is empty when decoding stopped at the header."""

    sender: str
    incarnation: str
    mode: str
    target: str
    messages: list[tuple[str, str, Any]]


# -- envelope codec (pure functions) ---------------------------------------------------------

def pack_message(topic: str, event: str, payload: Any) -> bytes:
    """Encode one message; ``TypeError``/``ValueError`` if the payload is not msgpack-able."""
    return cast(bytes, msgpack.packb([topic, event, payload], use_bin_type=True))


def build_envelope(sender: str, incarnation: str, mode: str, target: str,
                   messages: list[bytes]) -> bytes:
    """Join messages from :func:`pack_message` into one envelope without re-encoding them."""
    packer = msgpack.Packer(use_bin_type=True)
    head = [packer.pack_array_header(6)]
    head.extend(packer.pack(v) for v in (ENVELOPE_VERSION, sender, incarnation, mode, target))
    head.append(packer.pack_array_header(len(messages)))
    return b"".join((*head, *messages))


def decode_envelope(data: bytes, *, skip_sender: str | None = None) -> Envelope:
    """Decode an envelope.

    If the envelope is a broadcast from ``skip_sender``, or is addressed only to a node other
    than ``skip_sender``, the messages are not decoded (``messages`` is empty): a node does not
    pay for decoding its own broadcasts.
    """
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    try:
        size = unpacker.read_array_header()
        version = unpacker.unpack() if size else None
        if version != ENVELOPE_VERSION:
            raise UnknownEnvelopeVersion(version)
        if size != 6:
            raise MalformedEnvelope(f"expected 6 fields, got {size}")
        sender, incarnation, mode, target = (unpacker.unpack() for _ in range(4))
        if not (isinstance(sender, str) and isinstance(incarnation, str)
                and isinstance(target, str) and mode in (MODE_EXCEPT, MODE_ONLY)):
            raise MalformedEnvelope("bad header")
        if skip_sender is not None and (mode == MODE_EXCEPT) == (target == skip_sender):
            return Envelope(sender, incarnation, mode, target, [])
        raw = unpacker.unpack()
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        if isinstance(exc, (UnknownEnvelopeVersion, MalformedEnvelope)):
            raise
        raise MalformedEnvelope(str(exc) or type(exc).__name__) from exc
    if not isinstance(raw, list):
        raise MalformedEnvelope("messages is not a list")
    messages: list[tuple[str, str, Any]] = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3
                and isinstance(item[0], str) and isinstance(item[1], str)):
            raise MalformedEnvelope("bad message")
        messages.append((item[0], item[1], item[2]))
    return Envelope(sender, incarnation, mode, target, messages)


# -- the adapter -----------------------------------------------------------------------------

class RedisAdapter(Adapter):
    """Carries broadcasts and direct messages between nodes through Redis pub/sub.

    ``node_name`` defaults to ``"{hostname}-{pid}"``; ``incarnation`` is random per adapter
    (so per process), and tells a restarted node apart from its previous life.

    Node-name uniqueness: the key ``{namespace}:alive:{name}`` holds the owner's incarnation
    with a TTL of ``liveness_ttl`` seconds, refreshed every ``liveness_interval`` seconds. On
    (re)connect, if another incarnation holds it, the node waits out the key's remaining TTL:
    if the owner refreshed it meanwhile, :meth:`run` raises :class:`NodeNameInUse`; if it
    lapsed (a crashed node restarted under the same name), the node takes the name over. A
    stopping node deletes its key, so a graceful restart does not wait.

    Faults: an unreachable Redis is retried with exponential backoff (``backoff_min`` doubling
    to ``backoff_max``); a lost connection (killed client, Redis restart, failed keepalive) tears
    the session down and reconnects, resubscribes and re-claims the name. While away,
    :attr:`connected` is false and broadcasts to other nodes are dropped and counted; local
    delivery never depends on Redis. Only :class:`NodeNameInUse` escapes :meth:`run`.

    ``on_reconnect`` holds callables (sync or async, no arguments) run after every resubscribe
    but the first: other nodes' messages sent during the gap are lost, so e.g. the presence
    tracker can request anti-entropy there. They run in their own tasks; errors are logged.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379",
        node_name: str | None = None,
        *,
        namespace: str = "trio_channels",
        max_queue: int = 10_000,
        max_envelope_bytes: int = 512 * 1024,
        liveness_ttl: float = 8.0,
        liveness_interval: float = 2.0,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 5.0,
        keepalive_interval: float = 5.0,
    ) -> None:
        if node_name is None:
            node_name = f"{socket.gethostname()}-{os.getpid()}"
        if not node_name:
            raise ValueError("node_name must not be empty")
        if not 0 < liveness_interval < liveness_ttl:
            raise ValueError("need 0 < liveness_interval < liveness_ttl")
        check_url(url)
        self.url = url
        self.node_name = node_name
        self.namespace = namespace
        self.incarnation = secrets.token_hex(8)
        self.max_queue = max_queue
        self.max_envelope_bytes = max_envelope_bytes
        self.liveness_ttl = liveness_ttl
        self.liveness_interval = liveness_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.keepalive_interval = keepalive_interval
        self.on_reconnect = []

        self.broadcast_channel = f"{namespace}:bc"
        self.direct_channel = self.channel_for(node_name)
        self.alive_key = f"{namespace}:alive:{node_name}"

        # Counters, in messages unless named otherwise.
        self.published = 0
        self.publish_calls = 0  # PUBLISH commands (envelopes) sent
        self.received = 0
        self.dropped = 0
        self.malformed = 0  # envelopes skipped: undecodable or unknown version
        self.reconnects = 0

        self._running = False
        self._connected = False
        self._session_up = False  # the current session got subscribed
        self._claimed = False
        # (channel, target or None for a broadcast, packed message)
        self._queue: deque[tuple[str, str | None, bytes]] = deque()
        self._publishing = False
        self._flushed: trio.Event | None = None
        self._wakeup = trio.lowlevel.ParkingLot()
        self._packer = msgpack.Packer(use_bin_type=True)
        self._seen_versions: set[object] = set()
        throttled = Throttled(log, 5.0)
        self._warn_drop = functools.partial(throttled, "drop", logging.WARNING)
        self._warn_malformed = functools.partial(throttled, "malformed", logging.WARNING)
        self._warn_deliver = functools.partial(throttled, "deliver", logging.ERROR)
        self._safe_url = _redact(url)

    # -- introspection -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while subscribed and holding the node name."""
        return self._connected

    def stats(self) -> dict[str, int | bool]:
        return {
            "connected": self._connected,
            "queued": len(self._queue),
            "published": self.published,
            "publish_calls": self.publish_calls,
            "received": self.received,
            "dropped": self.dropped,
            "malformed": self.malformed,
            "reconnects": self.reconnects,
        }

    def channel_for(self, node: str) -> str:
        """The Redis channel of ``node``'s direct messages."""
        return f"{self.namespace}:node:{node}"

    # -- Adapter API ---------------------------------------------------------------------------

    async def publish(self, topic: str, event: str, payload: Any) -> None:
        """Queue a broadcast for every other node; drops it (counted) if Redis is away or the
        queue is full. Never waits for Redis (nor checkpoints: it is on the broadcast path)."""
        self._enqueue(self.broadcast_channel, None, topic, event, payload)

    async def direct(self, node: str, topic: str, event: str, payload: Any) -> None:
        """Queue a message for the subscribers of ``topic`` on ``node`` only."""
        self._enqueue(self.channel_for(node), node, topic, event, payload)

    async def run(self, pubsub: PubSub, *, task_status: trio.TaskStatus[None]) -> None:
        """Connect, claim the node name, subscribe, then serve and reconnect until cancelled.

        ``task_status.started()`` is called once the first session is subscribed, or when the
        first attempt fails: the node then serves its local clients while this keeps retrying
        (``connected`` says which). A duplicate node name raises :class:`NodeNameInUse`.
        """
        if self._running:
            raise RuntimeError(f"RedisAdapter {self.node_name!r} is already running")
        self._running = True
        started = False
        delay = self.backoff_min
        try:
            while True:
                try:
                    await self._session(pubsub, None if started else task_status)
                    reason = "subscription ended"
                except NodeNameInUse:
                    raise
                except Exception as exc:
                    conflict = _find(exc, NodeNameInUse)
                    if conflict is not None:
                        raise conflict from None
                    reason = _describe(exc)
                    if not _is_transient(exc):
                        log.error("redis session failed unexpectedly", exc_info=exc)
                except BaseException as exc:
                    # Stopping (Cancelled, KeyboardInterrupt), possibly grouped with errors of
                    # the connection being torn down: only the stop matters.
                    if isinstance(exc, BaseExceptionGroup):
                        stop, _ = exc.split(
                            lambda e: not isinstance(e, (Exception, BaseExceptionGroup)))
                        if stop is not None:
                            raise stop from None
                    raise
                finally:
                    self._set_disconnected()
                if self._session_up:
                    self._session_up = False
                    started = True
                    delay = self.backoff_min
                    log.warning("redis connection lost at %s (%s): reconnecting in %gs; "
                                "broadcasts to other nodes are dropped meanwhile",
                                self._safe_url, reason, delay)
                else:
                    log.warning("redis unreachable at %s (%s), retrying in %gs%s",
                                self._safe_url, reason, delay,
                                "" if started else "; serving local clients meanwhile")
                    if not started:
                        started = True
                        task_status.started()
                # Jitter spreads a cluster's reconnects after a Redis restart.
                await trio.sleep(delay * random.uniform(0.9, 1.0))
                delay = min(delay * 2, self.backoff_max)
        finally:
            self._running = False
            self._set_disconnected()
            if self._claimed:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await self._release()

    async def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until the queue is published: used at a clean stop so
        the last messages (a tracker's final delta) reach the other nodes."""
        if not self._connected or not (self._queue or self._publishing):
            return
        self._flushed = trio.Event()
        try:
            with trio.move_on_after(timeout):
                await self._flushed.wait()
        finally:
            self._flushed = None

    # -- internals -----------------------------------------------------------------------------

    def _client(self) -> coredis.Redis[bytes]:
        return coredis.Redis.from_url(
            self.url,
            decode_responses=False,
            # At most once: a failed PUBLISH is never retried (it may have reached Redis);
            # reconnecting is this adapter's job.
            retry_policy=NoRetryPolicy(),
            stream_timeout=self.command_timeout,
            connect_timeout=self.connect_timeout,
            client_name="trio-channels:" + "_".join(self.node_name.split()),
        )

    async def _session(self, pubsub: PubSub,
                       task_status: trio.TaskStatus[None] | None) -> None:
        """One connection's life: claim the name, subscribe, serve; raises when it ends."""
        async with self._client() as client:
            await self._claim(client)
            async with client.pubsub(
                channels=[self.broadcast_channel, self.direct_channel],
                ignore_subscribe_messages=True,
                # Without this, coredis reconnects inside and its iterator can end silently
                # after a Redis restart; we reconnect ourselves and notice every loss.
                retry_policy=NoRetryPolicy(),
                subscription_timeout=self.command_timeout,
                max_idle_seconds=self.keepalive_interval,
            ) as subscription:
                self._connected = True
                self._session_up = True
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._publisher, client)
                    nursery.start_soon(self._liveness, client)
                    if task_status is not None:
                        log.info("redis connected at %s: node %r (incarnation %s) on %s and %s",
                                 self._safe_url, self.node_name, self.incarnation,
                                 self.broadcast_channel, self.direct_channel)
                        task_status.started()
                    else:
                        self.reconnects += 1
                        log.info("redis reconnected at %s: node %r resubscribed",
                                 self._safe_url, self.node_name)
                        for hook in list(self.on_reconnect):
                            nursery.start_soon(self._run_hook, hook)
                    await self._subscriber(subscription, pubsub)

    async def _subscriber(self, subscription: coredis.patterns.pubsub.PubSub[bytes],
                          pubsub: PubSub) -> None:
        while True:
            message = await subscription.get_message()
            if message is None:
                # Filtered (un)subscribe acknowledgements. An unsubscribe we did not ask for
                # must not leave a quiet, deaf loop behind.
                if not subscription.subscribed:
                    raise coredis.exceptions.ConnectionError("unsubscribed by the server")
                continue
            if message["type"] == "message":
                data = message["data"]
                if isinstance(data, bytes):
                    await self._receive(pubsub, data)

    async def _receive(self, pubsub: PubSub, data: bytes) -> None:
        try:
            envelope = decode_envelope(data, skip_sender=self.node_name)
        except UnknownEnvelopeVersion as exc:
            self.malformed += 1
            if exc.version not in self._seen_versions and len(self._seen_versions) < 100:
                self._seen_versions.add(exc.version)
                log.warning("skipping envelopes with unknown format version %r (this node "
                            "speaks %d): is a node of another version in the cluster?",
                            exc.version, ENVELOPE_VERSION)
            return
        except MalformedEnvelope as exc:
            self.malformed += 1
            self._warn_malformed("skipping malformed envelope (%d bytes): %s", len(data), exc)
            return
        for topic, event, payload in envelope.messages:
            self.received += 1
            try:
                await pubsub.local_broadcast(topic, event, payload)
            except Exception as exc:
                self._warn_deliver("local delivery of %r %r from node %r failed", topic, event,
                                   envelope.sender, exc_info=exc)

    def _enqueue(self, channel: str, target: str | None, topic: str, event: str,
                 payload: Any) -> None:
        if not self._connected:
            self._drop(1, "redis is unavailable")
            return
        if len(self._queue) >= self.max_queue:
            self._drop(1, f"the publish queue is full ({self.max_queue} messages)")
            return
        try:
            # Same bytes as pack_message(), with a reused Packer: this is the broadcast path.
            item: bytes = self._packer.pack([topic, event, payload])
        except (TypeError, ValueError, OverflowError) as exc:
            self.dropped += 1
            self._warn_drop("cannot send %r %r to other nodes: payload is not msgpack-able (%s)",
                            topic, event, exc)
            return
        self._queue.append((channel, target, item))
        self._wakeup.unpark()

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._warn_drop("dropping %d broadcast(s) to other nodes: %s (%d dropped in total)",
                        count, why, self.dropped)

    def _set_disconnected(self) -> None:
        self._connected = False
        if self._queue:
            count = len(self._queue)
            self._queue.clear()
            self._drop(count, "the redis connection was lost before they were sent")

    async def _publisher(self, client: coredis.Redis[bytes]) -> None:
        queue = self._queue
        while True:
            while not queue:
                await self._wakeup.park()
            # Coalesce the run of messages queued for the same channel into one envelope;
            # one publisher and FIFO runs keep the order of this node's messages.
            channel, target, first = queue.popleft()
            items = [first]
            size = len(first)
            while queue and queue[0][0] == channel and size + len(queue[0][2]) <= \
                    self.max_envelope_bytes:
                item = queue.popleft()[2]
                items.append(item)
                size += len(item)
            if target is None:
                data = build_envelope(self.node_name, self.incarnation, MODE_EXCEPT,
                                      self.node_name, items)
            else:
                data = build_envelope(self.node_name, self.incarnation, MODE_ONLY, target, items)
            self._publishing = True
            try:
                await client.publish(channel, data)
            except BaseException:
                self._drop(len(items), "the redis connection failed while publishing them")
                raise
            finally:
                self._publishing = False
            self.publish_calls += 1
            self.published += len(items)
            if not queue and self._flushed is not None:
                self._flushed.set()

    async def _touch(self, client: coredis.Redis[bytes]) -> tuple[int, str, float]:
        """Refresh or create our liveness key: (status, holder incarnation, holder TTL in s)."""
        reply = await client.eval(_TOUCH, keys=[self.alive_key],
                                  args=[self.incarnation, int(self.liveness_ttl * 1000)])
        if not isinstance(reply, list) or not reply:
            raise coredis.exceptions.RedisError(f"unexpected liveness reply {reply!r}")
        status = int(reply[0])
        holder = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        pttl = int(reply[2]) if len(reply) > 2 else 0
        return status, holder, pttl / 1000

    async def _claim(self, client: coredis.Redis[bytes]) -> None:
        status, holder, ttl = await self._touch(client)
        if status == _HELD:
            # A live owner refreshes before its TTL runs out; a crashed one cannot.
            wait = (ttl if ttl > 0 else self.liveness_ttl) + min(0.5, self.liveness_ttl / 10)
            log.warning("node name %r is held by incarnation %s at %s: waiting %.1fs to see "
                        "whether that node is alive", self.node_name, holder, self._safe_url,
                        wait)
            await trio.sleep(wait)
            status, holder, _ = await self._touch(client)
            if status == _HELD:
                raise NodeNameInUse(
                    f"node name {self.node_name!r} is in use by a live node (incarnation "
                    f"{holder}, key {self.alive_key!r} at {self._safe_url}): give every node a "
                    f"unique name")
            log.warning("took over node name %r: its previous owner stopped refreshing it",
                        self.node_name)
        self._claimed = True

    async def _liveness(self, client: coredis.Redis[bytes]) -> None:
        while True:
            await trio.sleep(self.liveness_interval)
            status, holder, _ = await self._touch(client)
            if status == _HELD:
                raise NodeNameInUse(
                    f"node name {self.node_name!r} was taken over by incarnation {holder} "
                    f"while this node ({self.incarnation}) was alive: two nodes share a name")
            if status == _CREATED:
                log.warning("liveness key %r had lapsed (was this process stalled for over "
                            "%.1fs?); re-created it", self.alive_key, self.liveness_ttl)

    async def _release(self) -> None:
        try:
            async with self._client() as client:
                await client.eval(_RELEASE, keys=[self.alive_key], args=[self.incarnation])
            self._claimed = False
        except Exception as exc:
            log.info("could not release node name %r (%s); it lapses in %.1fs",
                     self.node_name, _describe(exc), self.liveness_ttl)

    async def _run_hook(self, hook: ReconnectHook) -> None:
        try:
            result = hook()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_reconnect hook %r failed", hook)


def check_url(url: str) -> None:
    """Raise ``ValueError`` (one clear line) unless ``url`` is a Redis URL coredis accepts."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        try:
            parts.port  # noqa: B018 - parsing it validates it
        except ValueError:
            raise ValueError(f"{_redact(url)!r}: the port is not a number") from None
        if not parts.hostname:
            raise ValueError(f"{_redact(url)!r} has no host (expected redis://HOST:PORT[/DB])")
    elif parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{_redact(url)!r} has no socket path (expected unix:///PATH)")
    else:
        raise ValueError(f"{_redact(url)!r} is not a Redis URL: expected redis://HOST:PORT[/DB]"
                         f", rediss://... or unix:///PATH")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _find(exc: BaseException, kind: type[NodeNameInUse]) -> NodeNameInUse | None:
    for leaf in _leaves(exc):
        if isinstance(leaf, kind):
            return leaf
    return None


def _is_transient(exc: BaseException) -> bool:
    return all(isinstance(leaf, (coredis.exceptions.RedisError, TimeoutError, OSError))
               for leaf in _leaves(exc))


def _describe(exc: BaseException) -> str:
    parts = []
    for leaf in _leaves(exc):
        text = str(leaf) or type(leaf).__name__
        if leaf.__cause__ is not None and str(leaf.__cause__):
            text += f": {leaf.__cause__}"
        parts.append(text)
    return "; ".join(dict.fromkeys(parts))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
