"""Presence at scale, in-process (channels.testing, MockClock): diffs coalesced per topic over
``diff_window``, ``presence_state`` built and encoded once per version of a topic.

Clients here apply what they receive the way phoenix.js does (``ClientPresence``: diffs before
the first ``presence_state`` wait for it), and must end with everyone.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from channels import Channel, Endpoint, Reply, Socket
from channels.client import ClientPresence
from channels.testing import TestSocket, channel_test
from presence import Presence
from presence.presence import DEFAULT_DIFF_WINDOW

TOPIC = "room:crowd"


def make(presence: Presence) -> Endpoint:
    class Crowd(Channel):
        async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
            self.send_after(0, "track")
            return None

        async def handle_info(self, message: Any) -> None:
            if message == "track":
                await presence.track(self, self.socket.assigns["user"], {"n": 0})
            elif message == "watch":
                await presence.push_state(self)

        async def handle_in(self, event: str, payload: Any) -> Reply | None:
            if event == "update":
                meta = await presence.update(self, self.socket.assigns["user"], payload)
                return Reply.ok({"phx_ref": meta["phx_ref"]})
            if event == "untrack":
                await presence.untrack(self, self.socket.assigns["user"])
                return Reply.ok()
            return None

    class Watch(Crowd):
        async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
            self.send_after(0, "watch")
            return None

    class Sock(Socket):
        channels = {"room:*": Crowd, "watch:*": Watch}

    return Endpoint({"/socket": Sock}, presence=presence)


def client_state(sock: TestSocket, topic: str = TOPIC) -> dict[str, list[str]] | None:
    """What phoenix.js's Presence would list from the messages received so far (None: no
    presence_state yet)."""
    state: Any = None
    pending: list[Any] = []
    for msg in sock.received:
        if msg.topic != topic:
            continue
        if msg.event == "presence_state":
            state = ClientPresence.sync_state(state or {}, msg.payload)
            for diff in pending:
                state = ClientPresence.sync_diff(state, diff)
            pending = []
        elif msg.event == "presence_diff":
            if state is None:
                pending.append(msg.payload)
            else:
                state = ClientPresence.sync_diff(state, msg.payload)
    if state is None:
        return None
    return {k: sorted(m["phx_ref"] for m in p["metas"]) for k, p in state.items()}


def events(sock: TestSocket, event: str, topic: str = TOPIC) -> list[Any]:
    return [m.payload for m in sock.received if m.topic == topic and m.event == event]


async def settle(presence: Presence) -> None:
    await trio.sleep(presence.diff_window * 3 + 0.01)


def listing(presence: Presence, topic: str = TOPIC) -> dict[str, list[str]]:
    return {k: sorted(m["phx_ref"] for m in ms) for k, ms in presence.tracker.list(topic).items()}


async def test_a_crowd_joining_within_one_window(autojump_clock: trio.testing.MockClock) -> None:
    presence = Presence(diff_window=0.05)
    async with channel_test(make(presence)) as t:
        socks = []
        for i in range(60):
            s = await t.socket(assigns={"user": f"u{i}"})
            await s.join(TOPIC)
            socks.append(s)
        await settle(presence)
        everyone = listing(presence)
        assert len(everyone) == 60
        for s in socks:
            assert client_state(s) == everyone
            assert len(events(s, "presence_state")) == 1
        # the first join went out at once, the 59 others as one diff, which only the first
        # client gets: the others' presence_state already had it. (A client whose join was
        # handled before the first diff went out gets that one, and then the second too:
        # which task runs first decides; phoenix.js applies joins it already has as no-ops.)
        assert len(events(socks[0], "presence_diff")) == 1
        for s in socks[1:]:
            got = events(s, "presence_diff")
            assert not got or set(got[0]["joins"]) == {"u0"}
        assert presence.stats["diffs_in"] == 60
        assert presence.stats["diffs_sent"] == 2
        # two listings (one per flush), each encoded once: every client's join_ref is "1"
        assert presence.stats["states_sent"] == 60
        assert presence.stats["state_listings"] == 2
        assert presence.stats["state_encodes"] == 2


async def test_the_first_change_on_a_quiet_topic_is_not_delayed(
        autojump_clock: trio.testing.MockClock) -> None:
    presence = Presence(diff_window=0.5)
    async with channel_test(make(presence)) as t:
        ada = await t.socket(assigns={"user": "ada"})
        await ada.join(TOPIC)
        await ada.assert_push("presence_state")
        await trio.sleep(2)  # the topic is quiet again
        start = trio.current_time()
        bob = await t.socket(assigns={"user": "bob"})
        await bob.join(TOPIC)
        await ada.assert_push("presence_diff", lambda d: "bob" in d["joins"])
        await bob.assert_push("presence_state", lambda s: set(s) == {"ada", "bob"})
        assert trio.current_time() == start
        # the next change comes within the window that just opened: sent when it ends
        cy = await t.socket(assigns={"user": "cy"})
        await cy.join(TOPIC)
        await ada.assert_push("presence_diff", lambda d: "cy" in d["joins"])
        assert trio.current_time() == pytest.approx(start + 0.5)


async def test_churn_over_many_windows_converges_in_order(
        autojump_clock: trio.testing.MockClock) -> None:
    presence = Presence(diff_window=0.05)
    rng = random.Random(7)
    async with channel_test(make(presence)) as t:
        watcher = await t.socket(assigns={"user": "watcher"})
        await watcher.join(TOPIC)
        socks: dict[str, TestSocket] = {}
        late: list[TestSocket] = []
        for step in range(300):
            user = f"u{rng.randrange(25)}"
            s = socks.get(user)
            roll = rng.random()
            if s is None:
                s = socks[user] = await t.socket(assigns={"user": user})
                await s.join(TOPIC)
            elif roll < 0.3:
                await s.close()
                del socks[user]
            elif roll < 0.6:
                ref = await s.push(TOPIC, "update", {"n": step})
                await s.assert_reply(ref, "ok")
            elif roll < 0.7:
                late.append(s)  # keeps its messages: checked at the end too
                del socks[user]
                ref = await s.push(TOPIC, "untrack")
                await s.assert_reply(ref, "ok")
            if rng.random() < 0.3:
                await trio.sleep(rng.choice([0.001, 0.02, 0.05, 0.2]))
        await settle(presence)
        everyone = listing(presence)
        assert client_state(watcher) == everyone
        for s in [*socks.values(), *late]:
            assert client_state(s) == everyone
        # far fewer diffs than changes, but every change arrived
        assert presence.stats["diffs_sent"] < presence.stats["diffs_in"]


async def test_updates_in_one_window_are_one_leave_and_one_join(
        autojump_clock: trio.testing.MockClock) -> None:
    presence = Presence(diff_window=0.1)
    async with channel_test(make(presence)) as t:
        ada = await t.socket(assigns={"user": "ada"})
        await ada.join(TOPIC)
        bob = await t.socket(assigns={"user": "bob"})
        await bob.join(TOPIC)
        await settle(presence)
        # the first update opens a window on the quiet topic: it goes out at once
        ref = await bob.push(TOPIC, "update", {"n": 1})
        await bob.assert_reply(ref, "ok")
        await trio.sleep(0.001)
        [old] = presence.tracker.get_by_key(TOPIC, "bob")
        # three more within the window: one diff, the old meta out and the last one in
        for n in range(2, 5):
            ref = await bob.push(TOPIC, "update", {"n": n})
            await bob.assert_reply(ref, "ok")
        await settle(presence)
        diffs = [d for d in events(ada, "presence_diff") if "bob" in d["leaves"]]
        assert len(diffs) == 2
        [new] = presence.tracker.get_by_key(TOPIC, "bob")
        assert diffs[1]["leaves"] == {"bob": {"metas": [old]}}
        assert diffs[1]["joins"] == {"bob": {"metas": [new]}}
        assert new["n"] == 4 and new["phx_ref_prev"] != old["phx_ref"]  # the 3rd update's
        assert client_state(ada) == listing(presence)


async def test_join_and_leave_inside_a_window_send_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    presence = Presence(diff_window=0.1)
    async with channel_test(make(presence)) as t:
        ada = await t.socket(assigns={"user": "ada"})
        await ada.join(TOPIC)
        await settle(presence)
        bob = await t.socket(assigns={"user": "bob"})
        await bob.join(TOPIC)  # opens the window: sent at once
        await trio.sleep(0.001)
        assert any("bob" in d["joins"] for d in events(ada, "presence_diff"))
        cy = await t.socket(assigns={"user": "cy"})
        await cy.join(TOPIC)
        await trio.sleep(0.001)
        await cy.close()  # cy joined and left inside the window, before it was flushed
        await settle(presence)
        assert not any("cy" in d["joins"] or "cy" in d["leaves"]
                       for d in events(ada, "presence_diff"))
        assert client_state(ada) == client_state(bob) == listing(presence)
        assert set(listing(presence)) == {"ada", "bob"}


async def test_push_state_and_list(autojump_clock: trio.testing.MockClock) -> None:
    presence = Presence()
    assert presence.diff_window == DEFAULT_DIFF_WINDOW
    async with channel_test(make(presence)) as t:
        ada = await t.socket(assigns={"user": "ada"})
        await ada.join(TOPIC)
        # a watcher on another topic asks for that topic's state without being tracked
        eve = await t.socket(assigns={"user": "eve"})
        await eve.join("watch:x")
        state = await eve.assert_push("presence_state", topic="watch:x")
        assert state == {}
        listed = await presence.list(TOPIC)
        assert set(listed) == {"ada"}
        listed["ada"]["metas"].append("mutated")  # a copy: the cache is unaffected
        bob = await t.socket(assigns={"user": "bob"})
        await bob.join(TOPIC)
        state = await bob.assert_push("presence_state")
        assert state["ada"]["metas"] == presence.tracker.get_by_key(TOPIC, "ada")


async def test_a_channel_gone_before_the_flush_gets_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    presence = Presence(diff_window=0.1)
    async with channel_test(make(presence)) as t:
        ada = await t.socket(assigns={"user": "ada"})
        await ada.join(TOPIC)
        bob = await t.socket(assigns={"user": "bob"})
        await bob.join(TOPIC)
        await trio.sleep(0.001)
        await bob.leave(TOPIC)  # before the window with its join (and its state) ended
        await settle(presence)
        await bob.refute_push("presence_state")
        assert client_state(ada) == listing(presence) and set(listing(presence)) == {"ada"}


async def test_fetch_runs_once_per_version_and_per_window(
        autojump_clock: trio.testing.MockClock) -> None:
    calls: list[tuple[str, list[str]]] = []

    async def fetch(topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        calls.append((topic, sorted(presences)))
        await trio.sleep(0.01)
        return {k: {**p, "name": k.upper()} for k, p in presences.items()}

    presence = Presence(diff_window=0.05, fetch=fetch)
    async with channel_test(make(presence)) as t:
        socks = []
        for i in range(20):
            s = await t.socket(assigns={"user": f"u{i}"})
            await s.join(TOPIC)
            socks.append(s)
        await settle(presence)
        for s in socks:
            [state] = events(s, "presence_state")
            assert all(p["name"] == k.upper() for k, p in state.items())
            assert client_state(s) == listing(presence)
        for d in events(socks[0], "presence_diff"):
            assert all(p["name"] == k.upper() for k, p in d["joins"].items())
        # per flush: one fetch for the listing, one for the diff's joins
        flushes = presence.stats["diffs_sent"]
        assert presence.stats["state_listings"] == flushes
        assert len(calls) == 2 * flushes and flushes <= 3


async def test_a_change_during_fetch_is_not_lost(autojump_clock: trio.testing.MockClock) -> None:
    gate = trio.Event()

    async def fetch(topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        if "slow" in presences:
            await gate.wait()
        return presences

    presence = Presence(diff_window=0.05, fetch=fetch)
    async with channel_test(make(presence)) as t:
        slow = await t.socket(assigns={"user": "slow"})
        await slow.join(TOPIC)
        await trio.sleep(0.01)  # the listing for slow's state waits in fetch
        ada = await t.socket(assigns={"user": "ada"})
        await ada.join(TOPIC)  # changes the topic meanwhile
        await trio.sleep(0.01)
        gate.set()
        await settle(presence)
        assert client_state(slow) == client_state(ada) == listing(presence)
        assert set(listing(presence)) == {"slow", "ada"}


def test_diff_window_is_checked() -> None:
    with pytest.raises(ValueError):
        Presence(diff_window=-1)
    with pytest.raises(ValueError):
        Presence(diff_window=float("nan"))
    assert Presence(diff_window=0).diff_window == 0.0


async def test_no_window(autojump_clock: trio.testing.MockClock) -> None:
    presence = Presence(diff_window=0)
    async with channel_test(make(presence)) as t:
        socks = []
        for i in range(5):
            s = await t.socket(assigns={"user": f"u{i}"})
            await s.join(TOPIC)
            socks.append(s)
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        for s in socks:
            assert client_state(s) == listing(presence)
        assert presence.stats["diffs_sent"] == 5


async def test_local_broadcast_except() -> None:
    from channels.pubsub import CallbackSubscriber, PubSub

    pubsub = PubSub()
    got: list[int] = []
    subs = [CallbackSubscriber(lambda t, e, p, i=i: got.append(i)) for i in range(600)]
    for sub in subs:
        pubsub.subscribe("t", sub)
    await pubsub.local_broadcast_except("t", "e", {}, {subs[1], subs[599]})
    assert got == [i for i in range(600) if i not in (1, 599)]
    got.clear()
    await pubsub.local_broadcast_except("t", "e", {}, set())
    assert len(got) == 600
    await pubsub.local_broadcast_except("nobody", "e", {}, {subs[0]})
    assert pubsub.broadcasts == 3
