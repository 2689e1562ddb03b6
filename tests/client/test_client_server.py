"""The client against real server processes (tests/support/app.py, presence_app.py and
tests/client/app.py): replies, broadcasts, binary, auth, heartbeats, restarts, Presence and
history recovery. Timeouts bound each wait; they are not timing assertions."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from channels.client import (
    ChannelClosed,
    ClientPresence,
    ConnectError,
    PushTimeout,
    ReplyError,
    ReplyLost,
    connect,
)
from tests.client.util import wait_for
from tests.support.server import ServerProcess, running_server

APP = "tests.support.app:make_endpoint"
PRESENCE_APP = "tests.support.presence_app:make_endpoint"
CLIENT_APP = "tests.client.app:make_endpoint"


def url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/socket"


@pytest.fixture(scope="module")
def app_server() -> Iterator[ServerProcess]:
    with running_server(APP, args=["--log-level", "WARNING"]) as server:
        yield server


@pytest.fixture(scope="module")
def client_app() -> Iterator[ServerProcess]:
    with running_server(CLIENT_APP, args=["--log-level", "WARNING"]) as server:
        yield server


@pytest.fixture
def own_server() -> Iterator[Any]:
    """Start a server of one's own (restarted, frozen or killed by the test)."""
    started: list[ServerProcess] = []

    def start(app: str = APP, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(app, env=env, args=["--log-level", "WARNING"])
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.kill()


async def test_join_push_replies_errors_and_timeouts(app_server: ServerProcess) -> None:
    with trio.fail_after(30):
        async with connect(url(app_server), params={"user_id": "ada"}) as socket:
            channel = socket.channel("room:lobby", {"reply": True})
            stream = channel.messages()
            assert await channel.join() == {"joined": "room:lobby"}
            msg = await stream.receive(timeout=5)
            assert (msg.event, msg.payload) == ("joined", {"status": "connected",
                                                           "user_id": "ada"})
            assert await channel.push("echo", {"a": [1, 2]}) == {"a": [1, 2]}
            assert await channel.push("later") == {"later": True}
            with pytest.raises(ReplyError) as info:
                await channel.push("error_reply")
            assert info.value.response == {"reason": "asked for it"}
            with pytest.raises(ReplyError, match="unhandled event"):
                await channel.push("no_such_event")
            with pytest.raises(PushTimeout):
                await channel.push("noreply", timeout=0.3)
            assert (await channel.push("assigns"))["join_ref"] == channel.join_ref

            # a crash on the server: phx_error, the push's reply is lost, the channel rejoins
            old_ref = channel.join_ref
            with pytest.raises(ReplyLost):
                await channel.push("boom")
            assert channel.state == "errored"
            await wait_for(lambda: channel.joined)
            assert channel.join_ref != old_ref
            assert (await channel.push("assigns"))["join_ref"] == channel.join_ref

            # the server stops the channel: the reply, then phx_close; no rejoin
            assert await channel.push("stop") == {"stopping": True}
            events = [m.event async for m in stream]
            assert events[-1] == "phx_close" and "phx_error" in events
            assert channel.state == "closed"
            with pytest.raises(ChannelClosed):
                await channel.push("echo", {})

            with pytest.raises(ReplyError, match="refused"):
                await socket.join("room:refused", {"refuse": True})
            with pytest.raises(ReplyError, match="join crashed"):
                await socket.join("room:crash", {"crash": True})
            with pytest.raises(ReplyError, match="unmatched topic"):
                await socket.join("nowhere:1")
            assert socket.connections == 1


async def test_broadcasts_between_two_clients(app_server: ServerProcess) -> None:
    with trio.fail_after(30):
        async with connect(url(app_server), params={"user_id": "a"}) as a, \
                connect(url(app_server), params={"user_id": "b"}) as b:
            ca = await a.join("room:bc")
            cb = b.channel("room:bc")
            got_b: list[Any] = []
            cb.on("shout", got_b.append)
            stream_b = cb.messages()
            await cb.join()
            stream_a = ca.messages()
            await ca.push("shout", {"n": 1})
            await ca.push("shout_from", {"n": 2})  # everyone but the sender
            await ca.push("new_msg", {"n": 3})     # intercepted: handle_out adds transport
            assert await _events(stream_b, 3) == [
                ("shout", {"n": 1}), ("shout", {"n": 2}),
                ("new_msg", {"n": 3, "transport": "websocket"})]
            assert got_b == [{"n": 1}, {"n": 2}]
            assert await _events(stream_a, 2) == [
                ("shout", {"n": 1}), ("new_msg", {"n": 3, "transport": "websocket"})]


async def _events(stream: Any, n: int, wanted: tuple[str, ...] = ("shout", "new_msg")
                  ) -> list[tuple[str, Any]]:
    seen = []
    while len(seen) < n:
        msg = await stream.receive(5)
        if msg.event in wanted:
            seen.append((msg.event, msg.payload))
    return seen


async def test_binary_payloads(app_server: ServerProcess) -> None:
    with trio.fail_after(30):
        async with connect(url(app_server)) as a, connect(url(app_server)) as b:
            ca = await a.join("room:bin")
            cb = await b.join("room:bin")
            stream_a, stream_b = ca.messages(), cb.messages()
            assert await ca.push("binary_event", b"\x01\x02") == b"\x01\x02\x03\x04"
            assert await _events(stream_a, 1, ("binary_event",)) == [
                ("binary_event", b"\x00\x01")]
            await ca.push("bin_broadcast", bytes(range(256)))
            for stream in (stream_a, stream_b):
                assert await _events(stream, 1, ("bin",)) == [("bin", bytes(range(256)))]


async def test_auth_token_and_connect_params(app_server: ServerProcess) -> None:
    with trio.fail_after(30):
        token = "tøken/with+odd=chars"
        async with connect(url(app_server), params={"user_id": "ada", "extra": {"a": 1}},
                           auth_token=lambda: token) as socket:
            channel = socket.channel("info")
            info = await channel.join()
            assert info["auth_token"] == token
            assert info["params"] == {"user_id": "ada", "extra": {"a": "1"}, "vsn": "2.0.0"}
            assert info["path"] == "/socket/websocket"
        with pytest.raises(ConnectError) as refused:
            async with connect(url(app_server), auth_token="bad-token"):
                pass
        assert refused.value.status == 403
        with pytest.raises(ConnectError):
            async with connect(url(app_server), params={"reject": "1"}):
                pass


async def test_join_params_callable_is_evaluated_on_every_rejoin(
        client_app: ServerProcess) -> None:
    joins: list[Any] = []
    calls = 0

    def params() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"n": calls}

    with trio.fail_after(30):
        async with connect(url(client_app), params={"user": "pc"}) as socket:
            channel = socket.channel("params:1", params)
            channel.on_join(joins.append)
            assert await channel.join() == {"params": {"n": 1}}
            with pytest.raises(ReplyLost):
                await channel.push("crash")               # rejoins after 1 s (rejoin_after)
            await wait_for(lambda: len(joins) == 2)
            with pytest.raises(ReplyLost):
                await channel.push("kick", timeout=5)     # the server closes the connection
            await wait_for(lambda: len(joins) == 3)
            assert joins == [{"params": {"n": 1}}, {"params": {"n": 2}}, {"params": {"n": 3}}]
            assert socket.connections == 2


async def test_heartbeats_keep_an_idle_connection_open(own_server: Any) -> None:
    server = own_server(env={"TEST_IDLE_TIMEOUT": "1.5"})
    closes: list[Any] = []
    with trio.fail_after(30):
        async with connect(url(server), heartbeat_interval=0.5) as socket:
            socket.on_close(lambda code, reason: closes.append(code))
            channel = await socket.join("room:hb")
            await trio.sleep(3.5)
            assert closes == [] and socket.connections == 1 and channel.joined
            assert await socket.ping() < 1
        # without heartbeats the server's idle timeout closes it (1002); the client comes back
        async with connect(url(server), heartbeat_interval=None) as socket:
            socket.on_close(lambda code, reason: closes.append(code))
            channel = await socket.join("room:hb")
            await wait_for(lambda: socket.connections >= 2 and channel.joined, 10)
            assert closes[0] == 1002


async def test_heartbeat_timeout_on_a_frozen_server_then_recovery(own_server: Any) -> None:
    server = own_server()
    closes: list[Any] = []
    with trio.fail_after(40):
        async with connect(url(server), heartbeat_interval=0.5, timeout=1) as socket:
            socket.on_close(lambda code, reason: closes.append((code, reason)))
            channel = await socket.join("room:frozen", timeout=10)
            first_ref = channel.join_ref
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            await wait_for(lambda: closes, 5)
            assert closes == [(1000, "heartbeat timeout")]
            assert channel.state == "errored" and not socket.is_connected
            await trio.sleep(1.5)  # attempts time out against the frozen process
            os.kill(server.proc.pid, signal.SIGCONT)
            await wait_for(lambda: channel.joined, 15)
            assert channel.join_ref != first_ref
            assert await channel.push("echo", {"ok": 1}) == {"ok": 1}


async def test_server_restart_reconnects_and_rejoins(own_server: Any) -> None:
    server = own_server()
    closes: list[Any] = []
    joins: list[Any] = []
    with trio.fail_after(60):
        async with connect(url(server), params={"user_id": "r"}) as socket:
            socket.on_close(lambda code, reason: closes.append(code))
            channel = socket.channel("room:restart", {"reply": True})
            channel.on_join(joins.append)
            await channel.join()
            refs = [channel.join_ref]
            for _ in range(2):
                before = len(joins)
                await trio.to_thread.run_sync(server.restart)
                await wait_for(lambda: len(joins) > before, 20)  # noqa: B023
                refs.append(channel.join_ref)
                assert await channel.push("echo", {"n": len(refs)}) == {"n": len(refs)}
            assert closes == [1012, 1012]  # drained by SIGTERM
            assert len(set(refs)) == 3 and socket.connections == 3
            assert joins == [{"joined": "room:restart"}] * 3


async def test_presence_with_three_clients(own_server: Any) -> None:
    server = own_server(PRESENCE_APP)
    log: list[Any] = []
    with trio.fail_after(30):
        async with connect(url(server)) as sa, connect(url(server)) as sb, \
                connect(url(server)) as sc:
            ca = sa.channel("room:p", {"user": "a"})
            presence = ClientPresence(ca)
            presence.on_join(lambda key, cur, new: log.append(("join", key, cur is None)))
            presence.on_leave(lambda key, cur, left: log.append(("leave", key,
                                                                 len(cur["metas"]))))
            syncs: list[Any] = []
            presence.on_sync(lambda: syncs.append(sorted(
                presence.list(lambda key, p: key))))
            await ca.join()
            await wait_for(lambda: syncs and syncs[-1] == ["a"])
            presences_b = ClientPresence(cb := sb.channel("room:p", {"user": "b"}))
            await cb.join()
            cc = await sc.join("room:p", {"user": "c"})
            await wait_for(lambda: syncs[-1] == ["a", "b", "c"])
            await wait_for(lambda: sorted(presences_b.list(lambda k, p: k)) == ["a", "b", "c"])
            # (a's own diff may come after its presence_state: a join of a known key)
            assert [key for ev, key, new in log if ev == "join" and new] == ["a", "b", "c"]

            reply = await cb.push("status", {"status": "away"})  # a leave and a join in one diff
            await wait_for(lambda: any(m.get("status") == "away"
                                       for p in presence.list() for m in p["metas"]))
            [b] = [p for p in presence.list() if p["metas"][0].get("status") == "away"]
            assert b["metas"][0]["phx_ref"] == reply["phx_ref"] and len(b["metas"]) == 1

            await cc.leave()
            await wait_for(lambda: syncs[-1] == ["a", "b"])
            assert ("leave", "c", 0) in log
        # b and c's sockets are closed too now; a saw b's status change as one diff
        assert ("join", "b", False) in log


async def test_history_recovery_across_a_reconnect(client_app: ServerProcess) -> None:
    got: list[int] = []
    recoveries: list[Any] = []
    closed = trio.Event()
    with trio.fail_after(30):
        async with connect(url(client_app), params={"user": "reader"},
                           reconnect_after=lambda tries: 2.0) as reader, \
                connect(url(client_app), params={"user": "writer"}) as writer:
            reader.on_close(lambda code, reason: closed.set())
            feed = reader.channel("feed:rec", on_recovery=recoveries.append)
            feed.on("post", lambda payload: got.append(payload["n"]))
            await feed.join()
            assert recoveries[0]["recovered"] is False
            out = await writer.join("feed:rec")
            for n in range(1, 4):
                await out.push("post", {"n": n})
            await wait_for(lambda: got == [1, 2, 3])
            assert feed.position is not None and feed.position["offset"] == 3
            with pytest.raises(ReplyLost):
                await feed.push("kick")
            await closed.wait()
            for n in range(4, 9):  # missed while the reader is away (it waits 2 s)
                await out.push("post", {"n": n})
            await wait_for(lambda: len(recoveries) == 2)
            assert recoveries[1]["recovered"] is True and recoveries[1]["replayed"] == 5
            await out.push("post", {"n": 9})
            await wait_for(lambda: len(got) >= 9)
            await trio.sleep(0.2)
            assert got == list(range(1, 10))
            assert feed.position == {"offset": 9, "epoch": recoveries[0]["epoch"]}
