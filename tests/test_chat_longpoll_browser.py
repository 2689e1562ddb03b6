"""The chat example in headless Chromium with WebSockets blocked (tests/browser/chat_longpoll.mjs):
pages behind a proxy that refuses WebSocket upgrades, or never answers them, fall back to
LongPoll (phoenix.js ``longPollFallbackMs``, set by the chat page as by Phoenix's generated
apps) and chat with a page whose WebSocket works, which stays on it.

Needs Node, ``npm ci`` (phoenix, playwright-core) and Debian's Chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support.proxy import running_proxy
from tests.support.server import ROOT, running_server
from tests.test_chat_browser import CHROMIUM, _check_prerequisites, _node

SCRIPT = ROOT / "tests/browser/chat_longpoll.mjs"


def test_blocked_websockets_fall_back_to_longpoll(tmp_path: Path) -> None:
    node = _node()
    _check_prerequisites()
    with running_server("examples.chat.app:endpoint") as server, \
            running_proxy([server.port], websocket="refuse") as refusing, \
            running_proxy([server.port], websocket="hang") as hanging:
        proc = subprocess.run(
            [node, str(SCRIPT), f"http://127.0.0.1:{server.port}/",
             f"http://127.0.0.1:{refusing.port}/", f"http://127.0.0.1:{hanging.port}/"],
            cwd=ROOT, env={**os.environ, "CHROMIUM_PATH": CHROMIUM}, text=True,
            capture_output=True, timeout=120, check=False)
        report = (f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
                  f"server:\n{''.join(server.output[-60:])}")
        lines = proc.stdout.strip().splitlines()
        assert lines, report
        result: dict[str, Any] = json.loads(lines[-1])
        assert result["ok"] is True and proc.returncode == 0, report
        assert result["problems"] == [], report
        refused, hung = list(refusing.upgrades), list(hanging.upgrades)
        refusing_log = list(refusing.log)

    t = result["transports"]
    # a working WebSocket stays a WebSocket (the fallback timer and health check passed)
    assert t["alice"] == {"transport": "WebSocket", "connected": True, "remembered": None}
    # a refused upgrade: LongPoll at once; a hanging one: LongPoll after longPollFallbackMs
    assert t["bob"] == {"transport": "LongPoll", "connected": True, "remembered": "true"}
    assert t["carol"] == {"transport": "LongPoll", "connected": True, "remembered": "true"}
    assert result["carol_online_after_ms"] >= 2500
    # a reload remembers the fallback: no WebSocket attempt, only LongPoll requests
    assert t["bob_reloaded"] == {"transport": "LongPoll", "connected": True,
                                 "remembered": "true"}
    assert result["bob_requests_after_reload"] == ["GET /socket/longpoll",
                                                   "POST /socket/longpoll"]
    assert len(refused) == 1 and refused[0].startswith("/socket/websocket?vsn=2.0.0")
    assert len(hung) == 1
    # bob's LongPoll requests went through the proxy, all answered 200 (statuses are in JSON)
    polls = [(m, status) for m, path, _, status in refusing_log if "/longpoll" in path]
    assert {m for m, _ in polls} == {"GET", "POST"}
    assert {status for _, status in polls} == {200}

    said = [{"user": "Alice", "body": "Hi Bob, I am on a WebSocket"},
            {"user": "Bob", "body": "Hi Alice, I am on LongPoll 👋"},
            *[{"user": "Bob", "body": f"burst {i}"} for i in range(1, 6)],
            {"user": "Carol", "body": "Carol here, also on LongPoll"},
            {"user": "Bob", "body": "Back after a reload"}]
    for who in ("alice", "bob", "carol"):
        got = [m for m in result[who] if "user" in m]
        assert got == said, (who, got)
    assert result["online_bob"]["people"][1] == {"name": "Bob", "tabs": 1, "me": True,
                                                 "nodes": None}
