"""Static supervisor: a fixed, ordered list of children with OTP restart strategies."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import trio

from ._errors import SupervisorEscalation
from ._mailbox import Mailbox
from ._policy import Restart, RestartIntensity, Strategy, children_to_restart, should_restart

__all__ = ["ChildSpec", "Supervisor"]

logger = logging.getLogger("supervisor")


@dataclass(frozen=True)
class ChildSpec:
    """How to run and restart one child of a :class:`Supervisor`.

    ``start`` is called with no arguments and its awaitable is the child task. If it
    accepts a ``task_status`` keyword (like functions used with ``nursery.start``), it
    is passed one, and the supervisor waits for ``task_status.started()`` before
    starting the next child; a child that ends without calling it counts as started.
    ``Supervisor.run`` itself accepts ``task_status``, so supervisors nest.

    ``shutdown`` is how many seconds the supervisor waits for the child to finish
    after cancelling it. Trio cancellation is cooperative, so this only matters for
    children that do shielded cleanup; when it runs out the supervisor logs a warning
    and carries on (trio cannot kill a task), leaving the old task to finish in the
    background. ``math.inf`` waits forever.
    """

    id: str
    start: Callable[[], Awaitable[object]]
    restart: Restart = Restart.PERMANENT
    shutdown: float = 5.0

    def __post_init__(self) -> None:
        if self.shutdown < 0:
            raise ValueError("shutdown must be >= 0")


def _accepts_task_status(fn: Callable[..., object]) -> bool:
    try:
        return "task_status" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class _Child:
    __slots__ = ("run", "spec", "wants_status")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.wants_status = _accepts_task_status(spec.start)
        self.run: _Run | None = None  # the current incarnation, if any


class _Run:
    """One incarnation of a child; exit events for replaced incarnations are ignored."""

    __slots__ = ("child", "done", "exc", "scope")

    def __init__(self, child: _Child) -> None:
        self.child = child
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.exc: Exception | None = None


class _ChildStatus(trio.TaskStatus[object]):
    """Forwards ``started()`` and shields the child from then on.

    Once started, a child is only cancelled by its supervisor, which does it one at a
    time in reverse start order; before that it shares the starter's cancellation,
    like any task being started with ``nursery.start``.
    """

    __slots__ = ("called", "run", "status")

    def __init__(self, run: _Run, status: trio.TaskStatus[None]) -> None:
        self.run = run
        self.status = status
        self.called = False

    def started(self, value: object = None) -> None:
        if self.called:
            raise RuntimeError("called 'started' twice on the same task status")
        self.called = True
        self.run.scope.shield = True
        self.status.started()


class Supervisor:
    """Runs ``specs`` in order and restarts them per ``strategy`` (Erlang/OTP style).

    A child ends by returning or raising; a crash is logged once (with traceback) and
    never cancels siblings. PERMANENT children are always restarted, TRANSIENT ones
    only after a crash, TEMPORARY ones never; a child that is not restarted is
    removed. A restart stops the affected children (per ``strategy``) in reverse start
    order, then starts them again in start order; TEMPORARY siblings caught up in a
    group restart are stopped and removed, not restarted. More than ``max_restarts``
    restarts within ``period`` seconds makes ``run`` stop every child and raise
    :class:`SupervisorEscalation`, which a parent supervisor treats as a crash of the
    child that ran this supervisor.
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period: float = 5.0,
        name: str = "supervisor",
    ) -> None:
        ids = [spec.id for spec in specs]
        if len(set(ids)) != len(ids):
            raise ValueError("child ids must be unique")
        RestartIntensity(max_restarts, period)  # validate now rather than in run()
        self.specs = tuple(specs)
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.period = period
        self.name = name
        self._running = False
        self._stop_scope: trio.CancelScope | None = None
        self._children: list[_Child] = []
        self._by_id: dict[str, _Child] = {}
        self._events: Mailbox[_Run] = Mailbox()
        self._nursery: trio.Nursery | None = None
        self._intensity = RestartIntensity(max_restarts, period)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, then supervise them.

        Calls ``task_status.started()`` once every initial child has started. Returns
        when no child is left (all ended and none is to be restarted) or after
        :meth:`stop`. Cancelling it, :meth:`stop` and escalation all stop the children
        one by one in reverse start order. A run may be restarted after it ended (the
        intensity window starts afresh), but not run twice concurrently.
        """
        if self._running:
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        self._running = True
        self._children = [_Child(spec) for spec in self.specs]
        self._by_id = {child.spec.id: child for child in self._children}
        self._events = Mailbox()
        self._intensity = RestartIntensity(self.max_restarts, self.period)
        escalation: SupervisorEscalation | None = None
        started = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    with trio.CancelScope() as self._stop_scope:
                        for child in list(self._children):
                            await self._start(child)
                        task_status.started()
                        started = True
                        escalation = await self._supervise()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._stop_all()
        finally:
            self._running = False
            self._stop_scope = None
            self._nursery = None
        if escalation is not None:
            raise escalation
        if not started:
            # Stopped during startup: still honour the nursery.start contract.
            task_status.started()

    def stop(self) -> None:
        """Ask the current run to stop its children in reverse order and return.

        No-op when not running.
        """
        if self._stop_scope is not None:
            self._stop_scope.cancel()

    async def _supervise(self) -> SupervisorEscalation | None:
        while self._children:
            run = await self._events.get()
            child = run.child
            if child.run is not run:
                continue  # an incarnation we already stopped or replaced
            child.run = None
            if not should_restart(child.spec.restart, run.exc is not None):
                self._remove(child)
                continue
            if not self._intensity.record(trio.current_time()):
                logger.error(
                    "%s: restart intensity exceeded (%d in %ss), last failure: %r; shutting down",
                    self.name,
                    self.max_restarts,
                    self.period,
                    child.spec.id,
                )
                escalation = SupervisorEscalation(self.name, child.spec.id)
                escalation.__cause__ = run.exc
                return escalation
            await self._restart(child)
        return None

    async def _restart(self, failed: _Child) -> None:
        ids = [child.spec.id for child in self._children]
        affected = [self._by_id[i] for i in children_to_restart(self.strategy, ids, failed.spec.id)]
        for child in reversed(affected):
            await self._terminate(child)
        for child in affected:
            if child is not failed and child.spec.restart is Restart.TEMPORARY:
                self._remove(child)
            else:
                await self._start(child)

    def _remove(self, child: _Child) -> None:
        self._children.remove(child)
        del self._by_id[child.spec.id]

    async def _start(self, child: _Child) -> None:
        assert self._nursery is not None
        run = _Run(child)
        child.run = run
        await self._nursery.start(self._run_child, run)

    async def _terminate(self, child: _Child) -> None:
        run = child.run
        if run is None:
            return
        child.run = None  # its exit event becomes stale
        run.scope.cancel()
        with trio.move_on_after(child.spec.shutdown):
            await run.done.wait()
        if not run.done.is_set():
            logger.warning(
                "%s: child %r did not stop within %ss of being cancelled; moving on",
                self.name,
                child.spec.id,
                child.spec.shutdown,
            )

    async def _stop_all(self) -> None:
        for child in reversed(self._children):
            await self._terminate(child)

    def _crashed(self, run: _Run, exc: Exception) -> None:
        run.exc = exc
        logger.error("%s: child %r crashed", self.name, run.child.spec.id, exc_info=exc)

    async def _run_child(self, run: _Run, task_status: trio.TaskStatus[None]) -> None:
        child = run.child
        status = _ChildStatus(run, task_status)
        try:
            try:
                with run.scope:
                    try:
                        if child.wants_status:
                            start = cast(Callable[..., Awaitable[Any]], child.spec.start)
                            await start(task_status=status)
                        else:
                            status.started()
                            await child.spec.start()
                    except BaseExceptionGroup as group:
                        # Errors mixed with a cancellation: keep the errors as the crash,
                        # let the cancellation through (run.scope absorbs its own).
                        crash, rest = group.split(Exception)
                        if crash is None or rest is None:
                            raise
                        self._crashed(run, crash)
                        raise rest from None
            # Only Exception: Cancelled and KeyboardInterrupt must propagate.
            except Exception as exc:
                self._crashed(run, exc)
            if not status.called:
                status.started()
        finally:
            run.done.set()
            self._events.put_nowait(run)
