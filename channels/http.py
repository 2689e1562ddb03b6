"""The HTTP/1.1 front door: one port for WebSocket upgrades, health checks and static files.

h11 parses requests; the WebSocket handshake is answered here (the accept key is one SHA-1)
and the upgraded connection is handed to :class:`~channels.socket.SocketSession`, which
parses frames with :mod:`channels.wsframe`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import logging
import mimetypes
import re
import socket as stdsocket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

from channels.connection import Connection

log = logging.getLogger("channels.http")

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
AUTH_TOKEN_PREFIX = "base64url.bearer.phx."
HEADER_TIMEOUT = 10.0
MAX_HEADER_BYTES = 16 * 1024
#: A request body (read by handlers that take one, see :func:`read_body`) must arrive in time.
BODY_TIMEOUT = 10.0
#: After refusing an unread body: how long, and how much of it, to read and drop before closing.
LINGER_TIMEOUT = 2.0
LINGER_BYTES = 4 << 20

_REASONS = {
    200: b"OK", 204: b"No Content", 400: b"Bad Request", 401: b"Unauthorized",
    403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 426: b"Upgrade Required",
    429: b"Too Many Requests", 500: b"Internal Server Error", 503: b"Service Unavailable",
}


@dataclass(slots=True)
class Request:
    """A parsed HTTP request head."""

    method: str
    target: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    peer: tuple[str, int]
    host_port: tuple[str, int]
    _index: dict[str, str] = field(default_factory=dict)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The last value of header ``name`` (lower case), or ``default``."""
        if not self._index:
            self._index = dict(self.headers)
        return self._index.get(name, default)


class HTTPError(Exception):
    """An HTTP refusal: the front door answers ``status`` with ``message``."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message or _REASONS.get(status, b"Error").decode()


async def send_response(
    conn: Connection,
    h: h11.Connection,
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
    headers: list[tuple[str, str]] | None = None,
    *,
    head: bool = False,
) -> None:
    """Send a complete response and wait until it reached the kernel."""
    hdrs: list[tuple[str, str]] = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
    ]
    if headers:
        hdrs.extend(headers)
    data = h.send(h11.Response(status_code=status, headers=hdrs,
                               reason=_REASONS.get(status, b"")))
    if body and not head:
        data = (data or b"") + (h.send(h11.Data(data=body)) or b"")
    data = (data or b"") + (h.send(h11.EndOfMessage()) or b"")
    conn.write_nowait(data)
    await conn.drain(30.0)


async def next_event(h: h11.Connection, conn: Connection) -> Any:
    """The next h11 event, reading from ``conn`` as needed (``None`` at EOF)."""
    while True:
        event = h.next_event()
        if event is h11.NEED_DATA:
            data = await conn.receive_some()
            h.receive_data(data)
            if not data and h.their_state is not h11.DONE:
                event = h.next_event()
                return None if event is h11.NEED_DATA else event
            continue
        return event


def has_body(req: Request) -> bool:
    """Whether the request announced a body (a Content-Length above 0, or chunked)."""
    length = req.header("content-length")
    return req.header("transfer-encoding") is not None or \
        (length is not None and length.strip() not in ("", "0"))


async def read_body(conn: Connection, h: h11.Connection, req: Request, limit: int,
                    timeout: float = BODY_TIMEOUT) -> bytes:
    """The request's body, at most ``limit`` bytes, arriving within ``timeout`` seconds.

    Raises :class:`HTTPError` 413 when it is larger (at once when Content-Length says so, before
    a client waiting for ``100 Continue`` sends it), 408 when it is late and 400 when it is
    malformed or cut short. After an error the rest of the body is unread: answer with
    ``connection: close`` and :func:`close_lingering`.
    """
    length = req.header("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise HTTPError(413, f"request body larger than {limit} bytes")
    if h.they_are_waiting_for_100_continue:
        conn.write_nowait(h.send(h11.InformationalResponse(status_code=100, headers=[],
                                                         reason=b"Continue")) or b"")
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(timeout):
        while True:
            try:
                event = await next_event(h, conn)
            except h11.RemoteProtocolError as exc:
                raise HTTPError(400, f"malformed request body: {exc}") from None
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise HTTPError(413, f"request body larger than {limit} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:  # end of stream, or the connection closed
                raise HTTPError(400, "the request body ended early")
    raise HTTPError(408, f"the request body did not arrive within {timeout:g}s")


async def close_lingering(conn: Connection, timeout: float = LINGER_TIMEOUT,
                          limit: int = LINGER_BYTES) -> None:
    """Close after a response sent while the request body was unread: stop sending, then
    read and drop what the client still sends (at most ``limit`` bytes for ``timeout``
    seconds) before closing. Closing at once, with unread bytes, resets the connection, and a
    reset can destroy the response before the client reads it."""
    await conn.drain(timeout)
    with contextlib.suppress(OSError):
        conn.sock.shutdown(stdsocket.SHUT_WR)
    dropped = 0
    with trio.move_on_after(timeout):
        while dropped < limit:
            data = await conn.receive_some()
            if not data:
                break
            dropped += len(data)
    conn.abort()


S = TypeVar("S")

#: Answers one request: returns what to run on the connection once it upgraded (a session),
#: or None to serve the next request; raises :class:`HTTPError` to refuse.
Handler = Callable[[Request, Connection, h11.Connection], Awaitable[S | None]]


async def serve_http(
    handler: Handler[S], conn: Connection, host_port: tuple[str, int]
) -> S | None:
    """Serve HTTP requests on ``conn`` with ``handler`` until it closes, or until a request
    upgrades it (to a WebSocket): then what the handler returned for it is returned (so the
    HTTP parser's state can be freed first)."""
    h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    while True:
        event: Any = None
        with trio.move_on_after(HEADER_TIMEOUT):
            try:
                event = await next_event(h, conn)
            except h11.RemoteProtocolError as exc:
                log.info("bad HTTP request from %s: %s", conn.peer, exc)
                if h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await send_response(conn, h, exc.error_status_hint, b"bad request\n",
                                        headers=[("connection", "close")])
                return None
        if event is None:
            return None  # EOF, or the request head did not arrive in time (slowloris)
        if not isinstance(event, h11.Request):
            return None
        req = _make_request(event, conn.peer, host_port)
        try:
            session = await handler(req, conn, h)
        except HTTPError as exc:
            await send_response(conn, h, exc.status, (exc.message + "\n").encode(),
                                headers=[("connection", "close")])
            return None
        if session is not None:
            return session
        if conn.closed:  # the handler closed it (e.g. after refusing a request body)
            return None
        # Drain the request body (a GET has none; a handler may have read it) before the next
        # request.
        while h.their_state is not h11.DONE:
            try:
                ev = await next_event(h, conn)
            except h11.RemoteProtocolError:
                return None
            if ev is None or isinstance(ev, h11.EndOfMessage | h11.ConnectionClosed):
                break
            if ev is h11.PAUSED:
                return None
        if h.our_state is not h11.DONE or h.their_state is not h11.DONE:
            return None
        try:
            h.start_next_cycle()
        except h11.LocalProtocolError:
            return None


def _make_request(event: h11.Request, peer: tuple[str, int],
                  host_port: tuple[str, int]) -> Request:
    target = event.target.decode("latin-1")
    path, _, query = target.partition("?")
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
    return Request(event.method.decode("ascii"), target, unquote(path), query, headers,
                   peer, host_port)


def is_upgrade(req: Request) -> bool:
    connection = req.header("connection", "") or ""
    tokens = {t.strip().lower() for t in connection.split(",")}
    return "upgrade" in tokens and (req.header("upgrade", "") or "").lower() == "websocket"


def accept_websocket(
    conn: Connection, h: h11.Connection, req: Request, subprotocol: str | None
) -> bytes:
    """Answer 101 Switching Protocols; returns the bytes received after the request head."""
    key = (req.header("sec-websocket-key") or "").encode("ascii", "replace")
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode("ascii")
    headers = [("upgrade", "websocket"), ("connection", "Upgrade"),
               ("sec-websocket-accept", accept)]
    if subprotocol:
        headers.append(("sec-websocket-protocol", subprotocol))
    conn.write_nowait(h.send(h11.InformationalResponse(status_code=101, headers=headers)) or b"")
    return h.trailing_data[0]


def check_handshake(req: Request) -> None:
    """Raise :class:`HTTPError` unless ``req`` is a valid WebSocket upgrade request."""
    if req.method != "GET":
        raise HTTPError(400, "WebSocket upgrade requires GET")
    if not is_upgrade(req):
        raise HTTPError(400, "'connection' header must contain 'upgrade'")
    if req.header("sec-websocket-version") != "13":
        raise HTTPError(400, "unsupported Sec-WebSocket-Version (13 required)")
    key = req.header("sec-websocket-key") or ""
    try:
        ok = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        ok = False
    if not ok:
        raise HTTPError(400, "invalid Sec-WebSocket-Key")


def parse_subprotocols(req: Request) -> tuple[list[str], str | None]:
    """Offered subprotocols (without the auth token) and the decoded ``authToken``."""
    offered: list[str] = []
    token: str | None = None
    for name, value in req.headers:
        if name != "sec-websocket-protocol":
            continue
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item.startswith(AUTH_TOKEN_PREFIX) and token is None:
                token = _b64_decode_token(item[len(AUTH_TOKEN_PREFIX):])
            else:
                offered.append(item)
    return offered, token


def _b64_decode_token(data: str) -> str | None:
    # phoenix.js uses btoa (standard alphabet) with the padding stripped; accept url-safe too.
    padded = data + "=" * (-len(data) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        return raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def parse_params(query: str) -> dict[str, Any]:
    """Decode a query string like Plug: last value wins, ``a[b]=1`` nests into dicts."""
    params: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        head, sep, rest = key.partition("[")
        if not sep or not head:
            params[key] = value
            continue
        parts = [head, *_BRACKET.findall("[" + rest)]
        node = params
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return params


def origin_allowed(
    origin: str | None,
    allowed: bool | list[str] | tuple[str, ...] | None,
    host: str | None = None,
) -> bool:
    """Phoenix's ``check_origin`` for a request whose Host header is ``host``.

    A missing Origin header is allowed (not a browser). ``False`` allows everything; ``True``
    allows only the request's own host; ``None`` is ``True`` unless the request came to a
    loopback host. A list such as ``["https://a.com", "//*.b.com"]`` compares scheme, host and
    port only where an entry names them; ``*.`` matches the domain and its subdomains.
    """
    if allowed is False or origin is None:
        return True
    o = urlsplit(origin)
    if not o.hostname:  # "null" (sandboxed iframes, file://) and garbage
        return False
    if allowed is None or allowed is True:
        request_host = _hostname(host)
        if allowed is None and (request_host is None or _is_loopback(request_host)):
            return True
        return request_host is not None and o.hostname == request_host
    for item in allowed:
        a = urlsplit(item if "//" in item else "//" + item)
        if a.scheme and a.scheme != o.scheme:
            continue
        if a.port is not None and a.port != (o.port or _default_port(o.scheme)):
            continue
        pattern = a.hostname or ""
        if pattern.startswith("*."):
            base = pattern[2:]
            if o.hostname == base or o.hostname.endswith("." + base):
                return True
        elif pattern == o.hostname:
            return True
    return False


def _hostname(host: str | None) -> str | None:
    if not host:
        return None
    try:
        return urlsplit("//" + host).hostname
    except ValueError:
        return None


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(scheme)


async def serve_static(
    conn: Connection, h: h11.Connection, req: Request, file: Path
) -> None:
    """Send ``file`` (GET or HEAD)."""
    if req.method not in ("GET", "HEAD"):
        raise HTTPError(405)
    try:
        body = await trio.Path(file).read_bytes()
    except OSError as exc:
        raise HTTPError(404) from exc
    ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
        ctype += "; charset=utf-8"
    await send_response(conn, h, 200, body, ctype, [("cache-control", "no-cache")],
                        head=req.method == "HEAD")


def resolve_static(static: dict[str, Path], path: str) -> Path | None:
    """Map a URL path to a file under the ``static`` table, refusing path traversal."""
    if "\x00" in path:
        return None
    if path in static and static[path].is_file():
        return static[path]
    for prefix, root in static.items():
        if not prefix.endswith("/") or not path.startswith(prefix) or not root.is_dir():
            continue
        rel = path[len(prefix):] or "index.html"
        candidate = (root / rel).resolve()
        if not candidate.is_relative_to(root.resolve()):
            return None
        if candidate.is_dir():
            candidate = candidate / "index.html"
        if candidate.is_file():
            return candidate
    return None


def _mask_protocols(name: str, value: str) -> str:
    """Hide the authToken subprotocol (it is in ``auth_token``) so logging headers is safe."""
    if name != "sec-websocket-protocol" or AUTH_TOKEN_PREFIX not in value:
        return value
    return ", ".join("[FILTERED]" if p.strip().startswith(AUTH_TOKEN_PREFIX) else p.strip()
                     for p in value.split(","))


def connect_info(req: Request, token: str | None) -> dict[str, Any]:
    """What ``Socket.connect`` is told of the request (Phoenix's ``connect_info``)."""
    host_header = req.header("host") or f"{req.host_port[0]}:{req.host_port[1]}"
    host, _, port = host_header.rpartition(":") if ":" in host_header else (host_header, "", "")
    return {
        "peer_data": {"address": req.peer[0], "port": req.peer[1]},
        "uri": {"scheme": "http", "host": host or host_header,
                "port": int(port) if port.isdigit() else req.host_port[1],
                "path": req.path, "query": req.query},
        "user_agent": req.header("user-agent"),
        "origin": req.header("origin"),
        "x_headers": [(k, v) for k, v in req.headers if k.startswith("x-")],
        "trace_context_headers": [(k, v) for k, v in req.headers
                                  if k in ("traceparent", "tracestate")],
        "sec_websocket_headers": [(k, _mask_protocols(k, v)) for k, v in req.headers
                                  if k.startswith("sec-websocket-")],
        "headers": {k: _mask_protocols(k, v) for k, v in req.headers},
        "auth_token": token,
    }
