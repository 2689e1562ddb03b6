"""Structured logs: the JSON format, the access and join logs, masking, sampling, throttling."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from channels import Channel, Endpoint, Reply, Socket
from channels import logging as chlog
from channels.logutil import Sampler, Throttled
from tests.support.client import connect
from tests.support.server import ServerProcess

app_log = logging.getLogger("tests.app")


class LogChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        app_log.info("joining")
        return None

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        app_log.info("handling %s", event)
        if event == "boom":
            raise RuntimeError("boom on purpose")
        return Reply.ok()


class LogSocket(Socket):
    channels = {"room:*": LogChannel}

    async def connect(self, params: dict[str, Any],
                      connect_info: dict[str, Any]) -> bool | dict[str, Any]:
        return {"user": params.get("user")}

    def id(self) -> str | None:
        return f"user:{self.assigns['user']}" if self.assigns.get("user") else None


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Root logging in the JSON format into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_context = chlog.state.context
    buf = io.StringIO()
    chlog.configure(format="json", level="INFO", stream=buf)
    try:
        yield buf
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        chlog.state.context = saved_context


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    out = []
    for line in buf.getvalue().splitlines():
        obj = json.loads(line)  # every line is one JSON object
        assert isinstance(obj, dict)
        assert {"time", "level", "logger", "message"} <= obj.keys()
        out.append(obj)
    return out


async def test_json_lines_carry_the_connection_context(json_log: io.StringIO,
                                                       nursery: trio.Nursery) -> None:
    endpoint = Endpoint({"/socket": LogSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port, query="user=ada") as c:
        await c.join("room:a", "1", "1")
        await c.send("1", "2", "room:a", "hello", {})
        await c.recv_until("phx_reply")
        await c.send("1", "3", "room:a", "boom", {})
        await c.recv_until("phx_error")
    records = lines(json_log)
    assert records, "nothing logged"
    for r in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", r["time"])
    access = [r for r in records if r["logger"] == "channels.access"]
    assert len(access) == 1
    a = access[0]
    assert a["level"] == "INFO" and a["status"] == 101 and a["path"] == "/socket/websocket"
    assert a["socket"] == "LogSocket" and a["duration_ms"] >= 0
    assert a["peer"].startswith("127.0.0.1:") and isinstance(a["connection_id"], int)
    conn_id = a["connection_id"]

    [join] = [r for r in records if r["logger"] == "channels.join"]
    assert join["topic"] == "room:a" and join["channel"] == "LogChannel"
    assert join["status"] == "ok" and join["connection_id"] == conn_id
    assert join["message"].startswith("join room:a LogChannel ok ")

    app = [r for r in records if r["logger"] == "tests.app"]
    assert [r["message"] for r in app] == ["joining", "handling hello", "handling boom"]
    assert app[0]["topic"] == "room:a" and "event" not in app[0]
    for r in app:
        assert r["connection_id"] == conn_id and r["socket_id"] == "user:ada"
        assert r["topic"] == "room:a"
    assert app[1]["event"] == "hello" and app[2]["event"] == "boom"

    [crash] = [r for r in records if "crashed" in r["message"] and r["level"] == "ERROR"]
    assert "RuntimeError: boom on purpose" in crash["exception"]
    assert crash["topic"] == "room:a" and crash["event"] == "boom"
    assert crash["connection_id"] == conn_id


async def test_access_log_masks_tokens(json_log: io.StringIO, nursery: trio.Nursery) -> None:
    endpoint = Endpoint({"/socket": LogSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    auth = "base64url.bearer.phx." + base64.b64encode(b"sekrit-auth-token").decode().rstrip("=")
    async with connect(port, query="user=ada&token=sekrit-query-token&api_secret=s3&x[password]=p4",
                       subprotocols=["phoenix", auth]) as c:
        await c.join("room:a", "1", "1")
    text = json_log.getvalue()
    for secret in ("sekrit", "s3&", "p4", base64.b64encode(b"sekrit-auth-token").decode()[:12]):
        assert secret not in text
    [a] = [r for r in lines(json_log) if r["logger"] == "channels.access"]
    assert "token=[FILTERED]" in a["message"] and "api_secret=[FILTERED]" in a["message"]
    assert "x[password]=[FILTERED]" in a["message"] and "user=ada" in a["message"]


async def test_refused_connects_are_logged_with_their_status(
        caplog: pytest.LogCaptureFixture, nursery: trio.Nursery) -> None:
    from trio_websocket import ConnectionRejected

    endpoint = Endpoint({"/socket": LogSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    with caplog.at_level(logging.INFO, logger="channels.access"), \
            pytest.raises(ConnectionRejected):
        async with connect(port, vsn="9.9.9"):
            pass
    [r] = [r for r in caplog.records if r.name == "channels.access"]
    assert r.levelno == logging.INFO and r.status == 403  # type: ignore[attr-defined]
    assert " 403 " in r.getMessage() and r.pathname.endswith("endpoint.py")


def test_mask_query() -> None:
    assert chlog.mask_query("") == ""
    assert chlog.mask_query("vsn=2.0.0&Token=abc&authorization=x&user=a%20b") == \
        "vsn=2.0.0&Token=[FILTERED]&authorization=[FILTERED]&user=a%20b"


def test_text_format_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buf = io.StringIO()
    try:
        chlog.configure(stream=buf)
        logging.getLogger("channels.x").warning("plain %d", 1)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    assert re.fullmatch(r"\S+ \S+ WARNING channels.x: plain 1\n", buf.getvalue())
    with pytest.raises(ValueError):
        chlog.configure(format="xml")


def test_json_formatter_fields_and_odd_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # The formatter turns the log context on for the process: not for the tests after this.
    monkeypatch.setattr(chlog.state, "context", chlog.state.context)
    formatter = chlog.JsonFormatter()
    record = logging.LogRecord("a.b", logging.WARNING, __file__, 1, "x=%s", ("y",), None)
    record.big = 1 << 70  # orjson cannot: the formatter falls back
    record.obj = object()
    out = json.loads(formatter.format(record))
    assert out["message"] == "x=y" and out["logger"] == "a.b" and out["level"] == "WARNING"
    assert out["big"] == 1 << 70 and out["obj"].startswith("<object")
    try:
        raise ValueError("bad")
    except ValueError:
        import sys
        record = logging.LogRecord("a", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: bad" in json.loads(formatter.format(record))["exception"]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_sampler_keeps_under_its_rate_and_counts_what_it_skipped(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr("channels.logutil.time", clock)
    sampler = Sampler(logging.getLogger("tests.sampled"), rate=2)
    with caplog.at_level(logging.INFO, logger="tests.sampled"):
        for i in range(5):
            sampler("line %d", i)
        assert sampler.skipped == 3
        clock.now += 1.0
        sampler("line %d", 5)
    messages = [r.getMessage() for r in caplog.records if r.name == "tests.sampled"]
    assert messages == ["line 0", "line 1", "line 5 (3 lines skipped by sampling)"]
    assert caplog.records[-1].skipped == 3  # type: ignore[attr-defined]
    assert sampler.skipped == 0


def test_throttled_logs_repeats_once_per_interval(caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr("channels.logutil.time", clock)
    throttled = Throttled(logging.getLogger("tests.throttled"), interval=5.0)
    with caplog.at_level(logging.INFO, logger="tests.throttled"):
        for _ in range(4):
            throttled("a", logging.ERROR, "redis down: %s", "refused")
        throttled("b", logging.WARNING, "other")
        clock.now += 5.0
        throttled("a", logging.ERROR, "redis down: %s", "refused")
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages == [(logging.ERROR, "redis down: refused"), (logging.WARNING, "other"),
                        (logging.ERROR, "redis down: refused (3 similar messages suppressed)")]


async def test_cli_log_format_json_and_metrics_port() -> None:
    server = ServerProcess("tests.support.app:make_endpoint",
                           args=["--log-format", "json", "--metrics-port", "0"])
    await trio.to_thread.run_sync(server.start)
    try:
        async with connect(server.port, query="token=sekrit") as c:
            await c.join("room:cli", "1", "1")
        metrics_port = None
        for line in server.output:
            m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
            if m:
                metrics_port = int(m.group(1))
        assert metrics_port is not None, server.output
        from tests.test_metrics import http_get

        status, _, body = await http_get(metrics_port, "/metrics")
        assert status == 200 and b'channels_joins_total{channel="RoomChannel",status="ok"} 1.0' \
            in body
        code = await trio.to_thread.run_sync(server.stop)
        assert code == 0
    finally:
        server.kill()
    records = [json.loads(line) for line in server.output
               if not line.startswith("trio-channels: serving on")]
    assert any(r["logger"] == "channels.access" and r["status"] == 101 for r in records)
    assert not any("sekrit" in json.dumps(r) for r in records)
