"""The runnable examples in docs/ work as the guide says."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import ConnectionRejected

from docs.examples.quickstart import endpoint as quickstart_endpoint
from tests.support.client import connect


async def test_quickstart(nursery: trio.Nursery) -> None:
    port = await nursery.start(quickstart_endpoint.serve, "127.0.0.1", 0)
    with pytest.raises(ConnectionRejected):
        async with connect(port):
            pass
    async with connect(port, query="user=ada") as ada, \
            connect(port, query="user=bob&muted=ada") as bob:
        assert await ada.join("room:lobby", "1", "1") == [
            "1", "1", "room:lobby", "phx_reply",
            {"status": "ok", "response": {"welcome": "ada"}}]
        assert await ada.recv() == ["1", None, "room:lobby", "hello", {"topic": "room:lobby"}]
        await bob.join("room:lobby", "1", "1")
        assert (await ada.recv())[3:] == ["user_joined", {"user": "bob"}]
        assert (await bob.join("room:secret", "2", "2"))[4] == {
            "status": "error", "response": {"reason": "unauthorized"}}
        await ada.send("1", "3", "room:lobby", "new_msg", {"body": "hi"})
        await bob.send("1", "4", "room:lobby", "new_msg", {"body": "yo"})
        await bob.send("1", "5", "room:lobby", "ping", {"n": 7})
        # bob muted ada: he sees only his own message, ada sees both
        seen_by_bob = []
        while (m := await bob.recv())[1] != "5":
            if m[3] == "new_msg":
                seen_by_bob.append(m[4]["body"])
        assert m[4] == {"status": "ok", "response": {"pong": 7}}
        assert seen_by_bob == ["yo"]
        assert (await ada.recv_until("new_msg"))[4] == {"user": "ada", "body": "hi"}
        assert (await ada.recv_until("new_msg"))[4] == {"user": "bob", "body": "yo"}
    # bob's channel terminated when his connection closed; nothing else to observe here


async def test_poll_rooms_example() -> None:
    from docs.examples.poll import endpoint, resources

    async with trio.open_nursery() as nursery:
        port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
        assert resources == {"started": True}
        async with connect(port, query="user=ada") as ada, \
                connect(port, query="user=bob") as bob:
            assert (await ada.join("poll:lunch", "1", "1"))[4] == {
                "status": "ok", "response": {"tally": {}}}
            await bob.join("poll:lunch", "1", "1")
            await ada.send("1", "2", "poll:lunch", "vote", {"choice": "pizza"})
            assert (await ada.recv_until("phx_reply"))[4] == {
                "status": "ok", "response": {"tally": {"pizza": 1}}}
            await bob.send("1", "2", "poll:lunch", "vote", {"choice": "soup"})
            # The room broadcast its tally before it replied to ada (recv_until skipped it).
            assert (await ada.recv_until("tally"))[4] == {"pizza": 1, "soup": 1}
            assert (await bob.recv_until("tally"))[4] == {"pizza": 1}
            await ada.send("1", "3", "poll:lunch", "vote", {"nope": 1})
            assert (await ada.recv_until("phx_reply"))[4]["status"] == "error"
        await endpoint.drain()  # serve() then stops in order and returns
    assert resources == {}
