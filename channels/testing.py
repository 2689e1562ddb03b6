"""Test your channels in-process, without a network (like Phoenix's ``ChannelTest``).

A :class:`ChannelTest` runs your endpoint without a listener; each :meth:`ChannelTest.socket`
is a real session of your :class:`~channels.socket.Socket` class, connected through an
in-process socket pair, so joins, pushes, replies, broadcasts, presence, rooms and history
behave exactly as in production::

    from channels.testing import channel_test

    async def test_chat():
        async with channel_test(endpoint) as t:
            ada = await t.socket(UserSocket, params={"user": "ada"})
            await ada.join("room:lobby")
            ref = await ada.push("room:lobby", "new_msg", {"body": "hi"})
            await ada.assert_reply(ref, "ok")
            await ada.assert_broadcast("room:lobby", "new_msg", {"user": "ada", "body": "hi"})

Every ``assert_*`` waits at most ``timeout`` seconds (trio's clock, so a test on
``MockClock`` with ``autojump_clock`` does not wait in real time) and fails with what did
arrive. With pytest-trio, make it a fixture::

    @pytest.fixture
    async def t():
        async with channel_test(make_endpoint()) as t:
            yield t
"""

from __future__ import annotations

import itertools
import socket as stdsocket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio
from wsproto.frame_protocol import FrameProtocol, Opcode

from channels.connection import Connection
from channels.pubsub import CallbackSubscriber
from channels.serializer import (
    Message,
    V2JSONSerializer,
    decode_server_frame,
    encode_client_binary_push,
)
from channels.socket import Socket, SocketSession

if TYPE_CHECKING:
    from channels.channel import Channel
    from channels.endpoint import Endpoint

__all__ = ["ChannelTest", "JoinRefused", "TestSocket", "channel_test"]

_ANY: Any = object()
_V2 = V2JSONSerializer()
_ids = itertools.count(1)


class JoinRefused(AssertionError):
    """The join was refused; ``response`` is the error reply's payload."""

    def __init__(self, topic: str, response: Any) -> None:
        super().__init__(f"join of {topic!r} refused: {response!r}")
        self.response = response


class TestSocket:
    """One client connection to the endpoint, speaking the V2 protocol like phoenix.js."""

    __test__ = False  # not a pytest test class

    def __init__(self, test: ChannelTest, session: SocketSession,
                 client: trio.SocketStream) -> None:
        self._test = test
        self.session = session
        self._client = client
        self._frames = FrameProtocol(client=True, extensions=[])
        self._inbox: list[Message] = []
        self._arrived = trio.Event()
        self._refs = itertools.count(1)
        self._join_refs: dict[str, str] = {}
        self.close_code: int | None = None
        self._closing = False
        self._closed = trio.Event()

    @property
    def assigns(self) -> dict[str, Any]:
        """The socket's assigns (after ``connect``)."""
        return self.session.socket.assigns

    def channel(self, topic: str) -> Channel:
        """The :class:`~channels.channel.Channel` instance serving ``topic`` on this socket."""
        joined = self.session.state.topics.get(topic)
        if joined is None:
            raise AssertionError(f"{topic!r} is not joined")
        return joined.handle.channel

    # -- sending ---------------------------------------------------------------------------------

    async def _send(self, join_ref: str | None, ref: str | None, topic: str, event: str,
                    payload: Any) -> None:
        if isinstance(payload, bytes):
            data = self._frames.send_data(encode_client_binary_push(
                join_ref or "", ref or "", topic, event, payload), fin=True)
        else:
            _, text = _V2.encode(join_ref, ref, topic, event, payload)
            data = self._frames.send_data(text.decode(), fin=True)
        await self._client.send_all(bytes(data))

    async def join(self, topic: str, params: dict[str, Any] | None = None, *,
                   timeout: float = 5.0) -> Any:
        """Join ``topic``; returns the reply's response, raises :class:`JoinRefused`.

        The test also subscribes to the topic so :meth:`assert_broadcast` sees its broadcasts.
        """
        join_ref = str(next(self._refs))
        self._test._watch(topic)
        await self._send(join_ref, join_ref, topic, "phx_join", params or {})
        reply = await self.assert_reply(join_ref, timeout=timeout)
        if reply["status"] != "ok":
            raise JoinRefused(topic, reply["response"])
        self._join_refs[topic] = join_ref
        return reply["response"]

    async def push(self, topic: str, event: str, payload: Any = None) -> str:
        """Push ``event`` to the channel of ``topic``; returns the ref to assert a reply."""
        ref = str(next(self._refs))
        await self._send(self._join_refs.get(topic), ref, topic, event,
                         {} if payload is None else payload)
        return ref

    async def leave(self, topic: str, *, timeout: float = 5.0) -> Any:
        """Leave ``topic``; returns the reply's response."""
        ref = await self.push(topic, "phx_leave")
        reply = await self.assert_reply(ref, timeout=timeout)
        self._join_refs.pop(topic, None)
        return reply["response"]

    def send_info(self, topic: str, message: Any) -> None:
        """Deliver ``message`` to the channel's ``handle_info``."""
        self.channel(topic).send(message)

    async def close(self) -> None:
        """Close the connection as a client does (its channels terminate with "closed")."""
        self._closing = True
        with trio.move_on_after(1.0):
            await self._client.send_all(bytes(self._frames.close(1000)))
            await self._closed.wait()
        await self._client.aclose()

    # -- asserting -------------------------------------------------------------------------------

    async def assert_reply(self, ref: str, status: str | None = None, response: Any = _ANY, *,
                           timeout: float = 1.0) -> dict[str, Any]:
        """Wait for the reply to ``ref``; check its status and response if given."""
        msg = await self._take(lambda m: m.event == "phx_reply" and m.ref == ref, timeout,
                               f"a reply to ref {ref}")
        reply: dict[str, Any] = msg.payload
        if status is not None and reply.get("status") != status:
            raise AssertionError(f"reply to {ref}: expected status {status!r}, got {reply!r}")
        if response is not _ANY and reply.get("response") != response:
            raise AssertionError(f"reply to {ref}: expected response {response!r}, got "
                                 f"{reply.get('response')!r}")
        return reply

    async def assert_push(self, event: str, payload: Any = _ANY, *, topic: str | None = None,
                          timeout: float = 1.0) -> Any:
        """Wait for a message ``event`` sent to this client (a push or a broadcast it got)
        whose payload equals ``payload`` (or satisfies it, if it is a function), if given;
        returns the payload."""
        msg = await self._take(
            lambda m: m.event == event and (topic is None or m.topic == topic)
            and _matches(m.payload, payload), timeout,
            f"{event!r}" + (f" with {payload!r}" if payload is not _ANY else ""))
        return msg.payload

    async def refute_push(self, event: str, *, topic: str | None = None,
                          within: float = 0.1) -> None:
        """Fail if ``event`` reaches this client within ``within`` seconds."""
        try:
            msg = await self._take(lambda m: m.event == event and (topic is None
                                                                  or m.topic == topic),
                                   within, "")
        except AssertionError:
            return
        raise AssertionError(f"unexpected {event!r}: {msg!r}")

    async def assert_broadcast(self, topic: str, event: str, payload: Any = _ANY, *,
                               timeout: float = 1.0) -> Any:
        """Wait for a broadcast of ``event`` on ``topic`` (on the node, whoever sent it)."""
        return await self._test.assert_broadcast(topic, event, payload, timeout=timeout)

    async def assert_closed(self, *, timeout: float = 1.0) -> int | None:
        """Wait until the server closes the connection; returns the close code."""
        with trio.move_on_after(timeout):
            await self._closed.wait()
            return self.close_code
        raise AssertionError("the server did not close the connection")

    @property
    def received(self) -> list[Message]:
        """Messages received and not taken by an assertion yet."""
        return list(self._inbox)

    async def _take(self, match: Callable[[Message], bool], timeout: float,
                    what: str) -> Message:
        with trio.move_on_after(timeout):
            while True:
                for i, msg in enumerate(self._inbox):
                    if match(msg):
                        del self._inbox[i]
                        return msg
                if self._closed.is_set():
                    break
                self._arrived = trio.Event()
                await self._arrived.wait()
        raise AssertionError(f"expected {what} within {timeout}s; received: "
                             f"{[(m.topic, m.event, m.payload) for m in self._inbox]!r}")

    async def _reader(self) -> None:
        frames = self._frames
        try:
            while True:
                data = await self._client.receive_some(65536)
                if not data:
                    break
                frames.receive_bytes(data)
                for frame in frames.received_frames():
                    if frame.opcode is Opcode.CLOSE:
                        payload = frame.payload
                        self.close_code = int(payload[0]) if isinstance(payload, tuple) \
                            else None
                        if not self._closing:
                            with trio.move_on_after(1.0):  # answer it, as a browser does
                                await self._client.send_all(bytes(frames.close(
                                    self.close_code or 1000)))
                        return
                    if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                        self._inbox.append(decode_server_frame(
                            frame.payload, frame.opcode is Opcode.BINARY))  # type: ignore[arg-type]
                        self._arrived.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._closed.set()
            self._arrived.set()


class ChannelTest:
    """Runs an endpoint in-process (no listener) and makes client sockets to it."""

    __test__ = False

    def __init__(self, endpoint: Endpoint, nursery: trio.Nursery) -> None:
        self.endpoint = endpoint
        self._nursery = nursery
        self._broadcasts: dict[str, list[tuple[str, Any]]] = {}
        self._broadcast_arrived = trio.Event()

    async def socket(self, socket_cls: type[Socket] | None = None, *,
                     params: dict[str, Any] | None = None,
                     assigns: dict[str, Any] | None = None,
                     connect_info: dict[str, Any] | None = None,
                     auth_token: str | None = None) -> TestSocket:
        """Connect a client. With ``assigns``, ``connect`` is skipped and the socket's assigns
        are set (Phoenix's ``socket(UserSocket, id, assigns)``); else ``connect(params,
        connect_info)`` runs (``connect_info`` as a real connection's, from 127.0.0.1, with
        ``auth_token``, updated with yours) and a refusal raises AssertionError."""
        endpoint = self.endpoint
        if socket_cls is None:
            if len(endpoint.sockets) != 1:
                raise ValueError("the endpoint has several sockets: name the Socket class")
            socket_cls = next(iter(endpoint.sockets.values()))
        sock = socket_cls(endpoint)
        if assigns is not None:
            sock.assigns.update(assigns)
        else:
            info = {**_connect_info(auth_token), **(connect_info or {})}
            result = await sock.connect(params or {}, info)
            if isinstance(result, dict):
                sock.assigns.update(result)
            elif result is not True:
                raise AssertionError(f"{socket_cls.__name__}.connect refused {params!r}")
        server_end, client_end = stdsocket.socketpair()
        server_end.setblocking(False)
        conn = Connection(server_end, ("in-process", next(_ids)))
        connections = endpoint._connections
        if connections is None:
            raise RuntimeError("the endpoint is not running")
        conn.attach(connections)
        session = SocketSession(endpoint, sock, _V2, conn, poller=endpoint.poller)
        client = trio.SocketStream(trio.socket.from_stdlib_socket(client_end))
        test_socket = TestSocket(self, session, client)

        async def run_session() -> None:
            try:
                await endpoint.run_session(session)
            finally:
                conn.abort()

        connections.start_soon(run_session)
        self._nursery.start_soon(test_socket._reader)
        await trio.lowlevel.checkpoint()
        return test_socket

    def _watch(self, topic: str) -> None:
        if topic in self._broadcasts:
            return
        self._broadcasts[topic] = []

        def seen(t: str, event: str, payload: Any) -> None:
            self._broadcasts[t].append((event, payload))
            self._broadcast_arrived.set()

        self.endpoint.subscribe(topic, CallbackSubscriber(seen))

    async def assert_broadcast(self, topic: str, event: str, payload: Any = _ANY, *,
                               timeout: float = 1.0) -> Any:
        """Wait for a broadcast of ``event`` on ``topic`` (joined by some test socket, or
        watched with :meth:`watch`); returns its payload."""
        self._watch(topic)
        seen = self._broadcasts[topic]
        with trio.move_on_after(timeout):
            while True:
                for i, (ev, data) in enumerate(seen):
                    if ev == event and _matches(data, payload):
                        del seen[i]
                        return data
                self._broadcast_arrived = trio.Event()
                await self._broadcast_arrived.wait()
        raise AssertionError(f"expected a broadcast {event!r} on {topic!r} within {timeout}s; "
                             f"seen: {seen!r}")

    def watch(self, topic: str) -> None:
        """Record the broadcasts of ``topic`` from now on (joining a topic does it too)."""
        self._watch(topic)

    async def broadcast_from(self, topic: str, event: str, payload: Any) -> None:
        """Broadcast as the server would (``endpoint.broadcast``)."""
        await self.endpoint.broadcast(topic, event, payload)


def _matches(value: Any, expected: Any) -> bool:
    if expected is _ANY:
        return True
    if callable(expected):
        return bool(expected(value))
    return bool(value == expected)


def _connect_info(auth_token: str | None) -> dict[str, Any]:
    return {
        "peer_data": {"address": "127.0.0.1", "port": 0},
        "uri": {"scheme": "http", "host": "localhost", "port": 0, "path": "/socket/websocket",
                "query": "vsn=2.0.0"},
        "user_agent": "channels.testing",
        "origin": None,
        "x_headers": [],
        "trace_context_headers": [],
        "sec_websocket_headers": [],
        "headers": {},
        "auth_token": auth_token,
    }


@asynccontextmanager
async def channel_test(endpoint: Endpoint) -> AsyncIterator[ChannelTest]:
    """Run ``endpoint`` in-process for the block; stop it (drain) at the end."""
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.serve, "127.0.0.1", None)
        try:
            yield ChannelTest(endpoint, nursery)
        finally:
            await endpoint.drain()
            nursery.cancel_scope.cancel()
