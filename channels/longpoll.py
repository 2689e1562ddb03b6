"""The LongPoll transport, ``<mount>/longpoll``: Phoenix 1.8's ``Phoenix.Transports.LongPoll``
as phoenix.js 1.7/1.8 speaks it (``transport: LongPoll``, and ``longPollFallbackMs``).

The exchange, as Phoenix has it (every JSON answer is HTTP 200 with the status in the body):

* ``GET`` without a valid token starts a session: :meth:`Socket.connect` runs with the query
  params (and the ``X-Phoenix-AuthToken`` header as ``connect_info["auth_token"]``); the answer
  is ``{"messages": [], "status": 410, "token": T}``, or ``{"status": 403}`` when refused.
  An unknown, forged or expired token starts a new session the same way.
* ``GET ?token=T`` polls: ``{"messages": [...], "status": 200, "token": T}`` as soon as there
  are messages, else ``{"messages": [], "status": 204, "token": T}`` after the window (10 s).
* ``POST ?token=T``: one message, or up to 100 as ``application/x-ndjson`` (a line starting
  with ``[`` is JSON, any other is base64 of a binary push); ``{"status": 200}`` once they are
  handled, ``{"status": 410}`` when the session is gone.
* ``OPTIONS`` answers a CORS preflight; every answer allows any origin (``check_origin``
  refuses foreign ones with ``{"status": 403}``, as Phoenix does).

A :class:`LongPollSession` is a :class:`~channels.socket.SocketSession` for everything above
the transport (channels, presence, history, rate limits, back-pressure, the idle timeout): its
outbound messages wait in an :class:`Outbox` for the next poll instead of going out as
WebSocket frames, and POSTed messages go through the same frame handler as WebSocket ones.

The token (``channels.tokens.sign_token`` with the endpoint's secret key) names the node and
the session. No sticky sessions are needed: a request that reaches another node of the
cluster is forwarded to the owner as direct messages over the pubsub adapter (on a per-node
topic derived from the secret, so only nodes sharing it can use it), and the answer comes back
the same way. See docs/guide.md#longpoll for statuses and limits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import h11
import orjson
import trio

from channels import http
from channels.frames import CLOSE_INVALID_DATA, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN_LATER
from channels.http import HTTPError, Request
from channels.interfaces import Node
from channels.logutil import Throttled
from channels.pubsub import LocalAdapter
from channels.serializer import EncodeError, Serializer, serializer_for_vsn
from channels.socket import Refuse, Socket, SocketSession
from channels.tokens import MIN_SECRET_BYTES, TokenError, sign_token, verify_token

if TYPE_CHECKING:
    from channels.connection import Connection

log = logging.getLogger("channels.longpoll")
_throttled = Throttled(log)

__all__ = ["SECRET_ENV", "LongPoll", "LongPollSession", "Outbox"]

#: The environment variable holding the endpoint's secret key (when not given to Endpoint).
SECRET_ENV = "TRIO_CHANNELS_SECRET_KEY"
#: What session tokens are signed for (Phoenix.Token's salt).
SALT = b"trio-channels longpoll session"
#: Tokens are valid this long (seconds), as Phoenix's default ``crypto: [max_age: 1_209_600]``;
#: a session ends much sooner without polls, and then its token starts a new one.
TOKEN_MAX_AGE = 1_209_600
#: How long a request waits for the node owning its session to answer at all (Phoenix's
#: ``pubsub_timeout_ms``); then the session is taken as gone.
PUBSUB_TIMEOUT = 2.0
#: Messages in one ndjson POST (Phoenix's @max_poll_batch_size, phoenix.js's
#: MAX_LONGPOLL_BATCH_SIZE); a POST with more is refused with 413.
MAX_BATCH = 100
#: A POST body larger than this is refused with 413 before it is read (Plug's read_body
#: default, which is what bounds a Phoenix LongPoll POST); each message in it is also held to
#: the socket's ``max_frame_size``.
MAX_BODY = 8_000_000
#: POSTs of one session handled or waiting at a time; more get 429 (phoenix.js has one in
#: flight, waiting for its answer before the next).
MAX_POSTS = 4
#: Newer Phoenix clients may send the token in this header instead of ``?token=``.
TOKEN_HEADER = "x-phoenix-longpoll-token"
#: phoenix.js 1.8 sends its ``authToken`` option in this header on LongPoll.
AUTH_HEADER = "x-phoenix-authtoken"
#: Counted per queued message on top of its bytes against ``max_buffer``.
_ITEM_OVERHEAD = 64
#: Verified tokens remembered (each for a minute at most).
_VERIFIED_MAX = 50_000

_JSON = "application/json; charset=utf-8"
_CORS = ("access-control-allow-origin", "*")
# Phoenix sends the poll's JSON with the keys in Elixir's map order (sorted).
_STATUS_200 = b'{"status":200}'
_STATUS_403 = b'{"status":403}'
_STATUS_410 = b'{"status":410}'

# A waiting poll is woken because ...
_READY = 1  # ... there are messages
_SUPERSEDED = 2  # ... a newer poll of the same session came (it gets 204 at once)
_GONE = 3  # ... the session ended

# What a POST answers when the session ended while handling it (as the WebSocket close codes).
_CLOSE_STATUS = {CLOSE_INVALID_DATA: 400, CLOSE_TOO_BIG: 413, CLOSE_POLICY: 429}


def _literal(data: bytes) -> bytes:
    """A serialized message as a JSON string literal, ready for a poll's ``messages``.

    The serializers' JSON (orjson) holds no raw control characters, so only backslashes and
    quotes need escaping; done once per message (once per broadcast on the fastlane).
    """
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _signed_at(token: str) -> float:
    """The signing time (Unix seconds) of a token :func:`verify_token` accepted."""
    part = token.split(".")[1]
    data = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return float(data["s"]) / 1000


def _poll_body(status: int, token: bytes, items: list[bytes]) -> bytes:
    return b"".join((b'{"messages":[', b",".join(items), b'],"status":', str(status).encode(),
                     b',"token":"', token, b'"}'))


class _Poll:
    """A poll waiting for messages (one per session at most)."""

    __slots__ = ("done", "event", "outcome")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.done = trio.Event()  # its answer went out
        self.outcome = 0

    def wake(self, outcome: int) -> None:
        if not self.outcome:
            self.outcome = outcome
            self.event.set()


class Outbox:
    """What a :class:`LongPollSession` writes to instead of a :class:`Connection`: messages
    wait here as JSON string literals until a poll takes them, bounded by ``max_buffer``.

    It has what the session and the endpoint's heartbeat monitor use of a connection:
    ``active``/``silent_since`` (set by polls: a session without polls idles out),
    ``write_stall`` (always 0: a LongPoll client is judged by its polls) and the overflow hook.
    """

    __slots__ = ("active", "closed", "items", "max_buffer", "on_overflow", "overflowed",
                 "peer", "silent_since", "size", "waiter")

    def __init__(self, peer: tuple[str, int], max_buffer: int) -> None:
        self.peer = peer
        self.max_buffer = max_buffer
        self.active = True
        self.silent_since = 0.0
        self.closed = False
        self.overflowed = False
        self.on_overflow: Callable[[], None] | None = None
        self.items: list[bytes] = []
        self.size = 0
        self.waiter: _Poll | None = None

    @property
    def buffered(self) -> int:
        return self.size

    def write_nowait(self, item: bytes) -> None:
        if self.closed or self.overflowed:
            return
        self.items.append(item)
        self.size += len(item) + _ITEM_OVERHEAD
        if self.size > self.max_buffer:
            self.cut()
            if self.on_overflow is not None:
                self.on_overflow()
            return
        waiter = self.waiter
        if waiter is not None and not waiter.outcome:
            waiter.wake(_READY)

    def take(self) -> list[bytes]:
        items = self.items
        self.items = []
        self.size = 0
        return items

    def cut(self, final: bytes = b"") -> None:
        """Drop what waits and take no more (a slow consumer)."""
        self.overflowed = True
        self.items = []
        self.size = 0

    def write_stall(self, now: float) -> float:
        return 0.0

    async def drain(self, timeout: float) -> None:
        return None

    def abort(self) -> None:
        self.closed = True
        self.items = []
        self.size = 0


Respond = Callable[[int, list[bytes]], Awaitable[None]]

#: A woken poll lets this many scheduling rounds pass at most while messages keep coming.
_GATHER_ROUNDS = 16


async def _gather(outbox: Outbox) -> None:
    """Let a burst finish before answering: yield while each round adds messages (a stream of
    broadcasts goes out in a few answers, not one per message); a lone reply costs one
    scheduling round."""
    count = len(outbox.items)
    for _ in range(_GATHER_ROUNDS):
        await trio.lowlevel.checkpoint()
        now = len(outbox.items)
        if now == count or outbox.size > 65536:
            return
        count = now


class LongPollSession(SocketSession):
    """One LongPoll client: a socket session whose messages wait for polls."""

    conn: Outbox  # type: ignore[assignment]
    # Class defaults: what most sessions never set costs an idle session nothing.
    #: The close code the session ended with (a POST's answer depends on it).
    close_code = 0
    # POSTs are handled one at a time, in order; the lock exists only while some are in flight.
    _post_lock: trio.StrictFIFOLock | None = None
    _posts = 0
    #: Set once the session can take messages (its channels' supervisor is up); then unset.
    started: trio.Event | None = None

    def __init__(self, endpoint: Node, socket: Socket, serializer: Serializer,
                 sid: str, token: bytes, peer: tuple[str, int], transport: LongPoll) -> None:
        outbox = Outbox(peer, type(socket).max_buffer)
        super().__init__(endpoint, socket, serializer, outbox)  # type: ignore[arg-type]
        self.transport = transport
        self.fastlane_key = _fastlane_key(serializer)
        self.sid = sid
        self.token = token
        # Phoenix's LongPoll server stops when no poll came for 1.5 windows.
        self.idle_timeout = type(socket).longpoll_window * 1.5
        self._ended = trio.Event()
        self.started = trio.Event()

    @property
    def window(self) -> float:
        """How long a poll waits for messages."""
        return type(self.socket).longpoll_window

    # -- outbound: into the outbox ---------------------------------------------------------

    def _write(self, encoded: tuple[bool, bytes]) -> None:
        is_binary, data = encoded
        if is_binary:
            _throttled("binary", logging.WARNING, "a binary message cannot be sent over "
                       "LongPoll (phoenix.js reads only JSON there): dropped")
            return
        item = _literal(data)
        counters = self.counters
        counters.messages_out += 1
        counters.bytes_out += len(item)
        self.conn.write_nowait(item)

    def fastlane_frame(self, topic: str, event: str, payload: Any) -> bytes:
        ser = self.serializer
        try:
            is_binary, data = ser.encode_broadcast(topic, event, payload)
        except EncodeError as exc:
            log.warning("broadcast %r on %s cannot be sent with vsn %s: %s",
                        event, topic, ser.vsn, exc)
            return b""
        if is_binary:
            _throttled(("binary broadcast", topic), logging.WARNING,
                       "binary broadcast %r on %s cannot be sent over LongPoll: dropped for "
                       "LongPoll clients", event, topic)
            return b""
        return _literal(data)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, code: int, reason: str = "", end_reason: str = "closed") -> None:
        """End the session; a waiting poll gets what is queued, or 410."""
        if self.closing:
            return
        self.closing = True
        self.end_reason = end_reason
        self.close_code = code
        log.debug("closing LongPoll session %s of %s: %d %s", self.sid[:6], self.conn.peer,
                  code, reason)
        self._ended.set()
        waiter = self.conn.waiter
        if waiter is not None:
            waiter.wake(_GONE)

    def _slow_consumer(self, why: str) -> None:
        log.warning("slow consumer %s (LongPoll): %s; ending the session", self.conn.peer, why)
        self.counters.slow_consumers += 1
        self.endpoint.report_protection("slow_consumer", self.conn.peer)
        self.conn.cut()
        self.close(CLOSE_TRY_AGAIN_LATER, "slow consumer")

    def _mark(self, now: float) -> None:
        return None  # no kernel buffer to read back-pressure marks from

    async def run(self) -> None:
        try:
            id_sub = self._begin()
            try:
                with trio.CancelScope() as self._scope:
                    await self._wait_end()
            finally:
                await self._end(id_sub)
        finally:
            self.closing = True
            self._ended.set()
            if self.started is not None:  # it ended before it could start
                self.started.set()
            self.transport.forget(self)
            waiter = self.conn.waiter
            if waiter is not None:
                waiter.wake(_GONE)
            self.conn.abort()

    async def _wait_end(self) -> None:
        # No reading: POSTs call the frame handler. Wait for the end, then for the answer of
        # a poll it woke (a drain stops the connections right after the last session ends).
        if self.started is not None:
            self.started.set()
        await self._ended.wait()
        waiter = self.conn.waiter
        if waiter is not None:
            with trio.move_on_after(1.0):
                await waiter.done.wait()

    # -- the client's requests -------------------------------------------------------------

    async def poll(self, respond: Respond) -> None:
        """Answer a poll through ``respond(status, messages)``: at once with what is queued,
        else when messages come, else 204 after the window; 410 if the session ends. A newer
        poll of the same session answers this one 204 at once (one poll waits at a time)."""
        outbox = self.conn
        outbox.active = True
        poll = _Poll()
        try:
            if not outbox.items and not self.closing:
                old = outbox.waiter
                if old is not None:
                    old.wake(_SUPERSEDED)
                outbox.waiter = poll
                with trio.move_on_after(self.window):
                    await poll.event.wait()
                outbox.active = True
            if outbox.items and not self.closing and poll.outcome != _SUPERSEDED:
                await _gather(outbox)
            if poll.outcome == _SUPERSEDED:
                status, items = 204, []
            elif outbox.items:
                status, items = 200, outbox.take()
            elif self.closing:
                status, items = 410, []
            else:
                status, items = 204, []
            await respond(status, items)
        finally:
            if outbox.waiter is poll:
                outbox.waiter = None
            poll.done.set()

    async def receive(self, parts: list[tuple[bytes, bool]]) -> int:
        """Handle POSTed messages in order (``(data, is_binary)``); the POST's status."""
        if self.closing:
            return 410
        if self._posts >= MAX_POSTS:
            _throttled("posts", logging.WARNING, "LongPoll client %s has %d POSTs in flight: "
                       "answering 429", self.conn.peer, self._posts)
            return 429
        self._posts += 1
        lock = self._post_lock
        if lock is None:
            lock = self._post_lock = trio.StrictFIFOLock()
        # A push's age (max_push_age) counts from when its POST arrived if the POST had to
        # wait for another one; a pause for back-pressure sets it too (see _pause_reading).
        arrived = trio.current_time() if lock.locked() else None
        try:
            async with lock:
                self._backlog_since = arrived
                for data, binary in parts:
                    if self.closing:
                        break
                    size = len(data)
                    self.counters.bytes_in += size
                    if size > self.max_frame_size:
                        self._too_big(size)
                        break
                    await self._on_frame(data, binary)
        finally:
            self._posts -= 1
            if not self._posts:
                del self._post_lock
                self._backlog_since = None
        if self.closing:
            return _CLOSE_STATUS.get(self.close_code, 410)
        return 200


_FASTLANE_KEYS: dict[str, str] = {}


def _fastlane_key(serializer: Serializer) -> str:
    # A string per vsn (its hash is cached), never equal to a WebSocket key (a serializer).
    key = _FASTLANE_KEYS.get(serializer.vsn)
    if key is None:
        key = _FASTLANE_KEYS[serializer.vsn] = f"longpoll/{serializer.vsn}"
    return key


class _Forward:
    """A request forwarded to the node that owns its session, waiting for the answers."""

    __slots__ = ("acked", "answered", "reply")

    def __init__(self) -> None:
        self.acked = trio.Event()  # the owner answered at all
        self.answered = trio.Event()
        self.reply: dict[str, Any] | None = None


class _BadBody(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_body(body: bytes, content_type: str | None) -> list[tuple[bytes, bool]]:
    """The messages of a POST body: ``(data, is_binary)``.

    ``application/x-ndjson``: one message per line (``\\n`` or ``\\r\\n``; empty lines are
    skipped); a line starting with ``[`` (V2) or ``{`` (V1) is JSON text, any other is the
    base64 of a binary message. Anything else: the whole body is one text message.
    Raises :class:`_BadBody` (400 bad base64, 413 more than :data:`MAX_BATCH` lines).
    """
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-ndjson":
        return [(body, False)]
    parts: list[tuple[bytes, bool]] = []
    for line in body.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            continue
        if len(parts) >= MAX_BATCH:
            raise _BadBody(413, f"more than {MAX_BATCH} messages in one batch")
        if line[:1] in (b"[", b"{"):
            parts.append((line, False))
            continue
        try:
            parts.append((base64.b64decode(line, validate=True), True))
        except (binascii.Error, ValueError):
            raise _BadBody(400, "a line is neither JSON nor base64") from None
    return parts


class LongPollHost(Node, Protocol):
    """What the LongPoll transport needs of its endpoint: to admit and run sessions."""

    def admit(self, peer: tuple[str, int], what: str) -> None:
        """Raise :class:`~channels.http.HTTPError` 503 when no new session may start now
        (draining, ``max_connections``, the connection rate)."""

    def start_session(self, session: SocketSession, name: str) -> bool:
        """Run ``session`` among the node's sessions; False when the node does not serve."""

    def start_task(self, fn: Callable[..., Awaitable[object]], *args: object) -> bool:
        """Run ``fn(*args)`` alongside the connections; False when the node does not serve."""


class LongPoll:
    """The LongPoll transport of one endpoint: its sessions, tokens and cluster forwarding."""

    def __init__(self, endpoint: LongPollHost, sockets: Mapping[str, type[Socket]],
                 secret_key: str | bytes | None = None) -> None:
        self.endpoint = endpoint
        key: str | bytes | None = secret_key
        if key is None or key == "":
            key = os.environ.get(SECRET_ENV) or None
        #: True when no secret was given: a random one for this process (tokens of one node
        #: are then refused by the others, and by this node after a restart).
        self.secret_generated = key is None
        self.secret: bytes = secrets.token_bytes(32) if key is None else \
            key.encode() if isinstance(key, str) else bytes(key)
        #: ``<mount>/longpoll`` -> Socket class, for the sockets with ``longpoll = True``.
        self.paths = {mount + "/longpoll": cls for mount, cls in sockets.items()
                      if isinstance(cls, type) and getattr(cls, "longpoll", False)}
        self.sessions: dict[str, LongPollSession] = {}
        #: Plain-int counters: sessions started, refused; polls and posts served here for
        #: sessions of other nodes (``forwarded_in``) and sent to other nodes (``forwarded_out``).
        self.stats = {"started": 0, "refused": 0, "forwarded_in": 0, "forwarded_out": 0,
                      "forward_timeouts": 0}
        self._pending: dict[str, _Forward] = {}
        self._ids = itertools.count(1)
        self._topics: dict[str, str] = {}
        self._topic: str | None = None
        # Tokens verified lately -> (node, session id, expiry): each of a client's requests
        # carries the same token, and checking its signature is the larger part of routing it.
        self._verified: dict[str, tuple[str, str, float]] = {}

    # -- setup -------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Configuration errors (checked when the endpoint starts)."""
        if self.paths and len(self.secret) < MIN_SECRET_BYTES:
            return [f"secret_key (or {SECRET_ENV}) must be at least {MIN_SECRET_BYTES} bytes: "
                    f"it signs the LongPoll session tokens"]
        return []

    @property
    def node_name(self) -> str:
        return self.endpoint.pubsub.node_name

    def start(self) -> None:
        """Listen for requests forwarded by other nodes (the node's name is final now)."""
        pubsub = self.endpoint.pubsub
        if self._topic is not None:
            pubsub.unsubscribe(self._topic, self)
        self._topic = self.topic_for(self.node_name)
        pubsub.subscribe(self._topic, self)
        if self.paths and self.secret_generated and \
                not isinstance(pubsub.adapter, LocalAdapter):
            log.warning("LongPoll: no secret key given (Endpoint(secret_key=...) or %s), so "
                        "this node signs session tokens with a random key of its own: the "
                        "other nodes refuse them (LongPoll clients whose requests reach "
                        "another node start over again and again). Give every node the same "
                        "secret key.", SECRET_ENV)

    def topic_for(self, node: str) -> str:
        """The pubsub topic on which ``node`` takes forwarded LongPoll requests: derived from
        the secret, so clients cannot name it (nor join or broadcast to it)."""
        topic = self._topics.get(node)
        if topic is None:
            if len(self._topics) > 1000:
                self._topics.clear()
            mac = hmac.new(self.secret, b"longpoll topic\0" + node.encode(), hashlib.sha256)
            topic = self._topics[node] = "phx:lp:" + \
                base64.urlsafe_b64encode(mac.digest()[:18]).decode()
        return topic

    def forget(self, session: LongPollSession) -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]

    # -- tokens ------------------------------------------------------------------------------

    def sign(self, sid: str) -> bytes:
        return sign_token(self.secret, SALT, ["v1", self.node_name, sid],
                          max_age=TOKEN_MAX_AGE).encode("ascii")

    def resolve(self, token: Any) -> tuple[str, str] | None:
        """``(node, session id)`` from a valid token, else None (forged, expired, malformed)."""
        if not isinstance(token, str) or not token or len(token) > 1024:
            return None
        now = time.time()
        known = self._verified.get(token)
        if known is not None:
            if now < known[2]:
                return known[0], known[1]
            del self._verified[token]
        try:
            data = verify_token(self.secret, SALT, token, now=now)
        except TokenError:
            return None
        if isinstance(data, list) and len(data) == 3 and data[0] == "v1" and \
                isinstance(data[1], str) and isinstance(data[2], str):
            if len(self._verified) >= _VERIFIED_MAX:
                self._verified.clear()
            # valid until its signing time + max_age; a minute less, to be safe with clocks
            signed = _signed_at(token)
            self._verified[token] = (data[1], data[2],
                                     min(now + 60.0, signed + TOKEN_MAX_AGE - 60.0))
            return data[1], data[2]
        return None

    # -- HTTP --------------------------------------------------------------------------------

    async def handle(self, socket_cls: type[Socket], req: Request, conn: Connection,
                     h: h11.Connection) -> None:
        """Serve one request to ``<mount>/longpoll``."""
        origin = req.header("origin")
        if not http.origin_allowed(origin, socket_cls.check_origin, req.header("host")):
            _throttled(("origin", origin), logging.WARNING,
                       "refused LongPoll request from %s: origin %r is not allowed",
                       req.peer, origin)
            await _send_json(conn, h, _STATUS_403)
            return
        method = req.method
        if method == "GET":
            await self._get(socket_cls, req, conn, h)
        elif method == "POST":
            await self._post(req, conn, h)
        elif method == "OPTIONS":
            # CORS preflight, as Phoenix answers it (the origin was checked above).
            asked = ", ".join(v for k, v in req.headers if k == "access-control-request-headers")
            await http.send_response(conn, h, 200, b"", headers=[
                _CORS, ("access-control-allow-headers", asked),
                ("access-control-allow-methods", "get, post, options"),
                ("access-control-max-age", "3600")])
        else:
            await http.send_response(conn, h, 400, b"", headers=[_CORS])

    def _token(self, req: Request, params: dict[str, Any]) -> Any:
        return req.header(TOKEN_HEADER) or params.get("token")

    async def _get(self, socket_cls: type[Socket], req: Request, conn: Connection,
                   h: h11.Connection) -> None:
        params = http.parse_params(req.query)
        token = self._token(req, params)
        found = self.resolve(token)
        if found is not None:
            node, sid = found
            token_b = token.encode("ascii")

            async def respond(status: int, items: list[bytes]) -> None:
                body = _STATUS_410 if status == 410 else _poll_body(status, token_b, items)
                await _send_json(conn, h, body)

            if node == self.node_name:
                session = self.sessions.get(sid)
                if session is not None:
                    await session.poll(respond)
                    return
            else:
                reply = await self._forward(node, "poll", {"sid": sid}, socket_cls)
                if reply is None:  # the owner took the poll but did not answer in time
                    await respond(204, [])
                    return
                if not reply.get("gone"):  # (gone: a new session, as Phoenix does)
                    items = reply.get("messages")
                    if not (isinstance(items, list) and
                            all(isinstance(i, bytes) for i in items)):
                        items = []
                    status = reply.get("status")
                    await respond(status if status in (200, 204, 410) else 204, items)
                    return
        await self._new_session(socket_cls, req, conn, h, params)

    async def _post(self, req: Request, conn: Connection, h: h11.Connection) -> None:
        params = http.parse_params(req.query)
        found = self.resolve(self._token(req, params))
        if found is None:
            await _send_json(conn, h, _STATUS_410)
            return
        node, sid = found
        session = self.sessions.get(sid) if node == self.node_name else None
        if node == self.node_name and session is None:
            await _send_json(conn, h, _STATUS_410)
            return
        socket_cls = type(session.socket) if session is not None else None
        limit = MAX_BODY
        try:
            body = await http.read_body(conn, h, req, limit)
            parts = parse_body(body, req.header("content-type"))
        except HTTPError as exc:
            await _send_json(conn, h, b'{"status":%d}' % exc.status, exc.status, close=True)
            await http.close_lingering(conn)
            return
        except _BadBody as exc:
            _throttled(("bad body", exc.status), logging.WARNING,
                       "bad LongPoll POST from %s: %s (%d)", req.peer, exc, exc.status)
            await _send_json(conn, h, b'{"status":%d}' % exc.status, exc.status)
            return
        if session is not None:
            status = await session.receive(parts)
        else:
            reply = await self._forward(node, "post", {"sid": sid, "parts": parts}, socket_cls)
            if reply is None:
                status = 408  # the owner took it but did not answer in time
            elif reply.get("gone"):
                status = 410
            else:
                got = reply.get("status")
                status = got if isinstance(got, int) else 500
        if status in (200, 410):
            await _send_json(conn, h, _STATUS_200 if status == 200 else _STATUS_410)
        else:
            await _send_json(conn, h, b'{"status":%d}' % status, status)

    async def _new_session(self, socket_cls: type[Socket], req: Request, conn: Connection,
                           h: h11.Connection, params: dict[str, Any]) -> None:
        ep = self.endpoint
        ep.admit(req.peer, "LongPoll session")
        vsn = params.get("vsn")
        serializer = serializer_for_vsn(vsn) if vsn is None or isinstance(vsn, str) else None
        if serializer is None:
            log.warning("The client's requested transport version %r does not match the "
                        "supported versions (~> 1.0.0, ~> 2.0.0)", vsn)
            self.stats["refused"] += 1
            await _send_json(conn, h, _STATUS_403)
            return
        auth = req.header(AUTH_HEADER)
        connect_info = http.connect_info(req, auth)
        if auth is not None:  # the token is in auth_token: keep it out of logged headers
            connect_info["headers"][AUTH_HEADER] = "[FILTERED]"
            connect_info["x_headers"] = [(k, "[FILTERED]" if k == AUTH_HEADER else v)
                                         for k, v in connect_info["x_headers"]]
        socket = socket_cls(ep)
        try:
            result = await socket.connect(params, connect_info)
        except Refuse as exc:
            self.stats["refused"] += 1
            if exc.status == 403:
                await _send_json(conn, h, _STATUS_403)
                return
            # phoenix.js knows no other status here: a plain-text answer makes it retry.
            raise HTTPError(exc.status, exc.message) from None
        except Exception as exc:
            _throttled(("connect", socket_cls, type(exc), str(exc)[:100]), logging.ERROR,
                       "%s.connect raised", socket_cls.__name__, exc_info=exc)
            raise HTTPError(500) from None
        if isinstance(result, dict):
            socket.assigns.update(result)
        elif result is not True:
            self.stats["refused"] += 1
            await _send_json(conn, h, _STATUS_403)
            return
        sid = secrets.token_urlsafe(16)
        token = self.sign(sid)
        session = LongPollSession(ep, socket, serializer, sid, token, req.peer, self)
        if not ep.start_session(session, f"longpoll {req.peer}"):
            raise HTTPError(503, "server is shutting down")
        self.sessions[sid] = session
        self.stats["started"] += 1
        started = session.started
        assert started is not None
        await started.wait()
        del session.started  # the class default (None): an idle session does not keep it
        if session.closing:
            raise HTTPError(503, "server is shutting down")
        await _send_json(conn, h, _poll_body(410, token, []))

    # -- cluster: requests for sessions of other nodes --------------------------------------

    async def _forward(self, node: str, kind: str, payload: dict[str, Any],
                       socket_cls: type[Socket] | None) -> dict[str, Any] | None:
        """Send a poll or post to ``node``; its answer, ``{"gone": True}`` when it has no such
        session or does not answer within PUBSUB_TIMEOUT, None when it took the request but
        did not answer in time."""
        rid = f"{self.node_name}/{next(self._ids)}"
        fwd = self._pending[rid] = _Forward()
        self.stats["forwarded_out"] += 1
        window = (socket_cls or Socket).longpoll_window
        try:
            await self.endpoint.pubsub.direct_broadcast(
                node, self.topic_for(node), kind, {**payload, "id": rid, "from": self.node_name})
            with trio.move_on_after(PUBSUB_TIMEOUT):
                await fwd.acked.wait()
            if not fwd.acked.is_set():
                self.stats["forward_timeouts"] += 1
                return {"gone": True}
            # A POST may wait for back-pressure; a poll for its window.
            with trio.move_on_after(window + PUBSUB_TIMEOUT):
                await fwd.answered.wait()
            if fwd.reply is None:
                self.stats["forward_timeouts"] += 1
            return fwd.reply
        finally:
            del self._pending[rid]

    def deliver(self, topic: str, event: str, payload: Any, cache: dict[Any, Any]) -> None:
        """A direct message from another node: a request for one of our sessions, or the
        answer to one we forwarded."""
        if not isinstance(payload, dict):
            return
        rid = payload.get("id")
        if not isinstance(rid, str):
            return
        if event in ("ack", "reply", "gone"):
            fwd = self._pending.get(rid)
            if fwd is None:
                return  # answered too late
            fwd.acked.set()
            if event != "ack":
                fwd.reply = {"gone": True} if event == "gone" else payload
                fwd.answered.set()
        elif event in ("poll", "post"):
            origin, sid = payload.get("from"), payload.get("sid")
            if isinstance(origin, str) and isinstance(sid, str):
                self.endpoint.start_task(self._serve_forwarded, event, origin, rid, sid, payload)

    async def _serve_forwarded(self, kind: str, origin: str, rid: str, sid: str,
                               payload: dict[str, Any]) -> None:
        pubsub = self.endpoint.pubsub
        topic = self.topic_for(origin)

        async def answer(event: str, body: dict[str, Any]) -> None:
            await pubsub.direct_broadcast(origin, topic, event, {"id": rid, **body})

        self.stats["forwarded_in"] += 1
        session = self.sessions.get(sid)
        if session is None:
            await answer("gone", {})
            return
        await answer("ack", {})
        if kind == "poll":
            async def respond(status: int, items: list[bytes]) -> None:
                await answer("reply", {"status": status, "messages": items})

            await session.poll(respond)
            return
        raw = payload.get("parts")
        raw = raw if isinstance(raw, list) else []
        parts = [(item[0], item[1]) for item in raw
                 if isinstance(item, list | tuple) and len(item) == 2 and
                 isinstance(item[0], bytes) and isinstance(item[1], bool)]
        status = await session.receive(parts) if len(parts) == len(raw) else 400
        await answer("reply", {"status": status})


async def _send_json(conn: Connection, h: h11.Connection, body: bytes, status: int = 200,
                     *, close: bool = False) -> None:
    headers = [_CORS, ("cache-control", "no-store")]
    if close:
        headers.append(("connection", "close"))
    await http.send_response(conn, h, status, body, _JSON, headers)
