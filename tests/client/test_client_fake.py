"""The client against a scripted in-memory server on trio's MockClock: exact timings
(heartbeats, reconnect and rejoin backoff, timeouts) and the protocol rules frame by frame."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import trio
from pytest import approx

from channels.client import (
    ChannelClosed,
    ClientPresence,
    ConnectError,
    PushTimeout,
    ReplyError,
    connect,
)
from channels.client.socket import default_reconnect_after, default_rejoin_after
from tests.client.fake import FakeConn, FakeServer

URL = "ws://fake.test/socket"
TOPIC = "room:1"


async def _joined(socket: Any, server: FakeServer, topic: str = TOPIC, params: Any = None,
                  conn: FakeConn | None = None, **kwargs: Any) -> tuple[Any, FakeConn, Any]:
    """A channel joined through the fake server: (channel, conn, the join message)."""
    conn = conn or await server.accept()
    channel = socket.channel(topic, params, **kwargs)
    join_msg = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(channel.join)
        join_msg = await conn.recv_event("phx_join")
        conn.reply(join_msg, "ok", {"hello": 1})
    return channel, conn, join_msg


def test_backoff_tables_are_phoenix_js() -> None:
    assert [default_reconnect_after(n) for n in range(1, 12)] == [
        0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 5.0]
    assert [default_rejoin_after(n) for n in range(1, 6)] == [1.0, 2.0, 5.0, 10.0, 10.0]


async def test_url_params_and_auth_token(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    calls = []

    def params() -> dict[str, Any]:
        calls.append(1)
        return {"user": "ada lovelace", "n": len(calls), "flag": True,
                "nested": {"a": [1, 2]}, "skip": None}

    async with connect(URL, params=params, auth_token="sécret/+", transport=server.transport):
        conn = await server.accept()
        assert conn.url == ("ws://fake.test/socket/websocket?user=ada%20lovelace&n=1&flag=true"
                            "&nested[a][0]=1&nested[a][1]=2&vsn=2.0.0".replace("[", "%5B")
                            .replace("]", "%5D"))
        assert conn.subprotocols is not None and conn.subprotocols[0] == "phoenix"
        prefix = "base64url.bearer.phx."
        token = conn.subprotocols[1]
        assert token.startswith(prefix) and "=" not in token
        raw = token[len(prefix):]
        # the standard alphabet, as phoenix.js's btoa (Phoenix decodes it so)
        assert raw == base64.b64encode("sécret/+".encode()).decode().rstrip("=")
        conn.close(1012)
        conn = await server.accept()  # params are evaluated again for every connection
        assert "n=2" in conn.url


async def test_heartbeats_then_timeout_closes_and_reconnects(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    closes = []
    async with connect(URL, transport=server.transport) as socket:
        socket.on_close(lambda code, reason: closes.append((code, reason)))
        conn = await server.accept()
        start = trio.current_time()
        beats = []
        for _ in range(3):
            beat = await conn.recv()
            assert (beat.join_ref, beat.topic, beat.event, beat.payload) == (
                None, "phoenix", "heartbeat", {})
            beats.append(trio.current_time() - start)
            await trio.sleep(2)  # the next one is due an interval after the reply
            conn.reply(beat)
        assert beats == approx([30, 62, 94])
        await conn.recv_event("heartbeat")  # at 126, left unanswered
        conn2 = await server.accept()
        # closed at 156 without waiting for a close handshake, reconnected 10 ms later
        assert trio.current_time() - start == approx(156.01)
        assert conn.client.client_close == (1000, "heartbeat timeout")
        assert closes == [(1000, "heartbeat timeout")]
        assert socket.connections == 2
        rtt = await _answer_ping(socket, conn2)
        assert rtt == approx(0.5)


async def _answer_ping(socket: Any, conn: FakeConn) -> float:
    async def answer() -> None:
        beat = await conn.recv_event("heartbeat")
        await trio.sleep(0.5)
        conn.reply(beat)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        return float(await socket.ping())


async def test_no_heartbeats_when_disabled(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport, heartbeat_interval=None):
        conn = await server.accept()
        with pytest.raises(trio.TooSlowError):
            await conn.recv(timeout=600)


async def test_reconnect_backoff_and_reset(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport) as socket:
        conn = await server.accept()
        server.down = True
        start = trio.current_time()
        conn.close(1011)
        await trio.sleep(21)
        waits = [b[0] - a[0] for a, b in zip(server.attempts[1:], server.attempts[2:],
                                              strict=False)]
        first = server.attempts[1][0] - start
        assert [first, *waits] == approx([0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1, 2, 5, 5, 5])
        assert not socket.is_connected
        server.down = False
        conn = await server.accept()
        reconnected = trio.current_time()
        conn.close(1012)
        await server.accept()  # tries were reset by the successful connection
        assert trio.current_time() - reconnected == approx(0.01)


async def test_urls_are_tried_in_turn(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    urls = ["ws://a.test/socket", "ws://b.test/socket", "ws://c.test/socket"]
    async with connect(urls, transport=server.transport) as socket:
        conn = await server.accept()
        assert conn.url.startswith("ws://a.test/")
        conn.close(1012)
        conn = await server.accept()
        assert conn.url.startswith("ws://b.test/") and socket.url == urls[1]
        server.down = True
        conn.close(1012)
        await trio.sleep(1)
        hosts = [url.split("/")[2] for _, url, _ in server.attempts]
        assert hosts[:6] == ["a.test", "b.test", "c.test", "a.test", "b.test", "c.test"]


async def test_first_connect_refused_raises_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    server.refuse = 403
    start = trio.current_time()
    with pytest.raises(ConnectError) as info:
        async with connect(URL, transport=server.transport):
            pass
    assert info.value.status == 403 and "HTTP 403" in str(info.value)
    assert trio.current_time() == start and len(server.attempts) == 1


async def test_first_connect_gives_up_after_connect_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    server.down = True
    start = trio.current_time()
    with pytest.raises(ConnectError, match="within 3 s"):
        async with connect(URL, transport=server.transport, connect_timeout=3):
            pass
    assert trio.current_time() - start == approx(3)
    # 0, .01, .06, .16, .31, .51, .76, 1.26, 2.26, then a last one at the deadline
    assert [t - start for t, _, _ in server.attempts] == approx(
        [0, 0.01, 0.06, 0.16, 0.31, 0.51, 0.76, 1.26, 2.26, 3])


async def test_join_push_reply_error_and_timeout(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport) as socket:
        channel, conn, join = await _joined(socket, server, params={"user": "ada"})
        assert join.payload == {"user": "ada"} and join.join_ref == join.ref
        assert channel.join_ref == join.ref and channel.joined

        async def serve() -> None:
            ok = await conn.recv_event("echo")
            assert ok.join_ref == join.ref and ok.payload == {"a": 1}
            conn.reply(ok, "ok", {"a": 1})
            bad = await conn.recv_event("bad")
            conn.reply(bad, "error", {"reason": "no"})
            late = await conn.recv_event("slow")
            await trio.sleep(10)
            conn.reply(late, "ok", {})  # too late: ignored

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            assert await channel.push("echo", {"a": 1}) == {"a": 1}
            with pytest.raises(ReplyError) as info:
                await channel.push("bad")
            assert info.value.response == {"reason": "no"} and info.value.status == "error"
            start = trio.current_time()
            with pytest.raises(PushTimeout):
                await channel.push("slow", timeout=3)
            assert trio.current_time() - start == approx(3)
        assert channel._replies == {}

        with pytest.raises(RuntimeError, match="before join"):
            await socket.channel("room:2").push("x")


async def test_join_refused_closes_the_channel(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport) as socket:
        conn = await server.accept()
        channel = socket.channel(TOPIC)

        async def refuse() -> None:
            conn.reply(await conn.recv_event("phx_join"), "error", {"reason": "unauthorized"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(refuse)
            with pytest.raises(ReplyError) as info:
                await channel.join()
        assert info.value.event == "phx_join" and info.value.response == {"reason": "unauthorized"}
        assert channel.state == "closed" and socket.channels == []
        await trio.sleep(30)  # and it does not retry
        with pytest.raises(trio.TooSlowError):
            await conn.recv_event("phx_join", timeout=1)
        with pytest.raises(RuntimeError, match="already called"):
            await channel.join()


async def test_join_timeout_sends_leave_and_closes(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport, timeout=5) as socket:
        conn = await server.accept()
        channel = socket.channel(TOPIC)
        start = trio.current_time()
        with pytest.raises(PushTimeout, match="not joined within 5 s"):
            await channel.join()
        assert trio.current_time() - start == approx(5)
        join = await conn.recv_event("phx_join")
        leave = await conn.recv_event("phx_leave")
        assert leave.join_ref == join.join_ref
        assert channel.state == "closed"


async def test_rejoin_backoff_new_join_refs_and_callable_params(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    counter = iter(range(100))
    async with connect(URL, transport=server.transport) as socket:
        joins: list[Any] = []
        channel, conn, join = await _joined(socket, server, params=lambda: {"n": next(counter)})
        channel.on_join(joins.append)
        conn.send(join.join_ref, None, TOPIC, "phx_error", {})  # the server channel crashed
        errored = trio.current_time()
        waits, refs, params = [], [join.ref], [join.payload["n"]]
        for attempt in range(5):
            msg = await conn.recv_event("phx_join")
            waits.append(trio.current_time() - errored)
            refs.append(msg.ref)
            params.append(msg.payload["n"])
            assert msg.join_ref == msg.ref and channel.join_ref == msg.ref
            errored = trio.current_time()
            conn.reply(msg, "ok" if attempt == 4 else "error", {"attempt": attempt})
        assert waits == approx([1, 2, 5, 10, 10])
        assert len(set(refs)) == 6 and params == [0, 1, 2, 3, 4, 5]
        await trio.sleep(0.1)
        assert channel.joined and joins == [{"attempt": 4}]
        assert channel._rejoin_timer.tries == 0


async def test_reconnect_rejoins_at_once_and_drops_stale_messages(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport) as socket:
        channel, conn, join = await _joined(socket, server)
        got: list[Any] = []
        errors: list[Any] = []
        channel.on("msg", got.append)
        channel.on_error(errors.append)
        conn.close(1012)
        conn2 = await server.accept()
        rejoin = await conn2.recv_event("phx_join")
        assert rejoin.ref != join.ref
        assert errors == [{"source": "transport", "reason": "connection_closed"}]
        assert channel.state == "joining"
        conn2.reply(rejoin)
        conn2.send(join.join_ref, None, TOPIC, "msg", {"n": "stale"})   # old join_ref: dropped
        conn2.send(rejoin.join_ref, None, TOPIC, "msg", {"n": "mine"})
        conn2.send(None, None, TOPIC, "msg", {"n": "broadcast"})
        conn2.send(None, None, "room:other", "msg", {"n": "other topic"})
        await trio.sleep(0.1)
        assert got == [{"n": "mine"}, {"n": "broadcast"}]


async def test_pushes_while_rejoining_wait_and_in_flight_ones_are_lost(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport) as socket:
        channel, conn, _ = await _joined(socket, server)
        results: dict[str, Any] = {}

        async def push(name: str) -> None:
            try:
                results[name] = await channel.push(name, {})
            except Exception as exc:
                results[name] = type(exc).__name__

        async with trio.open_nursery() as nursery:
            nursery.start_soon(push, "in_flight")
            await conn.recv_event("in_flight")
            conn.close(1012)
            conn2 = await server.accept()
            rejoin = await conn2.recv_event("phx_join")
            nursery.start_soon(push, "buffered")
            await trio.sleep(1)
            conn2.reply(rejoin)
            buffered = await conn2.recv_event("buffered")
            assert buffered.join_ref == rejoin.join_ref
            conn2.reply(buffered, "ok", {"sent": "after the rejoin"})
        assert results == {"in_flight": "ReplyLost", "buffered": {"sent": "after the rejoin"}}


async def test_leave_server_close_and_socket_exit(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport) as socket:
        channel, conn, join = await _joined(socket, server)
        closes: list[Any] = []
        channel.on_close(closes.append)

        async def ack() -> None:
            msg = await conn.recv_event("phx_leave")
            assert msg.join_ref == join.join_ref
            conn.reply(msg)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ack)
            assert await channel.leave() is True
        assert channel.state == "closed" and closes == [{"reason": "leave"}]
        with pytest.raises(ChannelClosed):
            await channel.push("x")

        other, _, join2 = await _joined(socket, server, "room:2", conn=conn)
        stream = other.messages()
        conn.send(join2.join_ref, None, "room:2", "bye", {"n": 1})
        conn.send(join2.join_ref, None, "room:2", "phx_close", {})
        events = [msg.event async for msg in stream]
        assert events == ["bye", "phx_close"] and other.state == "closed"

        last, _, _ = await _joined(socket, server, "room:3", conn=conn)
    # leaving the block closed the connection with 1000, and every channel
    assert conn.client.client_close == (1000, None)
    assert last.state == "closed" and socket.channels == []


async def test_exit_fails_waiting_pushes_of_other_tasks(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    outcome: list[str] = []
    async with trio.open_nursery() as nursery:
        async with connect(URL, transport=server.transport) as socket:
            channel, conn, _ = await _joined(socket, server)

            async def push() -> None:
                try:
                    await channel.push("never_answered", timeout=100)
                except ChannelClosed:
                    outcome.append("closed")

            nursery.start_soon(push)
            await conn.recv_event("never_answered")
    assert outcome == ["closed"]


async def test_errors_in_the_body_come_out_unwrapped(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    with pytest.raises(KeyError):
        async with connect(URL, transport=server.transport):
            raise KeyError("mine")


async def test_duplicate_topic_leaves_the_older_channel(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport) as socket:
        first, conn, join1 = await _joined(socket, server)
        second = socket.channel(TOPIC)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(second.join)
            leave = await conn.recv()
            assert leave.event == "phx_leave" and leave.join_ref == join1.join_ref
            join2 = await conn.recv()
            assert join2.event == "phx_join"
            conn.reply(join2)
        assert first.state == "closed" and second.joined and socket.channels == [second]


async def test_binary_frames(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport) as socket:
        channel, conn, join = await _joined(socket, server)
        stream = channel.messages()

        async def serve() -> None:
            push = await conn.recv_event("bin")
            assert push.payload == b"\x00\x01" and push.join_ref == join.join_ref
            conn._to_client.send_nowait(  # a binary reply (kind 1) and a broadcast (kind 2)
                bytes([1, len(push.join_ref), len(push.ref), len(TOPIC), 2]) + push.join_ref.encode()
                + push.ref.encode() + TOPIC.encode() + b"ok" + b"\xff")
            conn._to_client.send_nowait(bytes([2, len(TOPIC), 3]) + TOPIC.encode() + b"evt\x07")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            assert await channel.push("bin", b"\x00\x01") == b"\xff"
        msg = await stream.receive(timeout=1)
        assert (msg.event, msg.payload) == ("evt", b"\x07")


async def test_unencodable_payload_raises_in_the_caller(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport) as socket:
        channel, _, _ = await _joined(socket, server)
        with pytest.raises(Exception, match="must be a dict"):
            await channel.push("x", [1, 2])  # type: ignore[arg-type]
        with pytest.raises(Exception, match="JSON serializable"):
            await channel.push("x", {"a": object()})
        assert channel._replies == {}


async def test_history_positions_and_recovery(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    recoveries: list[Any] = []
    async with connect(URL, transport=server.transport) as socket:
        conn = await server.accept()
        channel = socket.channel("feed:1", {"user": "ada"}, initial=10,
                                 on_recovery=recoveries.append)

        async def first_join() -> None:
            join = await conn.recv_event("phx_join")
            assert join.payload == {"user": "ada", "phx_pos": {"last": 10}}
            conn.reply(join, "ok", {"phx_recovery": {"recovered": False, "epoch": "e1",
                                                     "offset": 7}})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_join)
            await channel.join()
        assert channel.position == {"offset": 7, "epoch": "e1"}
        for offset in (8, 9, 3):  # an older one does not move the position back
            conn.send(None, None, "feed:1", "post",
                      {"n": offset, "phx_pos": {"offset": offset, "epoch": "e1"}})
        await trio.sleep(0.1)
        assert channel.position == {"offset": 9, "epoch": "e1"}
        conn.close(1012)
        conn = await server.accept()
        rejoin = await conn.recv_event("phx_join")
        assert rejoin.payload == {"user": "ada", "phx_pos": {"offset": 9, "epoch": "e1"}}
        info = {"recovered": True, "epoch": "e1", "offset": 11, "replayed": 2}
        conn.reply(rejoin, "ok", {"phx_recovery": info})
        await trio.sleep(0.1)
        assert channel.recovery == info and recoveries[-1] == info
        assert channel.position == {"offset": 9, "epoch": "e1"}  # the replay moves it on
        conn.send(None, None, "feed:1", "post", {"phx_pos": {"offset": 3, "epoch": "e2"}})
        await trio.sleep(0.1)
        assert channel.position == {"offset": 3, "epoch": "e2"}  # a new epoch always wins
        # ... and is reported: what came between the two epochs is lost
        assert recoveries[-1] == {"recovered": False, "epoch": "e2", "offset": 2,
                                  "replayed": 0, "reason": "epoch changed"}
        assert channel.recovery == info  # (the last join's)
        conn.close(1012)  # history unavailable: the position is kept for the next rejoin
        conn = await server.accept()
        rejoin = await conn.recv_event("phx_join")
        assert rejoin.payload["phx_pos"] == {"offset": 3, "epoch": "e2"}
        unavailable = {"recovered": False, "epoch": "", "offset": 0, "replayed": 0,
                       "reason": "history unavailable"}
        conn.reply(rejoin, "ok", {"phx_recovery": unavailable})
        await trio.sleep(0.1)
        assert recoveries[-1] == unavailable and channel.position == {"offset": 3,
                                                                      "epoch": "e2"}


async def test_presence_diffs_before_state_wait_for_it(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport) as socket:
        conn = await server.accept()
        channel = socket.channel(TOPIC)
        presence = ClientPresence(channel)
        log: list[Any] = []
        presence.on_join(lambda key, cur, new: log.append(("join", key, cur is not None,
                                                           [m["phx_ref"] for m in new["metas"]])))
        presence.on_leave(lambda key, cur, left: log.append(("leave", key,
                                                             [m["phx_ref"] for m in left["metas"]])))
        presence.on_sync(lambda: log.append("sync"))

        async def serve() -> Any:
            join = await conn.recv_event("phx_join")
            conn.reply(join)
            # a diff before the state: held back until the state arrives
            conn.send(None, None, TOPIC, "presence_diff",
                      {"joins": {"b": {"metas": [{"phx_ref": "b1"}]}}, "leaves": {}})
            await trio.sleep(1)
            assert log == [] and presence.list() == []
            conn.send(join.join_ref, None, TOPIC, "presence_state",
                      {"a": {"metas": [{"phx_ref": "a1"}]}})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await channel.join()
        await trio.sleep(1)
        assert log == [("join", "a", False, ["a1"]), ("join", "b", False, ["b1"]), "sync"]
        assert [p["metas"][0]["phx_ref"] for p in presence.list()] == ["a1", "b1"]

        log.clear()
        conn.close(1012)  # after a rejoin, diffs wait again for the new state
        conn = await server.accept()
        rejoin = await conn.recv_event("phx_join")
        conn.reply(rejoin)
        conn.send(None, None, TOPIC, "presence_diff",
                  {"joins": {}, "leaves": {"b": {"metas": [{"phx_ref": "b1"}]}}})
        await trio.sleep(1)
        assert log == [] and presence.in_pending_sync_state()
        conn.send(rejoin.join_ref, None, TOPIC, "presence_state",
                  {"a": {"metas": [{"phx_ref": "a2"}]}, "b": {"metas": [{"phx_ref": "b1"}]}})
        await trio.sleep(1)
        assert log == [("join", "a", True, ["a2"]), ("leave", "a", ["a1"]),
                       ("leave", "b", ["b1"]), "sync"]
        assert presence.list(lambda key, p: (key, [m["phx_ref"] for m in p["metas"]])) == [
            ("a", ["a2"])]


async def test_callback_errors_are_logged_not_raised(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport) as socket:
        channel, conn, _ = await _joined(socket, server)
        got: list[Any] = []
        channel.on("msg", lambda payload: 1 / 0)
        channel.on("msg", got.append)
        conn.send(None, None, TOPIC, "msg", {"n": 1})
        await trio.sleep(0.1)
        assert got == [{"n": 1}] and socket.is_connected
    assert "ZeroDivisionError" in caplog.text


async def test_push_nowait(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    async with connect(URL, transport=server.transport, timeout=5) as socket:
        channel, conn, join = await _joined(socket, server)
        channel.push_nowait("now", {"n": 1})
        sent = await conn.recv_event("now")
        assert sent.join_ref == join.join_ref and sent.payload == {"n": 1}
        conn.reply(sent)  # a reply nobody waits for is dropped
        conn.close(1012)
        conn = await server.accept()
        rejoin = await conn.recv_event("phx_join")
        channel.push_nowait("expired", {})  # buffered longer than the timeout: dropped
        leave = await conn.recv_event("phx_leave")  # the rejoin timed out (5 s) ...
        assert leave.join_ref == rejoin.join_ref
        channel.push_nowait("buffered", {})
        rejoin = await conn.recv_event("phx_join")  # ... and was retried 1 s later
        conn.reply(rejoin)
        msg = await conn.recv()
        assert msg.event == "buffered" and msg.join_ref == rejoin.join_ref
        assert channel._replies == {} and channel._push_buffer == []


def _tasks() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(child) for nursery in task.child_nurseries
                       for child in nursery.child_tasks)
    return count(trio.lowlevel.current_root_task())


async def test_nothing_is_left_running(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer()
    before = _tasks()
    async with connect(URL, transport=server.transport) as socket:
        channel, conn, join = await _joined(socket, server)
        conn.send(join.join_ref, None, TOPIC, "phx_error", {})  # a rejoin timer is pending
        await trio.sleep(0.1)
        assert _tasks() > before
    assert _tasks() == before
    with pytest.raises(ValueError):
        async with connect(URL, transport=server.transport) as socket:
            conn = await server.accept()
            server.down = True
            conn.close(1012)  # reconnecting: attempts and backoff sleeps
            await trio.sleep(3)
            raise ValueError("mine")
    assert _tasks() == before and channel.state == "closed"
