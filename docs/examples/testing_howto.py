"""The examples of docs/howto/testing.md: tests of the tutorial's app (docs/examples/tutorial/)
with channels.testing. Collected by tests/test_docs_howto.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from channels import Channel, Endpoint, Reply, Room, Rooms, Socket
from channels.client import connect
from channels.testing import ChannelTest, JoinRefused, channel_test
from docs.examples.tutorial.app import endpoint, user_token


@pytest.fixture
async def t() -> AsyncIterator[ChannelTest]:
    async with channel_test(endpoint) as t:
        yield t


async def test_a_question_reaches_everyone(t: ChannelTest) -> None:
    ada = await t.socket(params={"token": user_token("ada")})
    bob = await t.socket(params={"token": user_token("bob")})
    await ada.join("qa:howto")
    await bob.join("qa:howto")

    ref = await ada.push("qa:howto", "ask", {"text": "Does it scale?"})
    reply = await ada.assert_reply(ref, "ok")
    question = await bob.assert_push("question", lambda q: q["text"] == "Does it scale?")
    assert question["id"] == reply["response"]["id"]
    await t.assert_broadcast("qa:howto", "question")  # seen on the node, whoever sent it


async def test_connect_needs_a_valid_token(t: ChannelTest) -> None:
    with pytest.raises(AssertionError, match="refused"):
        await t.socket(params={"token": "forged"})
    ada = await t.socket(params={"token": user_token("ada")})
    assert ada.assigns == {"user": "ada"}


async def test_skip_connect_with_assigns(t: ChannelTest) -> None:
    bob = await t.socket(assigns={"user": "bob"})  # no token needed: connect is skipped
    assert (await bob.join("qa:howto"))["user"] == "bob"


async def test_refusals(t: ChannelTest) -> None:
    ada = await t.socket(params={"token": user_token("ada")})
    with pytest.raises(JoinRefused) as refused:
        await ada.join("qa:no spaces")
    assert refused.value.response == {"reason": "board names are letters, digits and _"}
    await ada.join("qa:howto")
    ref = await ada.push("qa:howto", "ask", {"text": ""})
    await ada.assert_reply(ref, "error", {"reason": "a question is 1 to 500 characters"})
    await ada.refute_push("question")


async def test_presence(t: ChannelTest) -> None:
    ada = await t.socket(params={"token": user_token("ada")})
    await ada.join("qa:presence")
    assert list(await ada.assert_push("presence_state")) == ["ada"]
    bob = await t.socket(params={"token": user_token("bob")})
    await bob.join("qa:presence")
    # ada's own join comes as a diff too: wait for the one with bob (a predicate matches)
    await ada.assert_push("presence_diff", lambda diff: list(diff["joins"]) == ["bob"])
    await bob.close()
    await ada.assert_push("presence_diff", lambda diff: list(diff["leaves"]) == ["bob"])


async def test_a_server_broadcast(t: ChannelTest) -> None:
    ada = await t.socket(params={"token": user_token("ada")})
    await ada.join("qa:news")
    await t.broadcast_from("qa:news", "question", {"id": "q1", "user": "staff", "text": "Hi"})
    assert (await ada.assert_push("question"))["user"] == "staff"


async def test_history_replays_what_was_missed(t: ChannelTest) -> None:
    ada = await t.socket(params={"token": user_token("ada")})
    bob = await t.socket(params={"token": user_token("bob")})
    await ada.join("qa:history")
    await bob.join("qa:history")
    ref = await ada.push("qa:history", "ask", {"text": "first"})
    await ada.assert_reply(ref, "ok")
    position = (await bob.assert_push("question"))["phx_pos"]
    await bob.close()  # bob's network drops...

    ref = await ada.push("qa:history", "ask", {"text": "second"})
    await ada.assert_reply(ref, "ok")

    bob = await t.socket(params={"token": user_token("bob")})  # ...and comes back
    reply = await bob.join("qa:history", {"phx_pos": position})
    assert reply["phx_recovery"]["recovered"] is True
    assert (await bob.assert_push("question"))["text"] == "second"


async def test_over_the_network(nursery: trio.Nursery) -> None:
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)  # 0: any free port
    async with connect(f"ws://127.0.0.1:{port}/socket",
                       params={"token": user_token("ada")}) as socket:
        board = socket.channel("qa:e2e")
        assert (await board.join())["user"] == "ada"
        assert "id" in await board.push("ask", {"text": "over TCP"})
    await endpoint.drain()


# -- rooms and timers, on trio's MockClock ------------------------------------------------------


class Countdown(Room):
    async def init(self) -> None:
        self.left = 10
        self.interval(1.0, "tick")  # once a second

    async def handle_info(self, message: Any) -> None:
        if message == "tick" and self.left > 0:
            self.left -= 1
            await self.broadcast(f"countdown:{self.key}", "left", {"seconds": self.left})

    async def handle_call(self, message: Any) -> Any:
        return self.left


class CountdownChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        left = await countdowns.call(Countdown, topic.removeprefix("countdown:"), "left")
        return {"seconds": left}

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        return Reply.error({"reason": "read only"})


class CountdownSocket(Socket):
    channels = {"countdown:*": CountdownChannel}


countdowns = Rooms(Countdown)


async def test_a_room_ticks_on_the_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    countdown = Endpoint({"/socket": CountdownSocket}, rooms=countdowns)
    async with channel_test(countdown) as t:
        ada = await t.socket(assigns={})
        assert await ada.join("countdown:launch") == {"seconds": 10}
        start = trio.current_time()
        await ada.assert_push("left", {"seconds": 0}, timeout=15)  # ten ticks later
        assert 10 <= trio.current_time() - start < 11  # virtual seconds: the test took ms
