"""A channel of the client socket: join and rejoin, pushes and replies, events, history."""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Protocol, TypeAlias

import trio

from channels.client.errors import ChannelClosed, PushTimeout, ReplyError, ReplyLost
from channels.history import POSITION_KEY, RECOVERY_KEY
from channels.serializer import Message

__all__ = ["ClientChannel", "JoinParams", "MessageStream"]

log = logging.getLogger("channels.client")

JoinParams: TypeAlias = Mapping[str, Any] | Callable[[], Mapping[str, Any]]
"""Join params: a mapping, or a callable evaluated again for every join and rejoin."""

Handler: TypeAlias = Callable[[Any], object]

# Channel states, as in phoenix.js.
CLOSED = "closed"
ERRORED = "errored"
JOINED = "joined"
JOINING = "joining"
LEAVING = "leaving"


def call_safely(fn: Callable[..., object], *args: Any) -> None:
    """Run a user callback; an exception is logged, never raised into the socket's tasks."""
    try:
        fn(*args)
    except Exception:
        log.exception("client callback %r raised", fn)


class Timer(Protocol):
    """A retry timer with back-off (the socket's): ``schedule`` the next try, ``reset``."""

    def schedule(self) -> None: ...
    def reset(self) -> None: ...


class SocketLink(Protocol):
    """What a channel uses of its :class:`~channels.client.ClientSocket`."""

    timeout: float

    @property
    def rejoin_after(self) -> Callable[[int], float]: ...
    @property
    def is_connected(self) -> bool: ...

    def _make_ref(self) -> str: ...
    def _encode(self, join_ref: str | None, ref: str | None, topic: str, event: str,
                payload: Any) -> str | bytes: ...
    def _push_frame(self, frame: str | bytes, join_ref: str | None, event: str,
                    channel: ClientChannel | None) -> None: ...
    def _send_leave(self, channel: ClientChannel, expect_reply: bool = False
                    ) -> _Waiter | None: ...
    def _forget_ack(self, ack: _Waiter) -> None: ...
    def _leave_open_topic(self, channel: ClientChannel) -> None: ...
    def _remove(self, channel: ClientChannel) -> None: ...
    def _backoff(self, callback: Callable[[], None], calc: Callable[[int], float]) -> Timer: ...
    def _call_later(self, delay: float, callback: Callable[[], None]) -> trio.CancelScope: ...


class _Waiter:
    """The outcome of something awaited: ``(status, response)``, or an error to raise."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: tuple[str, Any] | None = None
        self.error: BaseException | None = None

    def resolve(self, status: str, response: Any) -> None:
        if not self.done.is_set():
            self.result = (status, response)
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class _Push(_Waiter):
    """One message that expects a ``phx_reply`` with its ``ref``."""

    __slots__ = ("deadline", "event", "on_reply", "payload", "ref", "wants_reply")

    def __init__(self, event: str, payload: Any,
                 on_reply: Callable[[_Push], None] | None = None) -> None:
        super().__init__()
        self.event = event
        self.payload = payload
        self.ref: str | None = None
        self.on_reply = on_reply
        self.wants_reply = True
        self.deadline = math.inf  # for a buffered push_nowait

    def resolve(self, status: str, response: Any) -> None:
        if not self.done.is_set():
            super().resolve(status, response)
            if self.on_reply is not None:
                self.on_reply(self)


def _is_position(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("epoch"), str)
            and type(value.get("offset")) is int)


class ClientChannel:
    """One topic on a :class:`~channels.client.ClientSocket`, made by ``socket.channel()``.

    After :meth:`join` it stays joined: it rejoins by itself (with a new join_ref) after a
    reconnect or a crash of the server channel, until :meth:`leave`, a ``phx_close`` from
    the server, or the socket's end. On topics with history it keeps the newest position
    seen (:attr:`position`) and sends it as ``phx_pos`` in the join params of every rejoin.
    """

    def __init__(self, socket: SocketLink, topic: str, params: JoinParams | None = None, *,
                 position: Mapping[str, Any] | None = None, initial: int | None = None,
                 on_recovery: Callable[[dict[str, Any]], object] | None = None) -> None:
        if position is not None and not _is_position(dict(position)):
            raise ValueError("position must be {'offset': int, 'epoch': str}")
        self.socket = socket
        self.topic = topic
        self.state = CLOSED
        #: The last join reply's ``phx_recovery`` (topics with history), else ``None``.
        self.recovery: dict[str, Any] | None = None
        self._params: JoinParams = params if params is not None else {}
        self._position: dict[str, Any] | None = dict(position) if position else None
        self._initial = initial
        self._on_recovery = on_recovery
        self._timeout = socket.timeout
        self._joined_once = False
        self._removed = False
        self._join_ref: str | None = None
        self._join_push: _Push | None = None
        self._join_timer: trio.CancelScope | None = None
        self._first_join: _Waiter | None = None
        self._push_buffer: list[_Push] = []
        self._replies: dict[str, _Push] = {}
        self._bindings: dict[str, list[tuple[int, Handler]]] = {}
        self._binding_ref = 0
        self._join_callbacks: list[Callable[[Any], object]] = []
        self._streams: weakref.WeakSet[MessageStream] = weakref.WeakSet()
        self._rejoin_timer = socket._backoff(self._rejoin_if_connected, socket.rejoin_after)

    def __repr__(self) -> str:
        return f"<ClientChannel {self.topic!r} {self.state} join_ref={self._join_ref}>"

    # -- public API -----------------------------------------------------------------------

    @property
    def join_ref(self) -> str | None:
        """The ref of the current join (a new one for every rejoin)."""
        return self._join_ref

    @property
    def joined(self) -> bool:
        return self.state == JOINED

    @property
    def position(self) -> dict[str, Any] | None:
        """The newest history position seen, ``{"offset": int, "epoch": str}``, or ``None``."""
        return dict(self._position) if self._position else None

    def on(self, event: str, callback: Handler) -> int:
        """Call ``callback(payload)`` for every ``event`` on this channel; returns a ref for
        :meth:`off`. Callbacks run in the socket's reader task: keep them short, never block."""
        self._binding_ref += 1
        self._bindings.setdefault(event, []).append((self._binding_ref, callback))
        return self._binding_ref

    def off(self, event: str, ref: int | None = None) -> None:
        """Remove the callback ``ref`` of ``event``, or all of them."""
        kept = [b for b in self._bindings.get(event, ()) if ref is not None and b[0] != ref]
        if kept:
            self._bindings[event] = kept
        else:
            self._bindings.pop(event, None)

    def on_error(self, callback: Handler) -> int:
        """``phx_error``: the server channel crashed or the connection was lost (it rejoins)."""
        return self.on("phx_error", callback)

    def on_close(self, callback: Handler) -> int:
        """``phx_close``: closed by the server, left, or the socket ended (no rejoin)."""
        return self.on("phx_close", callback)

    def on_join(self, callback: Callable[[Any], object]) -> Callable[[Any], object]:
        """Call ``callback(reply)`` after every successful join, the first and each rejoin."""
        self._join_callbacks.append(callback)
        return callback

    def messages(self) -> MessageStream:
        """An async iterator over this channel's messages from now on (every event but
        replies, including ``phx_error``; it ends after ``phx_close``). Use it as
        ``async with channel.messages() as stream: async for message in stream: ...``."""
        return MessageStream(self)

    def __aiter__(self) -> MessageStream:
        return self.messages()

    async def join(self, timeout: float | None = None) -> Any:
        """Join and return the reply; once only (rejoins are automatic).

        Raises :class:`ReplyError` if the server refuses the join, :class:`PushTimeout` if it
        is not joined within ``timeout`` (the socket's ``timeout`` by default); either way the
        channel is closed. A lost connection meanwhile is retried within the timeout.
        """
        if self._joined_once:
            raise RuntimeError(f"join() was already called on {self.topic!r}: channels rejoin "
                               "by themselves; make a new channel to join again")
        if self._removed:
            raise ChannelClosed(f"channel {self.topic!r} is closed")
        self._joined_once = True
        if timeout is not None:
            self._timeout = timeout
        first = self._first_join = _Waiter()
        self._rejoin()
        with trio.move_on_after(self._timeout):
            await first.done.wait()
        if not first.done.is_set():
            self._abandon_join()
        if first.error is not None:
            raise first.error
        assert first.result is not None
        status, response = first.result
        if status == "ok":
            return response
        raise ReplyError(self.topic, "phx_join", status, response)

    async def push(self, event: str, payload: Any = None, timeout: float | None = None) -> Any:
        """Push ``event`` with ``payload`` (a dict, or bytes for a binary push) and return the
        reply's response.

        Raises :class:`ReplyError` on an error reply, :class:`PushTimeout` when none came
        within ``timeout``, :class:`ReplyLost` when the connection or the server channel
        failed first, :class:`ChannelClosed` when the channel is or gets closed. A push made
        while the channel is (re)joining is sent once it is joined.
        """
        if not self._joined_once:
            raise RuntimeError(f"push {event!r} to {self.topic!r} before join()")
        if self._removed or self.state == LEAVING:
            raise ChannelClosed(f"channel {self.topic!r} is closed")
        push = _Push(event, {} if payload is None else payload)
        if self._can_push():
            self._send_push(push)
        else:  # check it can be encoded now, send it once joined
            self.socket._encode(None, None, self.topic, event, push.payload)
            self._push_buffer.append(push)
        if timeout is None:
            timeout = self._timeout
        try:
            with trio.move_on_after(timeout):
                await push.done.wait()
        finally:
            if not push.done.is_set():
                self._forget(push)
        if push.error is not None:
            raise push.error
        if push.result is None:
            raise PushTimeout(f"no reply to {event!r} on {self.topic!r} within {timeout:g} s")
        status, response = push.result
        if status == "ok":
            return response
        raise ReplyError(self.topic, event, status, response)

    def push_nowait(self, event: str, payload: Any = None) -> None:
        """Push without waiting for a reply (a reply, if any, is dropped). While the channel
        is (re)joining it waits to be sent, at most the channel's timeout, as in phoenix.js.
        """
        if not self._joined_once:
            raise RuntimeError(f"push {event!r} to {self.topic!r} before join()")
        if self._removed or self.state == LEAVING:
            raise ChannelClosed(f"channel {self.topic!r} is closed")
        push = _Push(event, {} if payload is None else payload)
        push.wants_reply = False
        if self._can_push():
            self._send_push(push)
        else:
            self.socket._encode(None, None, self.topic, event, push.payload)
            push.deadline = trio.current_time() + self._timeout
            self._push_buffer.append(push)

    async def leave(self, timeout: float | None = None) -> bool:
        """Leave: the channel is closed at once (as in phoenix.js); this waits for the
        server's acknowledgement at most ``timeout`` and says whether it came."""
        ack = self._leave()
        if ack is None:
            return False
        with trio.move_on_after(self._timeout if timeout is None else timeout):
            await ack.done.wait()
        self.socket._forget_ack(ack)
        return ack.result is not None

    # -- joining ----------------------------------------------------------------------------

    def _join_payload(self) -> dict[str, Any]:
        base = self._params() if callable(self._params) else self._params
        params = dict(base)
        if self._position is not None:
            params[POSITION_KEY] = dict(self._position)
        elif self._initial:
            params[POSITION_KEY] = {"last": self._initial}
        return params

    def _rejoin_if_connected(self) -> None:
        if self.socket.is_connected:
            self._rejoin()

    def _rejoin(self) -> None:
        if self.state == LEAVING or self._removed:
            return
        self.socket._leave_open_topic(self)
        self.state = JOINING
        self._reset_join()
        try:
            payload = self._join_payload()
            ref = self.socket._make_ref()
            frame = self.socket._encode(ref, ref, self.topic, "phx_join", payload)
        except Exception as exc:
            self._join_not_sent(exc)
            return
        push = _Push("phx_join", payload, self._on_join_reply)
        push.ref = ref
        self._join_push = push
        self._join_ref = ref
        self._replies[ref] = push
        self._join_timer = self.socket._call_later(self._timeout,
                                                   lambda: self._on_join_timeout(push))
        self.socket._push_frame(frame, ref, "phx_join", self)

    def _reset_join(self) -> None:
        """Forget the join in flight (phoenix.js ``joinPush.reset()``)."""
        if self._join_push is not None:
            if self._join_push.ref is not None:
                self._replies.pop(self._join_push.ref, None)
            self._join_push = None
            self._join_ref = None
        self._cancel_join_timer()

    def _cancel_join_timer(self) -> None:
        if self._join_timer is not None:
            self._join_timer.cancel()
            self._join_timer = None

    def _join_not_sent(self, exc: Exception) -> None:
        self.state = ERRORED
        if self._first_join is not None:
            self._first_join.fail(exc)
            self._closed({"reason": "join failed"})
            return
        log.error("join of %r not sent (params callable or encoding failed): %r",
                  self.topic, exc)
        if self.socket.is_connected:
            self._rejoin_timer.schedule()

    def _on_join_reply(self, push: _Push) -> None:
        if push is not self._join_push:
            return
        self._join_push = None
        self._cancel_join_timer()
        assert push.result is not None
        status, response = push.result
        if status == "ok":
            self.state = JOINED
            self._rejoin_timer.reset()
            self._note_recovery(response)
            buffered, self._push_buffer = self._push_buffer, []
            now = trio.current_time()
            for pending in buffered:
                if pending.deadline >= now:
                    self._send_push(pending)
            first, self._first_join = self._first_join, None
            if first is not None:
                first.resolve(status, response)
            for callback in list(self._join_callbacks):
                call_safely(callback, response)
            return
        self.state = ERRORED
        if self._first_join is not None:
            self._first_join.resolve(status, response)
            self._closed({"reason": "join refused"})
            return
        log.warning("rejoin of %r refused: %r", self.topic, response)
        if self.socket.is_connected:
            self._rejoin_timer.schedule()

    def _on_join_timeout(self, push: _Push) -> None:
        if push is not self._join_push:
            return
        self._join_timer = None
        self.socket._send_leave(self)
        self.state = ERRORED
        self._reset_join()
        if self._first_join is not None:
            self._first_join.fail(PushTimeout(
                f"{self.topic!r} was not joined within {self._timeout:g} s"))
            self._closed({"reason": "join timeout"})
            return
        log.warning("rejoin of %r timed out", self.topic)
        if self.socket.is_connected:
            self._rejoin_timer.schedule()

    def _abandon_join(self) -> None:
        """The first join did not succeed in time: give up on the channel."""
        if self._first_join is None:
            return
        self._first_join.fail(PushTimeout(
            f"{self.topic!r} was not joined within {self._timeout:g} s"))
        if self.state == JOINING:
            self.socket._send_leave(self)
        self._closed({"reason": "join timeout"})

    # -- pushes -----------------------------------------------------------------------------

    def _can_push(self) -> bool:
        return self.socket.is_connected and self.state == JOINED

    def _send_push(self, push: _Push) -> None:
        ref = self.socket._make_ref()
        frame = self.socket._encode(self._join_ref, ref, self.topic, push.event, push.payload)
        push.ref = ref
        if push.wants_reply:
            self._replies[ref] = push
        self.socket._push_frame(frame, self._join_ref, push.event, self)

    def _forget(self, push: _Push) -> None:
        if push.ref is not None:
            self._replies.pop(push.ref, None)
        if push in self._push_buffer:
            self._push_buffer.remove(push)

    def _leave(self) -> _Waiter | None:
        if self._removed:
            return None
        self._rejoin_timer.reset()
        self._cancel_join_timer()
        self.state = LEAVING
        ack = self.socket._send_leave(self, expect_reply=True)
        self._closed({"reason": "leave"})
        return ack

    # -- incoming ---------------------------------------------------------------------------

    def _is_member(self, join_ref: str | None) -> bool:
        return join_ref is None or join_ref == self._join_ref

    def _is_outdated(self, join_ref: str | None) -> bool:
        return join_ref != self._join_ref or self.state == CLOSED

    def _trigger(self, message: Message) -> None:
        event = message.event
        payload = message.payload
        if event == "phx_reply":
            push = self._replies.pop(message.ref, None) if message.ref is not None else None
            if push is not None and isinstance(payload, dict):
                push.resolve(str(payload.get("status")), payload.get("response"))
            return
        if isinstance(payload, dict):
            position: Any = payload.get(POSITION_KEY)
            if _is_position(position):
                self._note_position(position)
        if event == "phx_close":
            self._closed(payload, message)
            return
        if event == "phx_error":
            self._errored(payload)
        self._dispatch(message)

    def _errored(self, reason: Any) -> None:
        """phoenix.js ``onError``: rejoin later; replies still awaited can no longer come."""
        if self.state == JOINING:
            self._reset_join()
        self.state = ERRORED
        lost, self._replies = list(self._replies.values()), {}
        for push in lost:
            push.fail(ReplyLost(f"{push.event!r} on {self.topic!r}: no reply, the channel "
                                f"errored ({reason!r}); it may or may not have been handled"))
        if self.socket.is_connected:
            self._rejoin_timer.schedule()

    def _closed(self, payload: Any, message: Message | None = None) -> None:
        """Closed for good: no rejoin; waiters fail, streams end after a ``phx_close``."""
        if self._removed:
            return
        self._removed = True
        self._rejoin_timer.reset()
        self._cancel_join_timer()
        self.state = CLOSED
        self.socket._remove(self)
        closed = ChannelClosed(f"channel {self.topic!r} closed: {payload!r}")
        pending = [*self._replies.values(), *self._push_buffer]
        self._replies, self._push_buffer, self._join_push = {}, [], None
        for push in pending:
            push.fail(closed)
        if self._first_join is not None:
            self._first_join.fail(closed)
            self._first_join = None
        self._dispatch(message or Message(self._join_ref, None, self.topic, "phx_close",
                                          payload))
        for stream in list(self._streams):
            stream._end()

    def _dispatch(self, message: Message) -> None:
        for _, callback in list(self._bindings.get(message.event, ())):
            call_safely(callback, message.payload)
        if self._streams:
            for stream in list(self._streams):
                stream._deliver(message)

    def _note_position(self, position: dict[str, Any]) -> None:
        """Keep the newest position seen (what history.js does)."""
        last = self._position
        if last is not None and position["epoch"] == last["epoch"] \
                and position["offset"] <= last["offset"]:
            return
        self._position = {"offset": position["offset"], "epoch": position["epoch"]}
        if last is not None and last["epoch"] and position["epoch"] != last["epoch"]:
            # The stream was lost while this channel stayed joined (Redis restarted empty,
            # broadcasts that could not be stored): what came between cannot be recovered.
            self._report_recovery({"recovered": False, "epoch": position["epoch"],
                                   "offset": position["offset"] - 1, "replayed": 0,
                                   "reason": "epoch changed"})

    def _note_recovery(self, response: Any) -> None:
        info: Any = response.get(RECOVERY_KEY) if isinstance(response, dict) else None
        if not isinstance(info, dict) or not isinstance(info.get("epoch"), str):
            return
        self.recovery = info
        if not info.get("recovered") and info["epoch"] and type(info.get("offset")) is int:
            # Nothing replayed (first join, or too far behind): go on from the stream's end.
            # (No epoch: the history was unavailable; keep the position and retry it.)
            self._position = {"offset": info["offset"], "epoch": info["epoch"]}
        self._report_recovery(info)

    def _report_recovery(self, info: dict[str, Any]) -> None:
        if self._on_recovery is not None:
            call_safely(self._on_recovery, info)

    def _on_socket_open(self) -> None:
        self._rejoin_timer.reset()
        if self.state == ERRORED:
            self._rejoin()


class MessageStream:
    """A channel's incoming messages (:class:`channels.serializer.Message`), in order, from
    its creation on; iteration ends after the channel's ``phx_close``. Unbounded: consume it
    as fast as messages come, or close it."""

    def __init__(self, channel: ClientChannel) -> None:
        self.channel = channel
        self._send, self._receive = trio.open_memory_channel[Message](math.inf)
        if channel._removed:
            self._send.close()
        else:
            channel._streams.add(self)

    def _deliver(self, message: Message) -> None:
        try:
            self._send.send_nowait(message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _end(self) -> None:
        self._send.close()

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message; :class:`ChannelClosed` after the last, ``TimeoutError`` if none
        comes within ``timeout`` seconds."""
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ChannelClosed(f"channel {self.channel.topic!r} is closed") from None
        except trio.TooSlowError:
            raise TimeoutError(f"no message on {self.channel.topic!r} within {timeout} s"
                               ) from None

    def close(self) -> None:
        """Stop receiving (what was buffered is dropped)."""
        self.channel._streams.discard(self)
        self._send.close()
        self._receive.close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()
