"""Prometheus metrics and telemetry hooks: a scripted session, then a scrape."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionRejected

from channels import Channel, Endpoint, JoinError, Reply, Socket
from channels.stats import Histogram
from channels.telemetry import Telemetry
from tests.support.client import RawClient, connect


class MetricsChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        if params.get("refuse"):
            raise JoinError({"reason": "no"})
        if params.get("crash"):
            raise RuntimeError("join crashed on purpose")
        return None

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "ok":
            return Reply.ok({"n": 1})
        if event == "err":
            return Reply.error({"reason": "asked"})
        if event == "shout":
            await self.broadcast("shout", payload)
            return Reply.ok()
        if event == "boom":
            raise RuntimeError("boom on purpose")
        return None


class MetricsSocket(Socket):
    channels = {"room:*": MetricsChannel}
    rate_limit = None

    async def connect(self, params: dict[str, Any],
                      connect_info: dict[str, Any]) -> bool | dict[str, Any]:
        return not params.get("reject")


class LimitedSocket(MetricsSocket):
    rate_limit = (0.001, 2.0)  # two messages, then rate_limited


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def scrape(endpoint: Endpoint) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert endpoint.metrics is not None and endpoint.metrics.bound_port is not None
    status, headers, body = await http_get(endpoint.metrics.bound_port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def reply_to(c: RawClient, ref: str) -> list[Any]:
    while True:
        m = await c.recv()
        if m[3] == "phx_reply" and m[1] == ref:
            return m


async def test_scrape_after_a_scripted_session(nursery: trio.Nursery) -> None:
    endpoint = Endpoint({"/socket": MetricsSocket, "/limited": LimitedSocket}, metrics_port=0)
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    with pytest.raises(ConnectionRejected):
        async with connect(port, query="reject=1"):
            pass
    async with connect(port) as c1, connect(port) as c2, \
            connect(port, path="/limited/websocket") as c3:
        assert (await c1.join("room:a", "1", "1"))[4]["status"] == "ok"
        assert (await c2.join("room:a", "1", "1"))[4]["status"] == "ok"
        assert (await c1.join("room:b", "2", "2", {"refuse": True}))[4]["status"] == "error"
        assert (await c1.join("room:c", "3", "3", {"crash": True}))[4]["status"] == "error"
        assert (await c1.join("room:d", "4", "4"))[4]["status"] == "ok"
        await c1.send("1", "5", "room:a", "ok", {})
        assert (await reply_to(c1, "5"))[4]["status"] == "ok"
        await c1.send("1", "6", "room:a", "err", {})
        assert (await reply_to(c1, "6"))[4]["status"] == "error"
        await c1.send("1", "7", "room:a", "shout", {"body": "hi"})
        await c2.recv_until("shout")
        assert (await reply_to(c1, "7"))[4]["status"] == "ok"
        await c2.send("1", "2", "room:a", "phx_leave", {})
        await c2.recv_until("phx_close")
        await c1.send("4", "8", "room:d", "boom", {})
        await c1.recv_until("phx_error")
        assert (await c3.join("room:x", "1", "1"))[4]["status"] == "ok"
        await c3.send("1", "2", "room:x", "ok", {})
        assert (await reply_to(c3, "2"))[4]["status"] == "ok"
        await c3.send("1", "3", "room:x", "ok", {})
        assert (await reply_to(c3, "3"))[4]["response"] == {"reason": "rate_limited"}

        s = await scrape(endpoint)
    assert value(s, "channels_connections", transport="websocket") == 3
    assert value(s, "channels_joined_channels") == 2  # c1 room:a, c3 room:x
    assert value(s, "channels_connects_total", status="101") == 3
    assert value(s, "channels_connects_total", status="403") == 1
    assert value(s, "channels_joins_total", channel="MetricsChannel", status="ok") == 4
    assert value(s, "channels_joins_total", channel="MetricsChannel", status="error") == 1
    assert value(s, "channels_joins_total", channel="MetricsChannel", status="crash") == 1
    assert value(s, "channels_leaves_total", channel="MetricsChannel") == 1
    assert value(s, "channels_channel_crashes_total", channel="MetricsChannel") == 1
    assert value(s, "channels_replies_total", status="ok") == 3
    assert value(s, "channels_replies_total", status="error") == 1
    assert value(s, "channels_rate_limited_total") == 1
    assert value(s, "channels_overloaded_total") == 0
    assert value(s, "channels_slow_consumer_closes_total") == 0
    # c1: 4 joins + 4 pushes; c2: join, leave; c3: join + 2 pushes
    assert value(s, "channels_messages_in_total") == 13
    # join replies 6, push replies 3, leave reply + phx_close, phx_error, c3's 2 replies,
    # and the broadcast to 2 subscribers
    assert value(s, "channels_messages_out_total") == 6 + 3 + 2 + 1 + 2 + 2
    assert value(s, "channels_bytes_in_total") > 13 * 20
    assert value(s, "channels_bytes_out_total") > 16 * 20
    assert value(s, "channels_broadcasts_total") == 1
    assert value(s, "channels_broadcast_recipients_count") == 1
    assert value(s, "channels_broadcast_recipients_sum") == 2
    assert value(s, "channels_broadcast_recipients_bucket", le="1.0") == 0
    assert value(s, "channels_broadcast_recipients_bucket", le="10.0") == 1
    # ok, err, shout, boom on c1; ok on c3 (the rate-limited push never reached handle_in)
    assert value(s, "channels_handle_in_duration_seconds_count", channel="MetricsChannel") == 5
    assert value(s, "channels_handle_in_duration_seconds_bucket", channel="MetricsChannel",
                 le="+Inf") == 5
    assert value(s, "process_resident_memory_bytes") > 0


async def test_metrics_are_off_by_default_and_only_on_their_port(
        nursery: trio.Nursery) -> None:
    endpoint = Endpoint({"/socket": MetricsSocket})
    assert endpoint.metrics is None
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    status, _, _ = await http_get(port, "/metrics")
    assert status == 404
    on = Endpoint({"/socket": MetricsSocket}, metrics_port=0)
    main_port = await nursery.start(on.serve, "127.0.0.1", 0)
    assert on.metrics is not None and on.metrics.bound_port not in (None, main_port)
    assert (await http_get(main_port, "/metrics"))[0] == 404
    assert (await http_get(on.metrics.bound_port, "/nope"))[0] == 404


async def test_each_endpoint_has_its_own_registry(nursery: trio.Nursery) -> None:
    a = Endpoint({"/socket": MetricsSocket}, metrics_port=0)
    b = Endpoint({"/socket": MetricsSocket}, metrics_port=0)
    port_a = await nursery.start(a.serve, "127.0.0.1", 0)
    await nursery.start(b.serve, "127.0.0.1", 0)
    async with connect(port_a) as c:
        await c.join("room:a", "1", "1")
        sa, sb = await scrape(a), await scrape(b)
    assert value(sa, "channels_joins_total", channel="MetricsChannel", status="ok") == 1
    assert value(sb, "channels_joins_total", channel="MetricsChannel", status="ok") == 0


async def test_presence_redisless_rooms_and_user_metrics_in_the_registry(
        nursery: trio.Nursery) -> None:
    from prometheus_client import Counter

    from channels import Room, Rooms
    from presence import Presence

    class Counter1(Room):
        async def handle_call(self, message: Any) -> Any:
            return message

    presence = Presence()
    rooms = Rooms(Counter1)
    endpoint = Endpoint({"/socket": MetricsSocket}, presence=presence, rooms=rooms,
                        metrics_port=0)
    assert endpoint.metrics is not None
    mine = Counter("my_app_things", "things", registry=endpoint.metrics.registry)
    mine.inc(3)
    await nursery.start(endpoint.serve, "127.0.0.1", 0)
    assert await rooms.call(Counter1, "k1", "hello") == "hello"
    s = await scrape(endpoint)
    assert value(s, "my_app_things_total") == 3
    assert value(s, "channels_rooms_active") == 1
    assert value(s, "channels_rooms_activations_total") == 1
    assert ("channels_presence_entries", (("presence", "presence"),)) in s
    assert not any(name.startswith("channels_redis_") for name, _ in s)


def test_histogram_buckets() -> None:
    h = Histogram((1.0, 10.0))
    for v in (0.5, 1.0, 2.0, 10.0, 11.0):
        h.observe(v)
    assert h.cumulative() == [(1.0, 2), (10.0, 4), (float("inf"), 5)]
    assert h.count == 5 and h.sum == 24.5


# -- telemetry ---------------------------------------------------------------------------------

async def test_telemetry_events(nursery: trio.Nursery) -> None:
    endpoint = Endpoint({"/socket": MetricsSocket})
    seen: list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]] = []

    def handler(event: tuple[str, ...], measurements: dict[str, Any],
                metadata: dict[str, Any]) -> None:
        seen.append((event, measurements, metadata))

    hid = endpoint.telemetry.attach_many(
        [("channels", "connect"), ("channels", "join"), ("channels", "handle_in", "stop"),
         ("channels", "handle_in", "exception"), ("channels", "broadcast"),
         ("channels", "leave"), ("channels", "crash")], handler)
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as c:
        await c.join("room:a", "1", "1")
        await c.join("room:b", "2", "2", {"refuse": True})
        await c.send("1", "3", "room:a", "err", {})
        await reply_to(c, "3")
        await c.send("1", "4", "room:a", "shout", {"x": 1})
        await reply_to(c, "4")
        await c.send("1", "5", "room:a", "boom", {})
        await c.recv_until("phx_error")
    by_event: dict[tuple[str, ...], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for event, measurements, metadata in seen:
        by_event.setdefault(event, []).append((measurements, metadata))
    [(m, md)] = by_event[("channels", "connect")]
    assert md["status"] == 101 and md["path"] == "/socket/websocket"
    assert md["socket"] == "MetricsSocket" and m["duration"] >= 0
    joins = by_event[("channels", "join")]
    assert [(md["topic"], md["status"], md["channel"]) for _, md in joins] == [
        ("room:a", "ok", "MetricsChannel"), ("room:b", "error", "MetricsChannel")]
    stops = by_event[("channels", "handle_in", "stop")]
    assert [(md["event"], md["status"]) for _, md in stops] == [("err", "error"),
                                                                ("shout", "ok")]
    assert all(m["duration"] >= 0 for m, _ in stops)
    [(_, md)] = by_event[("channels", "handle_in", "exception")]
    assert md["event"] == "boom" and isinstance(md["exception"], RuntimeError)
    [(m, md)] = by_event[("channels", "broadcast")]
    assert m == {"recipients": 1} and md == {"topic": "room:a", "event": "shout"}
    [(_, md)] = by_event[("channels", "crash")]
    assert md["topic"] == "room:a" and md["channel"] == "MetricsChannel"
    assert endpoint.telemetry.detach(hid)
    assert endpoint.telemetry.active == frozenset()
    assert not endpoint.counters.timed


def test_failing_handler_is_logged_once_and_detached(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry()
    calls: list[int] = []

    def bad(event: tuple[str, ...], measurements: dict[str, Any],
            metadata: dict[str, Any]) -> None:
        calls.append(1)
        raise ValueError("handler bug")

    good_seen: list[dict[str, Any]] = []
    telemetry.attach(("channels", "join"), bad, handler_id="bad")
    telemetry.attach(("channels", "join"), lambda e, m, md: good_seen.append(md))
    with caplog.at_level(logging.ERROR, logger="channels.telemetry"):
        telemetry.execute(("channels", "join"), {}, {"n": 1})
        telemetry.execute(("channels", "join"), {}, {"n": 2})
    assert calls == [1]
    assert good_seen == [{"n": 1}, {"n": 2}]
    errors = [r for r in caplog.records if r.name == "channels.telemetry"]
    assert len(errors) == 1 and "'bad'" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert telemetry.handlers(("channels", "join"))[0][1] != "bad"
    assert telemetry.detach("bad") is False


def test_attach_validation() -> None:
    telemetry = Telemetry()
    telemetry.attach(("a", "b"), lambda e, m, md: None, handler_id="x")
    with pytest.raises(ValueError, match="already attached"):
        telemetry.attach(("a", "c"), lambda e, m, md: None, handler_id="x")
    with pytest.raises(ValueError):
        telemetry.attach((), lambda e, m, md: None)
    with pytest.raises(TypeError):
        telemetry.attach(("a",), "not callable")  # type: ignore[arg-type]
    assert telemetry.handlers() == [(("a", "b"), "x")]


async def test_nothing_is_timed_without_metrics_or_handlers(nursery: trio.Nursery) -> None:
    endpoint = Endpoint({"/socket": MetricsSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as c:
        await c.join("room:a", "1", "1")
        await c.send("1", "2", "room:a", "ok", {})
        await reply_to(c, "2")
    assert not endpoint.counters.timed
    assert endpoint.counters.handle_in is None and endpoint.pubsub.fanout is None
    assert endpoint.pubsub.on_broadcast is None
    # the plain counters count anyway
    assert endpoint.counters.replies == {"ok": 1}
    assert endpoint.counters.messages_in == 2


def test_redis_link_metrics_from_the_adapter_stats() -> None:
    from channels.redis import RedisAdapter

    endpoint = Endpoint({"/socket": MetricsSocket}, metrics_port=0)
    adapter = RedisAdapter("redis://127.0.0.1:1", node_name="n1")
    adapter.dropped, adapter.reconnects = 3, 2
    endpoint.pubsub.adapter = adapter
    assert endpoint.metrics is not None
    s: dict[Any, float] = {}
    for family in text_string_to_metric_families(endpoint.metrics.render().decode()):
        for sample in family.samples:
            s[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert value(s, "channels_redis_connected") == 0
    assert value(s, "channels_redis_dropped_total") == 3
    assert value(s, "channels_redis_reconnects_total") == 2
    assert ("channels_redis_queued", ()) in s


class IdleSocket(MetricsSocket):
    idle_timeout = 0.05


async def test_idle_closes_are_counted_and_reported(nursery: trio.Nursery) -> None:
    endpoint = Endpoint({"/socket": IdleSocket}, metrics_port=0)
    events: list[dict[str, Any]] = []
    endpoint.telemetry.attach(("channels", "protection"), lambda e, m, md: events.append(md))
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as c:
        assert await c.closed() == 1002
    s = await scrape(endpoint)
    assert value(s, "channels_idle_closes_total") == 1
    assert [e["kind"] for e in events] == ["idle_close"]
    assert events[0]["peer"].startswith("127.0.0.1:")
