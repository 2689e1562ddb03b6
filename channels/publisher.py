"""Publish to connected clients from outside the nodes: Django or Flask views, Celery workers,
scripts (:class:`Publisher`, synchronous and thread-safe) and asyncio apps
(:class:`AsyncPublisher`). No trio loop and no Redis client library are needed: each speaks
just enough of the Redis protocol (RESP) over one plain socket to ``PUBLISH`` the runtime's
envelope (:mod:`channels.redis`) to the cluster's Redis::

    from channels.publisher import Publisher

    publisher = Publisher("redis://127.0.0.1:6379")        # connects on first use
    publisher.broadcast("room:lobby", "new_msg", {"body": "hi"})
    publisher.disconnect("user_socket:42")                 # closes that user's sockets

**Two routes.** By default (``relay=False``) a broadcast goes straight to every node, as a
broadcast between nodes does: each node delivers it to its local subscribers. It does not go
through :meth:`Endpoint.broadcast`, so on a topic whose channel keeps **history** it is
delivered without a position and not stored (a client recovering later will not get it).
With ``relay=True`` it goes to one live node only (found from the nodes' liveness keys in
Redis), which broadcasts it with :meth:`Endpoint.broadcast`: positioned, stored once,
delivered everywhere, exactly like a broadcast made in the app. Use it for topics with history.
The HTTP API (``POST /api/broadcast``, see docs/publishing.md) is the other way to the same.

**Failures.** A publish either returns, or raises :class:`PublishError`. A connection that
Redis closed (a Redis restart, an idle timeout) is replaced before sending, and a command that
could not be sent completely is sent again on a new connection (Redis never ran it). A
connection that fails after the command was sent raises (Redis may have run it: retrying could
deliver twice), and the next publish reconnects. Delivery is at most once, as for every
broadcast between nodes: nodes away from Redis at that moment miss it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import socket
import ssl
import threading
import weakref
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from channels.api import INTERNAL_PREFIX, RELAY_TOPIC
from channels.redis import MODE_EXCEPT, MODE_ONLY, build_envelope, check_url, pack_message

__all__ = ["AsyncPublisher", "NoNodeAvailable", "PublishError", "Publisher"]

Message = tuple[str, str, Any]


class PublishError(Exception):
    """Publishing failed: Redis is unreachable, refused the command, or the connection failed
    while the command was on its way (then it may have been published)."""


class NoNodeAvailable(PublishError):
    """``relay=True``: no live node is subscribed to Redis right now; nothing was published."""


class _ReplyError(Exception):
    """An error reply from Redis (``-ERR ...``)."""


# -- the Redis protocol, as much as needed ----------------------------------------------------

def _encode_command(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _parse_reply() -> Generator[int, bytes, Any]:
    """A RESP2 reply parser driven by its reader: it yields ``-1`` for a line, ``n`` for ``n``
    bytes, and is sent what it asked for. Error replies come back as :class:`_ReplyError`."""
    line = yield -1
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by Redis")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        return _ReplyError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = yield size + 2
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        items = []
        for _ in range(count):
            items.append((yield from _parse_reply()))
        return items
    raise ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    path: str | None  # a unix socket
    username: str | None
    password: str | None
    db: int
    tls: bool


def _parse_url(url: str) -> _Target:
    check_url(url)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    db_text = query.get("db", [""])[0]
    if parts.scheme != "unix" and parts.path.strip("/"):
        db_text = parts.path.strip("/")
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise ValueError(f"the database in the Redis URL is not a number: {db_text!r}") from None
    return _Target(
        host=parts.hostname or "",
        port=parts.port or 6379,
        path=parts.path if parts.scheme == "unix" else None,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        db=db,
        tls=parts.scheme == "rediss",
    )


def _setup_commands(target: _Target, name: str) -> list[tuple[str, ...]]:
    commands: list[tuple[str, ...]] = []
    if target.password is not None:
        commands.append(("AUTH", target.username, target.password) if target.username
                        else ("AUTH", target.password))
    if target.db:
        commands.append(("SELECT", str(target.db)))
    commands.append(("CLIENT", "SETNAME", name))
    return commands


# -- what both publishers share -----------------------------------------------------------------

class _Base:
    def __init__(self, url: str, *, namespace: str, relay: bool, timeout: float,
                 connect_timeout: float, ssl_context: ssl.SSLContext | None) -> None:
        self.url = url
        self._target = _parse_url(url)
        self.namespace = namespace
        self.relay = relay
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._ssl = ssl_context if ssl_context is not None or not self._target.tls \
            else ssl.create_default_context()
        # The envelope's sender: a name no node has, so every node delivers (MODE_EXCEPT).
        self.name = f"publisher:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.incarnation = secrets.token_hex(8)
        self.broadcast_channel = f"{namespace}:bc"
        self._alive_prefix = f"{namespace}:alive:"
        self._node: str | None = None  # relay: the node used last (kept while it answers)
        # Counters.
        self.published = 0  # messages
        self.publish_calls = 0  # PUBLISH commands
        self.connects = 0
        self.errors = 0

    def stats(self) -> dict[str, Any]:
        return {"published": self.published, "publish_calls": self.publish_calls,
                "connects": self.connects, "errors": self.errors, "relay_node": self._node}

    def _packed(self, messages: Iterable[Message]) -> list[Message]:
        checked = []
        for topic, event, payload in messages:
            if not isinstance(topic, str) or not topic:
                raise ValueError("topic must be a non-empty string")
            if topic.startswith(INTERNAL_PREFIX):
                raise ValueError(f"topics starting with {INTERNAL_PREFIX!r} are the runtime's "
                                 f"own (history, rooms, presence)")
            if not isinstance(event, str) or not event:
                raise ValueError("event must be a non-empty string")
            if not isinstance(payload, dict | bytes):
                raise TypeError(f"payload must be a dict (or bytes, a binary broadcast), not "
                                f"{type(payload).__name__}")
            checked.append((topic, event, payload))
        if not checked:
            raise ValueError("nothing to publish")
        return checked

    def _direct_envelope(self, messages: list[Message]) -> bytes:
        return build_envelope(self.name, self.incarnation, MODE_EXCEPT, self.name,
                              [_pack(topic, event, payload) for topic, event, payload in messages])

    def _relay_envelope(self, node: str, messages: list[Message]) -> bytes:
        return build_envelope(self.name, self.incarnation, MODE_ONLY, node,
                              [_pack(RELAY_TOPIC, "relay", [node, topic, event, payload])
                               for topic, event, payload in messages])

    def _node_channel(self, node: str) -> str:
        return f"{self.namespace}:node:{node}"

    def _node_names(self, keys: list[bytes]) -> list[str]:
        """Node names from a page of ``SCAN`` over the liveness keys."""
        prefix = len(self._alive_prefix)
        return [key.decode("utf-8", "replace")[prefix:] for key in keys]

    def _choose_node(self, nodes: list[str], tried: set[str]) -> str:
        """A random live node not tried yet for this message."""
        candidates = [n for n in nodes if n and n not in tried]
        if not candidates:
            raise NoNodeAvailable(
                f"no live trio-channels node in namespace {self.namespace!r} answered "
                f"({len(tried)} tried): nothing was published")
        return secrets.choice(candidates)

    def _scan_pattern(self) -> bytes:
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self._alive_prefix)
        return (escaped + "*").encode()

    def _repr(self) -> str:
        target = self._target
        where = target.path or f"{target.host}:{target.port}"
        return f"{type(self).__name__}({where!r}, namespace={self.namespace!r}, " \
               f"relay={self.relay})"


def _pack(topic: str, event: str, payload: Any) -> bytes:
    try:
        return pack_message(topic, event, payload)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"the payload of {event!r} on {topic!r} cannot be encoded "
                        f"(msgpack): {exc}") from None


def _check(reply: Any, what: str) -> Any:
    if isinstance(reply, _ReplyError):
        raise PublishError(f"Redis refused {what}: {reply}")
    return reply


# -- synchronous ----------------------------------------------------------------------------------

_sync_publishers: weakref.WeakSet[Publisher] = weakref.WeakSet()


class _SyncConnection:
    def __init__(self, target: _Target, ssl_context: ssl.SSLContext | None,
                 connect_timeout: float, timeout: float) -> None:
        if target.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(connect_timeout)
            try:
                sock.connect(target.path)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((target.host, target.port), connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                try:
                    sock = ssl_context.wrap_socket(sock, server_hostname=target.host)
                except OSError:
                    sock.close()
                    raise
        sock.settimeout(timeout)
        self.sock = sock
        self.file = sock.makefile("rb")
        self.pid = os.getpid()

    def usable(self) -> bool:
        """Open, in this process, and with nothing to read: unread bytes on an idle
        connection mean Redis closed it (EOF) or something is out of step."""
        if self.pid != os.getpid():
            return False
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return False
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN | select.POLLPRI)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_reply(self) -> Any:
        parser = _parse_reply()
        want = next(parser)
        try:
            while True:
                data = self.file.readline(1 << 16) if want < 0 else self.file.read(want)
                if want >= 0 and len(data) < want:
                    raise ConnectionError("connection closed by Redis")
                want = parser.send(data)
        except StopIteration as done:
            return done.value

    def close(self) -> None:
        for closable in (self.file, self.sock):
            try:
                closable.close()
            except OSError:
                pass


class Publisher(_Base):
    """Publishes broadcasts into a trio-channels cluster through its Redis, from synchronous
    code. Thread-safe (one connection, used by one thread at a time) and fork-safe (a child
    process, e.g. a Celery or gunicorn worker, opens its own connection).

    ``url`` is the cluster's Redis (``redis://[[user]:password@]host:port[/db]``,
    ``rediss://`` for TLS, ``unix:///path?db=N``), ``namespace`` the nodes' (the default
    matches theirs). ``relay=True`` sends through one live node (history positions apply; see
    the module docstring). ``timeout`` bounds each command, ``connect_timeout`` each connect.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379", *, namespace: str = "trio_channels",
                 relay: bool = False, timeout: float = 5.0, connect_timeout: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(url, namespace=namespace, relay=relay, timeout=timeout,
                         connect_timeout=connect_timeout, ssl_context=ssl_context)
        self._lock = threading.Lock()
        self._conn: _SyncConnection | None = None
        _sync_publishers.add(self)

    def __repr__(self) -> str:
        return self._repr()

    # -- API ----------------------------------------------------------------------------------

    def broadcast(self, topic: str, event: str, payload: dict[str, Any] | bytes) -> int:
        """Send ``event`` with ``payload`` to every subscriber of ``topic`` on every node.
        Returns how many nodes got it (0: no node was subscribed to Redis).
        Raises :class:`PublishError` (see the module docstring), ``TypeError`` for a payload
        that cannot be encoded (nothing is sent)."""
        return self.broadcast_many([(topic, event, payload)])

    def broadcast_many(self, messages: Iterable[tuple[str, str, dict[str, Any] | bytes]]) -> int:
        """Several broadcasts in one envelope (one ``PUBLISH``), delivered in this order."""
        checked = self._packed(messages)
        with self._lock:
            try:
                if self.relay:
                    nodes = self._publish_relayed(checked)
                else:
                    nodes = self._call_checked("PUBLISH", self.broadcast_channel,
                                               self._direct_envelope(checked))
            except PublishError:
                self.errors += 1
                raise
            self.publish_calls += 1
            self.published += len(checked)
            return int(nodes)

    def disconnect(self, socket_id: str) -> int:
        """Close every connection whose ``Socket.id()`` is ``socket_id``, on every node."""
        return self.broadcast(socket_id, "disconnect", {})

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _publish_relayed(self, messages: list[Message]) -> int:
        tried: set[str] = set()
        while True:
            node = self._node if self._node is not None and self._node not in tried \
                else self._pick_node(tried)
            tried.add(node)
            received = self._call_checked("PUBLISH", self._node_channel(node),
                                          self._relay_envelope(node, messages))
            if received:
                self._node = node
                return 1
            self._node = None  # alive key, but not subscribed (stopping, or reconnecting)

    def _pick_node(self, tried: set[str]) -> str:
        cursor: bytes = b"0"
        nodes: list[str] = []
        while True:
            reply = self._call_checked("SCAN", cursor, "MATCH", self._scan_pattern(),
                                       "COUNT", 1000)
            cursor, keys = reply[0], reply[1]
            nodes.extend(self._node_names(keys))
            if cursor == b"0":
                break
        return self._choose_node(nodes, tried)

    def _call_checked(self, *args: bytes | str | int) -> Any:
        return _check(self._call(*args), str(args[0]))

    def _call(self, *args: bytes | str | int) -> Any:
        request = _encode_command(*args)
        conn = self._connection()
        try:
            conn.send(request)
        except OSError:
            # Not all of it reached the kernel, so Redis never ran it: once more on a new one.
            self._drop()
            conn = self._connection()
            try:
                conn.send(request)
            except OSError as exc:
                self._drop()
                raise PublishError(f"cannot send to Redis at {self._where()}: {exc}") from exc
        try:
            return conn.read_reply()
        except (OSError, ValueError) as exc:
            self._drop()
            raise PublishError(f"no reply from Redis at {self._where()} ({exc or 'timeout'}): "
                               f"the command may or may not have run") from exc
        except BaseException:  # KeyboardInterrupt mid-reply: the connection is out of step
            self._drop()
            raise

    def _connection(self) -> _SyncConnection:
        conn = self._conn
        if conn is not None and conn.usable():
            return conn
        self._drop()
        try:
            conn = _SyncConnection(self._target, self._ssl, self.connect_timeout, self.timeout)
        except OSError as exc:
            raise PublishError(f"cannot connect to Redis at {self._where()}: {exc}") from exc
        try:
            for command in _setup_commands(self._target, self.name):
                conn.send(_encode_command(*command))
                reply = conn.read_reply()
                if isinstance(reply, _ReplyError) and command[0] != "CLIENT":
                    raise PublishError(f"Redis refused {command[0]}: {reply}")
        except (OSError, ValueError) as exc:
            conn.close()
            raise PublishError(f"cannot set up the Redis connection at {self._where()}: "
                               f"{exc}") from exc
        except PublishError:
            conn.close()
            raise
        self.connects += 1
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _where(self) -> str:
        return self._target.path or f"{self._target.host}:{self._target.port}"

    def _after_fork(self) -> None:
        # The parent's connection and lock are not ours: a lock held by another thread at the
        # fork would never be released here.
        self._lock = threading.Lock()
        self._conn = None


def _reinit_after_fork() -> None:
    for publisher in list(_sync_publishers):
        publisher._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)


# -- asyncio ------------------------------------------------------------------------------------

class AsyncPublisher(_Base):
    """The same as :class:`Publisher` for asyncio code (``await publisher.broadcast(...)``).
    Safe to share between the tasks of one event loop; used from another loop, it opens a new
    connection there."""

    def __init__(self, url: str = "redis://127.0.0.1:6379", *, namespace: str = "trio_channels",
                 relay: bool = False, timeout: float = 5.0, connect_timeout: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(url, namespace=namespace, relay=relay, timeout=timeout,
                         connect_timeout=connect_timeout, ssl_context=ssl_context)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def __repr__(self) -> str:
        return self._repr()

    async def broadcast(self, topic: str, event: str, payload: dict[str, Any] | bytes) -> int:
        """See :meth:`Publisher.broadcast`."""
        return await self.broadcast_many([(topic, event, payload)])

    async def broadcast_many(
            self, messages: Iterable[tuple[str, str, dict[str, Any] | bytes]]) -> int:
        """See :meth:`Publisher.broadcast_many`."""
        checked = self._packed(messages)
        async with self._bound_lock():
            try:
                if self.relay:
                    nodes = await self._publish_relayed(checked)
                else:
                    nodes = await self._call_checked("PUBLISH", self.broadcast_channel,
                                                     self._direct_envelope(checked))
            except PublishError:
                self.errors += 1
                raise
            self.publish_calls += 1
            self.published += len(checked)
            return int(nodes)

    async def disconnect(self, socket_id: str) -> int:
        """See :meth:`Publisher.disconnect`."""
        return await self.broadcast(socket_id, "disconnect", {})

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals ----------------------------------------------------------------------------

    def _bound_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._lock is None:
            # A connection belongs to the loop that opened it.
            self._loop = loop
            self._lock = asyncio.Lock()
            self._reader = self._writer = None
        return self._lock

    async def _publish_relayed(self, messages: list[Message]) -> int:
        tried: set[str] = set()
        while True:
            node = self._node if self._node is not None and self._node not in tried \
                else await self._pick_node(tried)
            tried.add(node)
            received = await self._call_checked("PUBLISH", self._node_channel(node),
                                                self._relay_envelope(node, messages))
            if received:
                self._node = node
                return 1
            self._node = None

    async def _pick_node(self, tried: set[str]) -> str:
        cursor: bytes = b"0"
        nodes: list[str] = []
        while True:
            reply = await self._call_checked("SCAN", cursor, "MATCH", self._scan_pattern(),
                                             "COUNT", 1000)
            cursor, keys = reply[0], reply[1]
            nodes.extend(self._node_names(keys))
            if cursor == b"0":
                break
        return self._choose_node(nodes, tried)

    async def _call_checked(self, *args: bytes | str | int) -> Any:
        return _check(await self._call(*args), str(args[0]))

    async def _call(self, *args: bytes | str | int) -> Any:
        reader, writer = await self._connection()
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(_encode_command(*args))
                await writer.drain()
                return await self._read_reply(reader)
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await self._drop()
            raise PublishError(f"no reply from Redis at {self._where()} "
                               f"({exc or type(exc).__name__}): the command may or may not "
                               f"have run") from exc
        except BaseException:  # cancelled mid-command: the connection is out of step
            await self._drop()
            raise

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = self._reader, self._writer
        if reader is not None and writer is not None and not reader.at_eof() \
                and not writer.is_closing():
            return reader, writer
        await self._drop()
        target = self._target
        try:
            async with asyncio.timeout(self.connect_timeout):
                if target.path is not None:
                    reader, writer = await asyncio.open_unix_connection(target.path)
                else:
                    reader, writer = await asyncio.open_connection(
                        target.host, target.port, ssl=self._ssl,
                        server_hostname=target.host if self._ssl is not None else None)
        except (OSError, TimeoutError) as exc:
            raise PublishError(f"cannot connect to Redis at {self._where()}: "
                               f"{exc or type(exc).__name__}") from exc
        try:
            async with asyncio.timeout(self.timeout):
                for command in _setup_commands(target, self.name):
                    writer.write(_encode_command(*command))
                    await writer.drain()
                    reply = await self._read_reply(reader)
                    if isinstance(reply, _ReplyError) and command[0] != "CLIENT":
                        raise PublishError(f"Redis refused {command[0]}: {reply}")
        except BaseException as exc:
            writer.close()
            if isinstance(exc, PublishError):
                raise
            if isinstance(exc, (OSError, ValueError, asyncio.IncompleteReadError,
                                TimeoutError)):
                raise PublishError(f"cannot set up the Redis connection at {self._where()}: "
                                   f"{exc or type(exc).__name__}") from exc
            raise
        self.connects += 1
        self._reader, self._writer = reader, writer
        return reader, writer

    @staticmethod
    async def _read_reply(reader: asyncio.StreamReader) -> Any:
        parser = _parse_reply()
        want = next(parser)
        try:
            while True:
                data = await reader.readline() if want < 0 else await reader.readexactly(want)
                want = parser.send(data)
        except StopIteration as done:
            return done.value

    async def _drop(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    def _where(self) -> str:
        return self._target.path or f"{self._target.host}:{self._target.port}"
