"""The :class:`Socket` users subclass, and :class:`SocketSession`, one per connection.

A session reads WebSocket frames, decodes them with the negotiated serializer, applies the
protocol rules of :class:`~channels.protocol.SocketState` and runs one
:class:`~channels.channel.ChannelProcess` per joined topic under a dynamic supervisor.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import trio

from channels import logging as chlog
from channels import protocol
from channels.channel import Channel, ChannelProcess, JoinError, Refuse, Reply, Socket
from channels.connection import RECV_SIZE, Connection, kernel_unread
from channels.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    ws_frame,
)
from channels.history import POSITION_KEY, RECOVERY_KEY
from channels.limits import InboundLimiter
from channels.logutil import Throttled
from channels.poller import READ_YOURSELF, Poller
from channels.protocol import Route, SocketState
from channels.serializer import DecodeError, EncodeError, Message, Ref, Serializer
from channels.telemetry import CRASH, JOIN, LEAVE
from channels.wsframe import Close, Failure, FrameParser, Ping, close_frame, pong_frame
from supervisor import ChildHandle, DynamicSupervisor

if TYPE_CHECKING:
    from channels.interfaces import Node
    from channels.pubsub import Subscriber

# Socket and Refuse live with Channel (they refer to each other); importable from here too.
__all__ = ["Refuse", "Socket", "SocketSession"]

log = logging.getLogger("channels.socket")
# What a client (or a bug hit by every client) can repeat at will is logged once per interval.
_throttled = Throttled(log)

CLOSE_GRACE = 2.0  # seconds to wait for the peer's close frame after ours


class _IdSubscriber:
    """Closes the session when ``disconnect`` is broadcast on the socket id."""

    __slots__ = ("session",)

    def __init__(self, session: SocketSession) -> None:
        self.session = session

    def deliver(self, topic: str, event: str, payload: Any, cache: dict[Any, Any]) -> None:
        if event == "disconnect":
            self.session.close(CLOSE_GOING_AWAY, "disconnected")


class SocketSession:
    """One connected client: frames in, protocol rules, channel processes, frames out."""

    #: Times reading paused for back-pressure (a class default until the first pause).
    read_pauses = 0
    # Back-pressure state, as class defaults until reading first pauses. _marks: (offset,
    # time) pairs, "the inbound bytes before this offset (counted in _received) had arrived
    # by then", taken when reading pauses and resumes; _backlog_since: the time by which the
    # chunk being handled had arrived (pushes count their age from it; None: just now).
    _marks: collections.deque[tuple[int, float]] | None = None
    _received = 0
    _backlog_since: float | None = None
    # Reading through the node's poller (class defaults until set): the task parked in
    # Poller.wait, what the poller hands it, and whether input may be waiting that no
    # epoll edge will announce (read before parking; true at first).
    _poller: Poller | None = None
    #: Pushes of the read being handled may run inline: it completed one message only. A
    #: read that completes several means the client is ahead of us: they queue in their
    #: channels' mailboxes, where back-pressure and max_push_age see them (inline, the
    #: backlog would wait in the kernel, unseen, however old). LongPoll: never.
    _inline_ok = False
    parked: trio.lowlevel.Task | None = None
    handed: list[Any] | None = None
    maybe_readable = True

    def __init__(
        self, endpoint: Node, socket: Socket, serializer: Serializer, conn: Connection,
        trailing: bytes = b"", poller: Poller | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.socket = socket
        self.serializer = serializer
        #: What fastlane broadcasts are cached by: sessions with equal keys get the same bytes
        #: (a LongPoll session has its own key: its messages are not WebSocket frames).
        self.fastlane_key: Any = serializer
        self.conn = conn
        self.pubsub = endpoint.pubsub
        self.counters = endpoint.counters
        self.state: SocketState[ChannelProcess] = SocketState(type(socket).max_channels)
        self.max_frame_size = type(socket).max_frame_size
        self.max_queued = type(socket).max_queued
        self.idle_timeout = type(socket).idle_timeout
        # Pushes forwarded to this connection's channels and not yet taken from a mailbox;
        # reading pauses at high_water until _resume is set (see _pause_reading).
        self.unhandled = 0
        self.high_water = type(socket).unhandled_high_water
        self._resume: trio.Event | None = None
        self.closing = False
        self.end_reason = "closed"
        # Inbound frames; bytes that arrived with the upgrade request are the first of them.
        self._parser = FrameParser(self.max_frame_size, trailing)
        self._close_sent = False
        self._sup: DynamicSupervisor | None = None
        self._scope: trio.CancelScope | None = None
        self._id_topic: str | None = None
        conn.max_buffer = type(socket).max_buffer
        conn.on_overflow = self._on_overflow
        limit = type(socket).rate_limit
        self._limiter = InboundLimiter(limit[0], limit[1], time.monotonic()) \
            if limit is not None else None
        if poller is not None:
            self._poller = poller

    # -- outbound ----------------------------------------------------------------------------

    def _write(self, encoded: tuple[bool, bytes]) -> None:
        frame = ws_frame(encoded[1], encoded[0])
        counters = self.counters
        counters.messages_out += 1
        counters.bytes_out += len(frame)
        self.conn.write_nowait(frame)

    def send_reply(self, join_ref: Ref, ref: Ref, topic: str, reply: Reply) -> None:
        self._write(self.serializer.encode_reply(join_ref, ref, topic, reply.status,
                                                 reply.response))

    def send_push(self, join_ref: Ref, topic: str, event: str, payload: Any) -> None:
        self._write(self.serializer.encode(join_ref, None, topic, event, payload))

    def send_close(self, join_ref: Ref, topic: str) -> None:
        self._write(self.serializer.encode(join_ref, join_ref, topic, "phx_close", {}))

    def send_error(self, join_ref: Ref, topic: str) -> None:
        self._write(self.serializer.encode(join_ref, join_ref, topic, "phx_error",
                                           protocol.CHANNEL_CRASH))

    def fastlane_frame(self, topic: str, event: str, payload: Any) -> bytes:
        """The broadcast as one WebSocket frame for this serializer (``b""`` if impossible)."""
        ser = self.serializer
        try:
            is_binary, data = ser.encode_broadcast(topic, event, payload)
        except EncodeError as exc:
            log.warning("broadcast %r on %s cannot be sent with vsn %s: %s",
                        event, topic, ser.vsn, exc)
            return b""
        return ws_frame(data, is_binary)

    def deliver_broadcast(self, topic: str, event: str, payload: Any,
                          cache: dict[Any, Any]) -> None:
        """Fastlane: the broadcast is encoded and framed once per serializer."""
        key = self.fastlane_key
        frame = cache.get(key)
        if frame is None:
            frame = cache[key] = self.fastlane_frame(topic, event, payload)
        if frame:
            counters = self.counters
            counters.messages_out += 1
            counters.bytes_out += len(frame)
            self.conn.write_nowait(frame)

    async def broadcast(self, topic: str, event: str, payload: Any, *,
                        exclude: Subscriber | None = None) -> None:
        """Broadcast for one of this session's channels (on every node)."""
        await self.pubsub.broadcast(topic, event, payload, exclude=exclude)

    def replan(self, topic: str) -> None:
        self.pubsub.replan(topic)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, code: int, reason: str = "", end_reason: str = "closed") -> None:
        """Close with ``code``; the peer has ``CLOSE_GRACE`` seconds to answer."""
        if self.closing:
            return
        self.closing = True
        self.end_reason = end_reason
        if not self._close_sent:
            self._close_sent = True
            self.conn.write_nowait(close_frame(code, reason))
        self._close_after_grace()
        log.debug("closing %s: %d %s", self.conn.peer, code, reason)

    def _on_overflow(self) -> None:
        self._slow_consumer(f"more than {self.conn.max_buffer} bytes queued (max_buffer)")

    def write_stalled(self, seconds: float) -> None:
        """The heartbeat monitor saw queued bytes wait ``seconds`` with none taken."""
        self._slow_consumer(f"no bytes taken for {seconds:.1f}s (write_timeout)")

    def _slow_consumer(self, why: str) -> None:
        log.warning("slow consumer %s: %s; closing 1013", self.conn.peer, why)
        self.counters.slow_consumers += 1
        self.endpoint.report_protection("slow_consumer", self.conn.peer)
        self.closing = True
        self.end_reason = "closed"
        # Its queued frames are dropped (all but the rest of one it began to receive) and the
        # close frame goes next: a client that reads again gets 1013 at once. One that never
        # reads again cannot get it (it sits behind what the kernel holds): the connection
        # ends without it at the close grace (a browser reports 1006).
        final = b""
        if not self._close_sent:
            self._close_sent = True
            final = close_frame(CLOSE_TRY_AGAIN_LATER, "slow consumer")
        self.conn.cut(final)
        self._close_after_grace()

    def _close_after_grace(self) -> None:
        # When the grace ends the read loop and the channels are cancelled; channels stop
        # with the reason set here.
        for joined in self.state.topics.values():
            joined.handle.exit_reason = self.end_reason
        if self._scope is not None:
            self._scope.relative_deadline = CLOSE_GRACE
        if self._sup is not None:
            for handle in self._sup.children:
                handle.cancel_after(CLOSE_GRACE)

    async def run(self) -> None:
        """Serve the connection until it closes; then stop every channel."""
        id_sub = self._begin()
        poller = self._poller
        if poller is not None:
            if poller.add(self):
                self.conn.on_abort = self._aborted
            else:
                self._poller = None
        # The read loop runs here, not in a coroutine of its own: one frame less per idle
        # connection (LongPoll, which does not read, has its own run).
        try:
            with trio.CancelScope() as self._scope:
                conn = self.conn
                sock = conn.sock
                # The parser already holds what came with the upgrade request.
                events: list[Any] = self._parser.feed(b"")
                event: Any = None
                while True:
                    # Every message a read completed is handled before the next read.
                    for event in events:
                        if type(event) is str:
                            await self._on_frame(event, False)
                        elif type(event) is bytes:
                            await self._on_frame(event, True)
                        elif type(event) is _Routed:  # decoded by the poller: a join
                            await self._dispatch(event.msg, event.route)
                        elif type(event) is Ping:
                            if not self._close_sent:
                                conn.write_nowait(pong_frame(event.payload))
                        elif type(event) is Close:
                            if not self._close_sent:  # the client closes: answer with its code
                                self._close_sent = True
                                self.closing = True
                                conn.write_nowait(close_frame(event.code))
                            return
                        else:
                            assert isinstance(event, Failure)
                            # A message too big is closed at its header, not after its bytes.
                            if event.code == CLOSE_TOO_BIG:
                                self._too_big(event.size)
                            else:
                                log.info("WebSocket protocol error from %s: %s", conn.peer,
                                         event.reason)
                                self.close(event.code, event.reason[:100])
                            return
                    # Connection.receive_some inlined: one coroutine frame less per idle
                    # connection, and the last chunk and message are not kept while it waits.
                    events = _NO_EVENTS
                    event = None
                    while True:
                        if conn.closed:
                            return
                        if self._poller is not None:
                            # The poller reads while this task is parked, and hands it what
                            # needs a task (or asks it to read by itself).
                            got = await self._poller.wait(self)
                            if got is None:
                                return
                            if got is not READ_YOURSELF:
                                events = got
                                # A whole read only with the log context on (see
                                # serve_ready); else what the poller left: not inline.
                                self._inline_ok = (chlog.state.context and len(events) == 1
                                                   and self._backlog_since is None)
                                break
                            try:
                                data = sock.recv(RECV_SIZE)
                            except BlockingIOError:
                                continue
                            except OSError:
                                return
                        else:
                            try:
                                await trio.lowlevel.wait_readable(sock)
                                data = sock.recv(RECV_SIZE)
                            except BlockingIOError:  # woken with nothing to read after all
                                continue
                            except (trio.ClosedResourceError, OSError):
                                return
                        if not data:
                            return
                        self._took(data)
                        events = self._parser.feed(data)
                        self._inline_ok = len(events) == 1 and self._backlog_since is None
                        del data
                        break
        finally:
            if self._poller is not None:
                self._poller.remove(self)
            await self._end(id_sub)

    def _took(self, data: bytes) -> None:
        """Bookkeeping of a chunk read from the socket."""
        self.conn.active = True
        if len(data) == RECV_SIZE:
            self.maybe_readable = True  # the kernel may hold more: no new edge will say so
        if self._marks is not None:  # reading paused lately: how old is this chunk?
            self._received += len(data)
            self._backlog_since = self._chunk_arrived_by()
        elif self._backlog_since is not None:
            self._backlog_since = None
        self.counters.bytes_in += len(data)

    # -- reading through the node's poller ---------------------------------------------------

    def serve_ready(self) -> Coroutine[Any, Any, None] | None:
        """The poller saw input while this connection's task is parked: read it, do what
        needs no waiting, hand the rest to the task (waking it).

        Returns the rest of an inline handle_in that waited, which the caller (the poller's
        task, where its first step ran) must await; the task has the events after it.
        """
        conn = self.conn
        if conn.closed:
            self._wake(None)
            return None
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self._wake(None)
            return None
        self._took(data)
        events = self._parser.feed(data)
        del data
        if chlog.state.context:  # log lines name the connection: its own task handles them
            self._wake(events)
            return None
        inline_ok = len(events) == 1 and self._backlog_since is None
        for i, event in enumerate(events):
            kind = type(event)
            if kind is str or kind is bytes:
                if self.unhandled >= self.high_water:  # the task pauses reading
                    self._wake(events[i:])
                    return None
                msg = self._take(event, kind is bytes)  # type: ignore[arg-type]
                if msg is None:
                    continue
                route = self.state.route(msg)
                if route is Route.FORWARD:
                    proc = self.state.topics[msg.topic].handle
                    if inline_ok and proc.runs_inline(msg.event):
                        waiting = proc.start_inline(msg)
                        if waiting is not None:
                            self._wake(events[i + 1:])
                            return waiting
                        continue
                elif route is Route.JOIN:
                    self._wake([_Routed(msg, route), *events[i + 1:]])
                    return None
                self._dispatch_nowait(msg, route)
            elif isinstance(event, Ping):
                if not self._close_sent:
                    conn.write_nowait(pong_frame(event.payload))
            else:  # a close or a protocol error: the task ends the connection
                self._wake(events[i:])
                return None
        if self.maybe_readable:
            self._wake(_NO_EVENTS)  # to read the rest by itself
        return None

    def _wake(self, handed: list[Any] | None) -> None:
        """Give the parked task ``handed`` (events, or None: the connection ended)."""
        task = self.parked
        if task is not None:
            self.parked = None
            self.handed = handed
            trio.lowlevel.reschedule(task)

    def _aborted(self) -> None:
        # The socket is about to close: out of the poller's set first, then end the task.
        if self._poller is not None:
            self._poller.remove(self)
        self._wake(None)

    def wake_to_end(self) -> None:
        """The poller failed reading this connection: its task ends it."""
        self.close(CLOSE_INTERNAL_ERROR, "internal error")
        self._wake(None)

    def poller_gone(self) -> None:
        """The node's poller stopped: read by ourselves from now on."""
        self._poller = None
        self._wake(_NO_EVENTS)

    def _begin(self) -> _IdSubscriber | None:
        """Subscribe the socket's id topic (if any); attach the channels' supervisor."""
        sid = self.socket.id()
        id_sub = None  # made only for a socket with an id (most have none)
        if sid is not None:
            self._id_topic = sid
            id_sub = _IdSubscriber(self)
            self.pubsub.subscribe(sid, id_sub)
            if chlog.state.context:
                context = chlog.connection_var.get()
                if context is not None:
                    context["socket_id"] = sid
        # Channels run in the nursery this connection's task runs in, each in its own cancel
        # scope, and the read loop in one more: a nursery per connection would cost ~1 KiB.
        nursery = trio.lowlevel.current_task().parent_nursery
        assert nursery is not None
        self._sup = DynamicSupervisor.attach(nursery, name="channels")
        return id_sub

    async def _end(self, id_sub: _IdSubscriber | None) -> None:
        """Stop every channel and wait for them; unsubscribe the id topic."""
        sup = self._sup
        assert sup is not None
        try:
            self._stop_channels()
            sup.stop()
            # Their terminate callbacks run before the connection goes (they are
            # cancelled: this is prompt).
            with trio.CancelScope(shield=True):
                await sup.join()
        finally:
            if self._id_topic is not None and id_sub is not None:
                self.pubsub.unsubscribe(self._id_topic, id_sub)

    async def linger(self) -> None:
        """After :meth:`run`: let what is queued go out (at most 1 s), then close."""
        if not self.conn.closed:
            await self.conn.drain(1.0)
            self.conn.abort()

    def _stop_channels(self) -> None:
        for topic, joined in list(self.state.topics.items()):
            self.pubsub.unsubscribe(topic, joined.handle)
            joined.handle.exit_reason = self.end_reason
        self.state.topics.clear()

    def _too_big(self, size: int) -> None:
        log.warning("message from %s over max_frame_size (%d > %d bytes): closing 1009",
                    self.conn.peer, size, self.max_frame_size)
        self.close(CLOSE_TOO_BIG, "message too big")

    # -- back-pressure -----------------------------------------------------------------------

    async def _pause_reading(self) -> None:
        """Read nothing more until the channels took pushes down to the low-water mark: the
        kernel buffers fill and TCP slows the client down (no memory grows here)."""
        # Recount: a channel that ended took its queued pushes with it.
        self.unhandled = sum(j.handle.unhandled for j in self.state.topics.values())
        if self.unhandled < self.high_water:
            return
        log.debug("pausing reads from %s: %d pushes wait for its channels",
                  self.conn.peer, self.unhandled)
        self.read_pauses += 1
        paused = trio.current_time()
        self._mark(paused)
        resume = self._resume = trio.Event()
        await resume.wait()
        # What the kernel holds now waited at least since now, what it held at the pause
        # since then, and the rest of the chunk being handled was read before the pause.
        self._mark(trio.current_time())
        if self._backlog_since is None:
            self._backlog_since = paused

    def _mark(self, now: float) -> None:
        unread = kernel_unread(self.conn.sock)
        if unread < 0:
            return  # the platform cannot tell: ages count from the read
        if self._marks is None:
            self._marks = collections.deque()
            self._received = 0
        self._marks.append((self._received + unread, now))

    def _chunk_arrived_by(self) -> float | None:
        """The time by which every byte read so far had arrived, per the marks; marks that
        no longer cover whole chunks go (a later one is a safe bound: ages are never
        overestimated). None once no mark is left: reads caught up with the backlog."""
        marks = self._marks
        assert marks is not None
        end = self._received
        while marks and marks[0][0] < end:
            marks.popleft()
        if marks:
            return marks[0][1]
        self._marks = None
        return None

    def pushes_taken(self, n: int = 1) -> None:
        """``n`` pushes left a channel's mailbox (or went with a channel that ended)."""
        self.unhandled -= n
        resume = self._resume
        if resume is not None and self.unhandled <= type(self.socket).unhandled_low_water:
            self._resume = None
            resume.set()

    def refuse_late(self, msg: Message) -> None:
        """A push waited longer than ``max_push_age`` for its channel: answer overloaded."""
        self.counters.overloaded += 1
        self.endpoint.report_protection("overloaded", self.conn.peer, msg.topic)
        if msg.ref is not None:
            self.send_reply(msg.join_ref, msg.ref, msg.topic, _OVERLOADED)

    # -- inbound -----------------------------------------------------------------------------

    async def _on_frame(self, data: str | bytes, binary: bool) -> None:
        if self.unhandled >= self.high_water:
            await self._pause_reading()
        msg = self._take(data, binary)
        if msg is None:
            return
        route = self.state.route(msg)
        if route is Route.FORWARD and self._inline_ok:
            proc = self.state.topics[msg.topic].handle
            if proc.runs_inline(msg.event):
                await proc.handle_in_inline(msg)
                return
        await self._dispatch(msg, route)

    def _take(self, data: str | bytes, binary: bool) -> Message | None:
        """Count, decode and rate-limit an inbound message; None when it goes no further."""
        if self.closing:
            return None
        self.counters.messages_in += 1
        try:
            msg = self.serializer.decode(data, binary)
        except DecodeError as exc:
            # (V1 reads JSON from binary frames too, as Phoenix does: no 1003 any more.)
            _throttled("malformed", logging.WARNING, "malformed message from %s (closing %d): %s",
                       self.conn.peer, CLOSE_INVALID_DATA, exc)
            self.close(CLOSE_INVALID_DATA, "malformed message")
            return None
        if self._limiter is not None:
            verdict = self._limiter.check(time.monotonic())
            if not verdict:
                if verdict is None:
                    log.warning("closing %s (1008): kept sending past its rate limit",
                                self.conn.peer)
                    self.counters.rate_limit_closes += 1
                    self.endpoint.report_protection("rate_limit_close", self.conn.peer)
                    self.close(CLOSE_POLICY, "rate limit exceeded")
                    return None
                self.counters.rate_limited += 1
                self.endpoint.report_protection("rate_limited", self.conn.peer, msg.topic)
                if msg.ref is not None:
                    self.send_reply(msg.join_ref, msg.ref, msg.topic, _RATE_LIMITED)
                return None
        return msg

    async def _dispatch(self, msg: Message, route: Route) -> None:
        """Act on a routed message (a push not run inline is queued for its channel)."""
        if route is Route.JOIN:
            if chlog.state.context:  # the join's log lines name its topic
                token = chlog.topic_var.set(msg.topic)
                try:
                    await self._join(msg)
                finally:
                    chlog.topic_var.reset(token)
            else:
                await self._join(msg)
        else:
            self._dispatch_nowait(msg, route)

    def _dispatch_nowait(self, msg: Message, route: Route) -> None:
        """:meth:`_dispatch` for every route but JOIN: nothing here waits."""
        if route is Route.FORWARD:
            proc = self.state.topics[msg.topic].handle
            if proc.queued < self.max_queued:
                proc.forward(msg, self._backlog_since)
            else:
                self.counters.overloaded += 1
                self.endpoint.report_protection("overloaded", self.conn.peer, msg.topic)
                if msg.ref is not None:
                    self.send_reply(msg.join_ref, msg.ref, msg.topic, _OVERLOADED)
        elif route is Route.HEARTBEAT:
            self.send_reply(None, msg.ref, msg.topic, _OK)
        elif route is Route.LEAVE:
            joined = self.state.remove(msg.topic)
            assert joined is not None
            self.pubsub.unsubscribe(msg.topic, joined.handle)
            joined.handle.leave(msg)
            self._left(joined.handle)
        elif route is Route.LEAVE_NOT_JOINED:
            self.send_reply(msg.join_ref, msg.ref, msg.topic, _OK)
        elif route is Route.UNMATCHED:
            self.send_reply(None, msg.ref, msg.topic, Reply.error(protocol.UNMATCHED_TOPIC))
        elif route is Route.INVALID:
            _throttled("invalid payload", logging.WARNING,
                       "%s on %s from %s: payload is neither an object nor binary",
                       msg.event, msg.topic, self.conn.peer)
            self.send_reply(msg.join_ref, msg.ref, msg.topic,
                            Reply.error(protocol.INVALID_PAYLOAD))
        # Route.STALE: a message for an older join of this topic; Phoenix drops it silently.

    async def _join(self, msg: Message) -> None:
        topic = msg.topic
        channel_cls = type(self.socket).route(topic)
        if channel_cls is None:
            _throttled(("unmatched", type(self.socket)), logging.WARNING,
                       'Ignoring unmatched topic "%s" in %s', topic, type(self.socket).__name__)
            self.send_reply(None, msg.ref, topic, Reply.error(protocol.UNMATCHED_TOPIC))
            return
        start = time.perf_counter()
        if not self.state.can_join(topic):
            self.send_reply(msg.join_ref, msg.ref, topic, Reply.error(protocol.TOO_MANY_CHANNELS))
            self._joined(channel_cls, topic, "error", start)
            return
        channel = channel_cls()
        proc = ChannelProcess(self, channel, topic, msg.join_ref)
        try:
            response = await channel.join(topic, msg.payload)
            if response is not None and not isinstance(response, dict):
                _throttled(("join reply", channel_cls), logging.ERROR,
                           "%s.join(%r) returned %s %.60r; expected a dict (the join reply), "
                           "None, or raise JoinError: the join is refused with "
                           "{\"reason\": \"invalid reply\"}", channel_cls.__name__, topic,
                           type(response).__name__, response)
                self.send_reply(msg.join_ref, msg.ref, topic, _INVALID_JOIN_REPLY)
                self._joined(channel_cls, topic, "error", start)
                return
        except JoinError as exc:
            self.send_reply(msg.join_ref, msg.ref, topic, Reply.error(exc.response))
            self._joined(channel_cls, topic, "error", start)
            return
        except Exception as exc:
            _throttled(("join crash", channel_cls, type(exc), str(exc)[:100]), logging.ERROR,
                       "join of %s by %s crashed", topic, channel_cls.__name__, exc_info=exc)
            self.send_reply(msg.join_ref, msg.ref, topic, Reply.error(protocol.JOIN_CRASHED))
            self._joined(channel_cls, topic, "crash", start)
            return
        if self.closing or self._sup is None:
            return
        history = self.endpoint.history
        config = history.config_for(topic) if history is not None else None
        if config is not None:
            proc.recovering = []  # live broadcasts wait behind the replay
        old = self.state.add(topic, msg.join_ref, proc)
        if old is not None:
            self.pubsub.unsubscribe(topic, old.handle)
            old.handle.exit_reason = "duplicate_join"
            old.handle.child_cancel()
        self.pubsub.subscribe(topic, proc)
        plan = None
        if config is not None:
            assert history is not None
            # Subscribed first, then read: nothing falls between the replay and live.
            wanted = msg.payload.get(POSITION_KEY) if isinstance(msg.payload, dict) else None
            plan = await history.recover(topic, config, wanted)
            response = {**(response or {}), RECOVERY_KEY: plan.reply()}
            if self.closing:
                self.forget(proc)
                return
        self.send_reply(msg.join_ref, msg.ref, topic, Reply.ok(response))
        if old is not None:
            self.send_close(old.join_ref, topic)
        proc.flush_join_buffer()
        if plan is not None:
            assert history is not None
            proc.end_recovery(history.replay(topic, plan), plan.epoch, plan.offset)
        # The process as the argument of a plain function, the session's bound method as
        # on_exit: less per channel than a bound proc.run and a closure or partial.
        proc.child = self._sup.start_child(ChannelProcess.run, proc, name=topic,
                                           on_exit=self._channel_exited)
        self._joined(channel_cls, topic, "ok", start)

    def _joined(self, channel_cls: type[Channel], topic: str, status: str,
                start: float) -> None:
        """Count an answered join; the join log line and the telemetry event."""
        joins = self.counters.joins
        key = (channel_cls, status)
        joins[key] = joins.get(key, 0) + 1
        telemetry = JOIN in self.endpoint.telemetry.active
        logged = chlog.join_log.enabled()
        if not (telemetry or logged):
            return
        duration = time.perf_counter() - start
        name = channel_cls.__name__
        if telemetry:
            self.endpoint.telemetry.execute(JOIN, {"duration": duration}, {
                "topic": topic, "channel": name, "status": status,
                "socket_id": self._id_topic, "peer": _peer(self.conn.peer)})
        if logged:
            chlog.join_log("join %s %s %s %.1fms", topic, name, status, duration * 1000,
                           extra={"topic": topic, "channel": name, "status": status,
                                  "duration_ms": round(duration * 1000, 3)})

    def _left(self, proc: ChannelProcess) -> None:
        cls = type(proc.channel)
        self.counters.leaves[cls] = self.counters.leaves.get(cls, 0) + 1
        if LEAVE in self.endpoint.telemetry.active:
            self.endpoint.telemetry.execute(LEAVE, {}, {
                "topic": proc.topic, "channel": cls.__name__, "socket_id": self._id_topic,
                "peer": _peer(self.conn.peer)})

    def forget(self, proc: ChannelProcess) -> None:
        """A channel stopped itself: drop it from the table and the topic."""
        if self.state.remove(proc.topic, proc) is not None:
            self.pubsub.unsubscribe(proc.topic, proc)

    def _channel_exited(self, handle: ChildHandle, exc: BaseException | None) -> None:
        if exc is None:
            return
        proc = handle.args[0]
        assert isinstance(proc, ChannelProcess)
        # A crash: the client errors the channel and rejoins with a new join_ref.
        cls = type(proc.channel)
        self.counters.crashes[cls] = self.counters.crashes.get(cls, 0) + 1
        if CRASH in self.endpoint.telemetry.active:
            self.endpoint.telemetry.execute(CRASH, {}, {
                "topic": proc.topic, "channel": cls.__name__, "exception": exc,
                "socket_id": self._id_topic, "peer": _peer(self.conn.peer)})
        if self.state.remove(proc.topic, proc) is not None:
            self.pubsub.unsubscribe(proc.topic, proc)
            if not self.closing:
                self.send_error(proc.join_ref, proc.topic)


class _Routed:
    """A message the poller decoded and routed, for the connection's task (a join)."""

    __slots__ = ("msg", "route")

    def __init__(self, msg: Message, route: Route) -> None:
        self.msg = msg
        self.route = route


_NO_EVENTS: list[Any] = []


def _peer(peer: tuple[str, int]) -> str:
    return f"{peer[0]}:{peer[1]}"


_OK = Reply.ok()
_RATE_LIMITED = Reply.error({"reason": "rate_limited"})
_OVERLOADED = Reply.error({"reason": "overloaded"})
_INVALID_JOIN_REPLY = Reply.error({"reason": "invalid reply"})
