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
