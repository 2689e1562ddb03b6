"""The :class:`Socket` users subclass, and :class:`SocketSession`, one per connection.

A session reads WebSocket frames, decodes them with the negotiated serializer, applies the
protocol rules of :class:`~channels.protocol.SocketState` and runs one
:class:`~channels.channel.ChannelProcess` per joined topic under a dynamic supervisor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from channels import protocol
from channels.channel import Channel, ChannelProcess, JoinError, Reply
from channels.connection import Connection
from channels.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNSUPPORTED,
    ws_frame,
)
from channels.limits import InboundLimiter
from channels.protocol import Route, SocketState
from channels.serializer import DecodeError, EncodeError, Message, Serializer
from supervisor import DynamicSupervisor

if TYPE_CHECKING:
    from channels.endpoint import Endpoint

log = logging.getLogger("channels.socket")

CLOSE_GRACE = 2.0  # seconds to wait for the peer's close frame after ours


class Refuse(Exception):
    """Raise from :meth:`Socket.connect` to refuse the connection with an HTTP status."""

    def __init__(self, status: int = 403, message: str = "") -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class Socket:
    """Base class for a socket mount: routes topics to channels and authenticates clients.

    Subclass it, set :attr:`channels`, and override :meth:`connect` and :meth:`id`.
    One instance exists per connection; ``assigns`` is copied into each channel it joins.
    ``connect_info`` is given to :meth:`connect` only (as in Phoenix): copy what channels
    need into the assigns.
    """

    #: Topic patterns to channel classes: ``"room:*"`` matches by prefix, others exactly.
    channels: ClassVar[Mapping[str, type[Channel]]] = {}
    #: Joins beyond this many channels on one connection are refused.
    max_channels: ClassVar[int] = 100
    #: Connections silent for longer than this (seconds) are closed by the heartbeat monitor.
    idle_timeout: ClassVar[float] = 60.0
    #: Inbound messages larger than this (bytes) close the connection with 1009.
    max_frame_size: ClassVar[int] = 1 << 20
    #: Outbound bytes a connection may have queued before it is dropped as a slow consumer.
    max_buffer: ClassVar[int] = 1 << 20
    #: Allowed browser origins (Phoenix's check_origin): a list such as
    #: ``["https://app.example.com", "//*.example.com"]``; ``True`` = the request's own host;
    #: ``False`` = any; ``None`` (default) = any on a loopback host, else the request's own host.
    check_origin: ClassVar[bool | list[str] | tuple[str, ...] | None] = None
    #: Inbound messages per second and burst per connection; over it a push gets
    #: ``{"reason": "rate_limited"}``, and a client that keeps on is closed with 1008.
    #: ``None`` disables the limit.
    rate_limit: ClassVar[tuple[float, float] | None] = (1000.0, 2000.0)
    #: Pushes waiting in one channel's mailbox; past it a push is answered
    #: ``{"reason": "overloaded"}`` instead of queued (a slow handle_in cannot grow memory).
    max_queued: ClassVar[int] = 1000

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.assigns: dict[str, Any] = {}

    async def connect(
        self, params: dict[str, Any], connect_info: dict[str, Any]
    ) -> bool | dict[str, Any]:
        """Accept (``True``, or a dict merged into ``assigns``) or refuse (``False`` → 403,
        or raise :class:`Refuse` with another status such as 429)."""
        return True

    def id(self) -> str | None:
        """A topic naming this user's connections (``"user_socket:42"``), or None.

        Broadcasting ``"disconnect"`` on it closes all of them with code 1001.
        """
        return None

    @classmethod
    def route(cls, topic: str) -> type[Channel] | None:
        """The channel class for ``topic`` (first matching pattern in declaration order)."""
        for pattern, channel in cls.channels.items():
            if pattern.endswith("*"):
                if topic.startswith(pattern[:-1]):
                    return channel
            elif topic == pattern:
                return channel
        return None


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

    def __init__(
        self, endpoint: Endpoint, socket: Socket, serializer: Serializer, conn: Connection,
        trailing: bytes = b"",
    ) -> None:
        self.endpoint = endpoint
        self.socket = socket
        self.serializer = serializer
        self.conn = conn
        self.pubsub = endpoint.pubsub
        self.state: SocketState[ChannelProcess] = SocketState(type(socket).max_channels)
        self.max_frame_size = type(socket).max_frame_size
        self.max_queued = type(socket).max_queued
        self.idle_timeout = type(socket).idle_timeout
        self.closing = False
        self.end_reason = "closed"
        # wsproto's frame layer only (its Connection adds state we keep ourselves, and memory).
        self._frames = FrameProtocol(client=False, extensions=[])
        # Bytes that arrived with the upgrade request are the first WebSocket frames.
        self._frames.receive_bytes(trailing)
        self._close_sent = False
        self._sup: DynamicSupervisor | None = None
        self._id_topic: str | None = None
        self._id_sub = _IdSubscriber(self)
        conn.max_buffer = type(socket).max_buffer
        conn.on_overflow = self._on_overflow
        limit = type(socket).rate_limit
        self._limiter = InboundLimiter(limit[0], limit[1], time.monotonic()) \
            if limit is not None else None

    # -- outbound ----------------------------------------------------------------------------

    def _write(self, encoded: tuple[bool, bytes]) -> None:
        self.conn.write_nowait(ws_frame(encoded[1], encoded[0]))

    def send_reply(self, join_ref: str | None, ref: str | None, topic: str, reply: Reply) -> None:
        self._write(self.serializer.encode_reply(join_ref, ref, topic, reply.status,
                                                 reply.response))

    def send_push(self, join_ref: str | None, topic: str, event: str, payload: Any) -> None:
        self._write(self.serializer.encode(join_ref, None, topic, event, payload))

    def send_close(self, join_ref: str | None, topic: str) -> None:
        self._write(self.serializer.encode(join_ref, join_ref, topic, "phx_close", {}))

    def send_error(self, join_ref: str | None, topic: str) -> None:
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
        ser = self.serializer
        frame = cache.get(ser)
        if frame is None:
            frame = cache[ser] = self.fastlane_frame(topic, event, payload)
        if frame:
            self.conn.write_nowait(frame)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, code: int, reason: str = "", end_reason: str = "closed") -> None:
        """Close with ``code``; the peer has ``CLOSE_GRACE`` seconds to answer."""
        if self.closing:
            return
        self.closing = True
        self.end_reason = end_reason
        if not self._close_sent:
            self._close_sent = True
            self.conn.write_nowait(bytes(self._frames.close(code, reason)))
        self._close_after_grace()
        log.debug("closing %s: %d %s", self.conn.peer, code, reason)

    def _on_overflow(self) -> None:
        log.warning("slow consumer %s: more than %d bytes queued, closing 1013",
                    self.conn.peer, self.conn.max_buffer)
        self.closing = True
        self.end_reason = "closed"
        if not self._close_sent:
            self._close_sent = True
            # Behind the queued frames: a client that resumes reading sees it and reconnects.
            self.conn.write_final(bytes(self._frames.close(CLOSE_TRY_AGAIN_LATER,
                                                           "slow consumer")))
        self._close_after_grace()

    def _close_after_grace(self) -> None:
        # The read loop and the channels share the supervisor's scope (one scope less per
        # connection): when the grace ends, channels stop with the reason set here.
        for joined in self.state.topics.values():
            joined.handle.exit_reason = self.end_reason
        if self._sup is not None:
            self._sup.cancel_scope.relative_deadline = CLOSE_GRACE

    async def run(self) -> None:
        """Serve the connection until it closes; then stop every channel."""
        sid = self.socket.id()
        if sid is not None:
            self._id_topic = sid
            self.pubsub.subscribe(sid, self._id_sub)
        self.endpoint.sessions.add(self)
        try:
            async with DynamicSupervisor.open(name="channels") as sup:
                self._sup = sup
                try:
                    await self._read_loop()
                finally:
                    self._stop_channels()
                    sup.stop()
        finally:
            self.endpoint.session_ended(self)
            if self._id_topic is not None:
                self.pubsub.unsubscribe(self._id_topic, self._id_sub)
            if not self.conn.closed:
                await self.conn.drain(1.0)
                self.conn.abort()

    def _stop_channels(self) -> None:
        for topic, joined in list(self.state.topics.items()):
            self.pubsub.unsubscribe(topic, joined.handle)
            joined.handle.exit_reason = self.end_reason
        self.state.topics.clear()

    async def _read_loop(self) -> None:
        frames = self._frames
        conn = self.conn
        text_parts: list[str] = []
        bin_parts: list[bytes] = []
        size = 0
        while True:
            try:
                for frame in frames.received_frames():
                    op = frame.opcode
                    if op is Opcode.TEXT:
                        data_s: str = frame.payload  # type: ignore[assignment]
                        size += len(data_s) if data_s.isascii() else len(data_s.encode())
                        if size > self.max_frame_size:
                            self._too_big(size)
                            return
                        if not frame.message_finished:
                            text_parts.append(data_s)
                            continue
                        if text_parts:
                            text_parts.append(data_s)
                            data_s = "".join(text_parts)
                            text_parts.clear()
                        size = 0
                        await self._on_frame(data_s, False)
                    elif op is Opcode.BINARY:
                        data_b = bytes(frame.payload)  # type: ignore[arg-type]
                        size += len(data_b)
                        if size > self.max_frame_size:
                            self._too_big(size)
                            return
                        if not frame.message_finished:
                            bin_parts.append(data_b)
                            continue
                        if bin_parts:
                            bin_parts.append(data_b)
                            data_b = b"".join(bin_parts)
                            bin_parts.clear()
                        size = 0
                        await self._on_frame(data_b, True)
                    elif op is Opcode.PING:
                        if not self._close_sent:
                            conn.write_nowait(bytes(frames.pong(frame.payload)))  # type: ignore[arg-type]
                    elif op is Opcode.CLOSE:
                        if not self._close_sent:  # the client closes: answer with its code
                            self._close_sent = True
                            self.closing = True
                            payload = frame.payload
                            assert isinstance(payload, tuple)
                            conn.write_nowait(bytes(frames.close(int(payload[0]))))
                        return
            except ParseFailed as exc:
                log.info("WebSocket protocol error from %s: %s", conn.peer, exc)
                self.close(exc.code, str(exc)[:100])
                return
            data = await conn.receive_some()
            if not data:
                return
            frames.receive_bytes(data)

    def _too_big(self, size: int) -> None:
        log.warning("message from %s over max_frame_size (%d > %d bytes): closing 1009",
                    self.conn.peer, size, self.max_frame_size)
        self.close(CLOSE_TOO_BIG, "message too big")

    # -- inbound -----------------------------------------------------------------------------

    async def _on_frame(self, data: str | bytes, binary: bool) -> None:
        if self.closing:
            return
        try:
            msg = self.serializer.decode(data, binary)
        except DecodeError as exc:
            code = CLOSE_UNSUPPORTED if binary and not self.serializer.supports_binary \
                else CLOSE_INVALID_DATA
            log.warning("malformed message from %s (closing %d): %s", self.conn.peer, code, exc)
            self.close(code, "malformed message")
            return
        if self._limiter is not None:
            verdict = self._limiter.check(time.monotonic())
            if not verdict:
                if verdict is None:
                    log.warning("closing %s (1008): kept sending past its rate limit",
                                self.conn.peer)
                    self.close(CLOSE_POLICY, "rate limit exceeded")
                elif msg.ref is not None:
                    self.send_reply(msg.join_ref, msg.ref, msg.topic, _RATE_LIMITED)
                return
        route = self.state.route(msg)
        if route is Route.FORWARD:
            proc = self.state.topics[msg.topic].handle
            if proc.queued < self.max_queued:
                proc.forward(msg)
            elif msg.ref is not None:
                self.send_reply(msg.join_ref, msg.ref, msg.topic, _OVERLOADED)
        elif route is Route.HEARTBEAT:
            self.send_reply(None, msg.ref, msg.topic, _OK)
        elif route is Route.JOIN:
            await self._join(msg)
        elif route is Route.LEAVE:
            joined = self.state.remove(msg.topic)
            assert joined is not None
            self.pubsub.unsubscribe(msg.topic, joined.handle)
            joined.handle.leave(msg)
        elif route is Route.LEAVE_NOT_JOINED:
            self.send_reply(msg.join_ref, msg.ref, msg.topic, _OK)
        elif route is Route.UNMATCHED:
            self.send_reply(None, msg.ref, msg.topic, Reply.error(protocol.UNMATCHED_TOPIC))
        elif route is Route.INVALID:
            log.warning("%s on %s from %s: payload is neither an object nor binary",
                        msg.event, msg.topic, self.conn.peer)
            self.send_reply(msg.join_ref, msg.ref, msg.topic,
                            Reply.error(protocol.INVALID_PAYLOAD))
        # Route.STALE: a message for an older join of this topic; Phoenix drops it silently.

    async def _join(self, msg: Message) -> None:
        topic = msg.topic
        channel_cls = type(self.socket).route(topic)
        if channel_cls is None:
            log.warning('Ignoring unmatched topic "%s" in %s', topic, type(self.socket).__name__)
            self.send_reply(None, msg.ref, topic, Reply.error(protocol.UNMATCHED_TOPIC))
            return
        if not self.state.can_join(topic):
            self.send_reply(msg.join_ref, msg.ref, topic, Reply.error(protocol.TOO_MANY_CHANNELS))
            return
        channel = channel_cls()
        proc = ChannelProcess(self, channel, topic, msg.join_ref)
        try:
            response = await channel.join(topic, msg.payload)
            if response is not None and not isinstance(response, dict):
                raise TypeError(f"join() must return a dict or None, not {type(response)}")
        except JoinError as exc:
            self.send_reply(msg.join_ref, msg.ref, topic, Reply.error(exc.response))
            return
        except Exception:
            log.exception("join of %s by %s crashed", topic, channel_cls.__name__)
            self.send_reply(msg.join_ref, msg.ref, topic, Reply.error(protocol.JOIN_CRASHED))
            return
        if self.closing or self._sup is None:
            return
        old = self.state.add(topic, msg.join_ref, proc)
        if old is not None:
            self.pubsub.unsubscribe(topic, old.handle)
            old.handle.exit_reason = "duplicate_join"
            old.handle.child_cancel()
        self.pubsub.subscribe(topic, proc)
        self.send_reply(msg.join_ref, msg.ref, topic, Reply.ok(response))
        if old is not None:
            self.send_close(old.join_ref, topic)
        proc.flush_join_buffer()
        proc.child = self._sup.start_child(
            proc.main, name=topic, on_exit=lambda _h, exc: self._channel_exited(proc, exc)
        )

    def forget(self, proc: ChannelProcess) -> None:
        """A channel stopped itself: drop it from the table and the topic."""
        if self.state.remove(proc.topic, proc) is not None:
            self.pubsub.unsubscribe(proc.topic, proc)

    def _channel_exited(self, proc: ChannelProcess, exc: BaseException | None) -> None:
        if exc is None:
            return
        # A crash: the client errors the channel and rejoins with a new join_ref.
        if self.state.remove(proc.topic, proc) is not None:
            self.pubsub.unsubscribe(proc.topic, proc)
            if not self.closing:
                self.send_error(proc.join_ref, proc.topic)


_OK = Reply.ok()
_RATE_LIMITED = Reply.error({"reason": "rate_limited"})
_OVERLOADED = Reply.error({"reason": "overloaded"})
