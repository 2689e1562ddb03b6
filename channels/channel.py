"""The :class:`Channel` base class users subclass, and the actor that runs it.

One :class:`Channel` instance exists per (connection, joined topic). Its callbacks run one at
a time in the channel's own trio task, fed by a mailbox, so channel state needs no locks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import trio

from supervisor import Actor, ChildHandle, MailboxClosed, TimerRef

if TYPE_CHECKING:
    from channels.serializer import Message
    from channels.socket import Socket, SocketSession

log = logging.getLogger("channels.channel")

TERMINATE_TIMEOUT = 5.0


class Reply:
    """A reply to a client push: ``Reply.ok({...})`` or ``Reply.error({...})``.

    ``response`` is a dict (JSON object) or ``bytes`` (a binary reply, V2 WebSocket only).
    """

    __slots__ = ("response", "status")

    def __init__(self, status: str, response: dict[str, Any] | bytes | None = None) -> None:
        self.status = status
        self.response: dict[str, Any] | bytes = {} if response is None else response

    @classmethod
    def ok(cls, response: dict[str, Any] | bytes | None = None) -> Reply:
        return cls("ok", response)

    @classmethod
    def error(cls, response: dict[str, Any] | bytes | None = None) -> Reply:
        return cls("error", response)

    def __repr__(self) -> str:
        return f"Reply({self.status!r}, {self.response!r})"


class JoinError(Exception):
    """Raise from :meth:`Channel.join` to refuse the join with an error reply."""

    def __init__(self, response: dict[str, Any] | None = None) -> None:
        super().__init__(response)
        self.response: dict[str, Any] = response if response is not None else {}


class ReplyRef(NamedTuple):
    """Where a later :meth:`Channel.reply` goes: captured by :meth:`Channel.socket_ref`."""

    join_ref: str | None
    ref: str | None
    topic: str


class Channel:
    """Base class for channels. Override the callbacks you need.

    Attributes available in every callback: ``topic``, ``join_ref``, ``assigns`` (a dict
    copied from the socket's assigns at join; yours to change), ``socket`` (the connection's
    :class:`~channels.socket.Socket`).
    """

    #: Broadcast events that go through :meth:`handle_out` instead of the fastlane.
    intercept: ClassVar[Collection[str]] = ()

    topic: str
    join_ref: str | None
    assigns: dict[str, Any]
    socket: Socket

    # -- callbacks -------------------------------------------------------------------------

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """Accept a join (return the reply payload, or None) or raise :class:`JoinError`."""
        return None

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        """A push from the client. Return a :class:`Reply`, or None for no reply.

        The default answers ``{"reason": "unhandled event"}`` so a client never waits in vain.
        """
        log.warning("%s: unhandled event %r on %s", type(self).__name__, event, self.topic)
        return Reply.error({"reason": "unhandled event"})

    async def handle_info(self, message: Any) -> None:
        """A message sent to this channel with :meth:`send` or :meth:`send_after`."""

    async def handle_out(self, event: str, payload: Any) -> None:
        """An intercepted broadcast (see :attr:`intercept`). The default pushes it as is."""
        await self.push(event, payload)

    async def terminate(self, reason: str) -> None:
        """Called when the channel ends by leave ("leave"), stop ("normal" or yours),
        connection close ("closed"), duplicate join ("duplicate_join") or server shutdown
        ("shutdown"); not after a crash."""

    # -- API ---------------------------------------------------------------------------------

    async def push(self, event: str, payload: dict[str, Any] | bytes) -> None:
        """Send ``event`` to this channel's client (a dict, or bytes for binary)."""
        self._process.push(event, payload)

    async def broadcast(self, event: str, payload: dict[str, Any] | bytes) -> None:
        """Send ``event`` to every subscriber of this topic, on every node, including us."""
        await self._process.session.pubsub.broadcast(self.topic, event, payload)

    async def broadcast_from(self, event: str, payload: dict[str, Any] | bytes) -> None:
        """Like :meth:`broadcast`, but not to this channel's own client."""
        await self._process.session.pubsub.broadcast(
            self.topic, event, payload, exclude=self._process
        )

    def socket_ref(self) -> ReplyRef:
        """A reference to the push being handled, to :meth:`reply` to it later."""
        return ReplyRef(self.join_ref, self._process.current_ref, self.topic)

    async def reply(self, ref: ReplyRef, reply: Reply) -> None:
        """Reply later to the push that ``ref`` names."""
        self._process.session.send_reply(ref.join_ref, ref.ref, ref.topic, reply)

    def send(self, message: Any) -> None:
        """Deliver ``message`` to :meth:`handle_info` (from any task)."""
        self._process.send((_INFO, message))

    def send_after(self, delay: float, message: Any) -> TimerRef:
        """Deliver ``message`` to :meth:`handle_info` after ``delay`` seconds."""
        return self._process.send_after(delay, (_INFO, message))

    def stop(self, reason: str = "normal") -> None:
        """End the channel after the current callback: the client gets ``phx_close``."""
        self._process.stop_reason = reason

    def on_exit(self, fn: Callable[[Channel, str], None]) -> None:
        """Run ``fn(channel, reason)`` when the channel ends for any reason (crash included)."""
        self._process.exit_hooks.append(fn)

    _process: ChannelProcess


_IN, _INFO, _OUT, _LEAVE = range(4)


class ChannelProcess(Actor[tuple[Any, ...]]):
    """Runs one :class:`Channel`: its mailbox, its fastlane subscription, its end."""

    def __init__(
        self, session: SocketSession, channel: Channel, topic: str, join_ref: str | None
    ) -> None:
        super().__init__()
        self.session = session
        self.channel = channel
        self.topic = topic
        self.join_ref = join_ref
        self.intercept = frozenset(channel.intercept)
        self.current_ref: str | None = None
        self.stop_reason: str | None = None
        self.exit_reason = "shutdown"
        self.exit_hooks: list[Callable[[Channel, str], None]] = []
        self.child: ChildHandle | None = None
        self._join_buffer: list[tuple[str, Any]] | None = []
        channel.topic = topic
        channel.join_ref = join_ref
        channel.socket = session.socket
        channel.assigns = dict(session.socket.assigns)
        channel._process = self

    def send(self, msg: tuple[Any, ...]) -> None:
        # A channel that has ended drops messages (like a dead Erlang process), so a broadcast
        # or another task racing its end never sees an error.
        try:
            super().send(msg)
        except MailboxClosed:
            pass

    def child_cancel(self) -> None:
        """Stop the channel's task (its ``terminate`` runs with ``exit_reason``)."""
        if self.child is not None:
            self.child.cancel()

    # -- fastlane subscriber ---------------------------------------------------------------

    @property
    def fastlane(self) -> tuple[Any, Any, Any] | None:
        """How the pubsub may write broadcasts straight to our connection (None when some
        events go through handle_out: then :meth:`deliver` decides per event)."""
        if self.intercept:
            return None
        session = self.session
        return (session.serializer, session.fastlane_frame, session.conn.write_nowait)

    def deliver(self, topic: str, event: str, payload: Any, cache: dict[Any, Any]) -> None:
        if event in self.intercept:
            self.send((_OUT, event, payload))
            return
        session = self.session
        frame = cache.get(session.serializer)
        if frame:  # the common case, inlined: the frame this broadcast already built
            session.conn.write_nowait(frame)
        elif frame is None:
            session.deliver_broadcast(topic, event, payload, cache)

    # -- messages ----------------------------------------------------------------------------

    def push(self, event: str, payload: Any) -> None:
        if self._join_buffer is not None:
            # Pushes made during join() go out right after the join reply.
            self._join_buffer.append((event, payload))
            return
        self.session.send_push(self.join_ref, self.topic, event, payload)

    def flush_join_buffer(self) -> None:
        buffered, self._join_buffer = self._join_buffer or [], None
        for event, payload in buffered:
            self.session.send_push(self.join_ref, self.topic, event, payload)

    @property
    def queued(self) -> int:
        """Messages waiting in the mailbox."""
        return len(self._mailbox)

    def forward(self, msg: Message) -> None:
        self.send((_IN, msg))

    def leave(self, msg: Message) -> None:
        self.send((_LEAVE, msg))

    async def handle_message(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        channel = self.channel
        if kind == _IN:
            m: Message = msg[1]
            self.current_ref = m.ref
            result = await channel.handle_in(m.event, m.payload)
            if result is not None:
                self.session.send_reply(self.join_ref, m.ref, self.topic, result)
        elif kind == _INFO:
            await channel.handle_info(msg[1])
        elif kind == _OUT:
            await channel.handle_out(msg[1], msg[2])
        else:  # _LEAVE: the socket already forgot the topic and unsubscribed us
            self.session.send_reply(self.join_ref, msg[1].ref, self.topic, Reply.ok())
            self.session.send_close(self.join_ref, self.topic)
            await self._finish("leave")
            return
        if self.stop_reason is not None:
            self.session.forget(self)
            self.session.send_close(self.join_ref, self.topic)
            await self._finish(self.stop_reason)

    async def _finish(self, reason: str) -> None:
        self.exit_reason = reason
        await self._terminate(reason)
        self.stop()

    async def _terminate(self, reason: str) -> None:
        with trio.CancelScope(shield=True) as scope:
            scope.relative_deadline = TERMINATE_TIMEOUT
            try:
                await self.channel.terminate(reason)
            except Exception:
                log.exception("terminate() of %s on %s raised", type(self.channel).__name__,
                              self.topic)
        if scope.cancelled_caught:
            log.warning("terminate() of %s on %s timed out", type(self.channel).__name__,
                        self.topic)

    async def main(self) -> None:
        """The child task: run the mailbox loop; on cancellation, call terminate."""
        reason = "crash"
        try:
            await self.run()
            reason = self.exit_reason
        except trio.Cancelled:
            reason = self.exit_reason
            await self._terminate(reason)
            raise
        finally:
            for hook in self.exit_hooks:
                try:
                    hook(self.channel, reason)
                except Exception:
                    log.exception("exit hook of %s on %s raised", type(self.channel).__name__,
                                  self.topic)
