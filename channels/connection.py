"""A non-blocking TCP connection with a synchronous write path.

Every ``await stream.send_all()`` in trio passes through the scheduler even when the kernel
takes the bytes at once (DESIGN.md §2). :meth:`Connection.write_nowait` calls ``send()`` on
the non-blocking socket directly and only parks the leftovers in a bounded buffer, which a
short-lived flusher task drains by awaiting writability.
"""

from __future__ import annotations

import collections
import logging
import socket
from collections.abc import Callable

import trio

log = logging.getLogger("channels.connection")

RECV_SIZE = 65536
_MAX_IOV = 64


class Connection:
    """One accepted TCP socket.

    Writes never block: bytes the kernel does not take at once are queued (up to
    ``max_buffer`` bytes) and flushed in the background. Past the limit the connection is a
    slow consumer and ``on_overflow`` is called; nobody else waits for it.
    """

    __slots__ = (
        "_drained",
        "_flushing",
        "_nursery",
        "_pending",
        "_pending_bytes",
        "active",
        "closed",
        "max_buffer",
        "on_overflow",
        "overflowed",
        "peer",
        "silent_since",
        "sock",
    )

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple[str, int],
        *,
        max_buffer: int = 1 << 20,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.max_buffer = max_buffer
        self.closed = False
        self.overflowed = False
        # Set on every read; the heartbeat monitor clears it and keeps the time (a bool store
        # per read costs less than a clock call).
        self.active = True
        self.silent_since = 0.0
        self.on_overflow: Callable[[], None] | None = None
        self._nursery: trio.Nursery | None = None
        # Allocated on first backlog: most connections never have one (and idle memory counts).
        self._pending: collections.deque[memoryview] | None = None
        self._pending_bytes = 0
        self._flushing = False
        self._drained: trio.Event | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Give the connection a nursery to run its flusher in (owned by the handler)."""
        self._nursery = nursery

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self._pending_bytes

    def write_nowait(self, data: bytes) -> None:
        """Send ``data`` now, or queue what the kernel does not take. Never blocks."""
        if self.closed or self.overflowed:
            return
        pending = self._pending
        if not pending:
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                self.abort()
                return
            if n == len(data):
                return
            data = data[n:]
            if pending is None:
                pending = self._pending = collections.deque()
        pending.append(memoryview(data))
        self._pending_bytes += len(data)
        if self._pending_bytes > self.max_buffer:
            self._overflow()
            return
        if not self._flushing:
            self._flushing = True
            if self._nursery is None:
                raise RuntimeError("Connection.attach() was not called")
            self._nursery.start_soon(self._flush)

    def _overflow(self) -> None:
        # What is queued stays (a frame cut in half would corrupt the stream); nothing more is
        # accepted but ``write_final``, so memory stays within max_buffer plus one frame.
        self.overflowed = True
        if self.on_overflow is not None:
            self.on_overflow()
        else:
            self.abort()

    def write_final(self, data: bytes) -> None:
        """Queue ``data`` (a close frame) behind everything, even past the buffer limit."""
        if self.closed:
            return
        if not self._pending:
            self.overflowed, was = False, self.overflowed
            self.write_nowait(data)
            self.overflowed = was
            return
        self._pending.append(memoryview(data))
        self._pending_bytes += len(data)

    async def _flush(self) -> None:
        try:
            while self._pending and not self.closed:
                try:
                    await trio.lowlevel.wait_writable(self.sock)
                except (trio.ClosedResourceError, OSError):
                    return
                self._send_pending()
        finally:
            self._flushing = False
            if self._drained is not None:
                self._drained.set()

    def _send_pending(self) -> None:
        pending = self._pending
        assert pending is not None
        while pending:
            bufs = list(pending)[:_MAX_IOV] if len(pending) > 1 else [pending[0]]
            try:
                n = self.sock.sendmsg(bufs)
            except BlockingIOError:
                return
            except OSError:
                self.abort()
                return
            self._pending_bytes -= n
            while n:
                head = pending[0]
                if len(head) <= n:
                    n -= len(head)
                    pending.popleft()
                else:
                    pending[0] = head[n:]
                    n = 0

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) until queued bytes reached the kernel."""
        if not self._pending or self.closed:
            return
        # The flusher task owns writability waits (trio allows one waiter per fd).
        if self._drained is None or self._drained.is_set():
            self._drained = trio.Event()
        with trio.move_on_after(timeout):
            await self._drained.wait()

    async def receive_some(self) -> bytes:
        """The next chunk of inbound bytes; ``b""`` at end of stream or after close."""
        while not self.closed:
            try:
                await trio.lowlevel.wait_readable(self.sock)
            except (trio.ClosedResourceError, OSError):
                return b""
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return b""
            self.active = True
            return data
        return b""

    def abort(self) -> None:
        """Close the socket now; any task waiting on it wakes with ClosedResourceError."""
        if self.closed:
            return
        self.closed = True
        self._pending = None
        self._pending_bytes = 0
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()
