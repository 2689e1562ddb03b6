"""The one-way data path: the endpoint owns its sessions and its adapter."""

from __future__ import annotations

import pytest
import trio

from channels import Endpoint, LocalAdapter, PubSub
from channels.socket import SocketSession
from tests.support.app import UserSocket, make_endpoint
from tests.support.client import connect


def test_the_adapter_is_given_at_construction() -> None:
    adapter = LocalAdapter("node-a")
    endpoint = Endpoint({"/socket": UserSocket}, adapter=adapter)
    assert endpoint.pubsub.adapter is adapter
    assert endpoint.pubsub.node_name == "node-a"
    with pytest.raises(ValueError, match="not both"):
        Endpoint({"/socket": UserSocket}, pubsub=PubSub(), adapter=adapter)


async def test_the_adapter_cannot_change_once_serving(nursery: trio.Nursery) -> None:
    endpoint = make_endpoint()
    endpoint.use_adapter(LocalAdapter("before"))
    assert endpoint.pubsub.node_name == "before"
    await nursery.start(endpoint.serve, "127.0.0.1", 0)
    with pytest.raises(RuntimeError, match="serving"):
        endpoint.use_adapter(LocalAdapter("after"))


def test_every_adapter_has_its_own_reconnect_hooks() -> None:
    a, b = LocalAdapter(), LocalAdapter()
    a.on_reconnect.append(lambda: None)
    assert len(a.on_reconnect) == 1
    assert b.on_reconnect == []
    assert a.incarnation and a.incarnation != b.incarnation


async def test_the_endpoint_counts_a_session_while_it_runs(endpoint: Endpoint) -> None:
    assert not endpoint.sessions
    async with connect(endpoint.port) as client:  # type: ignore[attr-defined]
        reply = await client.join("room:lobby", "1", "1")
        assert reply[4]["status"] == "ok"
        (session,) = endpoint.sessions
        assert isinstance(session, SocketSession)
    with trio.fail_after(5):  # the endpoint takes it out when its run ends
        await endpoint._all_closed.wait()
    assert not endpoint.sessions
