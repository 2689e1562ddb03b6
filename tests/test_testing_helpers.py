"""channels.testing: the in-process channel test harness, and that it catches misbehaviour."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from channels import Channel, Endpoint, Reply, Room, Rooms, Socket
from channels.testing import JoinRefused, channel_test
from docs.examples.poll import endpoint as poll_endpoint
from presence import Presence
from tests.support.app import TERMINATED, UserSocket, make_endpoint


async def test_join_push_reply_broadcast_leave(autojump_clock: trio.testing.MockClock) -> None:
    async with channel_test(make_endpoint()) as t:
        ada = await t.socket(UserSocket, params={"user_id": "ada"})
        bob = await t.socket(UserSocket, assigns={"user_id": "bob", "params": {}})
        assert ada.assigns["user_id"] == "ada"
        assert await ada.join("room:1", {"reply": True}) == {"joined": "room:1"}
        await ada.assert_push("joined", {"status": "connected", "user_id": "ada"})
        await bob.join("room:1")
        ref = await ada.push("room:1", "echo", {"n": 1})
        await ada.assert_reply(ref, "ok", {"n": 1})
        ref = await bob.push("room:1", "shout", {"hi": "all"})
        await bob.assert_reply(ref, "ok")
        await t.assert_broadcast("room:1", "shout", {"hi": "all"})
        await ada.assert_push("shout", {"hi": "all"})
        # Timers run on the mock clock: "later" replies after send_after(0.05).
        ref = await ada.push("room:1", "later")
        await ada.assert_reply(ref, "ok", {"later": True})
        # handle_info from the test.
        ada.send_info("room:1", ("push", "hello", {"from": "test"}))
        await ada.assert_push("hello", {"from": "test"}, topic="room:1")
        assert await ada.leave("room:1") == {}
        await ada.assert_push("you_left")
        assert ("room:1", "leave") in TERMINATED
        with pytest.raises(JoinRefused) as refused:
            await ada.join("room:2", {"refuse": True})
        assert refused.value.response == {"reason": "refused"}
        await bob.close()


async def test_assertions_fail_when_a_channel_misbehaves(
        autojump_clock: trio.testing.MockClock) -> None:
    async with channel_test(make_endpoint()) as t:
        ada = await t.socket(UserSocket, params={"user_id": "ada"})
        await ada.join("room:1")
        ref = await ada.push("room:1", "error_reply")
        with pytest.raises(AssertionError, match="expected status 'ok'"):
            await ada.assert_reply(ref, "ok")
        ref = await ada.push("room:1", "noreply")
        with pytest.raises(AssertionError, match="expected a reply to ref"):
            await ada.assert_reply(ref, timeout=0.5)
        with pytest.raises(AssertionError, match="expected 'nothing'"):
            await ada.assert_push("nothing", timeout=0.5)
        with pytest.raises(AssertionError, match="expected a broadcast"):
            await t.assert_broadcast("room:1", "never", timeout=0.5)
        ref = await ada.push("room:1", "shout", {"x": 1})
        with pytest.raises(AssertionError, match="unexpected 'shout'"):
            await ada.refute_push("shout")
        # A crash is the client's phx_error, as in production.
        await ada.push("room:1", "boom")
        await ada.assert_push("phx_error", topic="room:1")


class Counter(Room):
    async def init(self) -> None:
        self.n = 0

    async def handle_call(self, message: Any) -> Any:
        self.n += message
        return self.n


rooms = Rooms(Counter)
presence = Presence()


class CountChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any]:
        self.send_after(0, "track")
        return {}

    async def handle_info(self, message: Any) -> None:
        await presence.track(self, self.socket.assigns["user"], {"online": True})

    async def handle_in(self, event: str, payload: Any) -> Reply:
        return Reply.ok({"n": await rooms.call(Counter, self.topic, payload["add"])})


class CountSocket(Socket):
    channels = {"count:*": CountChannel}


async def test_with_rooms_and_presence(autojump_clock: trio.testing.MockClock) -> None:
    endpoint = Endpoint({"/socket": CountSocket}, rooms=rooms, presence=presence)
    async with channel_test(endpoint) as t:
        ada = await t.socket(assigns={"user": "ada"})
        await ada.join("count:1")
        state = await ada.assert_push("presence_state")
        assert list(state) == ["ada"]
        ref = await ada.push("count:1", "add", {"add": 2})
        await ada.assert_reply(ref, "ok", {"n": 2})
        bob = await t.socket(assigns={"user": "bob"})
        await bob.join("count:1")
        diff = await ada.assert_push("presence_diff", lambda d: "bob" in d["joins"])
        assert list(diff["joins"]) == ["bob"] and diff["leaves"] == {}
        ref = await bob.push("count:1", "add", {"add": 3})
        await bob.assert_reply(ref, "ok", {"n": 5})


async def test_the_docs_poll_example() -> None:
    async with channel_test(poll_endpoint) as t:
        ada = await t.socket(params={"user": "ada"})
        assert await ada.join("poll:tea") == {"tally": {}}
        ref = await ada.push("poll:tea", "vote", {"choice": "green"})
        await ada.assert_reply(ref, "ok", {"tally": {"green": 1}})
        await t.assert_broadcast("poll:tea", "tally", {"green": 1})
