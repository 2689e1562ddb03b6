"""Unbounded FIFO mailbox for actors."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

from ._errors import MailboxClosed

__all__ = ["Mailbox"]

T = TypeVar("T")
RaiseCancel = trio.lowlevel.RaiseCancelT


class Mailbox(Generic[T]):
    """Unbounded FIFO queue with any number of async getters.

    ``put_nowait`` is on the hot path of every inbound message: it is a deque append
    plus, only when a getter is parked, a wake-up. After ``close()``, ``get`` drains
    the remaining items and then raises ``MailboxClosed``.
    """

    __slots__ = ("_closed", "_first", "_items", "_waiters")

    def __init__(self) -> None:
        # None while empty: an idle mailbox holds no deque (thousands of idle actors add up).
        self._items: deque[T] | None = None
        # Parked getters in arrival order: the oldest in _first when _waiters is empty (an
        # actor's mailbox has one getter: no list and no abort closure per idle actor; one
        # idle mailbox per joined channel adds up), later ones in a plain list (None if none).
        self._first: trio.lowlevel.Task | None = None
        self._waiters: list[trio.lowlevel.Task] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    @property
    def closed(self) -> bool:
        """True once ``close()`` has been called."""
        return self._closed

    def put_nowait(self, item: T) -> None:
        """Append ``item``; raise ``MailboxClosed`` if the mailbox is closed."""
        if self._closed:
            raise MailboxClosed("mailbox is closed")
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)
        task = self._first
        if task is not None:
            self._first = None
            trio.lowlevel.reschedule(task)
            return
        waiters = self._waiters
        if waiters:
            task = waiters.pop(0)
            if not waiters:
                self._waiters = None
            trio.lowlevel.reschedule(task)

    def get_nowait(self) -> T:
        """Pop the oldest item; ``trio.WouldBlock`` if empty, ``MailboxClosed`` if drained."""
        items = self._items
        if items:
            item = items.popleft()
            if not items:
                self._items = None
            return item
        if self._closed:
            raise MailboxClosed("mailbox is closed")
        raise trio.WouldBlock

    async def get(self) -> T:
        """Wait for and pop the oldest item; ``MailboxClosed`` once closed and drained."""
        await trio.lowlevel.checkpoint_if_cancelled()
        items = self._items
        if items:
            item = items.popleft()
            if not items:
                self._items = None
            # Popped before the schedule point, which is shielded, so it can't be lost.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return item
        while True:
            if self._closed:
                raise MailboxClosed("mailbox is closed")
            # Parked here, not in a helper coroutine: one frame less per idle getter.
            await trio.lowlevel.wait_task_rescheduled(self._enqueue(trio.lowlevel.current_task()))
            # Another getter may have taken the item between our wake-up and now.
            items = self._items
            if items:
                item = items.popleft()
                if not items:
                    self._items = None
                return item

    def _enqueue(self, task: trio.lowlevel.Task) -> Callable[[RaiseCancel], trio.lowlevel.Abort]:
        """Queue ``task`` as a parked getter; the abort function that takes it out again."""
        if self._first is None and self._waiters is None:
            self._first = task
            return self._abort_first
        if self._waiters is None:
            self._waiters = [task]
        else:
            self._waiters.append(task)

        def abort(_: RaiseCancel) -> trio.lowlevel.Abort:
            waiters = self._waiters
            if waiters is not None and task in waiters:
                waiters.remove(task)
                if not waiters:
                    self._waiters = None
            return trio.lowlevel.Abort.SUCCEEDED

        return abort

    def _abort_first(self, _: RaiseCancel) -> trio.lowlevel.Abort:
        # Only the parked _first task can be aborted through this: nobody else takes the slot
        # while it is parked there.
        self._first = None
        return trio.lowlevel.Abort.SUCCEEDED

    def close(self) -> None:
        """Refuse further puts and wake parked getters (idempotent)."""
        self._closed = True
        first, self._first = self._first, None
        if first is not None:
            trio.lowlevel.reschedule(first)
        waiters, self._waiters = self._waiters, None
        for task in waiters or ():
            trio.lowlevel.reschedule(task)
