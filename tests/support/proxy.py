"""A small HTTP/1.1 reverse proxy for tests, in a thread: what sits between browsers and
nodes in production.

* ``backends=[a, b]`` with ``round_robin=True`` sends each request to the next node, so one
  client's requests alternate between nodes (no sticky sessions);
* ``websocket="refuse"`` answers WebSocket upgrades 403 and ``"hang"`` never answers them,
  as proxies that block WebSockets do; everything else is forwarded.

Every request is forwarded on a fresh backend connection and read whole (fine for JSON polls
and the chat page's files); the client side keeps its connection alive.
"""

from __future__ import annotations

import http.client
import itertools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
              "te", "trailer", "content-length"}


class Proxy:
    def __init__(self, backends: Sequence[int], *, round_robin: bool = True,
                 websocket: str = "refuse") -> None:
        self.backends = list(backends)
        self.round_robin = round_robin
        self.websocket = websocket
        #: (method, path, backend port, status) of every forwarded request
        self.log: list[tuple[str, str, int, int]] = []
        self.upgrades: list[str] = []  # paths of refused or hung WebSocket upgrades
        self._next = itertools.cycle(range(len(self.backends)))
        self._lock = threading.Lock()
        self._hung: list[Any] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _forward(self) -> None:
                if (self.headers.get("upgrade") or "").lower() == "websocket":
                    proxy.upgrades.append(self.path)
                    if proxy.websocket == "hang":
                        proxy._hung.append(self.connection)
                        threading.Event().wait(60)
                        return
                    body = b"websockets are blocked here\n"
                    self.send_response(403)
                    self.send_header("content-length", str(len(body)))
                    self.send_header("connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    port = proxy.backends[next(proxy._next) if proxy.round_robin else 0]
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in HOP_BY_HOP}
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError:
                    self.send_error(502)
                    return
                finally:
                    conn.close()
                proxy.log.append((self.command, self.path, port, resp.status))
                try:
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP_BY_HOP:
                            self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except OSError:  # the client went away (a page that reloaded or closed)
                    self.close_connection = True

            do_GET = do_POST = do_OPTIONS = do_PUT = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for sock in self._hung:
            try:
                sock.close()
            except OSError:
                pass


@contextmanager
def running_proxy(backends: Sequence[int], **kwargs: Any) -> Iterator[Proxy]:
    proxy = Proxy(backends, **kwargs)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
