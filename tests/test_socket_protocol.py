"""Socket and channel semantics over a real WebSocket, with raw V1 / V2 / binary frames.

The test client deliberately uses join_refs "11", "12", ... next to refs "1", "2", ... to
prove the server never couples them (as Phoenix's own integration tests do).
"""

from __future__ import annotations

from typing import Any

import pytest
from trio_websocket import ConnectionRejected

from channels import Endpoint
from tests.support import app
from tests.support.client import RawClient, connect

OK: dict[str, Any] = {"status": "ok", "response": {}}
V2 = "2.0.0"


def jr(client: RawClient, value: str) -> str | None:
    """The join_ref the server echoes: V1 never emits one."""
    return None if client.vsn.startswith("1.") else value


@pytest.fixture(params=["1.0.0", V2])
def vsn(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_heartbeat_reply(endpoint: Endpoint, vsn: str) -> None:
    async with connect(endpoint.port, vsn) as c:  # type: ignore[attr-defined]
        await c.send(None, "1", "phoenix", "heartbeat", {})
        assert await c.recv() == [None, "1", "phoenix", "phx_reply", OK]


async def test_nested_mount(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2, path="/ws/admin/websocket") as c:  # type: ignore[attr-defined]
        assert await c.join("room:x", "11", "1") == ["11", "1", "room:x", "phx_reply", OK]


async def test_full_lifecycle(endpoint: Endpoint, vsn: str) -> None:
    app.TERMINATED.clear()
    async with connect(endpoint.port, vsn, query="user_id=7") as c:  # type: ignore[attr-defined]
        await c.send("11", "1", "room:lobby", "phx_join", {"reply": True})
        assert await c.recv() == [jr(c, "11"), "1", "room:lobby", "phx_reply",
                                  {"status": "ok", "response": {"joined": "room:lobby"}}]
        assert await c.recv() == [jr(c, "11"), None, "room:lobby", "joined",
                                  {"status": "connected", "user_id": "7"}]
        assert await c.recv() == [None, None, "room:lobby", "user_entered", {"user": "7"}]
        # intercepted broadcast comes back through handle_out, pushed with the join_ref
        await c.send("11", "2", "room:lobby", "new_msg", {"body": "hi!"})
        got = [await c.recv(), await c.recv()]
        assert [jr(c, "11"), "2", "room:lobby", "phx_reply", OK] in got
        assert [jr(c, "11"), None, "room:lobby", "new_msg",
                {"body": "hi!", "transport": "websocket"}] in got
        await c.send("11", "3", "room:lobby", "phx_leave", {})
        assert await c.recv() == [jr(c, "11"), "3", "room:lobby", "phx_reply", OK]
        assert await c.recv() == [jr(c, "11"), "11", "room:lobby", "phx_close", {}]
        assert await c.recv() == [jr(c, "11"), None, "room:lobby", "you_left",
                                  {"message": "bye"}]
        await c.send("11", "4", "room:lobby", "new_msg", {"body": "after"})
        assert await c.recv() == [None, "4", "room:lobby", "phx_reply",
                                  {"status": "error", "response": {"reason": "unmatched topic"}}]
    assert ("room:lobby", "leave") in app.TERMINATED


async def test_join_error_and_crash(endpoint: Endpoint, vsn: str) -> None:
    async with connect(endpoint.port, vsn) as c:  # type: ignore[attr-defined]
        assert await c.join("room:a", "11", "1", {"refuse": True}) == [
            jr(c, "11"), "1", "room:a", "phx_reply",
            {"status": "error", "response": {"reason": "refused"}}]
        assert await c.join("room:a", "12", "2", {"crash": True}) == [
            jr(c, "12"), "2", "room:a", "phx_reply",
            {"status": "error", "response": {"reason": "join crashed"}}]
        # neither registered the topic
        await c.send("12", "3", "room:a", "echo", {})
        assert (await c.recv())[4]["response"] == {"reason": "unmatched topic"}
        assert (await c.join("room:a", "13", "4"))[4] == OK


async def test_unmatched_join_has_null_join_ref(endpoint: Endpoint, vsn: str) -> None:
    async with connect(endpoint.port, vsn) as c:  # type: ignore[attr-defined]
        assert await c.join("unmatched-topic", "11", "1") == [
            None, "1", "unmatched-topic", "phx_reply",
            {"status": "error", "response": {"reason": "unmatched topic"}}]
        await c.send(None, "2", "never-joined", "event", {})
        assert await c.recv() == [None, "2", "never-joined", "phx_reply",
                                  {"status": "error", "response": {"reason": "unmatched topic"}}]


async def test_leave_not_joined_is_ok(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        await c.send("11", "1", "room:nope", "phx_leave", {})
        assert await c.recv() == ["11", "1", "room:nope", "phx_reply", OK]


async def test_duplicate_join_replies_then_closes_old(endpoint: Endpoint, vsn: str) -> None:
    app.TERMINATED.clear()
    async with connect(endpoint.port, vsn) as c:  # type: ignore[attr-defined]
        await c.join("room:dup", "11", "1")
        await c.recv_until("user_entered")
        await c.send("12", "2", "room:dup", "phx_join", {})
        assert await c.recv() == [jr(c, "12"), "2", "room:dup", "phx_reply", OK]
        assert await c.recv() == [jr(c, "11"), "11", "room:dup", "phx_close", {}]
        await c.send("12", "3", "room:dup", "assigns", {})
        reply = await c.recv_until("phx_reply")
        assert reply[1] == "3" and reply[4]["response"]["join_ref"] == "12"
    assert ("room:dup", "duplicate_join") in app.TERMINATED


async def test_stale_join_ref_is_dropped(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        await c.join("room:s", "11", "1")
        await c.recv_until("user_entered")
        await c.send("99", "2", "room:s", "echo", {"n": 1})       # stale: dropped
        await c.send("99", "3", "room:s", "phx_leave", {})        # stale leave: dropped
        await c.send(None, "4", "room:s", "echo", {"n": 2})       # null join_ref: accepted
        await c.send("11", "5", "room:s", "echo", {"n": 3})
        assert await c.recv() == [
            "11", "4", "room:s", "phx_reply", {"status": "ok", "response": {"n": 2}}]
        assert await c.recv() == [
            "11", "5", "room:s", "phx_reply", {"status": "ok", "response": {"n": 3}}]


async def test_crash_errors_one_topic_only(endpoint: Endpoint, vsn: str) -> None:
    async with connect(endpoint.port, vsn) as c:  # type: ignore[attr-defined]
        await c.join("room:a", "11", "1")
        await c.recv_until("user_entered")
        await c.join("room:b", "12", "2")
        await c.recv_until("user_entered")
        await c.send("11", "3", "room:a", "boom", {})
        assert await c.recv() == [jr(c, "11"), "11", "room:a", "phx_error",
                                  {"reason": "channel_crash"}]
        await c.send("12", "4", "room:b", "echo", {"still": "alive"})
        assert await c.recv() == [jr(c, "12"), "4", "room:b", "phx_reply",
                                  {"status": "ok", "response": {"still": "alive"}}]
        await c.send("11", "5", "room:a", "echo", {})
        assert (await c.recv())[4]["response"] == {"reason": "unmatched topic"}
        # the client rejoins with a new join_ref, and the topic works again
        assert (await c.join("room:a", "13", "6"))[:2] == [jr(c, "13"), "6"]
        await c.send("13", "7", "room:a", "echo", {"back": 1})
        assert (await c.recv_until("phx_reply"))[4]["response"] == {"back": 1}


async def test_channel_limit(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        for i in range(100):
            await c.send(str(1000 + i), str(i + 1), f"room:{i}", "phx_join", {})
        oks = 0
        while oks < 100:
            m = await c.recv()
            if m[3] == "phx_reply":
                assert m[4] == OK
                oks += 1
        await c.send("2000", "101", "room:100", "phx_join", {})
        assert await c.recv_until("phx_reply") == [
            "2000", "101", "room:100", "phx_reply",
            {"status": "error", "response": {"reason": "too many channels joined"}}]
        # a duplicate join of a joined topic does not count against the limit
        await c.send("2001", "102", "room:5", "phx_join", {})
        assert await c.recv_until("phx_reply") == ["2001", "102", "room:5", "phx_reply", OK]


async def test_replies_pushes_and_later_replies(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        await c.join("room:r", "11", "1")
        await c.recv_until("user_entered")
        await c.send("11", "2", "room:r", "error_reply", {})
        assert await c.recv() == ["11", "2", "room:r", "phx_reply",
                                  {"status": "error", "response": {"reason": "asked for it"}}]
        await c.send("11", "3", "room:r", "later", {})
        await c.send("11", "4", "room:r", "noreply", {})
        await c.send("11", "5", "room:r", "echo", {"x": 5})
        assert await c.recv() == ["11", "5", "room:r", "phx_reply",
                                  {"status": "ok", "response": {"x": 5}}]
        assert await c.recv() == ["11", "3", "room:r", "phx_reply",
                                  {"status": "ok", "response": {"later": True}}]


async def test_stop_sends_reply_then_close(endpoint: Endpoint) -> None:
    app.TERMINATED.clear()
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        await c.join("room:stop", "11", "1")
        await c.recv_until("user_entered")
        await c.send("11", "2", "room:stop", "stop", {})
        assert await c.recv() == ["11", "2", "room:stop", "phx_reply",
                                  {"status": "ok", "response": {"stopping": True}}]
        assert await c.recv() == ["11", "11", "room:stop", "phx_close", {}]
    assert ("room:stop", "normal") in app.TERMINATED


async def test_broadcast_and_broadcast_from(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2) as a, connect(endpoint.port, "1.0.0") as b:  # type: ignore[attr-defined]
        await a.join("room:bc", "11", "1")
        await a.recv_until("user_entered")
        await b.join("room:bc", "21", "1")
        await b.recv_until("user_entered")
        await a.recv_until("user_entered")  # b's arrival
        await a.send("11", "2", "room:bc", "shout", {"n": 1})
        assert await a.recv_until("shout") == [None, None, "room:bc", "shout", {"n": 1}]
        assert await b.recv_until("shout") == [None, None, "room:bc", "shout", {"n": 1}]
        await a.send("11", "3", "room:bc", "shout_from", {"n": 2})
        assert await b.recv_until("shout") == [None, None, "room:bc", "shout", {"n": 2}]
        # a gets only its reply, never its own broadcast_from
        await a.send("11", "4", "room:bc", "echo", {"marker": True})
        while True:
            m = await a.recv()
            assert m[3] != "shout"
            if m[1] == "4":
                break


async def test_binary_push_reply_and_broadcast(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        await c.join("room:bin", "11", "1")
        await c.recv_until("user_entered")
        await c.send("11", "2", "room:bin", "binary_event", b"\x01\x02")
        assert await c.recv() == ["11", "2", "room:bin", "phx_reply",
                                  {"status": "ok", "response": b"\x01\x02\x03\x04"}]
        assert await c.recv() == ["11", None, "room:bin", "binary_event", b"\x00\x01"]
        await c.send("11", "3", "room:bin", "bin_broadcast", b"\xff")
        got = [await c.recv(), await c.recv()]
        assert [None, None, "room:bin", "bin", b"\xff"] in got


async def test_binary_push_on_v1_is_malformed_json_1007(endpoint: Endpoint) -> None:
    # V1 reads JSON from binary frames too (as Phoenix does): a V2 binary push is not JSON.
    async with connect(endpoint.port, "1.0.0") as c:  # type: ignore[attr-defined]
        await c.send_raw(b"\x00\x01\x01\x01\x01abcdpayload")
        assert await c.closed() == 1007


async def test_disconnect_broadcast_closes_user_sockets(endpoint: Endpoint) -> None:
    app.TERMINATED.clear()
    async with connect(endpoint.port, V2, query="user_id=1001") as c, \
            connect(endpoint.port, V2, query="user_id=1002") as other:  # type: ignore[attr-defined]
        await c.join("room:1", "11", "1")
        await c.join("room:2", "12", "2")
        await endpoint.broadcast("user_sockets:1001", "disconnect", {})
        assert await c.closed() == 1001
        await other.send(None, "9", "phoenix", "heartbeat", {})
        assert (await other.recv())[1] == "9"
    assert {t for t, _ in app.TERMINATED} >= {"room:1", "room:2"}


@pytest.mark.parametrize("query, status", [("vsn=123.1.1", 403), ("vsn=2.1.0", 403),
                                           ("reject=true&vsn=2.0.0", 403),
                                           ("rate_limit=1&vsn=2.0.0", 429)])
async def test_upgrade_refusals(endpoint: Endpoint, query: str, status: int) -> None:
    with pytest.raises(ConnectionRejected) as err:
        async with connect(endpoint.port, None, query=query):  # type: ignore[attr-defined]
            pass
    assert err.value.status_code == status


async def test_missing_vsn_means_v1(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, None) as c:  # type: ignore[attr-defined]
        await c.send(None, "1", "phoenix", "heartbeat", {})
        assert await c.recv() == [None, "1", "phoenix", "phx_reply", OK]


@pytest.mark.parametrize("origin, allowed", [("https://example.com", True),
                                             ("http://example.com", False),
                                             ("http://notallowed.com", False),
                                             ("https://a.allowed.test", True),
                                             ("http://allowed.test", True),
                                             (None, True)])
async def test_check_origin(endpoint: Endpoint, origin: str | None, allowed: bool) -> None:
    headers = [("origin", origin)] if origin else []
    if allowed:
        async with connect(endpoint.port, V2, headers=headers) as c:  # type: ignore[attr-defined]
            await c.send(None, "1", "phoenix", "heartbeat", {})
            assert (await c.recv())[1] == "1"
    else:
        with pytest.raises(ConnectionRejected) as err:
            async with connect(endpoint.port, V2, headers=headers):  # type: ignore[attr-defined]
                pass
        assert err.value.status_code == 403


async def test_auth_token_subprotocol_and_connect_info(endpoint: Endpoint) -> None:
    # phoenix.js: btoa(token) with the padding stripped; "tok=?" -> "dG9rPT8"
    protos = ["phoenix", "base64url.bearer.phx.dG9rPT8"]
    async with connect(endpoint.port, V2, query="token=abc&nested%5Ba%5D=1",
                       subprotocols=protos,
                       headers=[("x-application", "trio"), ("user-agent", "foo/1.0")]) as c:  # type: ignore[attr-defined]
        assert c.ws.subprotocol == "phoenix"
        reply = await c.join("info", "11", "1")
        info = reply[4]["response"]
        assert info["auth_token"] == "tok=?"
        assert info["user_agent"] == "foo/1.0"
        assert info["peer"] == "127.0.0.1"
        assert info["path"] == "/socket/websocket"
        assert ["x-application", "trio"] in info["x_headers"]
    with pytest.raises(ConnectionRejected) as err:
        async with connect(endpoint.port, V2, subprotocols=["mqtt"]):  # type: ignore[attr-defined]
            pass
    assert err.value.status_code == 403
    # "bad-token" is refused by the test socket's connect
    bad = "base64url.bearer.phx.YmFkLXRva2Vu"
    with pytest.raises(ConnectionRejected):
        async with connect(endpoint.port, V2, subprotocols=["phoenix", bad]):  # type: ignore[attr-defined]
            pass


async def test_nested_params_reach_connect(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2, query="user_id=5&nested%5Ba%5D=1") as c:  # type: ignore[attr-defined]
        await c.join("room:p", "11", "1")
        await c.recv_until("user_entered")
        await c.send("11", "2", "room:p", "assigns", {})
        assert (await c.recv_until("phx_reply"))[4]["response"]["user_id"] == "5"


async def test_handle_info_from_another_task_and_timers(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        await c.join("room:info", "11", "1")
        await c.recv_until("user_entered")
        channel = app.CHANNELS["room:info"]
        channel.send(("push", "from_outside", {"n": 1}))
        assert await c.recv() == ["11", None, "room:info", "from_outside", {"n": 1}]
        later = channel.send_after(0.05, ("push", "timer", {"n": 2}))
        cancelled = channel.send_after(0.01, ("push", "cancelled", {"n": 3}))
        assert cancelled.cancel()
        assert await c.recv() == ["11", None, "room:info", "timer", {"n": 2}]
        assert not later.cancel()
