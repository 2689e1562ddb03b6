"""The :class:`Channel` base class users subclass, and the actor that runs it.

One :class:`Channel` instance exists per (connection, joined topic). Its callbacks run one at
a time in the channel's own trio task, fed by a mailbox, so channel state needs no locks.
"""

from __future__ import annotations

import logging
import time
import types
from bisect import bisect_left
from collections.abc import Callable, Collection, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

import trio

from channels import logging as chlog
from channels.history import POSITION_KEY, History
from channels.logutil import Throttled
from channels.stats import LATENCY_BUCKETS, Histogram
from channels.telemetry import HANDLE_IN_EXCEPTION, HANDLE_IN_STOP
from supervisor import Actor, ChildHandle, MailboxClosed, TimerRef

if TYPE_CHECKING:
    from channels.interfaces import Node
    from channels.pubsub import Subscriber
    from channels.serializer import Message, Ref
    from channels.stats import Counters

log = logging.getLogger("channels.channel")
# Repeated identical problems (a buggy callback hit by every push) are logged once per interval.
_throttled = Throttled(log)

TERMINATE_TIMEOUT = 5.0

_clock = time.perf_counter


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


class Writer(Protocol):
    """Where a session's bytes go: a connection, or a LongPoll session's outbox."""

    def write_nowait(self, data: bytes) -> None: ...


class ChannelSession(Protocol):
    """What a channel process needs of its client's session: send to the client (reply,
    push, close), broadcast on the node, and the back-pressure and fastlane hooks. The
    WebSocket :class:`~channels.socket.SocketSession` and the LongPoll session implement it."""

    socket: Socket
    #: Pushes forwarded to the session's channels and not yet taken from a mailbox.
    unhandled: int

    @property
    def endpoint(self) -> Node: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def conn(self) -> Writer: ...
    #: Sessions with equal keys get the same bytes for a fastlane broadcast.
    @property
    def fastlane_key(self) -> Any: ...

    def send_reply(self, join_ref: Ref, ref: Ref, topic: str, reply: Reply) -> None: ...
    def send_push(self, join_ref: Ref, topic: str, event: str, payload: Any) -> None: ...
    def send_close(self, join_ref: Ref, topic: str) -> None: ...

    async def broadcast(self, topic: str, event: str, payload: Any, *,
                        exclude: Subscriber | None = None) -> None:
        """Broadcast on every node (except to ``exclude``)."""

    def replan(self, topic: str) -> None:
        """A subscriber's ``fastlane`` changed: rebuild the topic's delivery plan."""

    def fastlane_frame(self, topic: str, event: str, payload: Any) -> bytes: ...
    def deliver_broadcast(self, topic: str, event: str, payload: Any,
                          cache: dict[Any, Any]) -> None: ...
    def pushes_taken(self, n: int = 1) -> None: ...
    def refuse_late(self, msg: Message) -> None: ...
    def forget(self, proc: ChannelProcess) -> None: ...


class Channel:
    """Base class for channels. Override the callbacks you need.

    Attributes available in every callback: ``topic``, ``join_ref``, ``assigns`` (a dict
    copied from the socket's assigns at join; yours to change), ``socket`` (the connection's
    :class:`~channels.socket.Socket`).
    """

    #: Broadcast events that go through :meth:`handle_out` instead of the fastlane.
    intercept: ClassVar[Collection[str]] = ()
    #: Keep this channel's topics' recent broadcasts, so clients that come back get what they
    #: missed: e.g. ``History(size=500, ttl=600)`` (see docs/history.md).
    history: ClassVar[History | None] = None
    #: Let the connection run :meth:`handle_in` itself, without a task switch, for events
    #: whose handle_in has returned without waiting (see docs/guide.md#inline-handle_in).
    #: Set False when handle_in depends on running in the channel's own task.
    inline_handle_in: ClassVar[bool] = True

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
        _throttled((type(self), event), logging.WARNING, "%s: unhandled event %r on %s",
                   type(self).__name__, event, self.topic)
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
        await self._process.session.broadcast(self.topic, event, payload)

    async def broadcast_from(self, event: str, payload: dict[str, Any] | bytes) -> None:
        """Like :meth:`broadcast`, but not to this channel's own client."""
        await self._process.session.broadcast(self.topic, event, payload,
                                              exclude=self._process)

    def socket_ref(self) -> ReplyRef:
        """A reference to the push being handled, to :meth:`reply` to it later."""
        return ReplyRef(self.join_ref, self._process.current_ref, self.topic)

    async def reply(self, ref: ReplyRef, reply: Reply) -> None:
        """Reply later to the push that ``ref`` names."""
        session = self._process.session
        replies = session.counters.replies
        replies[reply.status] = replies.get(reply.status, 0) + 1
        session.send_reply(ref.join_ref, ref.ref, ref.topic, reply)

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
        proc = self._process
        if proc.exit_hooks is None:
            proc.exit_hooks = [fn]
        else:
            proc.exit_hooks.append(fn)

    _process: ChannelProcess


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
    #: Hard cap on one connection's queued outbound bytes: past it the client is closed with
    #: 1013 as a slow consumer even while it reads. Set well above a burst: a broadcast frame
    #: queued for many connections is one object in memory, counted here for each of them.
    max_buffer: ClassVar[int] = 64 << 20
    #: Seconds queued outbound bytes may wait with none taken by the client before it is
    #: closed with 1013 as a stalled reader (checked by the heartbeat monitor: the close
    #: comes between 1 and 1.5 times this). A client that keeps reading is never cut by it.
    write_timeout: ClassVar[float] = 30.0
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
    #: Back-pressure: when this many of a connection's pushes wait for its channels, the
    #: server stops reading from it (TCP slows the client down) ...
    unhandled_high_water: ClassVar[int] = 100
    #: ... and reads again once no more than this many wait.
    unhandled_low_water: ClassVar[int] = 50
    #: A push that waited longer than this (seconds) for its channel is answered
    #: ``{"reason": "overloaded"}`` instead of handled late. ``None``: no limit.
    max_push_age: ClassVar[float | None] = 0.75
    #: Serve ``<mount>/websocket`` (Phoenix's ``websocket: true``).
    websocket: ClassVar[bool] = True
    #: Serve ``<mount>/longpoll``, the LongPoll transport (phoenix.js ``LongPoll`` and its
    #: ``longPollFallbackMs``); see docs/guide.md#longpoll.
    longpoll: ClassVar[bool] = True
    #: LongPoll: how long a poll waits for messages (seconds; Phoenix's ``window_ms``). A
    #: session that gets no poll for 1.5 times this ends, as in Phoenix.
    longpoll_window: ClassVar[float] = 10.0

    def __init__(self, endpoint: Node) -> None:
        #: The endpoint, as :class:`~channels.interfaces.Node` describes it.
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


_IN, _INFO, _OUT, _LEAVE, _RAISE, _STOP = range(6)

#: An event's handle_in runs inline once it has returned this many times in a row without
#: waiting (in the channel's task); once it waits, never again (per channel class and event).
INLINE_AFTER = 4
#: Events remembered per channel class (a client chooses event names: the table is bounded).
INLINE_EVENTS = 256
_SUSPENDS = -1
# channel class -> event -> times handle_in returned without waiting (or _SUSPENDS).
_inline_stats: dict[type[Channel], dict[str, int]] = {}


def _returned(cls: type[Channel], event: str) -> None:
    """handle_in of ``event`` returned without waiting: count it towards running inline."""
    stats = _inline_stats.get(cls)
    if stats is None:
        if not cls.inline_handle_in:
            return
        stats = _inline_stats[cls] = {}
    n = stats.get(event, 0)
    if 0 <= n < INLINE_AFTER and (n or len(stats) < INLINE_EVENTS):
        stats[event] = n + 1


def _waited(cls: type[Channel], event: str) -> None:
    """handle_in of ``event`` waited: it runs in the channel's task from now on."""
    stats = _inline_stats.get(cls)
    if stats is not None and (event in stats or len(stats) < INLINE_EVENTS):
        stats[event] = _SUSPENDS


@types.coroutine
def _resume(coro: Any, trap: Any) -> Any:
    """Drive ``coro`` to its end from its first suspension (``trap``, already yielded)."""
    while True:
        try:
            sent = yield trap
        except BaseException as exc:  # cancellation (or close) goes on into the callback
            try:
                trap = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                trap = coro.send(sent)
            except StopIteration as done:
                return done.value

# Refusals of late pushes: one line per channel class every 5 s, with the count held back.
_late_log = Throttled(log, 5.0)

_INVALID_REPLY = Reply.error({"reason": "invalid reply"})


def _invalid_reply(channel: Channel, callback: str, event: str, result: object) -> None:
    _throttled((type(channel), callback), logging.ERROR,
               "%s.%s(%r) returned %s; expected a Reply (Reply.ok(...) / Reply.error(...)) or "
               "None: the client gets {\"reason\": \"invalid reply\"}",
               type(channel).__name__, callback, event, _describe(result))


_NO_EVENTS: frozenset[str] = frozenset()


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


class ChannelProcess(Actor[tuple[Any, ...]]):
    """Runs one :class:`Channel`: its mailbox, its fastlane subscription, its end."""

    # Class defaults: an idle channel carries no instance attribute for them.
    #: Pushes forwarded to this channel and not yet taken from its mailbox.
    unhandled = 0
    _ended = False
    #: While a join on a topic with history reads what the client missed: the live
    #: broadcasts that arrive meanwhile, held back (then sent after the replay, minus what it
    #: already sent).
    recovering: list[tuple[str, Any]] | None = None
    #: After a recovering join, ``(epoch, offset)`` the replay went up to, while this node
    #: has not delivered that far yet (the store can be ahead of this node's live stream):
    #: live broadcasts at or before it are dropped (the replay sent them).
    replayed_upto: tuple[str, int] | None = None
    #: The callbacks of :meth:`Channel.on_exit` (a list once there is one).
    exit_hooks: list[Callable[[Channel, str], None]] | None = None
    #: Set while an inline handle_in waits (see :meth:`handle_in_inline`).
    _busy: trio.Event | None = None

    def __init__(
        self, session: ChannelSession, channel: Channel, topic: str, join_ref: str | None
    ) -> None:
        super().__init__()
        self.session = session
        self.channel = channel
        self.topic = topic
        self.join_ref = join_ref
        # Most channels intercept nothing: they share one empty set (one less per channel).
        self.intercept = frozenset(channel.intercept) if channel.intercept else _NO_EVENTS
        self.current_ref: str | None = None
        self.stop_reason: str | None = None
        self.exit_reason = "shutdown"
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
        if self.intercept or self.recovering is not None or self.replayed_upto is not None:
            return None
        session = self.session
        return (session.fastlane_key, session.fastlane_frame, session.conn.write_nowait)

    def deliver(self, topic: str, event: str, payload: Any, cache: dict[Any, Any]) -> None:
        if self.recovering is not None:
            self.recovering.append((event, payload))
            return
        upto = self.replayed_upto
        if upto is not None:
            pos = payload.get(POSITION_KEY) if isinstance(payload, dict) else None
            if not isinstance(pos, dict):
                pos = {}
            offset = pos.get("offset")
            if isinstance(offset, int) and pos.get("epoch") == upto[0]:
                if offset <= upto[1]:
                    return  # the replay sent it
                # Past the replay: live from here on, on the fastlane.
                del self.replayed_upto
                self.session.replan(topic)
        if event in self.intercept:
            self.send((_OUT, event, payload))
            return
        session = self.session
        frame = cache.get(session.fastlane_key)
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

    def end_recovery(self, replay: list[tuple[str, Any, dict[Any, Any]]], epoch: str,
                     upto: int) -> None:
        """Send the replayed broadcasts, then the live ones held back that came after them
        (by position); the fastlane again after the first live one past the replay."""
        held = self.recovering or []
        del self.recovering  # back to the class default (None): no instance attribute
        for event, payload, frames in replay:
            self.deliver(self.topic, event, payload, frames)
        # The replay was read from the store, which can be ahead of what this node has
        # delivered: what it sent may still come live (held now, or later). Dropped by
        # position until a live broadcast is past it (then back to the fastlane).
        if epoch:  # "" when the history could not be read: nothing was replayed
            self.replayed_upto = (epoch, upto)
        for event, payload in held:
            self.deliver(self.topic, event, payload, {})
        self.session.replan(self.topic)

    def flush_join_buffer(self) -> None:
        buffered, self._join_buffer = self._join_buffer or [], None
        for event, payload in buffered:
            self.session.send_push(self.join_ref, self.topic, event, payload)

    @property
    def queued(self) -> int:
        """Messages waiting in the mailbox."""
        return len(self._mailbox)

    def forward(self, msg: Message, since: float | None = None) -> None:
        """Queue a client push; the session counts it until it leaves the mailbox. A push
        that has to wait is stamped (one clock read), so one that waits too long is refused;
        ``since``: it already waited from then (in the kernel, while reading was paused)."""
        if self._ended:
            return  # a channel that has ended drops messages
        stamp = since
        if stamp is None and (self._mailbox or
                              not (self._idle_unscoped or self._wait_scope is not None)):
            stamp = trio.current_time()  # queued behind others, or the channel is busy
        try:
            self._mailbox.put_nowait((_IN, msg, stamp))
        except MailboxClosed:
            return
        self.unhandled += 1
        self.session.unhandled += 1

    def _too_late(self, m: Message, stamp: float) -> bool:
        """Refuse (``overloaded``) a push that waited longer than ``max_push_age``."""
        max_age = type(self.session.socket).max_push_age
        if max_age is None:
            return False
        waited = trio.current_time() - stamp
        if waited <= max_age:
            return False
        _late_log(type(self.channel), logging.WARNING, "%s on %s: a push waited %.1fs for "
                  "handle_in (max_push_age %gs): answering overloaded",
                  type(self.channel).__name__, self.topic, waited, max_age)
        self.session.refuse_late(m)
        return True

    def leave(self, msg: Message) -> None:
        self.send((_LEAVE, msg))

    def _send_result(self, m: Message, result: Any) -> None:
        channel = self.channel
        if not isinstance(result, Reply):
            # The channel lives on: the bug is in one reply, not in its state.
            _invalid_reply(channel, "handle_in", m.event, result)
            result = _INVALID_REPLY
        replies = self.session.counters.replies
        replies[result.status] = replies.get(result.status, 0) + 1
        self.session.send_reply(self.join_ref, m.ref, self.topic, result)

    def runs_inline(self, event: str) -> bool:
        """Whether the connection may run handle_in of ``event`` itself now: the channel is
        idle (parked on an empty mailbox, nothing of it running) and that event's handle_in
        has returned without waiting every time so far."""
        if (self._mailbox._items is not None or self._busy is not None or self._stopping
                or not (self._idle_unscoped or self._wait_scope is not None)):
            return False
        stats = _inline_stats.get(type(self.channel))
        return stats is not None and stats.get(event, 0) >= INLINE_AFTER

    async def handle_in_inline(self, m: Message) -> None:
        """Run handle_in in the caller's task (the connection's), when :meth:`runs_inline`.

        Callbacks stay one at a time and in order (the channel is idle; while this runs its
        task waits for it) and crash-isolated (an exception crashes the channel in its own
        task). Should handle_in wait after all, it finishes here, the caller waiting with it,
        and that event goes through the mailbox from then on.
        """
        waiting = self.start_inline(m)
        if waiting is not None:
            await waiting

    def start_inline(self, m: Message) -> Coroutine[Any, Any, None] | None:
        """:meth:`handle_in_inline` up to handle_in's first suspension, without waiting.

        None when handle_in returned (its reply is sent); else the rest, which the caller
        must await in the same task (handle_in's first step ran in it), and the channel's
        task waits for it (``_busy`` is set before the caller can yield).
        """
        self.current_ref = m.ref
        channel = self.channel
        counters = self.session.counters
        context = chlog.state.context
        start = _clock() if counters.timed else None
        if context:
            topic_token = chlog.topic_var.set(self.topic)
            event_token = chlog.event_var.set(m.event)
        try:
            coro = channel.handle_in(m.event, m.payload)
            try:
                trap = coro.send(None)
            except StopIteration as done:
                result = done.value
            except Exception as exc:
                if start is not None:
                    self._observe_in(m.event, _clock() - start, None, exc)
                self.send((_RAISE, exc))
                return None
            else:
                _waited(type(channel), m.event)
                self._busy = trio.Event()
                return self._finish_inline(m, coro, trap, start)
            if start is not None:
                self._record_in(m.event, _clock() - start, result)
        finally:
            if context:
                chlog.event_var.reset(event_token)
                chlog.topic_var.reset(topic_token)
        self._answer(m, result)
        return None

    async def _finish_inline(self, m: Message, coro: Any, trap: Any,
                             start: float | None) -> None:
        busy = self._busy
        assert busy is not None
        try:
            result = await _resume(coro, trap)
        except Exception as exc:
            if start is not None:
                self._observe_in(m.event, _clock() - start, None, exc)
            self.send((_RAISE, exc))
            return
        finally:
            del self._busy
            busy.set()
        if start is not None:
            self._record_in(m.event, _clock() - start, result)
        self._answer(m, result)

    def _answer(self, m: Message, result: Any) -> None:
        """After an inline handle_in: its reply, and the channel's end if it called stop()."""
        if result is not None:
            self._send_result(m, result)
        if self.stop_reason is not None:
            self.send((_STOP,))  # terminate runs in the channel's task

    async def _call_handle_in(self, m: Message) -> Any:
        """handle_in, stepped by hand (as await would) to learn whether it waits."""
        coro = self.channel.handle_in(m.event, m.payload)
        try:
            trap = coro.send(None)
        except StopIteration as done:
            _returned(type(self.channel), m.event)
            return done.value
        _waited(type(self.channel), m.event)
        return await _resume(coro, trap)

    async def handle_message(self, msg: tuple[Any, ...]) -> None:
        if self._busy is not None:  # an inline handle_in waits: it goes first
            await self._busy.wait()
        kind = msg[0]
        channel = self.channel
        if kind == _IN:
            m: Message = msg[1]
            self.unhandled -= 1
            self.session.pushes_taken()
            if msg[2] is not None and self._too_late(m, msg[2]):
                return
            self.current_ref = m.ref
            if self.session.counters.timed or chlog.state.context:
                result = await self._handle_in_observed(m)
            else:
                # Stepped by hand (as await would) to learn whether it waits: events whose
                # handle_in never does may run inline (see handle_in_inline).
                coro = channel.handle_in(m.event, m.payload)
                try:
                    trap = coro.send(None)
                except StopIteration as done:
                    result = done.value
                    _returned(type(channel), m.event)
                else:
                    _waited(type(channel), m.event)
                    result = await _resume(coro, trap)
            if result is not None:
                self._send_result(m, result)
        elif kind == _INFO:
            await channel.handle_info(msg[1])
        elif kind == _OUT:
            await channel.handle_out(msg[1], msg[2])
        elif kind == _LEAVE:  # the socket already forgot the topic and unsubscribed us
            self.session.send_reply(self.join_ref, msg[1].ref, self.topic, Reply.ok())
            self.session.send_close(self.join_ref, self.topic)
            await self._finish("leave")
            return
        elif kind == _RAISE:  # an inline handle_in raised: the channel crashes in its task
            raise msg[1]
        # _STOP: an inline handle_in called stop(); the check below ends the channel.
        if self.stop_reason is not None:
            self.session.forget(self)
            self.session.send_close(self.join_ref, self.topic)
            await self._finish(self.stop_reason)

    async def _handle_in_observed(self, m: Message) -> Any:
        """handle_in, timed for the metrics and telemetry, with the event in the log context."""
        token = chlog.event_var.set(m.event) if chlog.state.context else None
        if not self.session.counters.timed:
            result = await self._call_handle_in(m)
        else:
            start = _clock()
            try:
                result = await self._call_handle_in(m)
            except Exception as exc:  # the channel crashes: the event stays in its log line
                self._observe_in(m.event, _clock() - start, None, exc)
                raise
            self._record_in(m.event, _clock() - start, result)
        if token is not None:
            chlog.event_var.reset(token)
        return result

    def _record_in(self, event: str, duration: float, result: Any) -> None:
        """Time a handle_in that returned."""
        histograms = self.session.counters.handle_in
        histogram = histograms.get(type(self.channel)) if histograms is not None else None
        if histogram is not None and not self.session.endpoint.telemetry.active:
            # The common case, inlined: a bucket and the sum.
            histogram.counts[bisect_left(histogram.bounds, duration)] += 1
            histogram.sum += duration
        else:
            self._observe_in(event, duration, result, None)

    def _observe_in(self, event: str, duration: float, result: Any,
                    exc: BaseException | None) -> None:
        session = self.session
        cls = type(self.channel)
        histograms = session.counters.handle_in
        if histograms is not None:
            histogram = histograms.get(cls)
            if histogram is None:
                histogram = histograms[cls] = Histogram(LATENCY_BUCKETS)
            histogram.observe(duration)
        telemetry = session.endpoint.telemetry
        if exc is None:
            if HANDLE_IN_STOP in telemetry.active:
                telemetry.execute(HANDLE_IN_STOP, {"duration": duration}, {
                    "topic": self.topic, "event": event, "channel": cls.__name__,
                    "status": result.status if isinstance(result, Reply) else None})
        elif HANDLE_IN_EXCEPTION in telemetry.active:
            telemetry.execute(HANDLE_IN_EXCEPTION, {"duration": duration}, {
                "topic": self.topic, "event": event, "channel": cls.__name__,
                "exception": exc})

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

    # The child task is Actor.run itself (no coroutine wrapping it: a frame less per idle
    # channel); these hooks call terminate on cancellation and the exit hooks at the end.
    def _run_started(self) -> None:
        if chlog.state.context:  # this task's log lines name its topic
            chlog.topic_var.set(self.topic)

    async def _run_cancelled(self) -> None:
        await self._terminate(self.exit_reason)

    def _run_ended(self, crashed: bool) -> None:
        reason = "crash" if crashed else self.exit_reason
        self._ended = True
        if self.unhandled:  # the pushes still queued end with the channel
            self.session.pushes_taken(self.unhandled)
            self.unhandled = 0
        for hook in self.exit_hooks or ():
            try:
                hook(self.channel, reason)
            except Exception:
                log.exception("exit hook of %s on %s raised", type(self.channel).__name__,
                              self.topic)
