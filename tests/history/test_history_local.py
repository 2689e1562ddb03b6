"""History on one node (the memory store): positions, recovering joins, bad positions."""

from __future__ import annotations

from typing import Any

import trio

from channels import Channel, Endpoint, Reply, Socket
from channels.history import History
from tests.support.client import connect


class FeedChannel(Channel):
    history = History(size=5, ttl=60)

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return {"hello": topic}

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        await self.broadcast("post", payload)
        return Reply.ok()


class PlainChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> None:
        return None


class FeedSocket(Socket):
    channels = {"feed:*": FeedChannel, "plain:*": PlainChannel}


def make() -> Endpoint:
    return Endpoint({"/socket": FeedSocket})


async def _posts(client: Any, n: int) -> list[int]:
    got = []
    for _ in range(n):
        msg = await client.recv_until("post")
        got.append(msg[4]["phx_pos"]["offset"])
    return got


async def test_positions_and_recovery(nursery: trio.Nursery) -> None:
    endpoint = make()
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as a:
        reply = (await a.join("feed:1", "1", "1"))[4]
        info = reply["response"]["phx_recovery"]
        assert reply["response"]["hello"] == "feed:1"
        assert info["recovered"] is False and info["offset"] == 0 and "reason" not in info
        epoch = info["epoch"]
        for n in range(1, 5):
            await endpoint.broadcast("feed:1", "post", {"n": n})
        assert await _posts(a, 4) == [1, 2, 3, 4]

        async with connect(port) as b:
            reply = (await b.join("feed:1", "1", "1",
                                  {"phx_pos": {"epoch": epoch, "offset": 2}}))[4]
            assert reply["response"]["phx_recovery"] == {
                "recovered": True, "epoch": epoch, "offset": 4, "replayed": 2}
            assert await _posts(b, 2) == [3, 4]
            await endpoint.broadcast("feed:1", "post", {"n": 5})
            assert await _posts(b, 1) == [5]
            assert await _posts(a, 1) == [5]

        cases = [
            ({"epoch": "another", "offset": 2}, "epoch changed"),
            ({"epoch": epoch, "offset": 99}, "position ahead of the history"),
            ({"epoch": epoch, "offset": "2"}, "bad position"),
            ("garbage", "bad position"),
            ({"epoch": "x" * 1000, "offset": 1}, "bad position"),
        ]
        for wanted, reason in cases:
            async with connect(port) as c:
                info = (await c.join("feed:1", "1", "1", {"phx_pos": wanted}))[4][
                    "response"]["phx_recovery"]
                assert info["recovered"] is False and info["reason"] == reason, (wanted, info)
                assert info["offset"] == 5 and info["epoch"] == epoch

        # A first join may ask for the newest entries.
        async with connect(port) as e:
            info = (await e.join("feed:1", "1", "1", {"phx_pos": {"last": 2}}))[4][
                "response"]["phx_recovery"]
            assert info == {"recovered": False, "epoch": epoch, "offset": 5, "replayed": 2}
            assert await _posts(e, 2) == [4, 5]

        # Past retention (size 5): offsets 1..7 were stored, 3..7 are left.
        for n in (6, 7):
            await endpoint.broadcast("feed:1", "post", {"n": n})
        async with connect(port) as d:
            info = (await d.join("feed:1", "1", "1",
                                 {"phx_pos": {"epoch": epoch, "offset": 1}}))[4][
                "response"]["phx_recovery"]
            assert info == {"recovered": False, "epoch": epoch, "offset": 7, "replayed": 0,
                            "reason": "position older than the history"}
            info = (await d.join("feed:2", "2", "2",
                                 {"phx_pos": {"epoch": epoch, "offset": 0}}))[4][
                "response"]["phx_recovery"]
            assert info["recovered"] is True and info["replayed"] == 0


async def test_topics_without_history_are_untouched(nursery: trio.Nursery) -> None:
    endpoint = make()
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as a:
        reply = (await a.join("plain:1", "1", "1"))[4]
        assert reply == {"status": "ok", "response": {}}
        await endpoint.broadcast("plain:1", "post", {"n": 1})
        assert (await a.recv_until("post"))[4] == {"n": 1}


async def test_a_client_push_broadcast_is_positioned(nursery: trio.Nursery) -> None:
    endpoint = make()
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as a, connect(port) as b:
        await a.join("feed:9", "1", "1")
        await b.join("feed:9", "1", "1")
        await a.send("1", "2", "feed:9", "post", {"body": "hi"})
        msg = await b.recv_until("post")
        assert msg[4]["body"] == "hi" and msg[4]["phx_pos"]["offset"] == 1
        assert msg[0] is None  # a broadcast, as the fastlane sends it
