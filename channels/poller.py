"""One task that reads every idle WebSocket connection of a node.

trio waits for a socket's input with a task per socket: ``wait_readable`` arms the socket in
trio's epoll set (a system call) and the input wakes that task (a task switch), for every
message. A :class:`Poller` keeps the connections in an epoll set of its own, edge-triggered,
so a socket is armed once for its life; one task waits on that set and, once woken, reads
every ready connection whose own task is parked in :meth:`Poller.wait`. What a message asks
for that cannot be done without waiting (a join, reading paused, a close) is handed to the
connection's task with the events left; everything else (a push forwarded to its channel or
run inline, a heartbeat, a leave, a ping) is done in the poller without waking anyone.

Should a push's inline ``handle_in`` wait after all, a new poller task takes over the epoll set
(and the rest of the ready list) while the old one finishes that callback and ends.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

import trio

from channels.connection import Connection
from channels.stats import Counters

log = logging.getLogger("channels.poller")

#: Ready connections taken from the epoll set per wake-up.
BATCH = 512
#: Bytes read in one go before other tasks get a turn (about what one connection's task
#: handled per step when every connection read for itself).
TURN_BYTES = 65536
_FLAGS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET


class ReadYourself:
    """What :meth:`Poller.wait` returns when the connection's task should read by itself."""


READ_YOURSELF = ReadYourself()


class SocketSession(Protocol):
    """What the poller needs of a connection's session (channels.socket.SocketSession)."""

    conn: Connection
    #: The session's task while parked in :meth:`Poller.wait` (None while it runs).
    parked: trio.lowlevel.Task | None
    #: What the poller hands the parked task.
    handed: list[Any] | None
    #: Input may be waiting that no epoll edge will announce.
    maybe_readable: bool

    def serve_ready(self) -> Coroutine[Any, Any, None] | None:
        """Read and handle what needs no waiting; the rest of an inline callback, if any."""

    def wake_to_end(self) -> None:
        """Reading failed: the task ends the connection."""

    def poller_gone(self) -> None:
        """The poller stopped: the task reads by itself."""


class Poller:
    """Reads the connections registered with :meth:`add` while their tasks are parked."""

    def __init__(self, counters: Counters) -> None:
        #: The node's counters: ``bytes_in`` tells how much a turn has read.
        self.counters = counters
        self._epoll: select.epoll | None = None
        # fd -> session, for every registered connection.
        self._sessions: dict[int, SocketSession] = {}
        self._nursery: trio.Nursery | None = None
        #: Poller tasks that handed over to a new one (an inline handle_in waited).
        self.handovers = 0

    @property
    def running(self) -> bool:
        return self._epoll is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled (started in the node's services nursery)."""
        self._epoll = select.epoll()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._loop, ())
                task_status.started()
        finally:
            epoll, self._epoll = self._epoll, None
            self._nursery = None
            epoll.close()
            # Parked connections read by themselves from now on.
            for session in list(self._sessions.values()):
                session.poller_gone()
            self._sessions.clear()

    def add(self, session: SocketSession) -> bool:
        """Register ``session``'s socket (False when the poller is not running)."""
        epoll = self._epoll
        if epoll is None:
            return False
        fd = session.conn.sock.fileno()
        try:
            epoll.register(fd, _FLAGS)
        except OSError:
            return False
        self._sessions[fd] = session
        return True

    def remove(self, session: SocketSession) -> None:
        """Unregister ``session`` (before its socket is closed)."""
        fd = session.conn.sock.fileno()
        if self._sessions.get(fd) is session:
            del self._sessions[fd]
            if self._epoll is not None:
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass

    async def _loop(self, ready: Sequence[tuple[int, int]]) -> None:
        epoll = self._epoll
        assert epoll is not None
        sessions = self._sessions
        counters = self.counters
        fd = epoll.fileno()
        while True:
            turn = counters.bytes_in + TURN_BYTES
            for i, (sock_fd, _) in enumerate(ready):
                if counters.bytes_in > turn:
                    await trio.lowlevel.checkpoint()
                    turn = counters.bytes_in + TURN_BYTES
                session = sessions.get(sock_fd)
                if session is None:
                    continue
                if session.parked is None:
                    session.maybe_readable = True  # busy: it reads when it parks again
                    continue
                try:
                    waiting = session.serve_ready()
                except Exception:
                    log.exception("reading %s failed; closing it", session.conn.peer)
                    session.wake_to_end()
                    continue
                if waiting is not None:
                    # An inline handle_in waits: a new poller task reads from now on; this
                    # one finishes that callback and ends.
                    self.handovers += 1
                    assert self._nursery is not None
                    self._nursery.start_soon(self._loop, ready[i + 1:])
                    await waiting
                    return
            await trio.lowlevel.wait_readable(fd)
            ready = epoll.poll(0, BATCH)

    async def wait(self, session: SocketSession) -> Any:
        """Park ``session``'s task until the poller hands it something: a list of events
        to handle, :data:`READ_YOURSELF`, or None (the connection ended)."""
        if session.maybe_readable:
            session.maybe_readable = False
            return READ_YOURSELF
        session.parked = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            session.parked = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        handed, session.handed = session.handed, None
        return handed
