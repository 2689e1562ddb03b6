"""The :class:`Endpoint`: listeners, socket mounts, the heartbeat monitor, and the drain.

It owns every long-lived task of a node: the accept loop, one handler task per connection,
the pubsub adapter and the heartbeat monitor. :meth:`Endpoint.drain` closes clients in
batches with 1012 (the JS client reconnects) before the node stops.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket as stdsocket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import h11
import trio

from channels import http
from channels import logging as chlog
from channels.api import MAX_BODY, HttpApi, Relay
from channels.channel import Refuse, Socket
from channels.config import BindError, ConfigError, check_endpoint
from channels.connection import Connection
from channels.frames import CLOSE_PROTOCOL_ERROR, CLOSE_SERVICE_RESTART
from channels.history import HistoryService
from channels.http import HTTPError, Request
from channels.lifecycle import Service, run_hooks
from channels.limits import TokenBucket
from channels.logutil import Throttled
from channels.longpoll import LongPoll
from channels.poller import Poller
from channels.pubsub import Adapter, PubSub, Subscriber
from channels.serializer import serializer_for_vsn
from channels.socket import SocketSession
from channels.stats import FANOUT_BUCKETS, Counters, Histogram
from channels.telemetry import (
    BROADCAST,
    CONNECT,
    HANDLE_IN_EXCEPTION,
    HANDLE_IN_STOP,
    PROTECTION,
    Telemetry,
)

if TYPE_CHECKING:
    from channels.metrics import Metrics
    from channels.rooms import Rooms
    from presence import Presence

log = logging.getLogger("channels.endpoint")
# The same failure repeated by every connection is logged once per interval, with a count.
_throttled = Throttled(log)

_connection_ids = itertools.count(1)

#: ``lifespan(endpoint)``: an async context manager entered before serving, exited after.
Lifespan = Callable[["Endpoint"], AbstractAsyncContextManager[Any]]
#: A startup or shutdown hook: ``async def hook(endpoint)`` (or a plain function).
Hook = Callable[["Endpoint"], Awaitable[None] | None]

H = TypeVar("H", bound=Hook)

#: The client helper for history (rejoin from the last position), served by every endpoint.
HISTORY_JS_PATH = "/trio-channels/history.js"
HISTORY_JS = Path(__file__).resolve().parent / "static" / "history.js"

#: Shutdown hooks run even when serving was cancelled, for at most this many seconds.
SHUTDOWN_HOOKS_TIMEOUT = 10.0


class Endpoint:
    """A node's HTTP/WebSocket entry point.

    ``sockets`` maps mount paths to :class:`Socket` subclasses (``"/socket"`` serves
    ``/socket/websocket``); ``static`` maps URL paths to files, or URL prefixes ending in
    ``/`` to directories. ``rooms`` hosts :class:`~channels.rooms.Room` actors;
    ``lifespan(endpoint)`` is an async context manager around the node's life (open clients
    there); see also :meth:`on_startup`, :meth:`on_shutdown` and :meth:`service`.

    Shutdown order: stop accepting, drain clients, hand rooms off, stop presence, stop
    services, shutdown hooks, leave the lifespan, flush and close the pubsub adapter.
    """

    def __init__(
        self,
        sockets: Mapping[str, type[Socket]],
        *,
        pubsub: PubSub | None = None,
        adapter: Adapter | None = None,
        presence: Presence | None = None,
        static: Mapping[str, str | Path] | None = None,
        drain_batch_size: int = 10_000,
        drain_batch_interval: float = 2.0,
        drain_timeout: float = 30.0,
        max_connections: int | None = None,
        connection_rate: tuple[float, float] | None = None,
        rooms: Rooms | None = None,
        lifespan: Lifespan | None = None,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
        api_keys: Iterable[str] | None = None,
        secret_key: str | bytes | None = None,
        poll_reads: bool = True,
    ) -> None:
        self.sockets = {mount.rstrip("/"): cls for mount, cls in sockets.items()}
        if pubsub is not None and adapter is not None:
            raise ValueError("give the adapter to the PubSub, or give the Endpoint an adapter "
                             "and no PubSub, not both")
        self.pubsub = pubsub if pubsub is not None else PubSub(adapter)
        self.presence = presence
        if presence is not None:
            presence.attach(self.pubsub)
        self.rooms = rooms
        if rooms is not None:
            rooms.attach(self.pubsub, presence)
        #: Positions and stores the broadcasts of topics whose channel declares ``history``.
        self.history = HistoryService.for_sockets(self.sockets.values())
        if self.history is not None:
            self.history.attach(self.pubsub)
        self.lifespan = lifespan
        self.services: list[Service] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self.static = {k: Path(v) for k, v in (static or {}).items()}
        self.drain_batch_size = drain_batch_size
        self.drain_batch_interval = drain_batch_interval
        self.drain_timeout = drain_timeout
        self.sessions: set[SocketSession] = set()
        self.max_connections = max_connections
        self._connection_rate = TokenBucket(*connection_rate) if connection_rate else None
        self.draining = False
        self._ws_paths = {mount + "/websocket": cls for mount, cls in self.sockets.items()
                          if getattr(cls, "websocket", True)}
        #: The LongPoll transport (``<mount>/longpoll``); ``secret_key`` (else the
        #: TRIO_CHANNELS_SECRET_KEY environment variable, else a random key) signs its tokens.
        self.longpoll = LongPoll(self, self.sockets, secret_key)
        self._cancel: trio.CancelScope | None = None
        self._connections: trio.Nursery | None = None
        self._all_closed = trio.Event()
        #: Plain-int counters of what happened (read by the metrics at scrape time).
        self.counters = Counters()
        #: Telemetry hooks: ``endpoint.telemetry.attach(("channels", "join"), handler)``.
        self.telemetry = Telemetry()
        self.telemetry.on_change = self._instrument
        #: The Prometheus metrics (``/metrics`` on ``metrics_port``), or None when off.
        self.metrics: Metrics | None = None
        if metrics_port is not None:
            self.enable_metrics(metrics_port, metrics_host)
        #: The HTTP API under ``/api`` (see :meth:`enable_api`), or None when off.
        self.api: HttpApi | None = None
        if api_keys:
            self.enable_api(api_keys)
        #: Broadcasts what relaying publishers (``Publisher(relay=True)``) send this node.
        self.relay = Relay(self)
        #: One task reads every idle WebSocket connection (see channels/poller.py); None
        #: (``poll_reads=False``): each connection's task reads its socket.
        self.poller: Poller | None = Poller(self.counters) if poll_reads else None

    def session_ended(self, session: SocketSession) -> None:
        """A session's connection is gone: it no longer counts among the node's sessions."""
        self.sessions.discard(session)
        if not self.sessions:
            self._all_closed.set()

    async def run_session(self, session: SocketSession) -> None:
        """Run ``session`` until it ends, counted meanwhile among the node's sessions (the
        drain closes them, the heartbeat monitor scans them, ``max_connections`` counts
        them); then let its last bytes go."""
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            await self._session_over(session)

    async def _session_over(self, session: SocketSession) -> None:
        self.session_ended(session)
        await session.linger()

    def start_session(self, session: SocketSession, name: str) -> bool:
        """Run ``session`` (:meth:`run_session`) in the background; False when the node does
        not serve (or drains)."""
        return not self.draining and self.start_task(self.run_session, session, name=name)

    def start_task(self, fn: Callable[..., Awaitable[object]], *args: object,
                   name: str | None = None) -> bool:
        """Run ``fn(*args)`` alongside the connections (cancelled with them); False when
        the node does not serve."""
        if self._connections is None:
            return False
        self._connections.start_soon(fn, *args, name=name)
        return True

    def use_adapter(self, adapter: Adapter) -> None:
        """Link the node to its cluster through ``adapter`` instead of the one it was given
        (``trio-channels serve --redis-url`` does this): only before it serves."""
        if self._connections is not None or self._cancel is not None:
            raise RuntimeError("the adapter of a serving endpoint cannot change")
        self.pubsub.adapter = adapter

    def admit(self, peer: tuple[str, int], what: str) -> None:
        """Raise :class:`HTTPError` 503 when no new client may connect now: draining, at
        ``max_connections``, or over the connection rate. ``what``: for the log line."""
        if self.draining:
            raise HTTPError(503, "server is shutting down")
        if self.max_connections is not None and len(self.sessions) >= self.max_connections:
            log.warning("refused %s from %s: %d connections (max_connections)",
                        what, peer, len(self.sessions))
            raise HTTPError(503, "too many connections")
        if self._connection_rate is not None and \
                not self._connection_rate.take(trio.current_time()):
            log.warning("refused %s from %s: new connections over the rate limit", what, peer)
            raise HTTPError(503, "too many new connections")

    # -- public API --------------------------------------------------------------------------

    async def broadcast(self, topic: str, event: str, payload: dict[str, Any] | bytes) -> None:
        """Send ``event`` to every subscriber of ``topic`` on every node."""
        await self.pubsub.broadcast(topic, event, payload)

    async def local_broadcast(self, topic: str, event: str,
                              payload: dict[str, Any] | bytes) -> None:
        """Send ``event`` to the subscribers of ``topic`` on this node only."""
        await self.pubsub.local_broadcast(topic, event, payload)

    def on_startup(self, hook: H) -> H:
        """Run ``hook(endpoint)`` (sync or async) before serving; usable as a decorator.
        An exception stops the node from starting."""
        self._startup.append(hook)
        return hook

    def on_shutdown(self, hook: H) -> H:
        """Run ``hook(endpoint)`` after clients, rooms and services stopped; errors are logged."""
        self._shutdown.append(hook)
        return hook

    def service(self, fn: Callable[..., Awaitable[object]], *args: object, name: str = "",
                max_restarts: int = 5, period: float = 60.0) -> Service:
        """Run ``fn(*args)`` in the background for the node's life, restarted when it crashes
        (at most ``max_restarts`` times in ``period`` seconds; then it stays down, logged).
        Usable as a decorator on an argument-less async function."""
        svc = Service(fn, *args, name=name, max_restarts=max_restarts, period=period)
        self.services.append(svc)
        return svc

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Receive the broadcasts of ``topic`` in Python (see :class:`CallbackSubscriber`)."""
        self.pubsub.subscribe(topic, subscriber)

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        self.pubsub.unsubscribe(topic, subscriber)

    def enable_api(self, keys: str | Iterable[str], *, prefix: str = "/api",
                   max_body: int = MAX_BODY) -> HttpApi:
        """Serve the HTTP API (broadcast, disconnect, presence, history) under ``prefix`` to
        requests carrying ``Authorization: Bearer <key>`` with one of ``keys`` (a list, or a
        comma-separated string; 16 characters at least). Called again, it adds the keys.
        See docs/publishing.md."""
        if self.api is None:
            self.api = HttpApi(self, keys, prefix=prefix, max_body=max_body)
        else:
            self.api.add_keys(keys)
            self.api.prefix, self.api.max_body = prefix, max_body
        return self.api

    def enable_metrics(self, port: int = 9568, host: str | None = None) -> Metrics:
        """Serve Prometheus metrics at ``/metrics`` on ``host:port`` (``host`` defaults to the
        one :meth:`serve` listens on; port 0 picks a free one, see ``metrics.bound_port``).
        Call it before serving; ``Endpoint(metrics_port=...)`` does."""
        from channels.metrics import Metrics

        if self.metrics is None:
            self.metrics = Metrics(self, port, host)
        else:
            self.metrics.port, self.metrics.host = port, host
        self._instrument()
        return self.metrics

    def _instrument(self) -> None:
        """Decide what the hot paths measure: only what metrics or attached handlers use."""
        active = self.telemetry.active
        counters = self.counters
        on = self.metrics is not None
        counters.timed = on or HANDLE_IN_STOP in active or HANDLE_IN_EXCEPTION in active
        if on and counters.handle_in is None:
            counters.handle_in = {}
        if on and self.pubsub.fanout is None:
            self.pubsub.fanout = Histogram(FANOUT_BUCKETS)
        self.pubsub.on_broadcast = self._broadcast_event if BROADCAST in active else None

    def _broadcast_event(self, topic: str, event: str, recipients: int) -> None:
        self.telemetry.execute(BROADCAST, {"recipients": recipients},
                               {"topic": topic, "event": event})

    def report_protection(self, kind: str, peer: tuple[str, int],
                          topic: str | None = None) -> None:
        """Tell telemetry handlers that a protection kicked in (``("channels", "protection")``).
        The caller counts it."""
        if PROTECTION in self.telemetry.active:
            self.telemetry.execute(PROTECTION, {}, {"kind": kind, "peer": f"{peer[0]}:{peer[1]}",
                                                    "topic": topic})

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int | None = 4000,
        *,
        reuse_port: bool = False,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled; reports the bound port.

        ``port=None`` runs the node without a listener (reports 0): its services, rooms and
        channels work for connections made in-process (see :mod:`channels.testing`).
        ``reuse_port=True`` sets ``SO_REUSEPORT`` on the listener: several processes of one
        user listen on the same port and the kernel spreads new connections among them
        (``trio-channels serve --workers N``, see :mod:`channels.workers`).
        Raises :class:`~channels.config.ConfigError` before listening if the configuration
        is wrong (warnings are logged), and ``OSError`` if the port cannot be bound.
        """
        self.check()
        self.draining = False  # an endpoint may be served again after a drain (tests do)
        listener = _listen(host, port, reuse_port) if port is not None else None
        bound = listener.getsockname()[1] if listener is not None else 0
        try:
            # Nested so that shutdown is ordered: connections, rooms (handed off), presence,
            # user services, shutdown hooks, lifespan, then pubsub.
            async with trio.open_nursery() as pubsub_tasks:
                await pubsub_tasks.start(self.pubsub.run)
                lifespan = self.lifespan(self) if self.lifespan is not None else \
                    contextlib.nullcontext()
                async with lifespan:
                    await run_hooks(self._startup, self, "startup")
                    try:
                        async with trio.open_nursery() as user_services:
                            for svc in self.services:
                                user_services.start_soon(svc.run, name=f"service {svc.name}")
                            await self._serve_node(listener, host, bound, task_status)
                            user_services.cancel_scope.cancel()
                    finally:
                        # Shielded so a cancelled serve still runs them, but bounded.
                        with trio.move_on_after(SHUTDOWN_HOOKS_TIMEOUT, shield=True) as hooks:
                            await run_hooks(self._shutdown, self, "shutdown")
                        if hooks.cancelled_caught:
                            log.warning("shutdown hooks did not finish within %gs",
                                        SHUTDOWN_HOOKS_TIMEOUT)
                # The tracker's last messages (leaves of drained clients) leave before Redis.
                with trio.move_on_after(2.0, shield=True):
                    await self.pubsub.adapter.flush(2.0)
                pubsub_tasks.cancel_scope.cancel()
        finally:
            _close_listener(listener)

    async def _serve_node(self, listener: stdsocket.socket | None, host: str, bound: int,
                          task_status: trio.TaskStatus[int]) -> None:
        async with trio.open_nursery() as services:
            if self.metrics is not None:
                await services.start(self.metrics.serve, host)
            if self.history is not None:
                await services.start(self.history.run)
            if self.presence is not None:
                await services.start(self.presence.run)
            await services.start(self.relay.run)
            self.longpoll.start()
            services.start_soon(self._heartbeat_monitor)
            if self.poller is not None:
                await services.start(self.poller.run)
            async with trio.open_nursery() as room_tasks:
                if self.rooms is not None:
                    await room_tasks.start(self.rooms.run)
                async with trio.open_nursery() as connections:
                    self._connections = connections
                    try:
                        with trio.CancelScope() as self._cancel:
                            task_status.started(bound)
                            if listener is None:
                                await trio.sleep_forever()
                            log.info("listening on http://%s:%d", host, bound)
                            await self._accept_loop(listener, connections, (host, bound))
                    finally:
                        # Accepting stopped (drain): refuse new connections rather than leave
                        # them waiting in the backlog; then the connections finish.
                        _close_listener(listener)
                if self.rooms is not None:
                    with trio.CancelScope(shield=True):
                        await self.rooms.shutdown(min(8.0, self.drain_timeout / 4))
                room_tasks.cancel_scope.cancel()
            services.cancel_scope.cancel()

    def check(self) -> None:
        """Validate the configuration: raise ConfigError listing every error, log warnings."""
        errors, warnings = check_endpoint(self)
        errors += self.longpoll.problems()
        for warning in warnings:
            log.warning("configuration: %s", warning)
        if errors:
            raise ConfigError(errors)

    @property
    def ready(self) -> bool:
        """Serving, not draining, and (in a cluster) linked to the other nodes."""
        return self._cancel is not None and not self.draining and \
            getattr(self.pubsub.adapter, "connected", True) is not False

    async def drain(self) -> None:
        """Refuse new clients (503; ``/readyz`` says so), close every client with 1012 in
        batches and wait for them, then stop accepting.

        Clients get at most two thirds of ``drain_timeout`` (and at least all but 10 s of it):
        the rest is for handing rooms off and closing the cluster link, so the whole stop
        fits in ``drain_timeout``.
        """
        self.draining = True
        sessions = list(self.sessions)
        log.info("draining %d connections", len(sessions))
        reserve = min(10.0, self.drain_timeout / 3)
        with trio.move_on_after(self.drain_timeout - reserve):
            for i in range(0, len(sessions), self.drain_batch_size):
                if i:
                    await trio.sleep(self.drain_batch_interval)
                for session in sessions[i:i + self.drain_batch_size]:
                    session.close(CLOSE_SERVICE_RESTART, "server restart", end_reason="shutdown")
            while self.sessions:
                self._all_closed = trio.Event()
                await self._all_closed.wait()
        if self._cancel is not None:
            self._cancel.cancel()
        if self._connections is not None:
            self._connections.cancel_scope.cancel()

    # -- internals ---------------------------------------------------------------------------

    async def _accept_loop(self, listener: stdsocket.socket, nursery: trio.Nursery,
                           host_port: tuple[str, int]) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            for _ in range(64):
                try:
                    sock, peer = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:  # EMFILE and friends: log and keep serving
                    log.error("accept failed: %s", exc)
                    await trio.sleep(0.1)
                    break
                sock.setblocking(False)
                sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
                nursery.start_soon(self._handle_connection, sock, peer[:2], host_port)

    async def _handle_connection(self, sock: stdsocket.socket, peer: tuple[str, int],
                                 host_port: tuple[str, int]) -> None:
        conn = Connection(sock, peer)
        if chlog.state.context:  # JSON logs: this task's lines (and its channels') say who
            chlog.connection_var.set({"connection_id": next(_connection_ids),
                                      "peer": f"{peer[0]}:{peer[1]}"})
        # Flushers run in the connections nursery: abort() wakes and ends them, so a
        # per-connection nursery (and its memory) is not needed.
        assert self._connections is not None
        conn.attach(self._connections)
        try:
            session = await http.serve_http(self.handle_http, conn, host_port)
            if session is not None:
                # run_session, inlined: one coroutine frame less per idle connection
                self.sessions.add(session)
                try:
                    await session.run()
                finally:
                    await self._session_over(session)
        except Exception as exc:
            _throttled(("handler", type(exc), str(exc)[:100]), logging.ERROR,
                       "connection handler for %s failed", peer, exc_info=exc)
        finally:
            conn.abort()

    async def handle_http(
        self, req: Request, conn: Connection, h: h11.Connection
    ) -> SocketSession | None:
        """Serve one request; returns the session to run if it upgraded to a WebSocket."""
        if req.path == "/healthz":
            await http.send_response(conn, h, 200, b"ok\n")
            return None
        if req.path == "/readyz":
            if self.ready:
                await http.send_response(conn, h, 200, b"ready\n")
            else:
                why = b"draining\n" if self.draining else b"not ready: cluster link down\n"
                await http.send_response(conn, h, 503, why)
            return None
        if self.api is not None and self.api.matches(req.path):
            await self.api.handle(req, conn, h)
            return None
        if req.path == HISTORY_JS_PATH:
            await http.serve_static(conn, h, req, HISTORY_JS)
            return None
        lp_socket = self.longpoll.paths.get(req.path)
        if lp_socket is not None:
            await self.longpoll.handle(lp_socket, req, conn, h)
            return None
        socket_cls = self._ws_paths.get(req.path)
        if socket_cls is not None:
            start = time.perf_counter()
            try:
                session = await self._websocket(socket_cls, req, conn, h)
            except HTTPError as exc:
                self._connect_answered(req, socket_cls, exc.status, start)
                raise
            self._connect_answered(req, socket_cls, 101, start)
            return session
        file = http.resolve_static(self.static, req.path)
        if file is None:
            raise HTTPError(404)
        await http.serve_static(conn, h, req, file)
        return None

    def _connect_answered(self, req: Request, socket_cls: type[Socket], status: int,
                          start: float) -> None:
        """Count an answered upgrade; the access log line and the telemetry event."""
        connects = self.counters.connects
        connects[status] = connects.get(status, 0) + 1
        telemetry = CONNECT in self.telemetry.active
        access = chlog.access_log.enabled()
        if not (telemetry or access):
            return
        duration = time.perf_counter() - start
        peer = f"{req.peer[0]}:{req.peer[1]}"
        if telemetry:
            self.telemetry.execute(CONNECT, {"duration": duration}, {
                "status": status, "path": req.path, "peer": peer,
                "socket": socket_cls.__name__, "transport": "websocket"})
        if access:
            target = req.path + ("?" + chlog.mask_query(req.query) if req.query else "")
            chlog.access_log("connect %s %s %d %.1fms", peer, target, status, duration * 1000,
                             extra={"peer": peer, "path": req.path, "status": status,
                                    "duration_ms": round(duration * 1000, 3),
                                    "socket": socket_cls.__name__, "transport": "websocket"})

    async def _websocket(self, socket_cls: type[Socket], req: Request, conn: Connection,
                         h: h11.Connection) -> SocketSession:
        http.check_handshake(req)
        self.admit(req.peer, "WebSocket")
        params = http.parse_params(req.query)
        vsn = params.get("vsn")
        serializer = serializer_for_vsn(vsn) if vsn is None or isinstance(vsn, str) else None
        if serializer is None:
            log.warning("The client's requested transport version %r does not match the "
                        "supported versions (~> 1.0.0, ~> 2.0.0)", vsn)
            raise HTTPError(403, "unsupported vsn")
        origin = req.header("origin")
        if not http.origin_allowed(origin, socket_cls.check_origin, req.header("host")):
            log.warning("refused WebSocket from %s: origin %r is not allowed", req.peer, origin)
            raise HTTPError(403, "origin not allowed")
        offered, token = http.parse_subprotocols(req)
        if offered and "phoenix" not in offered:
            log.warning("refused WebSocket from %s: subprotocols %r (expected phoenix)",
                        req.peer, offered)
            raise HTTPError(403, "unsupported subprotocol")
        connect_info = http.connect_info(req, token)
        socket = socket_cls(self)
        try:
            result = await socket.connect(params, connect_info)
        except Refuse as exc:
            raise HTTPError(exc.status, exc.message) from None
        except Exception as exc:
            _throttled(("connect", socket_cls, type(exc), str(exc)[:100]), logging.ERROR,
                       "%s.connect raised", socket_cls.__name__, exc_info=exc)
            raise HTTPError(500) from None
        if isinstance(result, dict):
            socket.assigns.update(result)
        elif result is not True:
            raise HTTPError(403, "connection refused")
        trailing = http.accept_websocket(conn, h, req, "phoenix" if offered else None)
        return SocketSession(self, socket, serializer, conn, trailing, self.poller)

    async def _heartbeat_monitor(self) -> None:
        """Close connections silent for longer than their socket's ``idle_timeout``, and
        stalled readers (queued bytes, none taken for ``write_timeout``) with 1013.

        One task per endpoint. A read only sets ``conn.active``; each scan clears it and notes
        the time, so a scan costs O(connections) and a message O(1) (writes likewise only set
        a flag, see ``Connection.write_stall``). Scans run four times per (shortest) timeout:
        a silent client is dropped between 1 and 1.5 timeouts, a stalled reader likewise.
        LongPoll sessions are scanned alike: polls set their ``conn.active`` (an Outbox), their
        timeout is 1.5 poll windows, and their write stall is always 0 (they are judged by
        their polls; their queue is bounded by ``max_buffer``).
        """
        timeouts = [min(cls.idle_timeout, cls.write_timeout)
                    for cls in self.sockets.values()] or [60.0]
        timeouts += [cls.longpoll_window * 1.5 for cls in self.longpoll.paths.values()]
        interval = max(min(timeouts) / 4, 0.005)
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for session in list(self.sessions):
                conn = session.conn
                if conn.active:
                    conn.active = False
                    conn.silent_since = now
                elif not session.closing and now - conn.silent_since > session.idle_timeout:
                    log.info("closing idle connection %s (no message for %.1fs)",
                             conn.peer, now - conn.silent_since)
                    self.counters.idle_closes += 1
                    self.report_protection("idle_close", conn.peer)
                    session.close(CLOSE_PROTOCOL_ERROR, "idle timeout")
                stall = conn.write_stall(now)
                if stall and not session.closing and \
                        stall > type(session.socket).write_timeout:
                    session.write_stalled(stall)


def _close_listener(listener: stdsocket.socket | None) -> None:
    if listener is not None and listener.fileno() != -1:
        trio.lowlevel.notify_closing(listener)
        listener.close()


def _listen(host: str, port: int, reuse_port: bool = False) -> stdsocket.socket:
    family = stdsocket.AF_INET6 if ":" in host else stdsocket.AF_INET
    sock = stdsocket.socket(family, stdsocket.SOCK_STREAM)
    try:
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(4096)
    except OSError as exc:
        sock.close()
        raise BindError("the endpoint", host, port, exc) from exc
    sock.setblocking(False)
    return sock

