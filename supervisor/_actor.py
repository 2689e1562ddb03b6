"""Actors: a task that owns its state and processes a mailbox one message at a time."""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any, Generic, TypeVar

import trio

from ._errors import CallTimeout, MailboxClosed
from ._mailbox import Mailbox

__all__ = ["Actor", "TimerRef"]

T = TypeVar("T")

# Cancelled timers stay in the heap until popped; rebuild once they dominate it.
_COMPACT_MIN = 64


class TimerRef:
    """A message scheduled with :meth:`Actor.send_after`."""

    __slots__ = ("_actor", "_msg", "_pending", "deadline")

    def __init__(self, actor: Actor[Any], msg: object, deadline: float) -> None:
        self._actor = actor
        self._msg = msg
        self._pending = True
        self.deadline = deadline

    @property
    def pending(self) -> bool:
        """True until the message enters the mailbox or the timer is cancelled."""
        return self._pending

    def cancel(self) -> bool:
        """Cancel the timer; True if it was still pending (its message never arrives)."""
        if not self._pending:
            return False
        self._pending = False
        self._actor._timer_cancelled()
        return True


class _Call:
    __slots__ = ("abandoned", "error", "event", "request", "result")

    def __init__(self, request: object) -> None:
        self.request = request
        self.result: object = None
        self.error: BaseException | None = None
        self.event = trio.Event()
        self.abandoned = False

    def reply(self, result: object) -> None:
        self.result = result
        self.event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()


_timer_seq = itertools.count()  # ties between equal deadlines break in send_after order
_WAKE = object()


class Actor(Generic[T]):
    """Subclass and override :meth:`handle_message` (and optionally :meth:`handle_call`).

    :meth:`run` handles one message at a time in arrival order, so the actor's state
    needs no locks. An exception from a handler propagates out of ``run``; whoever
    runs the actor (typically a supervisor) decides what happens next. Subclasses
    that define ``__init__`` must call ``super().__init__()``.

    The mailbox and state belong to the instance, so running ``actor.run`` again after
    a crash (e.g. ``ChildSpec(start=actor.run)``) resumes with the queued messages and
    the old state; for a fresh actor per restart, start a function that constructs one.
    """

    def __init__(self) -> None:
        # Any: holds T messages and internal _Call requests, told apart by type.
        self._mailbox: Mailbox[Any] = Mailbox()
        self._timers: list[tuple[float, int, TimerRef]] = []
        self._cancelled_timers = 0
        self._wait_scope: trio.CancelScope | None = None
        # Idle with no timer: waiting without a cancel scope keeps an idle actor small; a
        # send_after from elsewhere then wakes it with _WAKE.
        self._idle_unscoped = False
        self._stopping = False
        self._running = False

    async def handle_message(self, msg: T) -> None:
        """Handle a message sent with :meth:`send` or :meth:`send_after`."""
        raise NotImplementedError

    async def handle_call(self, request: Any) -> Any:
        """Handle a :meth:`call`; the return value is the caller's result."""
        raise NotImplementedError

    def send(self, msg: T) -> None:
        """Queue ``msg`` without waiting; raises ``MailboxClosed`` after :meth:`stop`."""
        self._mailbox.put_nowait(msg)

    def send_after(self, delay: float, msg: T) -> TimerRef:
        """Queue ``msg`` once ``delay`` seconds have passed (behind what is queued then).

        Costs a heap push, no task: the run loop waits on the mailbox with a deadline
        at the earliest timer. Raises ``MailboxClosed`` after :meth:`stop`.
        """
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if self._stopping:
            raise MailboxClosed("actor is stopped")
        deadline = trio.current_time() + delay
        ref = TimerRef(self, msg, deadline)
        heapq.heappush(self._timers, (deadline, next(_timer_seq), ref))
        # Sent from another task while the actor is idle: wake it up in time.
        scope = self._wait_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline
        elif self._idle_unscoped:
            self._idle_unscoped = False
            self._mailbox.put_nowait(_WAKE)
        return ref

    # A timeout parameter (not fail_after) because expiry must also drop the request.
    async def call(self, request: Any, timeout: float = 5.0) -> Any:
        """Send ``request`` through the mailbox and wait for :meth:`handle_call`'s result.

        An exception raised by ``handle_call`` is raised here too (and also crashes the
        actor, like a GenServer). Raises ``CallTimeout`` after ``timeout`` seconds (a
        request the actor has not reached by then is dropped), and ``MailboxClosed`` if
        the actor is stopped or exits before replying. Calling yourself deadlocks
        until the timeout.
        """
        pending = _Call(request)
        self._mailbox.put_nowait(pending)
        try:
            with trio.move_on_after(timeout):
                await pending.event.wait()
        finally:
            if not pending.event.is_set():
                pending.abandoned = True
        if not pending.event.is_set():
            raise CallTimeout(f"no reply from {type(self).__name__} within {timeout}s")
        if pending.error is not None:
            raise pending.error
        return pending.result

    def cancel_timers(self) -> None:
        """Cancel every pending :meth:`send_after` timer (e.g. before a restart)."""
        for _, _, ref in self._timers:
            ref._pending = False
        self._timers.clear()
        self._cancelled_timers = 0

    def stop(self) -> None:
        """Finish the current message, then make :meth:`run` return.

        Messages still queued are dropped, pending calls fail with ``MailboxClosed``,
        timers are discarded, and further sends raise ``MailboxClosed``. Final.
        """
        self._stopping = True
        self._mailbox.close()
        if not self._running:
            self._discard_pending()

    async def run(self) -> None:
        """Process messages in order until :meth:`stop` (or a handler raises)."""
        if self._running:
            raise RuntimeError(f"{type(self).__name__} is already running")
        self._running = True
        self._run_started()
        crashed = True  # (for _run_ended: a bool, not the exception, so no cycle is kept)
        try:
            mailbox = self._mailbox
            try:
                while not self._stopping:
                    if self._timers:
                        self._fire_due_timers(trio.current_time())
                    if mailbox._items:  # peeked directly: the per-message path stays call-free
                        item = await mailbox.get()  # doesn't block
                    elif not self._timers:
                        self._idle_unscoped = True
                        try:
                            # Parked here as Mailbox.get would, not in it: one coroutine frame
                            # less per idle actor (one per joined channel adds up).
                            while not mailbox._items and not mailbox.closed:
                                await trio.lowlevel.wait_task_rescheduled(
                                    mailbox._enqueue(trio.lowlevel.current_task()))
                            if not mailbox._items:
                                break  # stop() while idle
                            item = mailbox.get_nowait()
                        finally:
                            self._idle_unscoped = False
                    else:
                        deadline = self._timers[0][0] if self._timers else math.inf
                        with trio.CancelScope(deadline=deadline) as scope:
                            self._wait_scope = scope
                            try:
                                item = await mailbox.get()
                            except MailboxClosed:
                                break  # stop() while idle
                            finally:
                                self._wait_scope = None
                        if scope.cancelled_caught:
                            continue  # a timer is due
                    if item is _WAKE:
                        continue
                    if type(item) is _Call:
                        await self._handle_call(item)
                    else:
                        await self.handle_message(item)
            finally:
                self._running = False
                if self._stopping:
                    self._discard_pending()
            crashed = False
        except trio.Cancelled:
            crashed = False
            await self._run_cancelled()
            raise
        finally:
            self._run_ended(crashed)

    # Hooks for a subclass's start and end in the actor's own task, so that it needs no
    # coroutine wrapping run (a frame per idle actor).
    def _run_started(self) -> None:
        """Called as :meth:`run` starts."""

    async def _run_cancelled(self) -> None:
        """Called when :meth:`run` is cancelled, before the cancellation goes on."""

    def _run_ended(self, crashed: bool) -> None:
        """Called as :meth:`run` ends; ``crashed`` when a handler raised (not cancelled)."""

    async def _handle_call(self, call: _Call) -> None:
        if call.abandoned:
            return
        try:
            result = await self.handle_call(call.request)
        except Exception as exc:
            call.fail(exc)
            raise
        except BaseException:
            call.fail(MailboxClosed(f"{type(self).__name__} exited before replying"))
            raise
        call.reply(result)

    def _fire_due_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            ref = heapq.heappop(timers)[2]
            if ref._pending:
                ref._pending = False
                self._mailbox.put_nowait(ref._msg)
            else:
                self._cancelled_timers -= 1

    def _timer_cancelled(self) -> None:
        self._cancelled_timers += 1
        if self._cancelled_timers > _COMPACT_MIN and self._cancelled_timers * 2 > len(self._timers):
            self._timers = [entry for entry in self._timers if entry[2]._pending]
            heapq.heapify(self._timers)
            self._cancelled_timers = 0

    def _discard_pending(self) -> None:
        self.cancel_timers()
        mailbox = self._mailbox
        while mailbox:
            item = mailbox.get_nowait()
            if type(item) is _Call:
                item.fail(MailboxClosed(f"{type(self).__name__} stopped before replying"))
