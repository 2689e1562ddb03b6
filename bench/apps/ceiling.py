"""The ceiling: the least work per message a trio server can do for the benchmark's wire traffic.

Nothing of the runtime is used. Plain trio on non-blocking stdlib sockets: a raw accept loop,
one task per connection, a hand-rolled HTTP upgrade (just enough of the request to compute
``Sec-WebSocket-Accept``), an inbound frame parser that unmasks a whole payload as one integer
XOR, and pre-built frames out, written with ``send()`` straight from the task that produces
them (only bytes the kernel does not take are queued, for a short-lived flusher task). It
answers what :mod:`bench.apps.bare` answers: a data frame containing ``"bcast"`` is fanned out to
every upgraded connection (checkpointing every 256 sends, as ``PubSub.local_broadcast`` does,
so that one broadcast to 19,000 sockets does not hold the scheduler), a join gets the pre-built
join reply, anything else the pre-built echo reply; pings are answered, a close is echoed.

It is not a server for anything else: no limits besides a bounded handshake, no UTF-8 checks,
no idle timeout, no back-pressure beyond an unbounded per-connection queue.

    python -m bench.apps.ceiling --port 4002
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import select
import socket as stdsocket
from itertools import islice

import trio

from bench.apps.common import (
    BROADCAST,
    ECHO_REPLY,
    JOIN_REPLY,
    accept_some,
    listen,
    serve_until_signal,
)

# As channels.pubsub.CHECKPOINT_EVERY (not imported: this server uses none of the runtime).
CHECKPOINT_EVERY = 256
RECV_SIZE = 65536
MAX_HANDSHAKE = 8192
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(data: bytes) -> bytes:
    """One final, unmasked text frame."""
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + data
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + data


BCAST_FRAME = frame(BROADCAST)
ECHO_FRAME = frame(ECHO_REPLY)
JOIN_FRAME = frame(JOIN_REPLY)


_from_bytes = int.from_bytes


def answer(conn: Conn, message: bytes, nursery: trio.Nursery) -> bool:
    """Answer a whole message as bare does; True for a broadcast (the caller fans it out)."""
    if b'"bcast"' in message:
        return True
    conn.write(JOIN_FRAME if b"phx_join" in message else ECHO_FRAME, nursery)
    return False


class Conn:
    """One socket: its ``send``, and the bytes the kernel did not take (None when none)."""

    __slots__ = ("pending", "send", "sock")

    def __init__(self, sock: stdsocket.socket) -> None:
        self.sock = sock
        self.send = sock.send
        self.pending: collections.deque[bytes | memoryview] | None = None

    def write(self, data: bytes, nursery: trio.Nursery) -> None:
        if self.pending is not None:
            self.pending.append(data)
            return
        try:
            sent = self.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the reading task sees the error and ends the connection
        if sent != len(data):
            self.backlog(data, sent, nursery)

    def backlog(self, data: bytes, sent: int, nursery: trio.Nursery) -> None:
        self.pending = collections.deque((memoryview(data)[sent:] if sent else data,))
        nursery.start_soon(self.flush)

    async def flush(self) -> None:
        pending = self.pending
        sock = self.sock
        while pending:
            try:
                await trio.lowlevel.wait_writable(sock)
                n = sock.sendmsg(islice(pending, 64))
            except BlockingIOError:
                continue
            except (trio.ClosedResourceError, OSError):
                break
            while n:
                head = pending[0]
                if len(head) <= n:
                    n -= len(head)
                    pending.popleft()
                else:
                    pending[0] = memoryview(head)[n:]
                    n = 0
        self.pending = None


class Ceiling:
    def __init__(self) -> None:
        # Upgraded connections, in insertion order (a dict as an ordered set).
        self.conns: dict[Conn, None] = {}
        self.nursery: trio.Nursery | None = None

    async def fanout(self) -> None:
        data = BCAST_FRAME
        size = len(data)
        nursery = self.nursery
        assert nursery is not None
        targets = tuple(self.conns)
        for start in range(0, len(targets), CHECKPOINT_EVERY):
            if start:
                await trio.lowlevel.checkpoint()
            # Conn.write inlined: one attribute test and one send() per delivery.
            for c in targets[start:start + CHECKPOINT_EVERY]:
                if c.pending is not None:
                    c.pending.append(data)
                    continue
                try:
                    sent = c.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    continue
                if sent != size:
                    c.backlog(data, sent, nursery)

    async def handle(self, sock: stdsocket.socket) -> None:
        conn = Conn(sock)
        try:
            rest = await self.upgrade(conn)
            if rest is None:
                return
            self.conns[conn] = None
            try:
                await self.run(conn, rest)
            finally:
                del self.conns[conn]
        finally:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    async def upgrade(self, conn: Conn) -> bytes | None:
        """Read the request head, answer 101; the bytes after the head, or None on failure."""
        sock = conn.sock
        buf = b""
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HANDSHAKE:
                return None
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return None
            if not data:
                return None
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"GET /socket/websocket"):
            conn.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", self._nursery())
            return None
        key = b""
        protocol = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"sec-websocket-key":
                key = value.strip()
            elif name == b"sec-websocket-protocol":
                protocol = b"Sec-WebSocket-Protocol: phoenix\r\n"
        if not key:
            conn.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n", self._nursery())
            return None
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        conn.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
                   + protocol + b"\r\n", self._nursery())
        return rest

    def _nursery(self) -> trio.Nursery:
        assert self.nursery is not None
        return self.nursery

    async def run(self, conn: Conn, buf: bytes) -> None:
        sock = conn.sock
        parts: list[bytes] = []
        while True:
            rest = await self.handle_bytes(conn, buf, parts)
            if rest is None:
                return
            buf = rest
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            buf = buf + data if buf else data

    async def handle_bytes(self, conn: Conn, buf: bytes, parts: list[bytes]) -> bytes | None:
        """Answer every whole message in ``buf`` (``parts``: the fragments of one still
        arriving); the bytes of an incomplete frame, or None when the connection ends."""
        nursery = self._nursery()
        n = len(buf)
        if n > 1 and buf[0] == 0x81 and n == buf[1] - 122:
            # The most common read: one whole, final, masked text frame under 126 bytes.
            size = n - 6
            key = _from_bytes(buf[2:6] * ((size >> 2) + 1), "little")
            key &= (1 << (size << 3)) - 1
            message = (_from_bytes(buf[6:], "little") ^ key).to_bytes(size, "little")
            if answer(conn, message, nursery):
                await self.fanout()
            return b""
        # Parse every whole frame in buf; an incomplete one waits for more bytes.
        i = 0
        while n - i >= 6:
            b0, b1 = buf[i], buf[i + 1]
            if not b1 & 0x80:
                return None  # client frames are masked (RFC 6455 5.1)
            size = b1 & 0x7F
            h = i + 2
            if size == 126:
                if n - i < 8:
                    break
                size = int.from_bytes(buf[h:h + 2], "big")
                h += 2
            elif size == 127:
                if n - i < 14:
                    break
                size = int.from_bytes(buf[h:h + 8], "big")
                h += 8
            end = h + 4 + size
            if end > n:
                break
            payload = buf[h + 4:end]
            if size:
                mask = int.from_bytes((buf[h:h + 4] * ((size >> 2) + 1))[:size], "big")
                payload = (int.from_bytes(payload, "big") ^ mask).to_bytes(size, "big")
            i = end
            op = b0 & 0x0F
            if op < 3:  # text, binary, continuation
                if not b0 & 0x80:
                    parts.append(payload)
                    continue
                if parts:
                    parts.append(payload)
                    payload = b"".join(parts)
                    parts.clear()
                if answer(conn, payload, nursery):
                    await self.fanout()
            elif op == 9:
                conn.write(bytes((0x8A, size)) + payload, nursery)
            elif op == 8:
                conn.write(bytes((0x88, len(payload[:2]))) + payload[:2], nursery)
                return None
        return buf[i:]

    async def serve(self, host: str, port: int) -> None:
        listener = listen(host, port)

        def start(nursery: trio.Nursery) -> None:
            self.nursery = nursery
            nursery.start_soon(self.accept_loop, listener, nursery)

        await serve_until_signal("ceiling", listener, start)

    async def accept_loop(self, listener: stdsocket.socket, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            accepted, error = accept_some(listener)
            for sock, _peer in accepted:
                nursery.start_soon(self.handle, sock)
            if error is not None:
                await trio.sleep(0.1)  # e.g. out of descriptors: back off


class MuxCeiling(Ceiling):
    """``--mux``: every upgraded socket is read by one task, off an epoll set of its own.

    trio parks a task per socket (``wait_readable``: an ``epoll_ctl`` to arm it, a task
    switch to wake it); here one task waits on one epoll descriptor and, once woken, reads
    every socket that is ready, so a batch of N ready sockets costs one wake-up. It measures
    what that I/O model saves below the per-connection-task ceiling; the connection's own task
    only waits for the end. Messages are answered by :meth:`Ceiling.handle_bytes`, as there.
    """

    def __init__(self) -> None:
        super().__init__()
        self.epoll = select.epoll()
        # fd -> the connection, the bytes of an incomplete frame, the fragments of a message
        # still arriving, and the event that ends its task
        self.readers: dict[int, tuple[Conn, list[bytes], list[bytes], trio.Event]] = {}
        self.started = False

    async def run(self, conn: Conn, buf: bytes) -> None:
        done = trio.Event()
        fd = conn.sock.fileno()
        self.readers[fd] = (conn, [], [], done)
        self.epoll.register(fd, select.EPOLLIN)
        if not self.started:
            self.started = True
            self._nursery().start_soon(self.mux)
        try:
            if buf:
                await self.take(fd, buf)
            await done.wait()
        finally:
            self._end(fd, done)

    async def mux(self) -> None:
        poll = self.epoll.poll
        while True:
            await trio.lowlevel.wait_readable(self.epoll.fileno())
            for fd, _ in poll(0, 256):
                entry = self.readers.get(fd)
                if entry is None:
                    continue
                try:
                    data = entry[0].sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    await self.take(fd, data)
                else:
                    self._end(fd, entry[3])

    async def take(self, fd: int, data: bytes) -> None:
        """Answer what ``data`` completes for connection ``fd``."""
        entry = self.readers.get(fd)
        if entry is None:
            return
        conn, rest, parts, done = entry
        buf = b"".join((*rest, data)) if rest else data
        rest.clear()
        left = await self.handle_bytes(conn, buf, parts)
        if left is None:
            self._end(fd, done)
        elif left:
            rest.append(left)

    def _end(self, fd: int, done: trio.Event) -> None:
        self.readers.pop(fd, None)
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        done.set()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4002)
    parser.add_argument("--mux", action="store_true", help="one reading task for all sockets")
    args = parser.parse_args()
    trio.run((MuxCeiling() if args.mux else Ceiling()).serve, args.host, args.port)


if __name__ == "__main__":
    main()
