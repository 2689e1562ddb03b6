"""The client socket: one WebSocket at a time, heartbeats, reconnects with backoff."""

from __future__ import annotations

import base64
import logging
import math
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn, Protocol, TypeAlias
from urllib.parse import quote, urlsplit, urlunsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    open_websocket_url,
)

from channels.client.channel import ClientChannel, JoinParams, _Waiter, call_safely
from channels.client.errors import ConnectError, PushTimeout, ReplyLost
from channels.serializer import (
    V2,
    DecodeError,
    Message,
    decode_server_frame,
    encode_client_binary_push,
)

__all__ = [
    "AUTH_TOKEN_PREFIX",
    "ClientSocket",
    "Transport",
    "WebSocketLike",
    "connect",
    "default_reconnect_after",
    "default_rejoin_after",
    "websocket_transport",
]

log = logging.getLogger("channels.client")

AUTH_TOKEN_PREFIX = "base64url.bearer.phx."
VSN = "2.0.0"
_URI_SAFE = "-_.!~*'()"  # what encodeURIComponent leaves alone


def default_reconnect_after(tries: int) -> float:
    """phoenix.js's reconnect backoff: 10, 50, 100, 150, 200, 250, 500, 1000, 2000 ms, then
    5 s (seconds, ``tries`` from 1)."""
    steps = (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.0)
    return steps[tries - 1] if 1 <= tries <= len(steps) else 5.0


def default_rejoin_after(tries: int) -> float:
    """phoenix.js's rejoin backoff: 1, 2, 5 s, then 10 s."""
    steps = (1.0, 2.0, 5.0)
    return steps[tries - 1] if 1 <= tries <= len(steps) else 10.0


class WebSocketLike(Protocol):
    """What the socket needs from a connection (trio-websocket's WebSocketConnection)."""

    async def send_message(self, message: str | bytes) -> None: ...

    async def get_message(self) -> str | bytes: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


Transport: TypeAlias = Callable[[str, "list[str] | None"],
                                AbstractAsyncContextManager[WebSocketLike]]
"""Opens one connection: ``transport(url, subprotocols)``; raises ``HandshakeError`` or
``OSError`` when it cannot, and ``get_message`` raises ``ConnectionClosed`` at the end."""


def websocket_transport(*, ssl_context: ssl.SSLContext | None = None,
                        headers: Sequence[tuple[str, str]] = (), connect_timeout: float = 10.0,
                        close_timeout: float = 1.0,
                        max_message_size: int = 64 * 1024 * 1024) -> Transport:
    """The default transport: trio-websocket."""
    extra = [(k.encode(), v.encode()) for k, v in headers]

    def open_connection(url: str, subprotocols: list[str] | None
                        ) -> AbstractAsyncContextManager[WebSocketLike]:
        return open_websocket_url(
            url, ssl_context if url.startswith("wss:") else None, subprotocols=subprotocols,
            extra_headers=extra, message_queue_size=64, max_message_size=max_message_size,
            connect_timeout=connect_timeout, disconnect_timeout=close_timeout)

    return open_connection


def _serialize(params: Mapping[str, Any], parent: str = "") -> str:
    """Query params as phoenix.js's ``Ajax.serialize`` writes them (nested: ``a[b]=1``)."""
    items = []
    for key, value in params.items():
        name = f"{parent}[{key}]" if parent else str(key)
        if isinstance(value, Mapping):
            items.append(_serialize(value, name))
        elif isinstance(value, list | tuple):
            items.append(_serialize({str(i): v for i, v in enumerate(value)}, name))
        elif value is not None:
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            items.append(f"{quote(name, safe=_URI_SAFE)}={quote(text, safe=_URI_SAFE)}")
    return "&".join(item for item in items if item)


def _websocket_url(url: str, params: Mapping[str, Any]) -> str:
    """``ws://host/socket`` → ``ws://host/socket/websocket?<params>&vsn=2.0.0``."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"not a ws://, wss://, http:// or https:// URL: {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/websocket"):
        path += "/websocket"
    query = "&".join(q for q in (parts.query, _serialize(params), f"vsn={VSN}") if q)
    return urlunsplit((scheme, parts.netloc, path, query, ""))


class _Connection:
    """One open WebSocket and what belongs to it alone."""

    def __init__(self, ws: WebSocketLike, url: str, close_timeout: float) -> None:
        self.ws = ws
        self.url = url
        self.outbox: trio.MemorySendChannel[str | bytes] | None = None
        self.scope = trio.CancelScope()
        self.pending_heartbeat: str | None = None
        self.heartbeat_reply = trio.Event()
        self.heartbeat_timed_out = False
        self.pings: dict[str, _Waiter] = {}
        self.close_code = 1000
        self.close_reason: str | None = None
        self.close_timeout = close_timeout
        self.remote_code: int | None = None
        self.remote_reason: str | None = None


class _Backoff:
    """phoenix.js's ``Timer``: ``schedule()`` calls back after ``calc(tries + 1)`` seconds."""

    def __init__(self, socket: ClientSocket, callback: Callable[[], None],
                 calc: Callable[[int], float]) -> None:
        self.socket = socket
        self.callback = callback
        self.calc = calc
        self.tries = 0
        self._scope: trio.CancelScope | None = None

    def reset(self) -> None:
        self.tries = 0
        self._cancel()

    def _cancel(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    def schedule(self) -> None:
        self._cancel()
        self._scope = self.socket._call_later(self.calc(self.tries + 1), self._fire)

    def _fire(self) -> None:
        self._scope = None
        self.tries += 1
        self.callback()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` out of an ``except`` block without chaining it to the group."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


class ClientSocket:
    """A connection to a trio-channels (or Phoenix) endpoint, made by :func:`connect`.

    It keeps one WebSocket open: heartbeats every ``heartbeat_interval`` (a reply not in by
    the next one closes the connection), reconnects with ``reconnect_after`` backoff, going
    through ``urls`` in turn, and its channels rejoin with new join_refs.
    """

    def __init__(self, urls: str | Sequence[str], *,
                 params: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
                 auth_token: str | Callable[[], str] | None = None, timeout: float = 10.0,
                 heartbeat_interval: float | None = 30.0, connect_timeout: float = 10.0,
                 reconnect_after: Callable[[int], float] = default_reconnect_after,
                 rejoin_after: Callable[[int], float] = default_rejoin_after,
                 close_timeout: float = 1.0, transport: Transport | None = None) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("connect() needs at least one URL")
        for url in self.urls:
            _websocket_url(url, {})  # fail now on a bad URL
        self.params = params if params is not None else {}
        self.auth_token = auth_token
        self.timeout = timeout
        self.heartbeat_interval = heartbeat_interval
        self.connect_timeout = connect_timeout
        self.reconnect_after = reconnect_after
        self.rejoin_after = rejoin_after
        self.close_timeout = close_timeout
        self.transport = transport or websocket_transport(connect_timeout=timeout,
                                                          close_timeout=close_timeout)
        #: The URL of the current (or last) connection.
        self.url: str | None = None
        #: How many connections were opened so far.
        self.connections = 0
        self._url_index = 0
        self._ref = 0
        self._conn: _Connection | None = None
        self._topics: dict[str, list[ClientChannel]] = {}
        self._send_buffer: list[tuple[str | bytes, str | None, ClientChannel | None]] = []
        self._acks: dict[str, _Waiter] = {}
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._open_callbacks: list[Callable[[], object]] = []
        self._close_callbacks: list[Callable[[int | None, str | None], object]] = []
        self._error_callbacks: list[Callable[[BaseException], object]] = []
        self._message_callbacks: list[Callable[[Message], object]] = []

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else "disconnected"
        return f"<ClientSocket {state} {self.url or self.urls[0]}>"

    # -- public API -----------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._conn is not None

    @property
    def channels(self) -> list[ClientChannel]:
        return [channel for group in self._topics.values() for channel in group]

    def channel(self, topic: str, params: JoinParams | None = None, *,
                position: Mapping[str, Any] | None = None, initial: int | None = None,
                on_recovery: Callable[[dict[str, Any]], object] | None = None
                ) -> ClientChannel:
        """A channel for ``topic`` (join it with ``await channel.join()``).

        ``params`` is a dict or a callable evaluated again on every rejoin. On topics with
        history: ``position`` to start from (``{"offset", "epoch"}``), ``initial=N`` to get
        the newest N stored broadcasts on a first join, ``on_recovery(info)`` after every
        join with the reply's ``phx_recovery``.
        """
        if self._closing or self._nursery is None:
            raise RuntimeError("the socket is closed")
        channel = ClientChannel(self, topic, params, position=position, initial=initial,
                                on_recovery=on_recovery)
        self._topics.setdefault(topic, []).append(channel)
        return channel

    async def join(self, topic: str, params: JoinParams | None = None, *,
                   timeout: float | None = None, position: Mapping[str, Any] | None = None,
                   initial: int | None = None,
                   on_recovery: Callable[[dict[str, Any]], object] | None = None
                   ) -> ClientChannel:
        """``socket.channel(...)`` then ``await channel.join(timeout)``; returns the channel."""
        channel = self.channel(topic, params, position=position, initial=initial,
                               on_recovery=on_recovery)
        await channel.join(timeout)
        return channel

    async def ping(self, timeout: float | None = None) -> float:
        """Send a heartbeat and return the seconds until its reply."""
        conn = self._conn
        if conn is None or conn.outbox is None:
            raise ReplyLost("not connected")
        ref = self._make_ref()
        waiter = conn.pings[ref] = _Waiter()
        start = trio.current_time()
        self._send_frame(conn, self._encode(None, ref, "phoenix", "heartbeat", {}))
        with trio.move_on_after(self.timeout if timeout is None else timeout):
            await waiter.done.wait()
        conn.pings.pop(ref, None)
        if waiter.error is not None:
            raise waiter.error
        if waiter.result is None:
            raise PushTimeout("no heartbeat reply in time")
        return trio.current_time() - start

    def on_open(self, callback: Callable[[], object]) -> Callable[[], object]:
        """Call ``callback()`` whenever a connection opens."""
        self._open_callbacks.append(callback)
        return callback

    def on_close(self, callback: Callable[[int | None, str | None], object]
                 ) -> Callable[[int | None, str | None], object]:
        """Call ``callback(code, reason)`` whenever an open connection ends (not at exit)."""
        self._close_callbacks.append(callback)
        return callback

    def on_error(self, callback: Callable[[BaseException], object]
                 ) -> Callable[[BaseException], object]:
        """Call ``callback(exception)`` whenever a connection attempt fails."""
        self._error_callbacks.append(callback)
        return callback

    def on_message(self, callback: Callable[[Message], object]) -> Callable[[Message], object]:
        """Call ``callback(message)`` for every message received, on any topic."""
        self._message_callbacks.append(callback)
        return callback

    # -- lifetime ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[ClientSocket]:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await nursery.start(self._run)
                    yield self
                finally:
                    self._closing = True
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaves = _leaves(group)
            errors = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
            if len(errors) == 1:
                _reraise(errors[0])
            if not errors:
                _reraise(leaves[0])
            raise
        finally:
            self._closing = True
            self._nursery = None
            for channel in self.channels:
                channel._closed({"reason": "socket closed"})

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, reconnect with backoff, forever (until cancelled)."""
        deadline = trio.current_time() + self.connect_timeout
        tries = 0
        while True:
            url = self.urls[self._url_index]
            error: Exception | None = None
            status = task_status if self.connections == 0 else None
            # Bounds the opening handshake here too: trio-websocket 0.12 raises its
            # ConnectionTimeout only once the server answers or closes (its reader task
            # is not cancelled), so a frozen server would hold the attempt forever.
            opening = trio.CancelScope(deadline=trio.current_time() + self.timeout)
            try:
                params = self.params() if callable(self.params) else self.params
                with opening:
                    async with self.transport(_websocket_url(url, params),
                                              self._subprotocols()) as ws:
                        opening.deadline = math.inf
                        tries = 0
                        await self._serve(ws, url, status)
                if opening.cancelled_caught:
                    error = TimeoutError(f"no WebSocket handshake within {self.timeout:g} s")
            except ConnectionRejected as exc:
                if self.connections == 0:
                    raise ConnectError(f"{url}: the server refused the connection "
                                       f"(HTTP {exc.status_code})", exc.status_code) from None
                error = exc
            except (HandshakeError, OSError, ConnectionClosed, trio.BrokenResourceError) as exc:
                error = exc
            if error is not None:
                self._on_conn_error(url, error)
            tries += 1
            self._url_index = (self._url_index + 1) % len(self.urls)
            delay = self.reconnect_after(tries)
            if self.connections == 0:
                left = deadline - trio.current_time()
                if left <= 0:
                    raise ConnectError(f"could not connect to {', '.join(self.urls)} within "
                                       f"{self.connect_timeout:g} s: {error!r}")
                delay = min(delay, left)
            await trio.sleep(delay)

    def _subprotocols(self) -> list[str] | None:
        token = self.auth_token() if callable(self.auth_token) else self.auth_token
        if token is None:
            return None
        # As phoenix.js (btoa, "=" stripped); Phoenix decodes it with Base.decode64!/2, the
        # standard alphabet, whatever the prefix says.
        encoded = base64.b64encode(token.encode()).rstrip(b"=").decode("ascii")
        return ["phoenix", AUTH_TOKEN_PREFIX + encoded]

    async def _serve(self, ws: WebSocketLike, url: str,
                     task_status: trio.TaskStatus[None] | None) -> None:
        conn = _Connection(ws, url, self.close_timeout)
        outbox, inbox = trio.open_memory_channel[str | bytes](math.inf)
        conn.outbox = outbox
        try:
            async with trio.open_nursery() as nursery:
                conn.scope = nursery.cancel_scope
                nursery.start_soon(self._write_loop, conn, inbox)
                if self.heartbeat_interval:
                    nursery.start_soon(self._heartbeat_loop, conn, self.heartbeat_interval)
                self._on_conn_open(conn)
                if task_status is not None:
                    task_status.started()
                await self._read_loop(conn)
                nursery.cancel_scope.cancel()
        finally:
            if self._conn is conn:
                self._conn = None
            outbox.close()
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + conn.close_timeout
                await ws.aclose(conn.close_code, conn.close_reason)
            if not self._closing:
                self._on_conn_close(conn)

    async def _read_loop(self, conn: _Connection) -> None:
        while True:
            try:
                data = await conn.ws.get_message()
            except ConnectionClosed as exc:
                if exc.reason is not None:
                    conn.remote_code, conn.remote_reason = exc.reason.code, exc.reason.reason
                return
            try:
                message = decode_server_frame(data, isinstance(data, bytes))
            except DecodeError as exc:
                log.warning("dropped a malformed frame from %s: %s", conn.url, exc)
                continue
            self._on_message(conn, message)

    async def _write_loop(self, conn: _Connection,
                          inbox: trio.MemoryReceiveChannel[str | bytes]) -> None:
        async with inbox:
            async for frame in inbox:
                try:
                    await conn.ws.send_message(frame)
                except ConnectionClosed:
                    return

    async def _heartbeat_loop(self, conn: _Connection, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            ref = self._make_ref()
            reply = conn.heartbeat_reply = trio.Event()
            conn.pending_heartbeat = ref
            self._send_frame(conn, self._encode(None, ref, "phoenix", "heartbeat", {}))
            with trio.move_on_after(interval):
                await reply.wait()
            conn.pending_heartbeat = None
            if not reply.is_set():
                log.warning("no heartbeat reply from %s within %g s: reconnecting",
                            conn.url, interval)
                conn.heartbeat_timed_out = True
                conn.close_reason = "heartbeat timeout"
                conn.close_timeout = 0.0  # presumed dead: no close handshake
                conn.scope.cancel()
                return

    # -- connection events (phoenix.js onConnOpen, onConnMessage, onConnClose, onConnError) --

    def _on_conn_open(self, conn: _Connection) -> None:
        self._conn = conn
        self.url = conn.url
        self.connections += 1
        log.info("connected to %s", conn.url)
        buffered, self._send_buffer = self._send_buffer, []
        for frame, join_ref, channel in buffered:
            if channel is None or not channel._is_outdated(join_ref):
                self._send_frame(conn, frame)
        for channel in self.channels:
            channel._on_socket_open()
        for callback in list(self._open_callbacks):
            call_safely(callback)

    def _on_message(self, conn: _Connection, message: Message) -> None:
        ref = message.ref
        if ref is not None:
            if ref == conn.pending_heartbeat:
                conn.heartbeat_reply.set()
            if message.event == "phx_reply" and ref in self._acks:
                self._acks.pop(ref).resolve("ok", message.payload)
        group = self._topics.get(message.topic)
        if group:
            for channel in tuple(group):
                if channel._is_member(message.join_ref):
                    channel._trigger(message)
        for callback in self._message_callbacks:
            call_safely(callback, message)
        if ref is not None and conn.pings:
            ping = conn.pings.pop(ref, None)
            if ping is not None:
                ping.resolve("ok", message.payload)

    def _on_conn_close(self, conn: _Connection) -> None:
        lost = ReplyLost(f"the connection to {conn.url} closed")
        for waiter in (*conn.pings.values(), *self._acks.values()):
            waiter.fail(lost)
        conn.pings.clear()
        self._acks.clear()
        code, reason = conn.remote_code, conn.remote_reason
        if conn.heartbeat_timed_out:
            code, reason = conn.close_code, conn.close_reason
        log.info("connection to %s closed (%s %s)", conn.url, code, reason or "")
        self._trigger_chan_error("heartbeat_timeout" if conn.heartbeat_timed_out
                                 else "connection_closed")
        for callback in list(self._close_callbacks):
            call_safely(callback, code, reason)

    def _on_conn_error(self, url: str, error: Exception) -> None:
        log.info("could not connect to %s: %r", url, error)
        for callback in list(self._error_callbacks):
            call_safely(callback, error)
        for channel in self.channels:
            channel._rejoin_timer.reset()
        self._trigger_chan_error("connection_error")

    def _trigger_chan_error(self, reason: str) -> None:
        for channel in self.channels:
            if channel.state in ("joined", "joining"):
                channel._trigger(Message(None, None, channel.topic, "phx_error",
                                         {"source": "transport", "reason": reason}))

    # -- for channels -----------------------------------------------------------------------

    def _make_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    def _encode(self, join_ref: str | None, ref: str | None, topic: str, event: str,
                payload: Any) -> str | bytes:
        """One frame: JSON text, or a binary push for a bytes payload."""
        if isinstance(payload, bytes | bytearray | memoryview):
            return encode_client_binary_push(join_ref, ref, topic, event, bytes(payload))
        return V2.encode(join_ref, ref, topic, event, payload)[1].decode()

    def _send_frame(self, conn: _Connection, frame: str | bytes) -> None:
        if conn.outbox is not None:
            try:
                conn.outbox.send_nowait(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the connection is ending; its channels will rejoin on the next

    def _push_frame(self, frame: str | bytes, join_ref: str | None, event: str,
                    channel: ClientChannel | None) -> None:
        """Send now, or once connected (dropped then if its channel moved on)."""
        if self._conn is not None:
            self._send_frame(self._conn, frame)
        else:
            self._send_buffer.append((frame, join_ref, channel))

    def _send_leave(self, channel: ClientChannel, expect_reply: bool = False
                    ) -> _Waiter | None:
        """``phx_leave`` for the channel's current join, when connected."""
        if self._conn is None or channel.join_ref is None:
            return None
        ref = self._make_ref()
        ack = None
        if expect_reply:
            ack = self._acks[ref] = _Waiter()
        self._send_frame(self._conn, self._encode(channel.join_ref, ref, channel.topic,
                                                  "phx_leave", {}))
        return ack

    def _forget_ack(self, ack: _Waiter) -> None:
        for ref, waiter in list(self._acks.items()):
            if waiter is ack:
                del self._acks[ref]

    def _leave_open_topic(self, channel: ClientChannel) -> None:
        for other in list(self._topics.get(channel.topic, ())):
            if other is not channel and other.state in ("joined", "joining"):
                log.info("leaving duplicate topic %r", channel.topic)
                other._leave()

    def _remove(self, channel: ClientChannel) -> None:
        group = self._topics.get(channel.topic)
        if group and channel in group:
            group.remove(channel)
            if not group:
                del self._topics[channel.topic]

    def _backoff(self, callback: Callable[[], None], calc: Callable[[int], float]) -> _Backoff:
        return _Backoff(self, callback, calc)

    def _call_later(self, delay: float, callback: Callable[[], None]) -> trio.CancelScope:
        """Run ``callback()`` after ``delay`` seconds unless the returned scope is cancelled."""
        scope = trio.CancelScope()
        if self._nursery is None or self._closing:
            scope.cancel()
        else:
            self._nursery.start_soon(self._timer, scope, delay, callback)
        return scope

    @staticmethod
    async def _timer(scope: trio.CancelScope, delay: float, callback: Callable[[], None]) -> None:
        with scope:
            await trio.sleep(delay)
            callback()


def connect(url: str | Sequence[str], *,
            params: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
            auth_token: str | Callable[[], str] | None = None, timeout: float = 10.0,
            heartbeat_interval: float | None = 30.0, connect_timeout: float = 10.0,
            reconnect_after: Callable[[int], float] = default_reconnect_after,
            rejoin_after: Callable[[int], float] = default_rejoin_after,
            headers: Sequence[tuple[str, str]] = (), ssl_context: ssl.SSLContext | None = None,
            max_message_size: int = 64 * 1024 * 1024, close_timeout: float = 1.0,
            transport: Transport | None = None) -> AbstractAsyncContextManager[ClientSocket]:
    """Connect to an endpoint: ``async with connect("ws://host:4000/socket") as socket:``.

    ``url`` is the socket's URL as phoenix.js takes it (``/websocket`` is appended unless
    the path ends with it), or a list of them, tried in turn on every reconnect (the nodes
    of a cluster). ``params`` (a dict, or a callable evaluated for every connection) go in
    the query string; ``auth_token`` (str or callable) goes in the
    ``base64url.bearer.phx.…`` subprotocol next to ``phoenix``, as phoenix.js's authToken.

    Entering waits for the first connection, retrying with backoff for at most
    ``connect_timeout`` seconds; :class:`ConnectError` if it fails (at once if the server
    refuses it with an HTTP status). ``timeout`` is the default for joins, pushes and each
    connection attempt. Leaving the block closes the connection (code 1000) and every task
    of the socket; its channels are closed.
    """
    socket = ClientSocket(
        url, params=params, auth_token=auth_token, timeout=timeout,
        heartbeat_interval=heartbeat_interval, connect_timeout=connect_timeout,
        reconnect_after=reconnect_after, rejoin_after=rejoin_after,
        close_timeout=close_timeout,
        transport=transport or websocket_transport(
            ssl_context=ssl_context, headers=headers, connect_timeout=timeout,
            close_timeout=close_timeout, max_message_size=max_message_size))
    return socket._lifetime()
