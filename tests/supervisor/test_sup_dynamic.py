"""DynamicSupervisor: independent runtime children, on_exit, restarts, escalation."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from supervisor import ChildHandle, DynamicSupervisor, Restart, SupervisorEscalation


class Boom(Exception):
    pass


class Exits:
    """Records on_exit calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Exception | None]] = []

    def __call__(self, handle: ChildHandle, exc: Exception | None) -> None:
        assert handle.done
        self.calls.append((handle.name, exc))


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def forever(log: list[str], name: str) -> None:
    log.append(f"start {name}")
    try:
        await trio.sleep_forever()
    except trio.Cancelled:
        log.append(f"cancelled {name}")
        raise


async def crash_when(gate: trio.Event, exc: Exception) -> None:
    await gate.wait()
    raise exc


async def test_temporary_crash_calls_on_exit_once_and_spares_siblings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    exits = Exits()
    gate = trio.Event()
    boom = Boom("topic")
    async with DynamicSupervisor.open() as sup:
        a = sup.start_child(forever, log, "a", name="a", on_exit=exits)
        bad = sup.start_child(crash_when, gate, boom, name="bad", on_exit=exits)
        c = sup.start_child(forever, log, "c", name="c", on_exit=exits)
        await settle()
        gate.set()
        await settle()
        assert exits.calls == [("bad", boom)]
        assert bad.done
        assert not a.done and not c.done
        assert sup.children == [a, c]
        assert sorted(log) == ["start a", "start c"]  # nobody cancelled, nobody restarted
        await sup.shutdown()
    assert sorted(exits.calls, key=lambda call: call[0]) == [
        ("a", None),
        ("bad", boom),
        ("c", None),
    ]
    crashes = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "supervisor"]
    assert len(crashes) == 1
    assert crashes[0].exc_info is not None and crashes[0].exc_info[1] is boom


async def test_cancel_calls_on_exit_with_none() -> None:
    log: list[str] = []
    exits = Exits()
    async with DynamicSupervisor.open() as sup:
        handle = sup.start_child(forever, log, "x", name="x", on_exit=exits)
        other = sup.start_child(forever, log, "y", name="y")
        await settle()
        handle.cancel()
        handle.cancel()  # idempotent
        await handle.wait()
        assert handle.done
        assert exits.calls == [("x", None)]
        assert sorted(log) == ["cancelled x", "start x", "start y"]
        assert sup.children == [other]
        other.cancel()
    assert exits.calls == [("x", None)]


async def test_cancel_before_the_child_ran_never_runs_it() -> None:
    log: list[str] = []
    exits = Exits()
    async with DynamicSupervisor.open() as sup:
        handle = sup.start_child(forever, log, "x", name="x", on_exit=exits)
        handle.cancel()
    assert log == []
    assert exits.calls == [("x", None)]


async def test_normal_return_calls_on_exit_with_none() -> None:
    exits = Exits()

    async def quick() -> None:
        await trio.lowlevel.checkpoint()

    async with DynamicSupervisor.open() as sup:
        handle = sup.start_child(quick, on_exit=exits)
    assert handle.name.endswith("quick")
    assert exits.calls == [(handle.name, None)]


async def test_permanent_child_restarts_after_crash_and_after_return() -> None:
    runs: list[int] = []
    exits = Exits()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise Boom("first")
        if len(runs) == 2:
            return
        await trio.sleep_forever()

    async with DynamicSupervisor.open() as sup:
        handle = sup.start_child(flaky, restart=Restart.PERMANENT, name="p", on_exit=exits)
        await settle()
        assert len(runs) == 3
        assert not handle.done
        assert exits.calls == []
        handle.cancel()
    assert exits.calls == [("p", None)]


async def test_transient_child_restarts_after_crash_but_not_after_return() -> None:
    runs: list[int] = []
    exits = Exits()

    async def flaky() -> None:
        runs.append(len(runs))
        await trio.lowlevel.checkpoint()
        if len(runs) == 1:
            raise Boom("first")

    async with DynamicSupervisor.open() as sup:
        sup.start_child(flaky, restart=Restart.TRANSIENT, name="t", on_exit=exits)
    assert len(runs) == 2
    assert exits.calls == [("t", None)]


async def test_intensity_exceeded_cancels_everything_and_escalates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    exits = Exits()
    boom = Boom("always")

    async def always_crash() -> None:
        await trio.sleep(1)
        raise boom

    body_finished = False
    with pytest.raises(SupervisorEscalation) as info:
        async with DynamicSupervisor.open(max_restarts=2, period=10, name="conn") as sup:
            sup.start_child(forever, log, "sibling", name="sibling", on_exit=exits)
            sup.start_child(always_crash, restart=Restart.PERMANENT, name="bad", on_exit=exits)
            await trio.sleep_forever()
            body_finished = True  # pragma: no cover
    assert not body_finished
    err = info.value
    assert err.name == "conn"
    assert err.child == "bad"
    assert err.__cause__ is boom
    assert log == ["start sibling", "cancelled sibling"]
    assert sorted(exits.calls, key=lambda call: call[0]) == [("bad", boom), ("sibling", None)]


async def test_restarts_spread_over_time_do_not_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs: list[int] = []

    async def crash_every_6s() -> None:
        runs.append(1)
        await trio.sleep(6)
        if len(runs) < 10:
            raise Boom()

    async with DynamicSupervisor.open(max_restarts=1, period=5) as sup:
        sup.start_child(crash_every_6s, restart=Restart.TRANSIENT)
    assert len(runs) == 10


async def test_shutdown_cancels_children_waits_and_closes() -> None:
    log: list[str] = []
    async with DynamicSupervisor.open() as sup:
        for name in "abc":
            sup.start_child(forever, log, name, name=name)
        await settle()
        await sup.shutdown()
        assert sup.children == []
        assert sorted(log) == [f"{event} {n}" for event in ("cancelled", "start") for n in "abc"]
        with pytest.raises(RuntimeError):
            sup.start_child(forever, log, "late")
        log.append("body continues")
    assert log[-1] == "body continues"


async def test_stop_cancels_children_without_waiting() -> None:
    log: list[str] = []
    async with DynamicSupervisor.open() as sup:
        handle = sup.start_child(forever, log, "a", name="a")
        await settle()
        sup.stop()
        assert not handle.done  # cancellation is requested, not awaited
        await handle.wait()
    assert log == ["start a", "cancelled a"]


async def test_leaving_the_block_waits_for_children(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def work() -> None:
        await trio.sleep(5)
        log.append("work done")

    async with DynamicSupervisor.open() as sup:
        sup.start_child(work)
    assert log == ["work done"]
    with pytest.raises(RuntimeError):
        sup.start_child(work)


async def test_exception_group_crash_is_reported_and_contained() -> None:
    log: list[str] = []
    exits = Exits()

    async def nested_crash() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash_when, trio.Event(), Boom())  # never crashes
            raise Boom("body")

    async with DynamicSupervisor.open() as sup:
        sup.start_child(forever, log, "sibling", name="sibling")
        sup.start_child(nested_crash, name="nested", on_exit=exits)
        await settle()
        assert log == ["start sibling"]
        assert len(exits.calls) == 1
        name, exc = exits.calls[0]
        assert name == "nested"
        assert isinstance(exc, ExceptionGroup)
        assert exc.subgroup(Boom) is not None
        sup.stop()


async def test_crash_while_being_cancelled_reports_the_crash() -> None:
    exits = Exits()
    boom = Boom("cleanup")

    async def bad_cleanup() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise boom

    # max_restarts=0: were this treated as a restart, the supervisor would escalate.
    async with DynamicSupervisor.open(max_restarts=0) as sup:
        handle = sup.start_child(bad_cleanup, restart=Restart.PERMANENT, name="b", on_exit=exits)
        await settle()
        handle.cancel()
    assert exits.calls == [("b", boom)]  # reported, and not restarted


async def test_failing_on_exit_is_logged_and_contained(caplog: pytest.LogCaptureFixture) -> None:
    def bad_on_exit(handle: ChildHandle, exc: Exception | None) -> None:
        raise RuntimeError("callback bug")

    log: list[str] = []
    async with DynamicSupervisor.open() as sup:
        sup.start_child(trio.lowlevel.checkpoint, on_exit=bad_on_exit)
        survivor = sup.start_child(forever, log, "s", name="s")
        await settle()
        assert not survivor.done
        survivor.cancel()
    assert any("on_exit" in r.getMessage() for r in caplog.records)


async def test_errors_mixed_with_cancellation_are_reported_not_propagated() -> None:
    exits = Exits()

    async def fail_on_cancel() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise Boom("cleanup")

    async def child() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail_on_cancel)
            await trio.sleep_forever()

    async with DynamicSupervisor.open() as sup:
        mine = sup.start_child(child, name="own-cancel", on_exit=exits)
        sup.start_child(child, name="shutdown", on_exit=exits)
        await settle()
        mine.cancel()
        await mine.wait()
        sup.stop()
    assert sorted(name for name, _ in exits.calls) == ["own-cancel", "shutdown"]
    for _, exc in exits.calls:
        assert isinstance(exc, ExceptionGroup)
        assert exc.subgroup(Boom) is not None


async def test_attached_children_run_in_the_given_nursery(
        autojump_clock: trio.testing.MockClock) -> None:
    ended: list[tuple[str, float]] = []

    async def child(name: str) -> None:
        try:
            await trio.sleep_forever()
        finally:
            ended.append((name, trio.current_time()))

    async with trio.open_nursery() as nursery:
        sup = DynamicSupervisor.attach(nursery, name="conn")
        a = sup.start_child(child, "a", name="a")
        sup.start_child(child, "b", name="b")
        await trio.testing.wait_all_tasks_blocked()
        assert len(nursery.child_tasks) == 2
        a.cancel_after(2.0)
        await trio.sleep(3.0)
        assert ended == [("a", 2.0)]
        with pytest.raises(RuntimeError):
            sup.cancel_scope  # noqa: B018 (not its nursery)
        sup.stop()
        await sup.join()
        assert [name for name, _ in ended] == ["a", "b"]
        assert sup.children == []
        with pytest.raises(RuntimeError):
            sup.start_child(child, "c")


async def test_attached_escalation_stops_the_children_not_the_nursery(
        autojump_clock: trio.testing.MockClock) -> None:
    async def crash() -> None:
        raise ValueError("boom")

    async with trio.open_nursery() as nursery:
        sup = DynamicSupervisor.attach(nursery, max_restarts=1, period=5.0, name="conn")
        other = sup.start_child(trio.sleep_forever, name="other")
        sup.start_child(crash, name="crash", restart=Restart.PERMANENT)
        await sup.join()
        assert sup.escalated and other.done
        assert not nursery.cancel_scope.cancel_called
