"""Unbounded FIFO mailbox for actors."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

from ._errors import MailboxClosed

__all__ = ["Mailbox"]

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Unbounded FIFO queue with any number of async getters.

    ``put_nowait`` is on the hot path of every inbound message: it is a deque append
    plus, only when a getter is parked, a wake-up. After ``close()``, ``get`` drains
    the remaining items and then raises ``MailboxClosed``.
    """

    __slots__ = ("_closed", "_items", "_waiters")

    def __init__(self) -> None:
        # None while empty: an idle mailbox holds no deque (thousands of idle actors add up).
        self._items: deque[T] | None = None
        # Parked getters in arrival order; a plain list, not a ParkingLot, since one idle
        # mailbox per joined channel adds up (None while nobody waits).
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
            await self._park()
            # Another getter may have taken the item between our wake-up and now.
            items = self._items
            if items:
                item = items.popleft()
                if not items:
                    self._items = None
                return item

    async def _park(self) -> None:
        task = trio.lowlevel.current_task()
        if self._waiters is None:
            self._waiters = [task]
        else:
            self._waiters.append(task)

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            waiters = self._waiters
            if waiters is not None and task in waiters:
                waiters.remove(task)
                if not waiters:
                    self._waiters = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self) -> None:
        """Refuse further puts and wake parked getters (idempotent)."""
        self._closed = True
        waiters, self._waiters = self._waiters, None
        for task in waiters or ():
            trio.lowlevel.reschedule(task)
