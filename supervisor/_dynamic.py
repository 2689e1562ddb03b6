"""Dynamic supervisor: cheap, unordered children added at runtime (one per topic)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVarTuple

import trio

from ._errors import SupervisorEscalation
from ._policy import Restart, RestartIntensity, should_restart

__all__ = ["ChildHandle", "DynamicSupervisor"]

logger = logging.getLogger("supervisor")

Ts = TypeVarTuple("Ts")

OnExit = Callable[["ChildHandle", "Exception | None"], None]


class ChildHandle:
    """A child of a :class:`DynamicSupervisor`."""

    __slots__ = ("_args", "_done", "_event", "_fn", "_on_exit", "_scope", "name", "restart")

    def __init__(
        self,
        name: str,
        restart: Restart,
        fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        on_exit: OnExit | None,
    ) -> None:
        self.name = name
        self.restart = restart
        self._fn = fn
        self._args = args
        self._on_exit = on_exit
        self._scope = trio.CancelScope()
        self._done = False
        self._event: trio.Event | None = None  # created only if someone waits

    def __repr__(self) -> str:
        return f"<ChildHandle {self.name!r} {'done' if self._done else 'running'}>"

    def cancel_after(self, seconds: float) -> None:
        """Cancel the child (not restarted) once ``seconds`` have passed, unless it ends."""
        self._scope.relative_deadline = seconds

    @property
    def args(self) -> tuple[object, ...]:
        """The arguments the child is started with."""
        return self._args

    @property
    def done(self) -> bool:
        """True once the child has ended for good (and ``on_exit`` has run)."""
        return self._done

    def cancel(self) -> None:
        """Cancel the child without waiting; it is not restarted. Idempotent."""
        self._scope.cancel()

    async def wait(self) -> None:
        """Return once the child has ended for good."""
        if self._done:
            await trio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()


class _Open:
    """``async with DynamicSupervisor.open() as sup``; a class rather than an
    ``asynccontextmanager`` because one exists per connection and a generator frame costs more."""

    __slots__ = ("_manager", "sup")

    def __init__(self, sup: DynamicSupervisor) -> None:
        self.sup = sup
        self._manager: Any = None

    async def __aenter__(self) -> DynamicSupervisor:
        self._manager = trio.open_nursery()
        self.sup._nursery = await self._manager.__aenter__()
        return self.sup

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool:
        sup = self.sup
        try:
            suppress = bool(await self._manager.__aexit__(exc_type, exc, tb))
        finally:
            sup._closed = True
            sup._nursery = None
        if sup._escalation is not None:
            raise sup._escalation
        return suppress


class DynamicSupervisor:
    """Supervises children started at runtime with :meth:`start_child`.

    Built to be cheap enough for one per connection: one nursery, one task per child
    (restarts loop inside that task), no background task and no per-child event
    unless someone calls :meth:`ChildHandle.wait`. Use it via :meth:`open`::

        async def run_topic(topic: str) -> None:
            await RoomActor(topic).run()  # a fresh actor per (re)start

        async with DynamicSupervisor.open(name="conn-42") as sup:
            handle = sup.start_child(run_topic, "room:lobby", name="room:lobby")
            ...
            handle.cancel()  # leave the topic

    Children are unordered and independent (OTP's one_for_one): a crash is logged
    once and only ever affects the crashed child. PERMANENT and TRANSIENT children are
    restarted in place subject to the shared intensity; when it is exceeded every
    child and the ``async with`` body are cancelled and :class:`SupervisorEscalation`
    is raised out of the ``async with``. Like a nursery, leaving the body normally
    waits for the children, and an exception from the body cancels them.
    """

    def __init__(self, max_restarts: int = 3, period: float = 5.0, name: str = "dynamic") -> None:
        RestartIntensity(max_restarts, period)  # validate eagerly
        self.max_restarts = max_restarts
        self.period = period
        self.name = name
        self._children: dict[ChildHandle, None] = {}  # insertion-ordered set
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._intensity: RestartIntensity | None = None  # most supervisors never restart
        self._escalation: SupervisorEscalation | None = None
        self._attached = False

    @classmethod
    def attach(
        cls, nursery: trio.Nursery, max_restarts: int = 3, period: float = 5.0,
        name: str = "dynamic"
    ) -> DynamicSupervisor:
        """A supervisor whose children run in ``nursery``, someone else's: no nursery (and
        cancel scope) of its own, which is what one per connection costs most.

        The owner calls :meth:`stop` and then awaits :meth:`join` when done, and must not
        leave ``nursery`` open past that. Each child is still cancelled on its own (its
        handle's scope). Exceeding the restart intensity cancels every child and refuses new
        ones; no :class:`SupervisorEscalation` is raised (there is no ``async with`` to raise
        it from): check :attr:`escalated`.
        """
        sup = cls(max_restarts, period, name)
        sup._nursery = nursery
        sup._attached = True
        return sup

    @property
    def escalated(self) -> bool:
        """True once the restart intensity was exceeded."""
        return self._escalation is not None

    async def join(self) -> None:
        """Wait for every child to end for good (after :meth:`stop`, promptly)."""
        for handle in list(self._children):
            await handle.wait()

    @classmethod
    def open(
        cls, max_restarts: int = 3, period: float = 5.0, name: str = "dynamic"
    ) -> _Open:
        """Async context manager owning the supervisor's nursery."""
        return _Open(cls(max_restarts, period, name))

    @property
    def cancel_scope(self) -> trio.CancelScope:
        """The scope of the supervisor's nursery (the ``async with`` body and every child):
        a deadline on it bounds both. Not for an attached supervisor (not its nursery)."""
        if self._nursery is None or self._attached:
            raise RuntimeError(f"dynamic supervisor {self.name!r} is not open")
        return self._nursery.cancel_scope

    @property
    def children(self) -> list[ChildHandle]:
        """Handles of the children that have not ended for good, in start order."""
        return list(self._children)

    def start_child(
        self,
        async_fn: Callable[[*Ts], Awaitable[object]],
        *args: *Ts,
        restart: Restart = Restart.TEMPORARY,
        name: str = "",
        on_exit: OnExit | None = None,
    ) -> ChildHandle:
        """Spawn ``async_fn(*args)`` as a child (synchronously, via ``start_soon``).

        ``on_exit(handle, exc)`` is called exactly once, when the child has ended and
        will not be restarted: ``exc`` is the exception for a crash, else None (normal
        return, ``handle.cancel()``, supervisor shutdown). Raises ``RuntimeError`` once
        the supervisor is stopped or closed.
        """
        nursery = self._nursery
        if nursery is None or self._closed:
            raise RuntimeError(f"dynamic supervisor {self.name!r} is not accepting children")
        if not name:
            name = getattr(async_fn, "__qualname__", None) or repr(async_fn)
        handle = ChildHandle(name, restart, async_fn, args, on_exit)
        self._children[handle] = None
        nursery.start_soon(self._run_child, handle, name=name)
        return handle

    def stop(self) -> None:
        """Cancel every child and refuse new ones; the ``async with`` body goes on."""
        self._closed = True
        for handle in list(self._children):
            handle.cancel()

    async def shutdown(self) -> None:
        """:meth:`stop`, then wait for every child to end."""
        self.stop()
        await trio.lowlevel.checkpoint()
        for handle in list(self._children):
            await handle.wait()

    async def _run_child(self, handle: ChildHandle) -> None:
        error: Exception | None = None
        try:
            with handle._scope:
                # Don't start running user code for a child cancelled before it ran.
                await trio.lowlevel.checkpoint_if_cancelled()
                while True:
                    failure: Exception | None = None
                    try:
                        await handle._fn(*handle._args)
                    # Only Exception: Cancelled and KeyboardInterrupt must propagate.
                    except Exception as exc:
                        failure = exc
                        self._log_crash(handle, exc)
                    except BaseExceptionGroup as group:
                        # Errors mixed with a cancellation: report the errors, let the
                        # cancellation through (our scope absorbs its own).
                        failure, rest = group.split(Exception)
                        if failure is None or rest is None:
                            raise
                        error = failure
                        self._log_crash(handle, failure)
                        raise rest from None
                    error = failure
                    if (
                        not should_restart(handle.restart, failure is not None)
                        or handle._scope.cancel_called
                        or self._closed
                    ):
                        break
                    if not self._record_restart():
                        self._escalate(handle, failure)
                        break
                    # A cancel arriving here ends the child reporting its last crash.
                    await trio.lowlevel.checkpoint()
                    error = None
        finally:
            self._finish(handle, error)

    def _record_restart(self) -> bool:
        if self._intensity is None:
            self._intensity = RestartIntensity(self.max_restarts, self.period)
        return self._intensity.record(trio.current_time())

    def _log_crash(self, handle: ChildHandle, exc: Exception) -> None:
        _log_crash_once(self.name, handle.name, exc)

    def _escalate(self, handle: ChildHandle, failure: Exception | None) -> None:
        if self._escalation is None:
            logger.error(
                "%s: restart intensity exceeded (%d in %ss), last failure: %r; shutting down",
                self.name,
                self.max_restarts,
                self.period,
                handle.name,
            )
            escalation = SupervisorEscalation(self.name, handle.name)
            escalation.__cause__ = failure
            self._escalation = escalation
        self._closed = True
        if self._attached:
            self.stop()  # the nursery is not ours to cancel
        elif self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _finish(self, handle: ChildHandle, error: Exception | None) -> None:
        handle._done = True
        self._children.pop(handle, None)
        if handle._event is not None:
            handle._event.set()
        if handle._on_exit is not None:
            try:
                handle._on_exit(handle, error)
            except Exception:
                logger.exception("%s: on_exit callback of %r failed", self.name, handle.name)


# The same bug crashing many children (one per connection and topic) would write a traceback
# per crash: identical crashes (type, message, where) are logged once per interval, counted.
_CRASH_LOG_INTERVAL = 5.0
_crash_log: dict[tuple[object, ...], tuple[float, int]] = {}


def _log_crash_once(sup: str, child: str, exc: Exception) -> None:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else None
    key = (type(exc), str(exc)[:200], where)
    now = time.monotonic()
    last, held = _crash_log.get(key, (-math.inf, 0))
    if now - last < _CRASH_LOG_INTERVAL:
        _crash_log[key] = (last, held + 1)
        return
    if len(_crash_log) > 10_000:
        _crash_log.clear()
    _crash_log[key] = (now, 0)
    suffix = f" ({held} identical crashes not logged in the last {_CRASH_LOG_INTERVAL:g}s)" \
        if held else ""
    logger.error("%s: child %r crashed%s", sup, child, suffix, exc_info=exc)
