"""Prometheus metrics of an endpoint, served on a port of their own.

``Endpoint(..., metrics_port=9568)`` (or ``trio-channels serve --metrics-port 9568``) serves
``GET /metrics`` in the Prometheus text format on that port, on the endpoint's host. A port of
its own keeps metrics off the public port: firewall it, or bind it elsewhere with
``metrics_host``.

Nothing here runs per message. The runtime adds to plain ints (:class:`channels.stats.Counters`,
the pubsub's counters, the Redis adapter's and rooms' stats); a custom collector reads them
when Prometheus scrapes. Each endpoint has its own :class:`CollectorRegistry`
(``endpoint.metrics.registry``): register your own metrics there to serve them alongside.
"""

from __future__ import annotations

import logging
import socket as stdsocket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import h11
import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from channels import http
from channels.config import BindError
from channels.connection import Connection
from channels.interfaces import Node
from channels.longpoll import LongPollSession
from channels.stats import Histogram

if TYPE_CHECKING:
    from collections.abc import Collection

    from channels.socket import SocketSession

__all__ = ["Metrics"]

log = logging.getLogger("channels.metrics")


class Measured(Node, Protocol):
    """What the metrics read of an endpoint: its parts and its sessions."""

    @property
    def sessions(self) -> Collection[SocketSession]: ...

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The metrics of one endpoint: its registry, and the ``/metrics`` listener."""

    def __init__(self, endpoint: Measured, port: int, host: str | None = None) -> None:
        self.endpoint = endpoint
        self.port = port
        self.host = host
        #: The port actually bound once serving (``port=0`` picks a free one).
        self.bound_port: int | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EndpointCollector(endpoint))
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format (what ``GET /metrics`` answers)."""
        return generate_latest(self.registry)

    async def serve(self, host: str, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve ``/metrics`` until cancelled; reports the bound port."""
        listen_host = self.host or host
        family = stdsocket.AF_INET6 if ":" in listen_host else stdsocket.AF_INET
        sock = stdsocket.socket(family, stdsocket.SOCK_STREAM)
        try:
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
            try:
                sock.bind((listen_host, self.port))
                sock.listen(128)
            except OSError as exc:
                raise BindError("metrics", listen_host, self.port, exc) from exc
            sock.setblocking(False)
            self.bound_port = sock.getsockname()[1]
            log.info("metrics on http://%s:%d/metrics", listen_host, self.bound_port)
            async with trio.open_nursery() as nursery:
                task_status.started(self.bound_port)
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        client, peer = sock.accept()
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        log.error("metrics accept failed: %s", exc)
                        await trio.sleep(0.1)
                        continue
                    client.setblocking(False)
                    nursery.start_soon(self._handle, client, peer[:2])
        finally:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    async def _handle(self, sock: stdsocket.socket, peer: tuple[str, int]) -> None:
        conn = Connection(sock, peer)
        try:
            async with trio.open_nursery() as nursery:
                conn.attach(nursery)
                with trio.move_on_after(http.HEADER_TIMEOUT):
                    await self._respond(conn)
        except Exception:
            log.exception("metrics request from %s failed", peer)
        finally:
            conn.abort()

    async def _respond(self, conn: Connection) -> None:
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=http.MAX_HEADER_BYTES)
        try:
            event = await http.next_event(h, conn)
        except h11.RemoteProtocolError:
            return
        if not isinstance(event, h11.Request):
            return
        path = event.target.decode("latin-1").partition("?")[0]
        close = [("connection", "close")]
        if event.method not in (b"GET", b"HEAD"):
            await http.send_response(conn, h, 405, b"method not allowed\n", headers=close)
        elif path != "/metrics":
            await http.send_response(conn, h, 404, b"not found (try /metrics)\n", headers=close)
        else:
            body = self.render()
            await http.send_response(conn, h, 200, body, CONTENT_TYPE, close,
                                     head=event.method == b"HEAD")


def _name(cls: type) -> str:
    return cls.__name__


class EndpointCollector(Collector):
    """Reads the endpoint's counters and its parts' stats at scrape time."""

    def __init__(self, endpoint: Measured) -> None:
        self.endpoint = endpoint

    def collect(self) -> Iterator[Metric]:
        ep = self.endpoint
        c = ep.counters
        pubsub = ep.pubsub

        g = GaugeMetricFamily("channels_connections", "Open client connections",
                              labels=["transport"])
        longpoll = sum(1 for s in list(ep.sessions) if isinstance(s, LongPollSession))
        g.add_metric(["websocket"], len(ep.sessions) - longpoll)
        g.add_metric(["longpoll"], longpoll)
        yield g
        yield GaugeMetricFamily("channels_joined_channels", "Channels joined on open connections",
                                value=sum(len(s.state.topics) for s in list(ep.sessions)))

        f = CounterMetricFamily("channels_connects", "WebSocket upgrades answered, by HTTP "
                                "status (101 accepted)", labels=["status"])
        for code, n in sorted(c.connects.items()):
            f.add_metric([str(code)], n)
        yield f

        f = CounterMetricFamily("channels_joins", "Joins answered, by channel class and status "
                                "(ok, error, crash)", labels=["channel", "status"])
        for (cls, outcome), n in sorted(c.joins.items(), key=lambda kv: (_name(kv[0][0]),
                                                                          kv[0][1])):
            f.add_metric([_name(cls), outcome], n)
        yield f
        yield _by_class("channels_leaves", "Topics left by the client", c.leaves)
        yield _by_class("channels_channel_crashes", "Channels that crashed", c.crashes)

        yield CounterMetricFamily("channels_messages_in", "Messages received from clients",
                                  value=c.messages_in)
        yield CounterMetricFamily("channels_bytes_in", "Bytes received on WebSocket connections",
                                  value=c.bytes_in)
        yield CounterMetricFamily("channels_messages_out", "Messages sent to clients (replies, "
                                  "pushes and broadcast deliveries)",
                                  value=c.messages_out + pubsub.fastlane_frames)
        yield CounterMetricFamily("channels_bytes_out", "Bytes of messages sent to clients",
                                  value=c.bytes_out + pubsub.fastlane_bytes)
        f = CounterMetricFamily("channels_replies", "Replies to client pushes, by status",
                                labels=["status"])
        for status, n in sorted(c.replies.items()):
            f.add_metric([status], n)
        yield f

        yield CounterMetricFamily("channels_broadcasts", "Broadcasts delivered on this node "
                                  "(local and from other nodes)", value=pubsub.broadcasts)
        if pubsub.fanout is not None:
            yield _histogram("channels_broadcast_recipients", "Subscribers on this node per "
                             "broadcast", [((), pubsub.fanout)])
        if c.handle_in is not None:
            series: list[tuple[tuple[str, ...], Histogram]] = sorted(
                (((_name(k),), h) for k, h in list(c.handle_in.items())), key=lambda s: s[0])
            yield _histogram("channels_handle_in_duration_seconds", "Time in handle_in, by "
                             "channel class", series, ["channel"])

        for name, doc, value in (
            ("channels_slow_consumer_closes", "Connections closed (1013) for not reading",
             c.slow_consumers),
            ("channels_rate_limited", "Pushes refused with rate_limited", c.rate_limited),
            ("channels_rate_limit_closes", "Connections closed (1008) for flooding",
             c.rate_limit_closes),
            ("channels_overloaded", "Pushes refused with overloaded (channel mailbox full)",
             c.overloaded),
            ("channels_idle_closes", "Connections closed (1002) by the heartbeat monitor",
             c.idle_closes),
        ):
            yield CounterMetricFamily(name, doc, value=value)

        yield from self._presence()
        yield from self._redis()
        yield from self._rooms()

    def _presence(self) -> Iterator[Metric]:
        presence = self.endpoint.presence
        if presence is None:
            return
        try:
            tracker = presence.tracker
        except RuntimeError:  # not running yet
            return
        entries = GaugeMetricFamily("channels_presence_entries", "Presence entries stored "
                                    "(all nodes' entries, as replicated here)",
                                    labels=["presence"])
        topics = GaugeMetricFamily("channels_presence_topics", "Topics with presences",
                                   labels=["presence"])
        n_entries = n_topics = 0
        for shard in getattr(tracker, "_shards", ()):
            n_entries += len(shard.state)
            n_topics += len(shard.state.topics())
        entries.add_metric([presence.name], n_entries)
        topics.add_metric([presence.name], n_topics)
        yield entries
        yield topics

    def _redis(self) -> Iterator[Metric]:
        stats_fn = getattr(self.endpoint.pubsub.adapter, "stats", None)
        if not callable(stats_fn):
            return
        stats: dict[str, Any] = stats_fn()
        gauges = {"connected": "1 while linked to Redis (subscribed, holding the node name)",
                  "queued": "Messages waiting to be published"}
        for key, value in stats.items():
            if key in gauges:
                yield GaugeMetricFamily(f"channels_redis_{key}", gauges[key], value=float(value))
            else:
                yield CounterMetricFamily(f"channels_redis_{key}", f"Redis link: {key}",
                                          value=value)

    def _rooms(self) -> Iterator[Metric]:
        rooms = self.endpoint.rooms
        if rooms is None:
            return
        for key, value in rooms.stats().items():
            if key == "active":
                yield GaugeMetricFamily("channels_rooms_active", "Rooms running on this node",
                                        value=value)
            else:
                yield CounterMetricFamily(f"channels_rooms_{key}", f"Rooms: {key}", value=value)


def _by_class(name: str, doc: str, table: dict[type, int]) -> Metric:
    f = CounterMetricFamily(name, doc, labels=["channel"])
    for cls, n in sorted(table.items(), key=lambda kv: _name(kv[0])):
        f.add_metric([_name(cls)], n)
    return f


def _histogram(name: str, doc: str, series: list[tuple[tuple[str, ...], Histogram]],
               labels: list[str] | None = None) -> Metric:
    f = HistogramMetricFamily(name, doc, labels=labels or [])
    for values, hist in series:
        buckets = [("+Inf" if bound == float("inf") else repr(bound), float(n))
                   for bound, n in hist.cumulative()]
        f.add_metric(list(values), buckets, hist.sum)
    return f
