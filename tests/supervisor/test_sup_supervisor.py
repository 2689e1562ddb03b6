"""Static Supervisor: strategies, restart types, intensity, nesting, ordered shutdown."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from supervisor import ChildSpec, Restart, Strategy, Supervisor, SupervisorEscalation


class Boom(Exception):
    pass


class Harness:
    """Children that record their life and crash/exit when the test says so."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self._gates: dict[str, trio.Event] = {}
        self._outcome: dict[str, str] = {}

    def child(self, cid: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            gate = self._gates[cid] = trio.Event()
            self.log.append(("start", cid))
            try:
                await gate.wait()
            except trio.Cancelled:
                self.log.append(("cancelled", cid))
                raise
            outcome = self._outcome.pop(cid)
            self.log.append((outcome, cid))
            if outcome == "crash":
                raise Boom(cid)

        return run

    def spec(self, cid: str, restart: Restart = Restart.PERMANENT) -> ChildSpec:
        return ChildSpec(cid, self.child(cid), restart=restart)

    def crash(self, cid: str) -> None:
        self._outcome[cid] = "crash"
        self._gates[cid].set()

    def exit(self, cid: str) -> None:
        self._outcome[cid] = "exit"
        self._gates[cid].set()

    def take(self) -> list[tuple[str, str]]:
        log, self.log = self.log, []
        return log


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def crash_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "supervisor" and r.levelno == logging.ERROR and "crashed" in r.getMessage()
    ]


async def test_starts_children_in_order_and_stops_in_reverse() -> None:
    h = Harness()
    sup = Supervisor([h.spec("a"), h.spec("b"), h.spec("c")])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert h.take() == [("start", "a"), ("start", "b"), ("start", "c")]
        sup.stop()
    assert h.take() == [("cancelled", "c"), ("cancelled", "b"), ("cancelled", "a")]


async def test_one_for_one_restarts_only_the_failed_child(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    sup = Supervisor([h.spec("a"), h.spec("b"), h.spec("c")], Strategy.ONE_FOR_ONE)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        h.take()
        h.crash("b")
        await settle()
        assert h.take() == [("crash", "b"), ("start", "b")]
        sup.stop()
    records = crash_records(caplog)
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], Boom)


async def test_one_for_all_restarts_everyone_reverse_stop_then_in_order() -> None:
    h = Harness()
    sup = Supervisor([h.spec("a"), h.spec("b"), h.spec("c")], Strategy.ONE_FOR_ALL)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        h.take()
        h.crash("b")
        await settle()
        assert h.take() == [
            ("crash", "b"),
            ("cancelled", "c"),
            ("cancelled", "a"),
            ("start", "a"),
            ("start", "b"),
            ("start", "c"),
        ]
        sup.stop()


async def test_rest_for_one_restarts_the_failed_child_and_later_ones() -> None:
    h = Harness()
    specs = [h.spec("a"), h.spec("b"), h.spec("c"), h.spec("d")]
    sup = Supervisor(specs, Strategy.REST_FOR_ONE)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        h.take()
        h.crash("b")
        await settle()
        assert h.take() == [
            ("crash", "b"),
            ("cancelled", "d"),
            ("cancelled", "c"),
            ("start", "b"),
            ("start", "c"),
            ("start", "d"),
        ]
        h.crash("d")
        await settle()
        assert h.take() == [("crash", "d"), ("start", "d")]
        sup.stop()


async def test_permanent_child_is_restarted_after_a_normal_exit() -> None:
    h = Harness()
    sup = Supervisor([h.spec("a")])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        h.take()
        h.exit("a")
        await settle()
        assert h.take() == [("exit", "a"), ("start", "a")]
        sup.stop()


async def test_transient_child_restarted_on_crash_removed_on_normal_exit() -> None:
    h = Harness()
    sup = Supervisor([h.spec("t", Restart.TRANSIENT), h.spec("p")], Strategy.ONE_FOR_ALL)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        h.take()
        h.crash("t")
        await settle()
        assert h.take() == [
            ("crash", "t"),
            ("cancelled", "p"),
            ("start", "t"),
            ("start", "p"),
        ]
        h.exit("t")
        await settle()
        assert h.take() == [("exit", "t")]  # removed, and no one else touched
        # Gone for good: a later group restart does not bring it back.
        h.crash("p")
        await settle()
        assert h.take() == [("crash", "p"), ("start", "p")]
        sup.stop()


async def test_temporary_child_crash_is_not_restarted_and_disturbs_no_one() -> None:
    h = Harness()
    sup = Supervisor(
        [h.spec("a"), h.spec("tmp", Restart.TEMPORARY), h.spec("c")], Strategy.ONE_FOR_ALL
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        h.take()
        h.crash("tmp")
        await settle()
        assert h.take() == [("crash", "tmp")]
        sup.stop()
    assert h.take() == [("cancelled", "c"), ("cancelled", "a")]


async def test_temporary_sibling_in_a_group_restart_is_stopped_not_restarted() -> None:
    h = Harness()
    sup = Supervisor(
        [h.spec("a"), h.spec("tmp", Restart.TEMPORARY), h.spec("c")], Strategy.ONE_FOR_ALL
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        h.take()
        h.crash("a")
        await settle()
        assert h.take() == [
            ("crash", "a"),
            ("cancelled", "c"),
            ("cancelled", "tmp"),
            ("start", "a"),
            ("start", "c"),
        ]
        sup.stop()


async def test_run_returns_when_no_child_is_left() -> None:
    h = Harness()
    sup = Supervisor([h.spec("t", Restart.TRANSIENT), h.spec("tmp", Restart.TEMPORARY)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await settle()
        h.exit("t")
        h.crash("tmp")
    assert ("crash", "tmp") in h.log
    assert ("exit", "t") in h.log
    assert h.log.count(("start", "t")) == 1


async def test_intensity_exceeded_escalates_with_cause_and_stops_children(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    sup = Supervisor(
        [h.spec("a"), h.spec("b"), h.spec("c")], max_restarts=2, period=10.0, name="top"
    )

    async def crash_b() -> None:
        while True:
            await settle()
            h.crash("b")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(crash_b)
        with pytest.raises(SupervisorEscalation) as info:
            await sup.run()
        nursery.cancel_scope.cancel()
    err = info.value
    assert err.name == "top"
    assert err.child == "b"
    assert isinstance(err.__cause__, Boom)
    log = h.take()
    assert log.count(("crash", "b")) == 3  # two restarts allowed, the third crash escalates
    assert log[-2:] == [("cancelled", "c"), ("cancelled", "a")]


async def test_restarts_spread_over_time_do_not_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    sup = Supervisor([h.spec("a")], max_restarts=2, period=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for _ in range(10):
            h.crash("a")
            await trio.sleep(6)  # never more than 2 restarts within 10s
        assert h.log.count(("start", "a")) == 11
        sup.stop()


async def test_nested_supervisor_escalation_is_a_child_failure_of_the_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    inner = Supervisor([h.spec("x")], max_restarts=1, period=10.0, name="inner")
    outer = Supervisor(
        [h.spec("sibling"), ChildSpec("inner", inner.run)],
        max_restarts=1,
        period=10.0,
        name="outer",
    )

    async def crash_x_forever() -> None:
        while True:
            await settle()
            h.crash("x")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(crash_x_forever)
        with pytest.raises(SupervisorEscalation) as info:
            await outer.run()
        nursery.cancel_scope.cancel()
    outer_err = info.value
    assert outer_err.name == "outer"
    assert outer_err.child == "inner"
    inner_err = outer_err.__cause__
    assert isinstance(inner_err, SupervisorEscalation)
    assert inner_err.name == "inner"
    assert isinstance(inner_err.__cause__, Boom)
    # inner escalated twice (after 2 crashes of x each); outer restarted it once.
    log = h.take()
    assert log.count(("crash", "x")) == 4
    assert log.count(("start", "sibling")) == 1
    assert log[-1] == ("cancelled", "sibling")


async def test_nested_supervisor_waits_for_inner_startup() -> None:
    h = Harness()
    inner = Supervisor([h.spec("i1"), h.spec("i2")], name="inner")
    outer = Supervisor([h.spec("a"), ChildSpec("inner", inner.run), h.spec("z")])
    async with trio.open_nursery() as nursery:
        await nursery.start(outer.run)
        assert h.take() == [("start", "a"), ("start", "i1"), ("start", "i2"), ("start", "z")]
        outer.stop()
    assert h.take() == [
        ("cancelled", "z"),
        ("cancelled", "i2"),
        ("cancelled", "i1"),
        ("cancelled", "a"),
    ]


async def test_task_status_child_is_started_before_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def slow_init(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(3)
        log.append("slow ready")
        task_status.started()
        await trio.sleep_forever()

    async def fast() -> None:
        log.append("fast")
        await trio.sleep_forever()

    sup = Supervisor([ChildSpec("slow", slow_init), ChildSpec("fast", fast)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert log == ["slow ready", "fast"]
        sup.stop()


async def test_child_crashing_before_started_counts_as_a_crash() -> None:
    attempts: list[int] = []

    async def bad_init(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise Boom("init")
        task_status.started()
        await trio.sleep_forever()

    sup = Supervisor([ChildSpec("c", bad_init)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await settle()
        assert len(attempts) == 2
        sup.stop()


async def test_external_cancellation_stops_children_one_at_a_time_in_reverse(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    def child(cid: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            try:
                await trio.sleep_forever()
            finally:
                log.append(f"stopping {cid}")
                with trio.CancelScope(shield=True):
                    await trio.sleep(1)  # graceful cleanup
                log.append(f"stopped {cid}")

        return run

    sup = Supervisor([ChildSpec(c, child(c)) for c in "abc"])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.cancel_scope.cancel()
    assert log == [
        "stopping c",
        "stopped c",
        "stopping b",
        "stopped b",
        "stopping a",
        "stopped a",
    ]


async def test_shutdown_grace_expiry_moves_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []

    async def stubborn() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(100)
            log.append("stubborn done")

    async def polite() -> None:
        try:
            await trio.sleep_forever()
        finally:
            log.append("polite done")

    sup = Supervisor([ChildSpec("polite", polite), ChildSpec("stubborn", stubborn, shutdown=1)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        sup.stop()
    # polite was stopped without waiting for stubborn's cleanup; run() still joined both.
    assert log == ["polite done", "stubborn done"]
    assert any("did not stop within" in r.getMessage() for r in caplog.records)


async def test_crash_raising_exception_group_is_contained() -> None:
    h = Harness()

    async def group_crasher() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.child("inner"))

    sup = Supervisor([ChildSpec("g", group_crasher, Restart.TRANSIENT), h.spec("other")])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        h.take()
        h.crash("inner")
        await settle()
        # Restarted (TRANSIENT + crashed), sibling untouched.
        assert h.take() == [("crash", "inner"), ("start", "inner")]
        sup.stop()


async def test_run_can_be_restarted_but_not_run_concurrently() -> None:
    h = Harness()
    sup = Supervisor([h.spec("a")])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(RuntimeError):
            await sup.run()
        sup.stop()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        sup.stop()
    assert h.log.count(("start", "a")) == 2


def test_duplicate_child_ids_are_rejected() -> None:
    async def noop() -> None:
        pass

    with pytest.raises(ValueError):
        Supervisor([ChildSpec("a", noop), ChildSpec("a", noop)])


async def test_stop_during_startup_contains_errors_raised_on_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail_on_cancel() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise Boom("cleanup")

    async def never_ready(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail_on_cancel)
            await trio.sleep_forever()

    sup = Supervisor([ChildSpec("c", never_ready)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await settle()
        sup.stop()
    # run() returned normally (no ExceptionGroup escaped); the error was logged as a crash.
    [record] = crash_records(caplog)
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ExceptionGroup)
