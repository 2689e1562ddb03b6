"""A raw LongPoll client for tests: HTTP/1.1 (h11) over trio sockets, no HTTP library.

:class:`HTTP` is one keep-alive connection; :class:`LongPollClient` speaks Phoenix's
LongPoll exchange as phoenix.js does (one connection for polls, one for POSTs), with every
answer kept raw (status, headers, body) so tests can assert on the exact wire.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import h11
import trio


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HTTP:
    """One HTTP/1.1 keep-alive connection to ``host:port`` (opened on first use, reopened
    when the server closed it)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.h: h11.Connection | None = None
        self.requests = 0

    async def _open(self) -> None:
        self.stream = await trio.open_tcp_stream(self.host, self.port)
        self.h = h11.Connection(h11.CLIENT)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: Iterable[tuple[str, str]] = (), timeout: float = 20.0,
                      raw_body: bool = False) -> Response:
        headers = list(headers)
        reused = self.stream is not None
        try:
            return await self._request(method, target, body, headers, timeout, raw_body)
        except (ConnectionError, trio.BrokenResourceError, h11.RemoteProtocolError):
            if not reused:
                raise
            # the server closed the idle keep-alive connection: once more on a new one, as
            # HTTP clients do
            await self.aclose()
            return await self._request(method, target, body, headers, timeout, raw_body)

    async def _request(self, method: str, target: str, body: bytes,
                       headers: list[tuple[str, str]], timeout: float,
                       raw_body: bool) -> Response:
        with trio.fail_after(timeout):
            if self.stream is None or self.h is None or self.h.our_state is not h11.IDLE:
                await self.aclose()
                await self._open()
            assert self.stream is not None and self.h is not None
            h = self.h
            hdrs = [("host", f"{self.host}:{self.port}"), *headers]
            if method in ("POST", "PUT") and not raw_body and \
                    not any(k.lower() == "content-length" for k, _ in hdrs):
                hdrs.append(("content-length", str(len(body))))
            data = h.send(h11.Request(method=method, target=target, headers=hdrs))
            if body:
                data += h.send(h11.Data(data=body)) if not raw_body else body
            if not raw_body:
                data += h.send(h11.EndOfMessage())
            await self.stream.send_all(data)
            self.requests += 1
            status = 0
            resp_headers: dict[str, str] = {}
            chunks: list[bytes] = []
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    try:
                        h.receive_data(await self.stream.receive_some(65536))
                    except (trio.BrokenResourceError, OSError) as exc:
                        raise ConnectionError(str(exc)) from exc
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    resp_headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):  # pragma: no cover
                    raise ConnectionError("the server closed the connection")
            if h.our_state is h11.DONE and h.their_state is h11.DONE:
                h.start_next_cycle()
            else:
                await self.aclose()
            return Response(status, resp_headers, b"".join(chunks))


def frame(join_ref: Any, ref: Any, topic: str, event: str, payload: Any) -> bytes:
    return json.dumps([join_ref, ref, topic, event, payload], separators=(",", ":")).encode()


class LongPollClient:
    """A LongPoll client: ``await c.connect()``, then ``post``/``poll``; ``messages`` keeps
    every decoded message polled so far (V2 arrays, or V1 objects)."""

    def __init__(self, port: int, path: str = "/socket/longpoll", query: str = "vsn=2.0.0",
                 headers: Iterable[tuple[str, str]] = (), post_port: int | None = None) -> None:
        self.path = path
        self.query = query
        self.headers = list(headers)
        self.poller = HTTP(port)
        self.poster = HTTP(post_port or port)
        self.token: str | None = None
        self.messages: list[Any] = []
        self.responses: list[Response] = []

    def target(self, token: str | None = None) -> str:
        tok = token if token is not None else self.token
        query = self.query + (f"&token={quote(tok)}" if tok else "")
        return f"{self.path}?{query}" if query else self.path

    async def aclose(self) -> None:
        await self.poller.aclose()
        await self.poster.aclose()

    async def get(self, token: str | None = None, timeout: float = 20.0,
                  via: HTTP | None = None) -> Response:
        resp = await (via or self.poller).request("GET", self.target(token),
                                                   headers=self.headers, timeout=timeout)
        self.responses.append(resp)
        return resp

    async def connect(self) -> dict[str, Any]:
        """Start a session; its answer (status 410 with the token, or 403)."""
        resp = await self.get(token="")
        body = resp.json()
        if body.get("token"):
            self.token = body["token"]
        return dict(body)

    async def poll(self, timeout: float = 20.0, via: HTTP | None = None) -> dict[str, Any]:
        resp = await self.get(timeout=timeout, via=via)
        body = resp.json()
        for m in body.get("messages") or []:
            self.messages.append(json.loads(m))
        return dict(body)

    async def post(self, *messages: bytes | str, ndjson: bool = True,
                   content_type: str | None = None, via: HTTP | None = None,
                   token: str | None = None) -> Response:
        lines = [m.encode() if isinstance(m, str) else m for m in messages]
        body = b"\n".join(lines)
        ctype = content_type or ("application/x-ndjson" if ndjson else "application/json")
        return await (via or self.poster).request(
            "POST", self.target(token), body, headers=[("content-type", ctype), *self.headers])

    async def push(self, join_ref: Any, ref: Any, topic: str, event: str,
                   payload: Any) -> dict[str, Any]:
        return dict((await self.post(frame(join_ref, ref, topic, event, payload))).json())

    async def push_binary(self, data: bytes) -> dict[str, Any]:
        return dict((await self.post(base64.b64encode(data))).json())

    async def until(self, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """Poll until a message matching ``pred`` arrived (it is returned)."""
        with trio.fail_after(timeout):
            seen = 0
            while True:
                for m in self.messages[seen:]:
                    if pred(m):
                        return m
                seen = len(self.messages)
                body = await self.poll()
                if body.get("status") not in (200, 204):
                    raise AssertionError(f"poll answered {body}")

    async def reply(self, ref: Any, timeout: float = 10.0) -> Any:
        """The phx_reply to ``ref`` (V2)."""
        return await self.until(lambda m: isinstance(m, list) and m[3] == "phx_reply"
                                and m[1] == ref, timeout)

    async def join(self, topic: str, payload: Any | None = None, join_ref: str = "1",
                   ref: str | None = None) -> Any:
        ref = ref or join_ref
        answer = await self.push(join_ref, ref, topic, "phx_join", payload or {})
        assert answer == {"status": 200}, answer
        return await self.reply(ref)
