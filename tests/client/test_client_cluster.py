"""A two-node cluster (a private redis-server): the client is on node A, A is killed with
SIGKILL, the client reconnects to node B (the next of its URLs), rejoins, and recovers the
broadcasts it missed meanwhile from the shared history."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from channels.client import connect
from tests.client.util import wait_for
from tests.cluster.redis_server import RedisServer, RedisServerMissing
from tests.support.server import ServerProcess

APP = "tests.client.app:make_endpoint"


@pytest.fixture
def cluster() -> Iterator[dict[str, ServerProcess]]:
    try:
        redis = RedisServer()
    except RedisServerMissing as exc:
        pytest.skip(str(exc))
    redis.start()
    nodes = {name: ServerProcess(APP, args=["--redis-url", redis.url, "--node-name",
                                            f"client-{name}", "--log-level", "WARNING"])
             for name in "ab"}
    try:
        for node in nodes.values():
            node.start()
        yield nodes
    finally:
        for node in nodes.values():
            node.kill()
        redis.close()


def url(node: ServerProcess) -> str:
    return f"ws://127.0.0.1:{node.port}/socket"


async def test_node_killed_client_moves_to_the_other_node_and_recovers(
        cluster: dict[str, ServerProcess]) -> None:
    a, b = cluster["a"], cluster["b"]
    got: list[int] = []
    recoveries: list[Any] = []
    closes: list[Any] = []
    with trio.fail_after(60):
        async with connect([url(a), url(b)], params={"user": "reader"},
                           reconnect_after=lambda tries: 2.0) as reader, \
                connect(url(b), params={"user": "writer"}) as writer:
            reader.on_close(lambda code, reason: closes.append(code))
            feed = reader.channel("feed:cluster", on_recovery=recoveries.append)
            feed.on("post", lambda payload: got.append(payload["n"]))
            await feed.join()
            first_ref = feed.join_ref
            assert reader.url == url(a)
            out = await writer.join("feed:cluster")
            for n in range(1, 4):  # from node B to the reader on node A, through Redis
                await out.push("post", {"n": n})
            await wait_for(lambda: got == [1, 2, 3])

            assert a.proc is not None
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            await wait_for(lambda: closes)
            assert closes == [1006] and feed.state == "errored"
            for n in range(4, 7):  # missed: the reader waits 2 s before reconnecting
                await out.push("post", {"n": n})
            await wait_for(lambda: len(recoveries) == 2 and feed.joined)
            assert reader.url == url(b) and reader.connections == 2
            assert feed.join_ref != first_ref
            assert recoveries[1]["recovered"] is True and recoveries[1]["replayed"] == 3
            await out.push("post", {"n": 7})
            await wait_for(lambda: len(got) >= 7)
            # A fence instead of a wait: a duplicate of 1..7 would arrive before 8.
            assert await feed.push("post", {"n": 8}) == {}
            await wait_for(lambda: len(got) >= 8)
            assert got == [1, 2, 3, 4, 5, 6, 7, 8]

        # a new client whose first URL is the dead node gets to node B at once
        async with connect([url(a), url(b)], connect_timeout=5) as late:
            assert late.url == url(b)
            channel = late.channel("feed:cluster", initial=3)
            await channel.join()
            assert channel.recovery is not None and channel.recovery["replayed"] == 3
