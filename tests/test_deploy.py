"""deploy/nginx.conf works in front of a real node (docs/howto/deploy.md): nginx (Debian's
nginx-light; ./scripts/test installs it) with a test certificate for chat.example.com on
loopback ports, the tutorial's app behind it. Pages and the history helper over HTTPS, HTTP
redirected, WebSocket upgrades with the Host the node's check_origin needs, LongPoll, the
HTTP API blocked, and a drain's close code 1012 reaching the client through the proxy.

deploy/trio-channels.service is checked with systemd-analyze when it is installed."""

from __future__ import annotations

import datetime
import http.client
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)

from docs.examples.tutorial.app import user_token
from tests.support.server import ROOT, ServerProcess, running_server

HOST = "chat.example.com"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def site_config(node_port: int, http_port: int, https_port: int, cert: Path, key: Path) -> str:
    """deploy/nginx.conf with this test's ports and certificate; the API's loopback
    exception removed, so the test (on loopback) sees it blocked."""
    site = (ROOT / "deploy/nginx.conf").read_text()
    for old, new in [
        ("server 127.0.0.1:4000;", f"server 127.0.0.1:{node_port};"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        (f"/etc/letsencrypt/live/{HOST}/fullchain.pem", str(cert)),
        (f"/etc/letsencrypt/live/{HOST}/privkey.pem", str(key)),
        ("        allow 127.0.0.1;\n", ""),
    ]:
        assert site.count(old) == 1, f"deploy/nginx.conf no longer has {old!r}"
        site = site.replace(old, new)
    return re.sub(r"^\s*listen \[::\]:\d+.*\n", "", site, flags=re.M)


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[ServerProcess, int, int, ssl.SSLContext]]:
    if not Path(NGINX).is_file():
        pytest.fail("nginx is missing: run ./scripts/test (it installs nginx-light)")
    cert, key = _certificate(tmp_path)
    http_port, https_port = _free_port(), _free_port()
    with running_server("docs.examples.tutorial.app:endpoint") as server:
        (tmp_path / "site.conf").write_text(
            site_config(server.port, http_port, https_port, cert, key))
        (tmp_path / "nginx.conf").write_text(f"""
            worker_processes 1;
            pid {tmp_path}/nginx.pid;
            error_log {tmp_path}/error.log warn;
            events {{ worker_connections 256; }}
            http {{
                access_log off;
                client_body_temp_path {tmp_path}/body;
                proxy_temp_path {tmp_path}/proxy;
                include {tmp_path}/site.conf;
            }}
        """)
        check = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c",
                                str(tmp_path / "nginx.conf")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                                  "-g", "daemon off;"], stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
                    break
                except OSError:
                    assert nginx.poll() is None and time.monotonic() < deadline, (
                        "nginx did not start: " + (tmp_path / "error.log").read_text())
                    time.sleep(0.05)
            context = ssl.create_default_context(cafile=str(cert))
            yield server, http_port, https_port, context
        finally:
            nginx.send_signal(signal.SIGQUIT)
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()


def _https(port: int, context: ssl.SSLContext, method: str, target: str,
           body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=20)
    conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20),
                                    server_hostname=HOST)
    conn.request(method, target, body=body, headers={"Host": HOST})
    resp = conn.getresponse()
    result = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return result


class WS:
    """A WebSocket through the proxy with wsproto, as a browser on https://chat.example.com
    opens it (Host, Origin, TLS with SNI)."""

    def __init__(self, port: int, context: ssl.SSLContext, origin: str, token: str) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=HOST)
        self.ws = WSConnection(ConnectionType.CLIENT)
        target = f"/socket/websocket?vsn=2.0.0&token={token}"
        self.sock.sendall(self.ws.send(Request(host=HOST, target=target,
                                               extra_headers=[(b"origin", origin.encode())])))
        self.status = 0
        self.close_code: int | None = None
        while not self.status:
            self.ws.receive_data(self.sock.recv(65536))
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.status = 101
                elif isinstance(event, RejectConnection):
                    self.status = event.status_code

    def send(self, message: list[Any]) -> None:
        self.sock.sendall(self.ws.send(TextMessage(json.dumps(message))))

    def recv(self) -> list[Any] | None:
        """The next message, or None once the server closed (code in ``close_code``)."""
        while True:
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    result: list[Any] = json.loads(event.data)
                    return result
                if isinstance(event, CloseConnection):
                    self.close_code = event.code
                    return None
            data = self.sock.recv(65536)
            if not data:
                return None
            self.ws.receive_data(data)


def test_nginx_in_front_of_a_node(
        proxied: tuple[ServerProcess, int, int, ssl.SSLContext]) -> None:
    server, http_port, https_port, context = proxied

    # plain HTTP is redirected to HTTPS
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    conn.request("GET", "/?board=lobby", headers={"Host": HOST})
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("location")) == (301, f"https://{HOST}/?board=lobby")

    # pages, the history helper and health over HTTPS
    status, _, body = _https(https_port, context, "GET", "/")
    assert status == 200 and b"<title>Q&amp;A board</title>" in body
    status, headers, _ = _https(https_port, context, "GET", "/trio-channels/history.js")
    assert status == 200 and "javascript" in headers["content-type"]
    assert _https(https_port, context, "GET", "/healthz")[:1] == (200,)
    assert _https(https_port, context, "GET", "/readyz")[:1] == (200,)

    # the HTTP API is not reachable from outside the private network
    status, _, body = _https(https_port, context, "POST", "/api/broadcast", b"{}")
    assert status == 403 and b"nginx" in body  # nginx's own page: the node never saw it

    # a WebSocket from the site's own origin gets through; check_origin refuses another one,
    # which shows the proxy forwards the Host header (without it every origin would pass)
    token = user_token("ada")
    assert WS(https_port, context, "https://evil.example", token).status == 403
    ws = WS(https_port, context, f"https://{HOST}", token)
    assert ws.status == 101
    ws.send(["1", "1", "qa:nginx", "phx_join", {}])
    reply = ws.recv()
    assert reply is not None and reply[3] == "phx_reply" and reply[4]["status"] == "ok"
    ws.send([None, "2", "phoenix", "heartbeat", {}])
    while (message := ws.recv()) is not None and message[1] != "2":
        pass  # presence_state and the like
    assert message is not None and message[4]["status"] == "ok"

    # LongPoll through the proxy: a new session answers 410 with its token
    status, _, body = _https(https_port, context, "GET",
                             f"/socket/longpoll?vsn=2.0.0&token={token}")
    assert status == 200 and json.loads(body)["status"] == 410, body
    session = json.loads(body)["token"]
    status, _, body = _https(https_port, context, "POST",
                             f"/socket/longpoll?vsn=2.0.0&token={session}",
                             json.dumps(["1", "1", "qa:longpoll", "phx_join", {}]).encode())
    assert status == 200 and json.loads(body)["status"] == 200, body
    status, _, body = _https(https_port, context, "GET",
                             f"/socket/longpoll?vsn=2.0.0&token={session}")
    poll = json.loads(body)
    assert poll["status"] == 200 and any("phx_reply" in str(m) for m in poll["messages"]), poll

    # a drain (SIGTERM) closes the client with 1012 through the proxy: phoenix.js reconnects
    assert server.stop() == 0
    while ws.recv() is not None:
        pass
    assert ws.close_code == 1012


def test_systemd_unit() -> None:
    unit = (ROOT / "deploy/trio-channels.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert settings["KillSignal"] == "SIGTERM" and settings["KillMode"] == "mixed"
    # above the drain timeout (30 s) plus the CLI's own grace (5 s; --workers: 10 s)
    assert int(settings["TimeoutStopSec"]) > 30 + 10
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # not every machine has systemd's tools
        return
    proc = subprocess.run([analyze, "verify", str(ROOT / "deploy/trio-channels.service")],
                          capture_output=True, text=True, timeout=60)
    problems = [line for line in proc.stderr.splitlines()
                if line.strip() and "/srv/app/.venv/bin/trio-channels" not in line]
    assert not problems, proc.stderr
