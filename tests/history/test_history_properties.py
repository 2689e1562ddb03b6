"""Properties of the replay, merge and dedupe logic (hypothesis)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.history import (
    Entry,
    History,
    HistoryService,
    MemoryHistoryStore,
    plan_recovery,
)


def entries(first: int, top: int) -> list[Entry]:
    return [Entry(o, "e", {"o": o}, 0.0) for o in range(first, top + 1)]


@given(top=st.integers(0, 60), kept=st.integers(1, 30), offset=st.integers(0, 80),
       same_epoch=st.booleans())
def test_recovered_exactly_when_nothing_is_missing(top: int, kept: int, offset: int,
                                                   same_epoch: bool) -> None:
    first = max(1, top - kept + 1)
    stored = [e for e in entries(first, top) if e.offset > offset]
    plan = plan_recovery(("e1" if same_epoch else "e0", offset), "e1", top, stored)
    expect = same_epoch and offset <= top and offset >= first - 1
    assert plan.recovered is expect
    if plan.recovered:
        assert [e.offset for e in plan.replay] == list(range(offset + 1, top + 1))
    else:
        assert plan.replay == [] and plan.reason


@st.composite
def deliveries(draw: Any) -> tuple[int, list[int]]:
    """Offsets 1..n as one node receives them: reordered, duplicated, some lost."""
    n = draw(st.integers(1, 40))
    arrivals = [o for o in range(1, n + 1) if draw(st.booleans()) or o == n]
    arrivals += draw(st.lists(st.sampled_from(arrivals), max_size=10))  # duplicates
    arrivals = draw(st.permutations(arrivals))
    return n, arrivals


class _Recorder:
    def __init__(self) -> None:
        self.got: list[int] = []

    def deliver(self, topic: str, event: str, payload: Any, cache: Any) -> None:
        self.got.append(payload["phx_pos"]["offset"])


@settings(max_examples=200, deadline=None)
@given(deliveries())
def test_a_node_delivers_every_offset_once_in_order(case: tuple[int, list[int]]) -> None:
    """Whatever order, loss or duplication the messages arrive with, a node delivers
    1..max in order, once each, filling gaps from the stream (all retained here)."""
    n, arrivals = case
    config = History(size=100, ttl=60)

    async def main() -> list[int]:
        from channels.pubsub import PubSub

        pubsub = PubSub()
        service = HistoryService([("t", config)], store=MemoryHistoryStore())
        service.attach(pubsub)
        store = service.store
        assert isinstance(store, MemoryHistoryStore)
        for o in range(1, n + 1):
            store.append_now("t", config, "e", {"o": o})
        recorder = _Recorder()
        pubsub.subscribe("t", recorder)
        # The first message a node sees is where it starts (as a node joining late).
        first = min(arrivals)
        for o in arrivals:
            service._enqueue("t", store.epoch, o, "e",
                             {"o": o, "phx_pos": {"offset": o, "epoch": store.epoch}}, None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service._dispatch)
            await trio.testing.wait_all_tasks_blocked()  # the queue is drained
            nursery.cancel_scope.cancel()
        start = arrivals[0]
        assert recorder.got[0] == start
        assert first >= 1
        return recorder.got

    got = trio.run(main)
    assert got == list(range(got[0], max(arrivals) + 1))


class _FakeSession:
    """What ChannelProcess.end_recovery touches, recording what the client would get."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.socket = type("S", (), {"assigns": {}})()
        self.serializer = object()
        self.fastlane_key = self.serializer

    def replan(self, topic: str) -> None:
        pass

    def deliver_broadcast(self, topic: str, event: str, payload: Any, cache: Any) -> None:
        self.sent.append(payload["phx_pos"]["offset"])


@given(top=st.integers(0, 30), live=st.integers(0, 10), overlap=st.integers(0, 10),
       offset=st.integers(0, 30))
def test_replay_then_live_is_gapless_and_without_duplicates(top: int, live: int, overlap: int,
                                                            offset: int) -> None:
    """A recovering join replays offset+1..top, and the live broadcasts held back meanwhile
    may repeat some of those: the client gets offset+1..top+live exactly once, in order."""
    from channels import Channel
    from channels.channel import ChannelProcess

    offset = min(offset, top)
    session = _FakeSession()
    proc = ChannelProcess(session, Channel(), "t", "1")  # type: ignore[arg-type]
    held_from = max(offset + 1, top - overlap + 1)
    proc.recovering = [("e", {"phx_pos": {"offset": o, "epoch": "E"}})
                       for o in range(held_from, top + live + 1)]
    replay = [("e", {"phx_pos": {"offset": o, "epoch": "E"}}, {})
              for o in range(offset + 1, top + 1)]
    proc.end_recovery(replay, "E", top)
    assert session.sent == list(range(offset + 1, top + live + 1))
    assert proc.recovering is None
