"""Reaching a node from outside its process: the HTTP API, and the relay of the publisher.

**The HTTP API** (off unless API keys are configured: ``Endpoint(api_keys=[...])`` or the
environment variable ``TRIO_CHANNELS_API_KEYS``) serves, under ``/api``, with
``Authorization: Bearer <key>`` and JSON in and out:

* ``POST /api/broadcast`` ``{"topic", "event", "payload"}``: :meth:`Endpoint.broadcast`, so
  history positions and delivery to every node of the cluster apply;
* ``POST /api/disconnect`` ``{"id"}``: closes every connection whose ``Socket.id()`` is ``id``
  (a ``disconnect`` broadcast on that topic, on every node);
* ``GET /api/presence?topic=T``: who is present on ``T`` (``{key: {"metas": [...]}}``);
* ``GET /api/history?topic=T&since=N&epoch=E&limit=L``: the stored broadcasts of ``T`` after
  offset ``N`` (bounded).

Errors are ``{"error": "..."}`` with 401 (missing or wrong key), 400 (bad JSON, missing or
wrong fields), 404 (unknown route, no presence or history for it), 405 (wrong method), 408
(body too slow), 413 (body over ``max_body``), 503 (history store unreachable).

**The relay** takes what :class:`channels.publisher.Publisher` sends with ``relay=True`` to this
node alone (its direct Redis channel), and broadcasts it with :meth:`Endpoint.broadcast`: so a
publisher outside the cluster gets history positions, stored once, like any broadcast.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import h11
import orjson
import trio

from channels import http
from channels import logging as chlog
from channels.http import HTTPError, Request
from channels.logutil import Throttled
from channels.serializer import _JSONDecodeError, _loads, _widen

if TYPE_CHECKING:
    from channels.connection import Connection
    from channels.interfaces import Node
    from channels.pubsub import FrameCache

__all__ = [
    "API_KEYS_ENV",
    "INTERNAL_PREFIX",
    "MAX_BODY",
    "MAX_HISTORY_LIMIT",
    "RELAY_TOPIC",
    "HttpApi",
    "Relay",
    "parse_api_keys",
]

log = logging.getLogger("channels.api")
_throttled = Throttled(log)

#: The environment variable ``trio-channels serve`` reads API keys from (comma-separated).
API_KEYS_ENV = "TRIO_CHANNELS_API_KEYS"
#: Default largest request body, in bytes.
MAX_BODY = 1 << 20
#: At most this many history entries per request (and never more than the topic keeps).
MAX_HISTORY_LIMIT = 1000
DEFAULT_HISTORY_LIMIT = 100
#: Shortest API key accepted: a key is a secret, not a password.
MIN_KEY_LENGTH = 16
#: History reads give up after this many seconds (the store is unreachable: 503).
HISTORY_TIMEOUT = 5.0

#: The internal topic of relayed broadcasts: ``[node, topic, event, payload]`` (see
#: :class:`Relay`). Reserved, like ``phx_history`` and the presence topics.
RELAY_TOPIC = "phx_relay"
#: Topics the runtime uses between nodes (history, rooms, presence, the relay): the API and
#: the publisher refuse them.
INTERNAL_PREFIX = "phx_"


class ApiError(Exception):
    """A refused API request: answered ``status`` with ``{"error": reason}``."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


def parse_api_keys(value: str | Iterable[str]) -> list[str]:
    """API keys from a comma- (or whitespace-) separated string, or an iterable of keys.

    Raises ``ValueError`` for a key shorter than :data:`MIN_KEY_LENGTH` or with characters
    other than visible ASCII (no spaces, no commas): such a key cannot be sent as a bearer
    token reliably, or is too easy to guess.
    """
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    keys: list[str] = []
    for key in items:
        if not isinstance(key, str):
            raise ValueError(f"an API key must be a string, got {type(key).__name__}")
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"an API key must be at least {MIN_KEY_LENGTH} characters long "
                             f"(got one of {len(key)}); generate one with "
                             f"`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        if not all(33 <= ord(c) <= 126 and c != "," for c in key):
            raise ValueError("an API key must be visible ASCII without spaces or commas")
        if key not in keys:
            keys.append(key)
    return keys


Handler = Callable[[Request, Any], Awaitable[dict[str, Any]]]


class HttpApi:
    """The HTTP API of one endpoint (see the module docstring); made by
    :meth:`Endpoint.enable_api`."""

    def __init__(self, endpoint: Node, keys: Iterable[str], *, prefix: str = "/api",
                 max_body: int = MAX_BODY) -> None:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError("the API prefix must start with '/' and not end with one "
                             f"(got {prefix!r})")
        if max_body < 1:
            raise ValueError("max_body must be at least 1 byte")
        self.endpoint = endpoint
        self.prefix = prefix
        self.max_body = max_body
        #: A request body must arrive within this many seconds (else 408).
        self.body_timeout = http.BODY_TIMEOUT
        self._digests: list[bytes] = []
        self.add_keys(keys)
        # route -> (method, handler, takes a JSON body)
        self._routes: dict[str, tuple[str, Handler, bool]] = {
            "/broadcast": ("POST", self._broadcast, True),
            "/disconnect": ("POST", self._disconnect, True),
            "/presence": ("GET", self._presence, False),
            "/history": ("GET", self._history, False),
        }
        #: Requests answered, by status.
        self.responses: dict[int, int] = {}

    def add_keys(self, keys: str | Iterable[str]) -> None:
        """Accept these keys too (see :func:`parse_api_keys`)."""
        for key in parse_api_keys(keys):
            digest = hashlib.sha256(key.encode("ascii")).digest()
            if digest not in self._digests:
                self._digests.append(digest)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def authorized(self, req: Request) -> bool:
        """Whether the request carries one of the keys (compared in constant time: digests
        of equal length, every key compared, whatever matched)."""
        scheme, _, token = (req.header("authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(given, digest)
        return found

    # -- serving ------------------------------------------------------------------------------

    async def handle(self, req: Request, conn: Connection, h: h11.Connection) -> None:
        """Answer one request under the prefix (the endpoint's ``handle_http`` calls this)."""
        start = time.perf_counter()
        body_read = not http.has_body(req)
        headers: list[tuple[str, str]] = []
        try:
            if not self.authorized(req):
                _throttled(("401", req.peer[0]), logging.WARNING,
                           "API request from %s refused: missing or wrong API key (%s %s)",
                           req.peer[0], req.method, req.path)
                raise ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)",
                               [("www-authenticate", 'Bearer realm="trio-channels"')])
            route = self._routes.get(req.path[len(self.prefix):])
            if route is None:
                raise ApiError(404, f"no such API route: {req.path}")
            method, handler, takes_body = route
            if req.method != method:
                raise ApiError(405, f"{req.path} takes {method}, not {req.method}",
                               [("allow", method)])
            data: Any = None
            if takes_body:
                try:
                    raw = await http.read_body(conn, h, req, self.max_body,
                                               self.body_timeout)
                except HTTPError as exc:
                    raise ApiError(exc.status, exc.message) from None
                body_read = True
                data = _decode_json(raw)
            status, result = 200, await handler(req, data)
        except ApiError as exc:
            status, result, headers = exc.status, {"error": exc.reason}, exc.headers
        except Exception as exc:
            _throttled(("500", type(exc), str(exc)[:100]), logging.ERROR,
                       "API request %s %s failed", req.method, req.path, exc_info=exc)
            status, result = 500, {"error": "internal error (logged on the node)"}
        self.responses[status] = self.responses.get(status, 0) + 1
        # A body left unread (refused before or while reading it) ends the connection.
        close = not body_read
        body = _encode_json(result)
        headers = [*headers, ("cache-control", "no-store")]
        if close:
            headers.append(("connection", "close"))
        try:
            await http.send_response(conn, h, status, body, "application/json", headers,
                                     head=req.method == "HEAD")
        except h11.LocalProtocolError:  # the client already broke the exchange
            conn.abort()
            return
        finally:
            self._log(req, status, start)
        if close:
            await http.close_lingering(conn)

    def _log(self, req: Request, status: int, start: float) -> None:
        if chlog.access_log.enabled():
            duration = time.perf_counter() - start
            peer = f"{req.peer[0]}:{req.peer[1]}"
            chlog.access_log("api %s %s %s %d %.1fms", peer, req.method, req.path, status,
                             duration * 1000,
                             extra={"peer": peer, "path": req.path, "method": req.method,
                                    "status": status, "duration_ms": round(duration * 1000, 3)})

    # -- routes -------------------------------------------------------------------------------

    async def _broadcast(self, req: Request, data: Any) -> dict[str, Any]:
        fields = _object(data, required=("topic", "event"), optional=("payload",))
        topic = _string(fields, "topic")
        if topic.startswith(INTERNAL_PREFIX):
            raise ApiError(400, f"topics starting with {INTERNAL_PREFIX!r} are the runtime's own")
        event = _string(fields, "event")
        payload = fields.get("payload", {})
        if not isinstance(payload, dict):
            raise ApiError(400, "'payload' must be a JSON object")
        await self.endpoint.broadcast(topic, event, payload)
        return {"ok": True}

    async def _disconnect(self, req: Request, data: Any) -> dict[str, Any]:
        fields = _object(data, required=("id",), optional=())
        socket_id = _string(fields, "id")
        if socket_id.startswith(INTERNAL_PREFIX):
            raise ApiError(400, f"topics starting with {INTERNAL_PREFIX!r} are the runtime's own")
        await self.endpoint.broadcast(socket_id, "disconnect", {})
        return {"ok": True}

    async def _presence(self, req: Request, data: Any) -> dict[str, Any]:
        params = _query(req, required=("topic",), optional=())
        presence = self.endpoint.presence
        if presence is None:
            raise ApiError(404, "this endpoint has no presence")
        topic = params["topic"]
        return {"topic": topic, "presences": await presence.list(topic)}

    async def _history(self, req: Request, data: Any) -> dict[str, Any]:
        params = _query(req, required=("topic",), optional=("since", "epoch", "limit"))
        topic = params["topic"]
        service = self.endpoint.history
        config = service.config_for(topic) if service is not None else None
        if service is None or config is None:
            raise ApiError(404, f"no history for {topic!r}: its channel declares none")
        since = _int_param(params, "since", 0, 0, 2**63 - 1)
        limit = _int_param(params, "limit", min(DEFAULT_HISTORY_LIMIT, config.size), 1,
                           min(MAX_HISTORY_LIMIT, config.size))
        wanted_epoch = params.get("epoch")
        try:
            with trio.fail_after(HISTORY_TIMEOUT):
                epoch, top, entries = await service.store.since(topic, since, config, limit)
                if wanted_epoch is not None and wanted_epoch != epoch and since:
                    # Offsets of another epoch mean nothing in this one: from the oldest.
                    epoch, top, entries = await service.store.since(topic, 0, config, limit)
        except (Exception, trio.TooSlowError) as exc:
            _throttled(("history", topic), logging.WARNING,
                       "API history read of %s failed: %s", topic, exc)
            raise ApiError(503, "history unavailable (the store did not answer)") from None
        reason = _gap(wanted_epoch, epoch, since, top, entries)
        result: dict[str, Any] = {
            "topic": topic, "epoch": epoch, "top": top,
            "messages": [{"offset": e.offset, "event": e.event, "payload": e.payload,
                          "at": e.at} for e in entries],
            "complete": reason is None,
            "more": bool(entries) and entries[-1].offset < top,
        }
        if reason is not None:
            result["reason"] = reason
        return result


def _gap(wanted_epoch: str | None, epoch: str, since: int, top: int,
         entries: list[Any]) -> str | None:
    """Why ``entries`` do not start right after ``since`` (None when they do)."""
    if wanted_epoch is not None and wanted_epoch != epoch:
        return "epoch changed"
    if since > top:
        return "position ahead of the history"
    if since < top and (not entries or entries[0].offset != since + 1):
        return "position older than the history"
    return None


# -- request parsing ---------------------------------------------------------------------------

def _decode_json(raw: bytes) -> Any:
    if not raw.strip():
        raise ApiError(400, "the request body is empty: send a JSON object")
    try:
        return _loads(raw)
    except _JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def _object(data: Any, *, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name in required:
        if name not in data:
            raise ApiError(400, f"missing field {name!r}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r} (expected "
                            f"{', '.join(repr(n) for n in (*required, *optional))})")
    return data


def _string(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{name!r} must be a non-empty string")
    return value


def _query(req: Request, *, required: tuple[str, ...],
           optional: tuple[str, ...]) -> dict[str, str]:
    try:
        pairs = parse_qsl(req.query, keep_blank_values=True, strict_parsing=False,
                          errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the query string is not valid UTF-8") from None
    params = dict(pairs)
    unknown = sorted(set(params) - set(required) - set(optional))
    if unknown:
        raise ApiError(400, f"unknown query parameter {unknown[0]!r} (expected "
                            f"{', '.join(repr(n) for n in (*required, *optional))})")
    for name in required:
        if not params.get(name):
            raise ApiError(400, f"missing query parameter {name!r}")
    return params


def _int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit():
        raise ApiError(400, f"{name!r} must be a whole number")
    value = int(raw)
    if not low <= value <= high:
        raise ApiError(400, f"{name!r} must be between {low} and {high}")
    return value


def _encode_json(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        try:
            return orjson.dumps(_widen(value))  # integers beyond 64 bits, exactly
        except (orjson.JSONEncodeError, TypeError, ValueError):
            log.exception("API response is not JSON-serializable")
            return b'{"error":"the response is not JSON-serializable (logged on the node)"}'


# -- the relay -----------------------------------------------------------------------------------

class Relay:
    """Broadcasts, with :meth:`Endpoint.broadcast`, the messages a relaying publisher sent
    to this node (``[node, topic, event, payload]`` on :data:`RELAY_TOPIC`), one at a time
    in arrival order. A message naming another node is ignored, so exactly one node acts on
    each even if it reached several. At most ``max_queue`` wait; beyond that they are dropped
    and counted (the publisher learns nothing: delivery is at most once, as for any
    broadcast between nodes)."""

    def __init__(self, endpoint: Node, max_queue: int = 10_000) -> None:
        self.endpoint = endpoint
        self.max_queue = max_queue
        self._queue: deque[tuple[str, str, Any]] = deque()
        self._wakeup = trio.Event()
        self.relayed = 0
        self.dropped = 0
        self.ignored = 0  # malformed, or for another node

    def deliver(self, topic: str, event: str, payload: Any, cache: FrameCache) -> None:
        if not (isinstance(payload, list) and len(payload) == 4
                and isinstance(payload[1], str) and payload[1]
                and isinstance(payload[2], str) and payload[2]
                and isinstance(payload[3], dict | bytes)):
            self.ignored += 1
            _throttled("relay-malformed", logging.WARNING,
                       "malformed message on %s ignored", RELAY_TOPIC)
            return
        node, target, ev, data = payload
        if node != self.endpoint.pubsub.node_name:
            self.ignored += 1
            return
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            _throttled("relay-full", logging.WARNING,
                       "relay queue full (%d): dropping a published broadcast on %s",
                       self.max_queue, target)
            return
        self._queue.append((target, ev, data))
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        pubsub = self.endpoint.pubsub
        pubsub.subscribe(RELAY_TOPIC, self)
        try:
            task_status.started()
            queue = self._queue
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while queue:
                    topic, event, payload = queue.popleft()
                    try:
                        await self.endpoint.broadcast(topic, event, payload)
                        self.relayed += 1
                    except Exception as exc:
                        _throttled(("relay", type(exc)), logging.ERROR,
                                   "relaying %r on %s failed", event, topic, exc_info=exc)
        finally:
            pubsub.unsubscribe(RELAY_TOPIC, self)

    def stats(self) -> dict[str, int]:
        return {"relayed": self.relayed, "dropped": self.dropped, "ignored": self.ignored,
                "queued": len(self._queue)}
