"""A non-blocking TCP connection with a synchronous write path.

Every ``await stream.send_all()`` in trio passes through the scheduler even when the kernel
takes the bytes at once (measured). :meth:`Connection.write_nowait` calls ``send()`` on
the non-blocking socket directly and only parks the leftovers in a bounded buffer, which a
short-lived flusher task drains by awaiting writability.

Queued bytes are kept by reference, never copied: a broadcast frame queued for a thousand
connections exists once in memory.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Callable
from itertools import islice

import trio

log = logging.getLogger("channels.connection")

RECV_SIZE = 65536
_MAX_IOV = 64
_TIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None)


def kernel_unread(sock: socket.socket) -> int:
    """Bytes received by the kernel for ``sock`` and not read yet (-1 if unknown)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD,
                                                  b"\0\0\0\0"))[0])
    except (OSError, ValueError):
        return -1


def kernel_queued(sock: socket.socket) -> int:
    """Bytes in the kernel's send queue of ``sock`` not yet acknowledged by the peer (-1 if
    the platform cannot tell). It shrinks as the peer reads, even while the socket is not
    writable: large kernel buffers hide a reading peer from the flusher for a long time."""
    if _TIOCOUTQ is None:
        return -1
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0"))[0])
    except (OSError, ValueError):
        return -1


class Connection:
    """One accepted TCP socket.

    Writes never block: bytes the kernel does not take at once are queued (up to
    ``max_buffer`` bytes) and flushed in the background. Past the limit the connection is a
    slow consumer and ``on_overflow`` is called; nobody else waits for it. A periodic scan
    asks :meth:`write_stall` how long queued bytes have waited with none taken by the peer.
    """

    __slots__ = (
        "_drained",
        "_flushing",
        "_nursery",
        "_partial",
        "_pending",
        "_pending_bytes",
        "_progress",
        "_sent_kernel",
        "_stuck_since",
        "active",
        "closed",
        "max_buffer",
        "on_abort",
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
        max_buffer: int = 64 << 20,
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
        #: Called as abort() closes the socket (a reader parked elsewhere than trio).
        self.on_abort: Callable[[], None] | None = None
        self._nursery: trio.Nursery | None = None
        # Allocated on first backlog: most connections never have one (and idle memory counts).
        # Whole frames as given (references), or a memoryview of the rest of one begun.
        self._pending: collections.deque[bytes | memoryview] | None = None
        self._pending_bytes = 0
        # The head of _pending is the rest of a frame the peer has begun to receive.
        self._partial = False
        # Set when the flusher hands bytes to the kernel; write_stall() clears it (a bool store
        # per flush instead of a clock call).
        self._progress = True
        self._stuck_since = 0.0
        self._sent_kernel = -1
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
            if pending is None:
                pending = self._pending = collections.deque()
            if n:  # the rest of a frame begun: a view, not a copy
                pending.append(memoryview(data)[n:])
                self._pending_bytes += len(data) - n
                self._partial = True
            else:
                pending.append(data)
                self._pending_bytes += len(data)
        else:
            pending.append(data)
            self._pending_bytes += len(data)
        if self._pending_bytes > self.max_buffer:
            self._overflow()
            return
        if not self._flushing:
            self._start_flusher()

    def _start_flusher(self) -> None:
        if self._nursery is None:
            raise RuntimeError("Connection.attach() was not called")
        self._flushing = True
        self._nursery.start_soon(self._flush)

    def _overflow(self) -> None:
        # Nothing more is accepted; on_overflow decides what goes (see cut()).
        self.overflowed = True
        if self.on_overflow is not None:
            self.on_overflow()
        else:
            self.abort()

    def cut(self, final: bytes = b"") -> None:
        """Give up on this peer: drop the queued bytes, accept no more writes, and send
        ``final`` (a close frame) next.

        The rest of a frame the peer has begun to receive stays (cutting it would corrupt the
        stream), so ``final`` follows at most one frame, plus whatever the kernel already
        holds: it arrives if the peer reads again, never if it does not.
        """
        if self.closed:
            return
        self.overflowed = True
        pending = self._pending
        if pending:
            head = pending[0] if self._partial else None
            pending.clear()
            self._pending_bytes = 0
            if head is not None:
                pending.append(head)
                self._pending_bytes = len(head)
        if final:
            if not pending:
                try:
                    n = self.sock.send(final)
                except BlockingIOError:
                    n = 0
                except OSError:
                    self.abort()
                    return
                if n == len(final):
                    return
                if pending is None:
                    pending = self._pending = collections.deque()
                self._partial = n > 0
                pending.append(memoryview(final)[n:])
                self._pending_bytes += len(final) - n
            else:
                pending.append(final)
                self._pending_bytes += len(final)
        if pending and not self._flushing:
            self._start_flusher()

    def write_stall(self, now: float) -> float:
        """Seconds for which queued bytes have waited with none taken by the peer: 0.0 if
        nothing is queued or the peer took bytes since the previous call.

        For a periodic scan (the endpoint's heartbeat monitor): writes only set a flag, so the
        clock is read once per scan, not per write. The peer took bytes if the flusher handed
        some to the kernel or the kernel's send queue changed (one ioctl per scan, only
        for connections with a backlog). Never more than the real stall; less by at most one
        scan interval.
        """
        if not self._pending_bytes:
            self._progress = True  # the next backlog starts its clock at the next scan
            return 0.0
        in_kernel = kernel_queued(self.sock)
        if self._progress or in_kernel != self._sent_kernel:
            self._progress = False
            self._sent_kernel = in_kernel
            self._stuck_since = now
            return 0.0
        return now - self._stuck_since

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
            try:
                n = self.sock.sendmsg(islice(pending, _MAX_IOV))
            except BlockingIOError:
                return
            except OSError:
                self.abort()
                return
            self._pending_bytes -= n
            self._progress = True
            while n:
                head = pending[0]
                size = len(head)
                if size <= n:
                    n -= size
                    pending.popleft()
                    self._partial = False
                else:
                    pending[0] = memoryview(head)[n:]
                    self._partial = True
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
        if self.on_abort is not None:
            self.on_abort()
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()
