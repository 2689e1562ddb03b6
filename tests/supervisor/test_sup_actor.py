"""Actor: ordering, timers, call/reply, stop; and one actor per topic under a DynamicSupervisor."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from supervisor import (
    Actor,
    CallTimeout,
    ChildHandle,
    DynamicSupervisor,
    MailboxClosed,
    Restart,
)


class Boom(Exception):
    pass


class Recorder(Actor[str]):
    """Records (virtual time, message); "slow" takes 5s, "boom" crashes, "stop" stops."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.times: dict[str, float] = {}
        self.calls: list[Any] = []

    async def handle_message(self, msg: str) -> None:
        self.seen.append(msg)
        self.times[msg] = trio.current_time()
        if msg == "slow":
            await trio.sleep(5)
        elif msg == "boom":
            raise Boom(msg)
        elif msg == "stop":
            self.stop()

    async def handle_call(self, request: Any) -> Any:
        self.calls.append(request)
        if request == "fail":
            raise Boom("call")
        if request == "slow":
            await trio.sleep(10)
        return (request, list(self.seen))


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_messages_are_handled_one_at_a_time_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder()
    active = 0
    overlap = False

    class Slow(Actor[int]):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[int] = []

        async def handle_message(self, msg: int) -> None:
            nonlocal active, overlap
            active += 1
            overlap = overlap or active > 1
            await trio.sleep(1)
            self.seen.append(msg)
            active -= 1

    slow = Slow()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        nursery.start_soon(slow.run)
        for i in range(50):
            actor.send(str(i))
            slow.send(i)
        await trio.sleep(100)
        assert actor.seen == [str(i) for i in range(50)]
        assert slow.seen == list(range(50))
        assert not overlap
        nursery.cancel_scope.cancel()


async def test_handle_message_exception_propagates_out_of_run() -> None:
    actor = Recorder()
    actor.send("a")
    actor.send("boom")
    actor.send("never")
    with pytest.raises(Boom):
        await actor.run()
    assert actor.seen == ["a", "boom"]


async def test_send_after_delivers_in_deadline_order_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        t0 = trio.current_time()
        actor.send_after(3, "c")
        actor.send_after(1, "a")
        actor.send_after(2, "b1")
        actor.send_after(2, "b2")  # same deadline: send order
        await trio.sleep(10)
        assert actor.seen == ["a", "b1", "b2", "c"]
        assert {m: t - t0 for m, t in actor.times.items()} == {"a": 1, "b1": 2, "b2": 2, "c": 3}
        nursery.cancel_scope.cancel()


async def test_send_after_from_another_task_shortens_the_actors_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        await settle()  # parked, no timers
        t0 = trio.current_time()
        actor.send_after(10, "late")
        await settle()  # parked until t0 + 10
        actor.send_after(2, "early")
        await trio.sleep(20)
        assert actor.seen == ["early", "late"]
        assert actor.times["early"] - t0 == 2
        nursery.cancel_scope.cancel()


async def test_due_timer_queues_behind_messages_already_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        actor.send("slow")  # busy for 5s
        await settle()
        actor.send_after(1, "timer")
        await trio.sleep(2)
        actor.send("queued")  # queued after the timer was due, but before the actor looked
        await trio.sleep(10)
        assert actor.seen == ["slow", "queued", "timer"]
        nursery.cancel_scope.cancel()


async def test_timer_cancel(autojump_clock: trio.testing.MockClock) -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        dropped = actor.send_after(1, "dropped")
        kept = actor.send_after(2, "kept")
        assert dropped.pending
        assert dropped.cancel() is True
        assert dropped.cancel() is False
        assert not dropped.pending
        await trio.sleep(5)
        assert actor.seen == ["kept"]
        assert kept.cancel() is False  # already delivered
        nursery.cancel_scope.cancel()


async def test_many_cancelled_timers_do_not_pile_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder()
    refs = [actor.send_after(1000 + i, f"t{i}") for i in range(1000)]
    actor.send_after(1, "survivor")
    for ref in refs:
        assert ref.cancel()
    assert len(actor._timers) < 200  # compacted, not 1001
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        await trio.sleep(5000)
        assert actor.seen == ["survivor"]
        nursery.cancel_scope.cancel()


async def test_call_is_ordered_with_messages_and_returns_the_reply() -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        actor.send("a")
        actor.send("b")
        assert await actor.call("state") == ("state", ["a", "b"])
        nursery.cancel_scope.cancel()


async def test_call_exception_reaches_the_caller_and_crashes_the_actor() -> None:
    actor = Recorder()
    caught: list[BaseException] = []

    async def caller() -> None:
        try:
            await actor.call("fail")
        except Boom as exc:
            caught.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        await settle()
        with pytest.raises(Boom) as info:
            await actor.run()
    assert caught == [info.value]


async def test_call_timeout_and_a_timed_out_request_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        outcomes: list[str] = []

        async def call(request: str) -> None:
            try:
                await actor.call(request, timeout=1)
            except CallTimeout:
                outcomes.append(f"{request} timed out")

        nursery.start_soon(call, "slow")
        await settle()
        nursery.start_soon(call, "queued")
        await trio.sleep(20)
        assert sorted(outcomes) == ["queued timed out", "slow timed out"]
        assert actor.calls == ["slow"]  # "queued" expired before the actor reached it
        assert await actor.call("after") == ("after", [])
        nursery.cancel_scope.cancel()


async def test_stop_finishes_current_message_and_fails_pending_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder()
    call_outcome: list[str] = []

    async def caller() -> None:
        try:
            await actor.call("x", timeout=60)
        except MailboxClosed:
            call_outcome.append("closed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        actor.send("slow")
        await settle()  # now inside "slow"
        actor.send("dropped")
        nursery.start_soon(caller)
        actor.send_after(1, "timer")
        await settle()
        actor.stop()
        with pytest.raises(MailboxClosed):
            actor.send("after stop")
        with pytest.raises(MailboxClosed):
            actor.send_after(1, "after stop")
    assert actor.seen == ["slow"]
    assert actor.calls == []
    assert call_outcome == ["closed"]


async def test_stop_from_inside_a_handler_and_while_idle() -> None:
    actor = Recorder()
    actor.send("a")
    actor.send("stop")
    actor.send("never")
    await actor.run()
    assert actor.seen == ["a", "stop"]

    idle = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(idle.run)
        await settle()
        idle.stop()
    assert idle.seen == []


async def test_run_resumes_the_mailbox_after_a_crash() -> None:
    actor = Recorder()
    for msg in ("a", "boom", "b"):
        actor.send(msg)
    with pytest.raises(Boom):
        await actor.run()
    actor.send("stop")
    await actor.run()
    assert actor.seen == ["a", "boom", "b", "stop"]


async def test_run_is_not_reentrant() -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        await settle()
        with pytest.raises(RuntimeError):
            await actor.run()
        actor.stop()


class Topic(Actor[str]):
    """A per-topic actor, as a channel server would run one per joined topic."""

    def __init__(self, topic: str, registry: dict[str, Topic]) -> None:
        super().__init__()
        self.topic = topic
        self.history: list[str] = []
        registry[topic] = self

    async def handle_message(self, msg: str) -> None:
        if msg == "boom":
            raise Boom(self.topic)
        self.history.append(msg)

    async def handle_call(self, request: Any) -> Any:
        return list(self.history)


async def test_one_actor_per_topic_under_a_dynamic_supervisor() -> None:
    registry: dict[str, Topic] = {}
    exits: list[tuple[str, Exception | None]] = []

    async def run_topic(topic: str) -> None:
        # A fresh actor per (re)start, so a crash doesn't leak state into the restart.
        await Topic(topic, registry).run()

    def on_exit(handle: ChildHandle, exc: Exception | None) -> None:
        exits.append((handle.name, exc))
        registry.pop(handle.name, None)

    async with DynamicSupervisor.open(name="conn-1") as sup:
        handles = {
            topic: sup.start_child(run_topic, topic, name=topic, on_exit=on_exit)
            for topic in ("room:a", "room:b")
        }
        sup.start_child(
            run_topic, "room:p", name="room:p", restart=Restart.PERMANENT, on_exit=on_exit
        )
        await settle()
        registry["room:a"].send("hello a")
        registry["room:b"].send("hello b")
        assert await registry["room:a"].call("history") == ["hello a"]

        registry["room:b"].send("boom")  # TEMPORARY: gone, siblings unaffected
        old_p = registry["room:p"]
        old_p.send("boom")  # PERMANENT: replaced by a fresh actor
        await settle()
        assert handles["room:b"].done
        assert [(name, type(exc)) for name, exc in exits] == [("room:b", Boom)]
        assert registry["room:p"] is not old_p
        assert await registry["room:a"].call("history") == ["hello a"]

        handles["room:a"].cancel()  # leave the topic
        await handles["room:a"].wait()
        assert exits[-1] == ("room:a", None)
        assert sorted(registry) == ["room:p"]
        await sup.shutdown()
    assert exits[-1] == ("room:p", None)
