"""Conformance: the OFFICIAL phoenix npm client (1.8.16, ``ws`` as its Node WebSocket)
against a trio-channels server running as a separate OS process.

Each test runs ``node tests/js/scenario.mjs <scenario> <ws-url>``. The script records every
frame sent and received on the wire and every client callback (onOpen/onClose/onError,
join and push receive hooks, channel.on), prints ``RESULT:<json>`` and exits; the test
asserts on the concrete frames and values. Mid-scenario server actions (a restart) are
coordinated through ``READY:<step>`` lines on stdout and a ``go`` line on stdin.
The behaviours follow the Phoenix protocol as docs/guide.md describes it.
"""

from __future__ import annotations

import base64
import json
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerProcess, running_server

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "js" / "scenario.mjs"
NODE = shutil.which("node") or "/usr/bin/node"
APP = "tests.support.js_app:make_endpoint"
OK: dict[str, Any] = {"status": "ok", "response": {}}
#: Bound on one scenario run; the script's own watchdog (20 s) fires first.
RUN_TIMEOUT = 30.0

Frame = list[Any]


def run_js(scenario: str, server: ServerProcess,
           steps: dict[str, Callable[[], None]] | None = None) -> dict[str, Any]:
    """Run one scenario to completion and return its result object.

    ``steps`` maps a ``READY:<name>`` line to the action to take before answering ``go``.
    """
    url = f"ws://127.0.0.1:{server.port}/socket"
    proc = subprocess.Popen([NODE, str(SCRIPT), scenario, url], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    lines: queue.Queue[str | None] = queue.Queue()
    stderr: list[str] = []
    other: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def pump_err() -> None:
        assert proc.stderr is not None
        stderr.extend(proc.stderr)

    threading.Thread(target=pump, daemon=True).start()
    threading.Thread(target=pump_err, daemon=True).start()

    def fail(why: str) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        pytest.fail(f"{scenario}: {why}\nstdout: {other}\nstderr: {''.join(stderr)}\n"
                    f"server output (tail):\n{''.join(server.output[-40:])}")

    try:
        while True:
            try:
                line = lines.get(timeout=RUN_TIMEOUT)
            except queue.Empty:
                fail(f"no output for {RUN_TIMEOUT} s")
                raise AssertionError("unreachable") from None
            if line is None:
                fail(f"exited ({proc.wait(10)}) without a RESULT line")
                raise AssertionError("unreachable")
            if line.startswith("READY:"):
                name = line.removeprefix("READY:")
                if not steps or name not in steps:
                    fail(f"unexpected step {name!r}")
                assert steps is not None
                steps[name]()
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            elif line.startswith("RESULT:"):
                out = json.loads(line.removeprefix("RESULT:"))
                rc = proc.wait(10)
                if not out.get("ok") or rc != 0:
                    fail(f"scenario failed (exit {rc}): {out.get('error')}\n"
                         f"events: {json.dumps(out.get('events'), indent=None)}")
                result: dict[str, Any] = out["result"]
                return result
            else:
                other.append(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One server for every scenario that does not disturb the others (distinct topics)."""
    with running_server(APP) as srv:
        yield srv


def reply_frame(jr: str | None, ref: str, topic: str, status: str, response: Any) -> Frame:
    return [jr, ref, topic, "phx_reply", {"status": status, "response": response}]


# -- join / push / reply -------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpr(server: ServerProcess) -> dict[str, Any]:
    return run_js("join_push_reply", server)


def test_join_push_reply(jpr: dict[str, Any]) -> None:
    r = jpr
    topic = "room:jpr"
    jr = r["join"]["join_ref"]
    assert r["join"]["status"] == "ok"
    assert r["join"]["response"] == {"joined": topic}
    # the join frame: join_ref == ref; the reply echoes both
    assert r["sent"][0] == [jr, jr, topic, "phx_join", {"reply": True}]
    assert r["received"][0] == reply_frame(jr, jr, topic, "ok", {"joined": topic})
    # the after_join push carries the join_ref and a null ref; the broadcast is fastlaned
    assert r["joined"]["payload"] == {"status": "connected", "user_id": "u1"}
    assert r["joined"]["join_ref"] == jr
    assert [jr, None, topic, "joined", {"status": "connected", "user_id": "u1"}] in r["received"]
    assert [None, None, topic, "user_entered", {"user": "u1"}] in r["received"]

    payload = {"a": 1, "nested": {"b": [1, "two", None]}}
    echo = r["echo"]
    assert (echo["status"], echo["response"], echo["join_ref"]) == ("ok", payload, jr)
    assert [jr, echo["ref"], topic, "echo", payload] in r["sent"]
    assert reply_frame(jr, echo["ref"], topic, "ok", payload) in r["received"]

    assert (r["error"]["status"], r["error"]["response"]) == ("error", {"reason": "asked for it"})
    assert (r["later"]["status"], r["later"]["response"]) == ("ok", {"later": True})
    assert r["assigns"]["response"] == {"user_id": "u1", "join_ref": jr}
    # a push the server does not answer times out on the client, and no reply was sent
    assert r["noreply"]["status"] == "timeout"
    assert not [f for f in r["received"] if f[3] == "phx_reply" and f[1] == r["noreply"]["ref"]]
    assert r["opens"] == 1 and r["closes"] == []


def test_only_v2_is_spoken(jpr: dict[str, Any], server: ServerProcess) -> None:
    """phoenix.js asks for vsn 2.0.0 by default and speaks V2 arrays both ways, never V1."""
    assert jpr["url"] == f"ws://127.0.0.1:{server.port}/socket/websocket?user_id=u1&vsn=2.0.0"
    assert jpr["protocols"] is None  # no authToken: no subprotocol offered
    for frame in jpr["sent"] + jpr["received"]:
        assert isinstance(frame, list) and len(frame) == 5, frame


# -- broadcast -----------------------------------------------------------------------------


def test_broadcast_between_two_clients(server: ServerProcess) -> None:
    r = run_js("broadcast", server)
    topic = "room:bc"
    ja, jb = r["join_refs"]["ca"], r["join_refs"]["cb"]
    # broadcast reaches both; broadcast_from ({"n": 2}) skips the sender
    assert r["shouts"]["ca"] == [{"n": 1}, {"n": 3}]
    assert r["shouts"]["cb"] == [{"n": 1}, {"n": 2}, {"n": 3}]
    # fastlaned broadcasts have null join_ref and ref
    assert [None, None, topic, "shout", {"n": 1}] in r["frames_b"]
    assert [None, None, topic, "shout", {"n": 2}] in r["frames_b"]
    # the intercepted new_msg is pushed per socket by handle_out, with that socket's join_ref
    for chan, jr in (("ca", ja), ("cb", jb)):
        [msg] = r["new_msg"][chan]
        assert msg["payload"] == {"body": "hi", "transport": "websocket"}
        assert msg["join_ref"] == jr and msg["ref"] is None
    assert [jb, None, topic, "new_msg", {"body": "hi", "transport": "websocket"}] in r["frames_b"]
    # a joined client sees later joiners' after_join broadcast
    assert r["user_entered_a"] == [{"user": "a"}, {"user": "b"}]


# -- heartbeat -----------------------------------------------------------------------------


def test_heartbeats_keep_the_connection(server: ServerProcess) -> None:
    r = run_js("heartbeat", server)
    hbs, replies = r["heartbeats"], r["replies"]
    assert len(replies) >= 15 and len(hbs) >= 15
    for hb in hbs:
        assert hb[0] is None and hb[2:] == ["phoenix", "heartbeat", {}]
    assert len({hb[1] for hb in hbs}) == len(hbs)
    # each heartbeat answered, in order, with the same ref
    assert replies[:15] == [[None, hb[1], "phoenix", "phx_reply", OK] for hb in hbs[:15]]
    # the connection was never dropped or re-established, the channel never errored
    assert (r["opens"], r["closes"], r["sock_errors"], r["connect_attempts"]) == (1, 0, 0, 1)
    assert r["chan_errors"] == 0
    assert isinstance(r["rtt"], int | float)  # socket.ping() round trip
    assert (r["echo"]["status"], r["echo"]["response"]) == ("ok", {"still": "here"})


# -- channel lifecycle ---------------------------------------------------------------------


def test_refused_join_is_retried(server: ServerProcess) -> None:
    r = run_js("join_retry", server)
    topic = "room:retry"
    assert [(j["status"], j["response"]) for j in r["joins"]] == [
        ("error", {"reason": "not yet"}), ("error", {"reason": "not yet"}), ("ok", {})]
    jrs = [j["join_ref"] for j in r["joins"]]
    assert len(set(jrs)) == 3
    joins = [f for f in r["sent"] if f[3] == "phx_join"]
    assert joins == [[jr, jr, topic, "phx_join", {"refuse_until": 3}] for jr in jrs]
    assert r["received"][:3] == [
        reply_frame(jrs[0], jrs[0], topic, "error", {"reason": "not yet"}),
        reply_frame(jrs[1], jrs[1], topic, "error", {"reason": "not yet"}),
        reply_frame(jrs[2], jrs[2], topic, "ok", {}),
    ]
    assert r["state"] == "joined"
    assert (r["echo"]["status"], r["echo"]["join_ref"]) == ("ok", jrs[2])
    assert r["sent"][-1] == [jrs[2], r["echo"]["ref"], topic, "echo", {"after": "retry"}]


def test_crashed_channel_rejoins_with_new_join_ref(server: ServerProcess) -> None:
    r = run_js("crash_rejoin", server)
    topic = "room:crash"
    first, second = r["first_join_ref"], r["second_join_ref"]
    assert first != second
    assert [first, first, topic, "phx_error", {"reason": "channel_crash"}] in r["received"]
    assert r["error"]["reason"] == {"reason": "channel_crash"}
    assert (r["chan_errors"], r["chan_closes"], r["state"]) == (1, 0, "joined")
    # the crashing push carried the old join_ref; everything after the rejoin the new one
    sent = r["sent"]
    assert sent[0] == [first, first, topic, "phx_join", {}]
    assert sent[1][0] == first and sent[1][3] == "boom"
    assert sent[2] == [second, second, topic, "phx_join", {}]
    assert all(f[0] == second for f in sent[2:])
    assert reply_frame(second, second, topic, "ok", {}) in r["received"]
    # the server routes by the new join_ref
    assert r["assigns"]["response"] == {"user_id": None, "join_ref": second}
    assert (r["echo"]["status"], r["echo"]["response"]) == ("ok", {"after": "crash"})
    assert [p["join_ref"] for p in r["joined_pushes"]] == [first, second]
    assert not [f for f in r["received"]
                if f[3] == "phx_reply" and f[4]["response"] == {"reason": "unmatched topic"}]


def test_server_close_is_not_rejoined(server: ServerProcess) -> None:
    r = run_js("server_close", server)
    topic = "room:stop"
    jr = r["join_ref"]
    assert (r["stop"]["status"], r["stop"]["response"]) == ("ok", {"stopping": True})
    received = r["received"]
    reply = received.index(reply_frame(jr, r["stop"]["ref"], topic, "ok", {"stopping": True}))
    close = received.index([jr, jr, topic, "phx_close", {}])
    you_left = received.index([jr, None, topic, "you_left", {"message": "bye"}])
    assert reply < close < you_left
    assert r["closed"]["reason"] == {}
    assert (r["state"], r["channels_left"], r["chan_errors"]) == ("closed", 0, 0)
    assert r["you_left_delivered"] == 0  # the client had dropped the channel already
    assert [f for f in r["sent"] if f[3] == "phx_join"] == [[jr, jr, topic, "phx_join", {}]]


def test_second_channel_instance_on_same_topic(server: ServerProcess) -> None:
    r = run_js("duplicate_channel", server)
    topic = "room:dup"
    j1, j2 = r["j1"], r["j2"]
    assert j1 != j2
    sent = r["sent"]
    assert sent[0] == [j1, j1, topic, "phx_join", {"which": 1}]
    assert sent[1][0] == j1 and sent[1][2:] == [topic, "phx_leave", {}]
    assert sent[2] == [j2, j2, topic, "phx_join", {"which": 2}]
    assert sent[3] == [j2, r["echo"]["ref"], topic, "echo", {"from": "c2"}]
    received = r["received"]
    assert reply_frame(j1, sent[1][1], topic, "ok", {}) in received
    assert [j1, j1, topic, "phx_close", {}] in received
    assert reply_frame(j2, j2, topic, "ok", {}) in received
    assert (r["c1closed"]["reason"], r["c1_state"]) == ("leave", "closed")
    # the new instance saw no stray close or error and works
    assert (r["c2_state"], r["c2_closes"], r["c2_errors"]) == ("joined", 0, 0)
    assert r["channels"] == [j2]
    assert [e["join_ref"] for e in r["c2_joined"]] == [j2]
    assert (r["echo"]["status"], r["echo"]["response"]) == ("ok", {"from": "c2"})


def test_pushes_buffered_before_join_reply(server: ServerProcess) -> None:
    r = run_js("buffered", server)
    topic = "room:buf"
    jr = r["join_ref"]
    assert r["order"] == ["open", "push3:joining", "join:ok",
                          "reply:ok:1", "reply:ok:2", "reply:ok:3"]
    sent = r["sent"]
    assert sent[0] == [jr, jr, topic, "phx_join", {}]
    assert [f[4] for f in sent[1:]] == [{"n": 1}, {"n": 2}, {"n": 3}]
    refs = [int(f[1]) for f in sent[1:]]
    assert all(f[0] == jr and f[3] == "echo" for f in sent[1:])
    assert int(jr) < refs[0] < refs[1] < refs[2]
    assert [(x["status"], x["response"], x["join_ref"]) for x in r["replies"]] == [
        ("ok", {"n": n}, jr) for n in (1, 2, 3)]
    assert r["received"][0] == reply_frame(jr, jr, topic, "ok", {})


# -- binary --------------------------------------------------------------------------------


def _b(*parts: str | bytes) -> str:
    return b"".join(p.encode() if isinstance(p, str) else p for p in parts).hex()


def test_binary_push_reply_and_broadcast(server: ServerProcess) -> None:
    r = run_js("binary", server)
    topic = "room:bin"
    jr = r["join_ref"]
    assert r["binary_type"] == "arraybuffer"
    reply, pushed, bcast = r["reply"], r["pushed"], r["bcast"]
    # client -> server: kind 0, 5-byte header, raw ArrayBuffer payload
    ev1, ev2 = "binary_event", "bin_broadcast"
    ref1, ref2 = reply["ref"], r["bcast_reply"]["ref"]
    assert r["sent"] == [
        {"$bin": _b(bytes([0, len(jr), len(ref1), len(topic), len(ev1)]), jr, ref1, topic, ev1,
                    b"\x01\x02")},
        {"$bin": _b(bytes([0, len(jr), len(ref2), len(topic), len(ev2)]), jr, ref2, topic, ev2,
                    b"\x09\x08\x07")},
    ]
    # server -> client: reply (kind 1), push (kind 0), broadcast (kind 2)
    assert r["received"] == [
        {"$bin": _b(bytes([1, len(jr), len(ref1), len(topic), 2]), jr, ref1, topic, "ok",
                    b"\x01\x02\x03\x04")},
        {"$bin": _b(bytes([0, len(jr), len(topic), len(ev1)]), jr, topic, ev1, b"\x00\x01")},
        {"$bin": _b(bytes([2, len(topic), 3]), topic, "bin", b"\x09\x08\x07")},
    ]
    # and what the client made of them
    assert (reply["status"], reply["response"], reply["is_array_buffer"]) == (
        "ok", {"$bin": "01020304"}, True)
    assert (pushed["payload"], pushed["is_array_buffer"], pushed["join_ref"]) == (
        {"$bin": "0001"}, True, jr)
    assert (bcast["payload"], bcast["is_array_buffer"]) == ({"$bin": "090807"}, True)
    assert (r["bcast_reply"]["status"], r["bcast_reply"]["response"]) == ("ok", {})


# -- socket options and server-initiated closes --------------------------------------------


def test_auth_token_option(server: ServerProcess) -> None:
    r = run_js("auth_token", server)
    token = "tok=?"
    encoded = base64.b64encode(token.encode()).decode().rstrip("=")
    assert r["offered"] == ["phoenix", f"base64url.bearer.phx.{encoded}"]
    assert r["protocol"] == "phoenix"  # the server selected "phoenix", or ws would refuse
    response = r["join"]["response"]
    assert r["join"]["status"] == "ok"
    assert response["auth_token"] == token
    assert response["params"] == {"user_id": "t1", "vsn": "2.0.0"}
    assert response["path"] == "/socket/websocket"
    # a token connect() refuses: the upgrade fails, the socket never opens
    assert r["bad_opens"] == 0 and r["bad_errors"] >= 1


def test_disconnect_broadcast_closes_and_client_reconnects(server: ServerProcess) -> None:
    r = run_js("disconnect", server)
    assert (r["close"]["code"], r["close"]["reason"]) == (1001, "disconnected")
    assert r["closes"] == [1001]
    assert r["opens"] == 2
    first, second = r["first_join_ref"], r["second_join_ref"]
    assert first != second
    assert r["joins_sent"] == [[first, first, "room:dc", "phx_join", {}],
                               [second, second, "room:dc", "phx_join", {}]]
    assert [e["reason"] for e in r["chan_errors"]] == [
        {"source": "transport", "reason": "connection_closed"}]
    assert r["assigns"]["response"] == {"user_id": "dc1", "join_ref": second}
    # another user's socket is untouched
    other = r["other"]
    assert (other["opens"], other["closes"], other["echo"]["status"]) == (1, 0, "ok")


def test_server_restart_client_reconnects_and_rejoins() -> None:
    with running_server(APP) as srv:
        port = srv.port
        exit_codes: list[int] = []

        def restart() -> None:
            exit_codes.append(srv.stop())  # SIGTERM: drain, close 1012
            srv.start()  # same port

        r = run_js("restart", srv, steps={"restart": restart})
        assert srv.port == port
    assert exit_codes == [0]
    assert r["go"] == "go"
    assert r["closes"][0] == 1012
    assert r["opens"] == 2
    first, second = r["first_join_ref"], r["second_join_ref"]
    assert first != second
    assert (r["before"]["status"], r["before"]["response"]) == ("ok", {"n": "before"})
    assert (r["after"]["status"], r["after"]["response"]) == ("ok", {"n": "after"})
    assert r["assigns"]["response"] == {"user_id": "rs", "join_ref": second}
