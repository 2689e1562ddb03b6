"""Bad input to recovering joins, with a raw client (tests/support/client.py): malformed and
forged positions, offsets from the future, huge requested ranges, odd epochs. Each gets a
clear reply (``phx_recovery`` with a ``reason``), the work is bounded by the history's size,
and a client already on the topic keeps receiving everything, once and in order.

Also: a replay read from a store that is ahead of this node's live delivery (as in a
cluster, when another node's broadcast is still on its way) is not delivered twice.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import trio

from channels import Channel, Endpoint, Reply, Socket
from channels.history import Entry, History, MemoryHistoryStore
from tests.support.client import RawClient, connect

SIZE = 50
TOPIC = "feed:bad"


class FeedChannel(Channel):
    history = History(size=SIZE, ttl=600)

    async def join(self, topic: str, params: Any) -> dict[str, Any] | None:
        return {"hello": topic}

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        await self.broadcast("post", payload)
        return Reply.ok()


class PlainChannel(Channel):
    async def join(self, topic: str, params: Any) -> dict[str, Any] | None:
        return {"plain": True}


class FeedSocket(Socket):
    channels = {"feed:*": FeedChannel, "plain:*": PlainChannel}


class SpyStore(MemoryHistoryStore):
    """A memory store that records every read: (limit, entries returned)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[int, int]] = []

    async def since(self, topic: str, offset: int, config: History,
                    limit: int) -> tuple[str, int, list[Entry]]:
        result = await super().since(topic, offset, config, limit)
        self.reads.append((limit, len(result[2])))
        return result


async def _serve(nursery: trio.Nursery) -> tuple[Endpoint, SpyStore, int]:
    endpoint = Endpoint({"/socket": FeedSocket})
    store = SpyStore()
    assert endpoint.history is not None
    endpoint.history._store = store  # used instead of a new memory store
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    return endpoint, store, port


async def _posts(client: RawClient, n: int) -> list[int]:
    return [(await client.recv_until("post"))[4]["n"] for _ in range(n)]


async def _join_raw(client: RawClient, text: str) -> list[Any]:
    """Send a join frame written by hand (JSON the encoder would refuse to produce)."""
    await client.send_raw(text)
    return await client.recv_until("phx_reply")


async def test_bad_positions_get_a_clear_reply_and_bounded_work(nursery: trio.Nursery) -> None:
    endpoint, store, port = await _serve(nursery)
    async with connect(port) as watcher:
        first = (await watcher.join(TOPIC, "1", "1"))[4]["response"]["phx_recovery"]
        epoch = first["epoch"]
        total = 1000
        for n in range(1, total + 1):
            await endpoint.broadcast(TOPIC, "post", {"n": n})
        assert await _posts(watcher, total) == list(range(1, total + 1))
        assert store.stored() == SIZE

        bad = "bad position"
        changed = "epoch changed"
        cases: list[tuple[Any, str]] = [
            # not a position at all
            ("garbage", bad), (42, bad), ([], bad), ([epoch, 5], bad), ({}, bad), (None, None),
            (True, bad), ({"offset": 5}, bad), ({"epoch": epoch}, bad),
            # offsets of the wrong type or range
            ({"epoch": epoch, "offset": -1}, bad), ({"epoch": epoch, "offset": 1.5}, bad),
            ({"epoch": epoch, "offset": "999"}, bad), ({"epoch": epoch, "offset": True}, bad),
            ({"epoch": epoch, "offset": None}, bad), ({"epoch": epoch, "offset": [1]}, bad),
            ({"epoch": epoch, "offset": 2**63}, bad),
            # from the future
            ({"epoch": epoch, "offset": total + 1}, "position ahead of the history"),
            ({"epoch": epoch, "offset": 2**63 - 1}, "position ahead of the history"),
            # from the start of a big history: refused, nothing replayed
            ({"epoch": epoch, "offset": 0}, "position older than the history"),
            ({"epoch": epoch, "offset": total - SIZE - 1}, "position older than the history"),
            # epochs of odd types and lengths
            ({"epoch": "", "offset": 1}, bad), ({"epoch": 5, "offset": 1}, bad),
            ({"epoch": None, "offset": 1}, bad), ({"epoch": [epoch], "offset": 1}, bad),
            ({"epoch": {"e": epoch}, "offset": 1}, bad), ({"epoch": True, "offset": 1}, bad),
            ({"epoch": "x" * 65, "offset": 1}, bad), ({"epoch": "x" * 100_000, "offset": 1}, bad),
            ({"epoch": "x" * 64, "offset": 1}, changed), ({"epoch": "\u0000", "offset": 1}, changed),
            ({"epoch": "é" * 64, "offset": 1}, changed),
            ({"epoch": "\U0001f600" * 16, "offset": total}, changed),
            ({"epoch": epoch.upper(), "offset": total}, changed),
            ({"epoch": epoch + " ", "offset": total}, changed),
            # {last: N} of the wrong shape
            ({"last": -1}, bad), ({"last": "5"}, bad), ({"last": 1.0}, bad),
            ({"last": True}, bad), ({"last": None}, bad), ({"last": 5, "offset": 3}, bad),
        ]
        for i, (wanted, reason) in enumerate(cases):
            async with connect(port) as c:
                params = {} if wanted is None else {"phx_pos": wanted}
                reply = (await c.join(TOPIC, str(i), str(i), params))[4]
                assert reply["status"] == "ok", (wanted, reply)
                info = reply["response"]["phx_recovery"]
                assert reply["response"]["hello"] == TOPIC
                assert info["recovered"] is False, (wanted, info)
                assert info.get("reason") == reason, (wanted, info)
                assert info["epoch"] == epoch and info["offset"] == total, (wanted, info)
                assert info["replayed"] == 0, (wanted, info)

        # Numbers beyond 64 bits, written by hand: still "bad position", never a crash.
        for text in [
            f'["b", "r", "{TOPIC}", "phx_join", {{"phx_pos": {{"epoch": "{epoch}", '
            f'"offset": 100000000000000000000000000000}}}}]',
            f'["b", "r", "{TOPIC}", "phx_join", {{"phx_pos": {{"last": '
            f'-100000000000000000000000000000}}}}]',
        ]:
            async with connect(port) as c:
                info = (await _join_raw(c, text))[4]["response"]["phx_recovery"]
                assert info["recovered"] is False and info["reason"] == bad, (text, info)

        # Huge requested ranges: never more than the history holds.
        for wanted in ({"last": 10**12}, {"last": 2**63}, {"last": 10**30}, {"last": SIZE + 1}):
            async with connect(port) as c:
                text = json.dumps(["1", "1", TOPIC, "phx_join", {"phx_pos": wanted}])
                info = (await _join_raw(c, text))[4]["response"]["phx_recovery"]
                assert info == {"recovered": False, "epoch": epoch, "offset": total,
                                "replayed": SIZE}, (wanted, info)
                assert await _posts(c, SIZE) == list(range(total - SIZE + 1, total + 1))
        async with connect(port) as c:
            info = (await c.join(TOPIC, "1", "1", {"phx_pos": {"last": 0}}))[4][
                "response"]["phx_recovery"]
            assert info["replayed"] == 0 and "reason" not in info

        # The same, many times over one connection (each join replaces the previous one).
        async with connect(port) as c:
            for i in range(20):
                info = (await c.join(TOPIC, str(i), str(i),
                                     {"phx_pos": {"last": 10**12}}))[4]["response"][
                    "phx_recovery"]
                assert info["replayed"] == SIZE
            # Only the last join's replay matters now; the last one is complete and in order.
        # Every read of the store was bounded by the history's size.
        assert store.reads and all(limit <= SIZE and got <= SIZE for limit, got in store.reads)

        # A position on a topic without history is not looked at.
        async with connect(port) as c:
            reply = (await c.join("plain:1", "1", "1",
                                  {"phx_pos": {"epoch": epoch, "offset": 2**63 - 1}}))[4]
            assert reply == {"status": "ok", "response": {"plain": True}}

        # Join params that are not an object: the join is answered, the rest unaffected.
        for payload in ([], "x", 5):
            async with connect(port) as c:
                await c.send_raw(orjson.dumps(["1", "1", TOPIC, "phx_join", payload]).decode())
                reply = (await c.recv_until("phx_reply"))[4]
                assert reply["status"] in ("ok", "error"), reply

        # The watcher saw none of it, and keeps receiving, once and in order.
        for n in range(total + 1, total + 4):
            await endpoint.broadcast(TOPIC, "post", {"n": n})
        got = await _posts(watcher, 3)
        assert got == [total + 1, total + 2, total + 3]
        with trio.move_on_after(0.2):
            extra = await watcher.recv_until("post", timeout=1)
            raise AssertionError(f"the watcher got an extra broadcast: {extra}")


async def test_a_replay_ahead_of_this_nodes_delivery_is_not_sent_twice(
        nursery: trio.Nursery) -> None:
    """In a cluster the store (Redis) can hold broadcasts this node has not delivered yet:
    the replay sends them, and when they then arrive live they are dropped for that client."""
    endpoint, store, port = await _serve(nursery)
    history = endpoint.history
    assert history is not None
    config = history.config_for(TOPIC)
    assert config is not None
    async with connect(port) as a:
        epoch = (await a.join(TOPIC, "1", "1"))[4]["response"]["phx_recovery"]["epoch"]
        # Stored (as another node's broadcasts would be), not yet delivered here.
        late = [(n, store.append_now(TOPIC, config, "post", {"n": n})) for n in (1, 2, 3)]
        async with connect(port) as b:
            info = (await b.join(TOPIC, "1", "1",
                                 {"phx_pos": {"epoch": epoch, "offset": 0}}))[4][
                "response"]["phx_recovery"]
            assert info == {"recovered": True, "epoch": epoch, "offset": 3, "replayed": 3}
            assert await _posts(b, 3) == [1, 2, 3]
            # Now they arrive here, live, in order; then a new one.
            for n, (e, offset) in late:
                history._enqueue(TOPIC, e, offset, "post",
                                 {"n": n, "phx_pos": {"epoch": e, "offset": offset}}, None)
            await endpoint.broadcast(TOPIC, "post", {"n": 4})
            assert await _posts(b, 1) == [4]
            assert await _posts(a, 4) == [1, 2, 3, 4]
            await endpoint.broadcast(TOPIC, "post", {"n": 5})
            assert await _posts(b, 1) == [5]
            assert await _posts(a, 1) == [5]
