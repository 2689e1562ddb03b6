"""The client matrix: the latest release of each minor version of the OFFICIAL phoenix npm
client (1.3 to 1.8, npm aliases ``phoenix13`` … ``phoenix18`` in package.json) against one
trio-channels server process.

All selected (version, transport) cases run concurrently in ONE Node process
(``tests/js/matrix.mjs``), each with its own sockets and topics: connect, join, push/reply,
a broadcast to a second client, Presence (that release's own Presence code) with a meta
update and a leave, heartbeats every 200 ms, a server restart (SIGTERM drain with 1012, then
the same port again) with reconnect and rejoin, and leave. The per-aspect tests below assert
on what each client saw on the wire and through its callbacks.

Every release runs over WebSocket; 1.7 and 1.8 also over their own LongPoll transport
(``<mount>/longpoll``, see docs/guide.md#longpoll), through the same scenario: it sends no
heartbeats (phoenix.js skips them on LongPoll), and a drained session answers its waiting
poll 410 (session gone), which each release handles its own way (below).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.matrix.support import ROOT, run_lines
from tests.support.server import ServerProcess

APP = "tests.matrix.matrix_app:make_endpoint"
SCRIPT = ROOT / "tests" / "js" / "matrix.mjs"
NODE = shutil.which("node") or "/usr/bin/node"

#: minor version -> npm alias in package.json
VERSIONS = {"1.3": "phoenix13", "1.4": "phoenix14", "1.5": "phoenix15",
            "1.6": "phoenix16", "1.7": "phoenix17", "1.8": "phoenix18"}
#: minor version -> transports exercised
TRANSPORTS: dict[str, tuple[str, ...]] = {
    v: ("websocket", "longpoll") if v in ("1.7", "1.8") else ("websocket",) for v in VERSIONS}


@dataclass(frozen=True)
class Case:
    version: str
    transport: str

    @property
    def id(self) -> str:
        return f"{self.version}-{self.transport}"

    @property
    def pkg(self) -> str:
        return VERSIONS[self.version]

    @property
    def tag(self) -> str:  # as matrix.mjs derives topics and user ids from the id
        return "".join(c if c.isalnum() else "_" for c in self.id)

    @property
    def topic(self) -> str:
        return f"room:matrix_{self.tag}"


CASES = [Case(v, t) for v in VERSIONS for t in TRANSPORTS[v]]
OK_EMPTY: dict[str, Any] = {"status": "ok", "response": {}}


def locked_version(pkg: str) -> str:
    spec = json.loads((ROOT / "package.json").read_text())["dependencies"][pkg]
    assert spec.startswith("npm:phoenix@"), spec
    return str(spec.removeprefix("npm:phoenix@"))


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Run every case selected in this session in one Node process; results by case id."""
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")
              and "case" in item.callspec.params}
    cases = [c for c in CASES if c.id in wanted] or CASES
    server = ServerProcess(APP)
    server.start()
    restarts: list[int] = []
    try:
        def restart() -> None:
            port = server.port
            restarts.append(server.stop())  # SIGTERM: drain, close 1012
            server.start()
            assert server.port == port

        config = {
            "socket": f"ws://127.0.0.1:{server.port}/socket",
            "presence": f"ws://127.0.0.1:{server.port}/presence",
            "clients": [{"id": c.id, "pkg": c.pkg, "transport": c.transport} for c in cases],
        }
        started = time.monotonic()
        results = run_lines([NODE, str(SCRIPT), json.dumps(config)],
                            steps={"restart": restart}, timeout=90)
        elapsed = time.monotonic() - started
        yield {"results": results, "restarts": restarts, "elapsed": elapsed,
               "server_output": server.output}
    finally:
        server.kill()


def section(matrix: dict[str, Any], case: Case, name: str) -> Any:
    """The result section ``name`` of one client; fails with the client's error without it."""
    results = matrix["results"]
    assert "$error" not in results, results["$error"]
    out = results.get(case.id)
    assert out is not None, f"no result for {case.id}"
    got = out["result"].get(name)
    if got is None:
        events = "\n".join(json.dumps(e) for e in (out.get("events") or [])[-40:])
        pytest.fail(f"{case.id}: no {name!r} result: {out['error']}\nlast events:\n{events}\n"
                    f"server output (tail):\n{''.join(matrix['server_output'][-30:])}")
    return got


def reply(jr: str | None, ref: str, topic: str, status: str, response: Any) -> list[Any]:
    return [jr, ref, topic, "phx_reply", {"status": status, "response": response}]


params = pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)


@params
def test_loads_the_locked_release(matrix: dict[str, Any], case: Case) -> None:
    section(matrix, case, "connect")
    module = matrix["results"][case.id]["module"]
    assert module["name"] == "phoenix"
    assert module["version"] == locked_version(case.pkg)
    assert module["version"].startswith(case.version + ".")
    # up to 1.5 only the UMD bundle (require); from 1.6 the ES module (import)
    old = case.version in ("1.3", "1.4", "1.5")
    assert (module["kind"], module["file"]) == (
        ("cjs", f"node_modules/{case.pkg}/priv/static/phoenix.js") if old
        else ("esm", f"node_modules/{case.pkg}/priv/static/phoenix.mjs"))


@params
def test_connect_join_push_reply(matrix: dict[str, Any], case: Case) -> None:
    connected = section(matrix, case, "connect")
    urls = connected["urls"]
    port = urls["a"].split(":")[2].split("/")[0]
    assert urls["a"].startswith(f"ws://127.0.0.1:{port}/socket/websocket?")
    assert f"user_id=a_{case.tag}" in urls["a"] and "vsn=2.0.0" in urls["a"]
    assert urls["pa"].split("?")[0].endswith("/presence/websocket")
    if case.transport == "longpoll":  # LongPoll turns the socket's URL into its poll URL
        polls = connected["poll_urls"]
        assert polls["a"] == urls["a"].replace("ws://", "http://").replace("/websocket?",
                                                                            "/longpoll?")
        assert polls["pa"].startswith(f"http://127.0.0.1:{port}/presence/longpoll?")

    j = section(matrix, case, "join")
    topic = case.topic
    jr = j["a"]["join_ref"]
    assert (j["a"]["status"], j["a"]["response"]) == ("ok", {"joined": topic})
    assert (j["b"]["status"], j["b"]["response"]) == ("ok", {"joined": topic})
    assert j["sent_a"] == [jr, jr, topic, "phx_join", {"reply": True}]
    assert j["reply_a"] == reply(jr, jr, topic, "ok", {"joined": topic})

    p = section(matrix, case, "push")
    echo, payload = p["echo"], p["payload"]
    assert (echo["status"], echo["response"], echo["join_ref"]) == ("ok", payload, jr)
    assert p["echo_sent"] == [jr, echo["ref"], topic, "echo", payload]
    assert p["echo_reply"] == reply(jr, echo["ref"], topic, "ok", payload)
    assert (p["error"]["status"], p["error"]["response"]) == ("error", {"reason": "asked for it"})


@params
def test_broadcast_reaches_the_second_client(matrix: dict[str, Any], case: Case) -> None:
    b = section(matrix, case, "broadcast")
    assert (b["reply"]["status"], b["reply"]["response"]) == ("ok", {})
    assert b["b"] == b["a"] == {"from": "a", "n": 1}
    assert b["frame_b"] == [None, None, case.topic, "shout", {"from": "a", "n": 1}]


@params
def test_presence_sync(matrix: dict[str, Any], case: Case) -> None:
    p = section(matrix, case, "presence")
    # 1.3 has only the static Presence functions, 1.4+ the Presence(channel) instance API
    assert p["api"] == ("static" if case.version == "1.3" else "instance")
    for listed in (p["list_a"], p["list_b"]):
        assert sorted(listed) == ["alice", "bob"]
        for metas in listed.values():
            assert len(metas) == 1
            assert metas[0]["status"] == "online" and isinstance(metas[0]["phx_ref"], str)
    assert p["list_a"] == p["list_b"]
    # a meta update reaches the other client with its new phx_ref
    assert p["status"]["status"] == "ok"
    alice = p["after_update"]["alice"]
    assert len(alice) == 1 and alice[0]["status"] == "away"
    assert alice[0]["phx_ref"] == p["status"]["response"]["phx_ref"]
    assert alice[0]["phx_ref"] != p["list_a"]["alice"][0]["phx_ref"]
    # bob leaves his channel: alice's client drops him
    assert p["leave_b"] == "ok"
    assert sorted(p["after_leave"]) == ["alice"]
    assert "bob" in p["leaves_seen_by_a"]
    assert p["frames_b"][0] == "presence_state" and "presence_diff" in p["frames_b"]


@params
def test_heartbeats_are_answered(matrix: dict[str, Any], case: Case) -> None:
    h = section(matrix, case, "heartbeat")
    sent, replies = h["sent"], h["replies"]
    if case.transport == "longpoll":
        # phoenix.js sends no heartbeats over LongPoll (skipHeartbeat): polls keep the session
        assert h["skipped"] is True and sent == [] and replies == []
        assert (h["opens_a"], h["closes_a"]) == (1, 0)
        return
    assert h["skipped"] is False
    assert len(sent) >= 5 and len(replies) >= 5
    for hb in sent:
        assert hb[0] is None and hb[2:] == ["phoenix", "heartbeat", {}]
    assert len({hb[1] for hb in sent}) == len(sent)
    # every heartbeat answered, in order, with its own ref
    assert replies == [reply(None, hb[1], "phoenix", "ok", {}) for hb in sent[:len(replies)]]
    assert len(sent) - len(replies) <= 1  # at most the latest one still in flight
    assert (h["opens_a"], h["closes_a"]) == (1, 0)  # never timed out and reconnected


@params
def test_reconnect_and_rejoin_after_server_restart(matrix: dict[str, Any], case: Case) -> None:
    r = section(matrix, case, "restart")
    assert matrix["restarts"] == [0]
    if case.transport == "websocket":
        # the drain closes every socket with 1012; attempts while the server is down: 1006
        for who, codes in r["closes"].items():
            assert codes[0] == 1012 and set(codes[1:]) <= {1006}, (who, codes)
        assert r["opens"] == {"a": 2, "b": 2, "pa": 2, "pb": 2}
    elif case.version == "1.8":
        # the drain ends each session: its waiting poll gets 410, which 1.8 reports as
        # 3410 "session_gone"; attempts while the server is down or draining fail (1011)
        for who, codes in r["closes"].items():
            assert codes[0] == 3410 and set(codes[1:]) <= {1011}, (who, codes)
        assert r["opens"] == {"a": 2, "b": 2, "pa": 2, "pb": 2}
    else:
        # 1.7 takes a 410 for a new session (an "open" without one, a 1.7 bug that 1.8
        # fixed: Phoenix answers it the same), polls again, and the draining server's 503
        # closes it (1011; 1.7 reports some closes without a code); then it reconnects and
        # rejoins like the others
        for who, codes in r["closes"].items():
            assert codes and set(codes) <= {1011, None}, (who, codes)
        assert set(r["opens"].values()) <= {2, 3}, r["opens"]
    for who in ("a", "b"):
        first, second = r["join_refs"][who]
        assert first != second
        rejoin = r[f"rejoin_{who}"]
        assert (rejoin["status"], rejoin["response"]) == ("ok", {"joined": case.topic})
    assert (r["echo"]["status"], r["echo"]["response"]) == ("ok", {"after": "restart"})
    assert r["echo"]["join_ref"] == r["join_refs"]["a"][1]
    assert r["b"] == {"from": "a", "n": 2}
    # alice is tracked again by her rejoined channel (a new phx_ref); bob is gone
    assert sorted(r["presence"]) == ["alice"] and len(r["presence"]["alice"]) == 1
    assert r["rejoin_pa"]["status"] == "ok"
    # each rejoined channel errored when the connection dropped: once from 1.4 on; 1.3
    # triggers the error again on every failed reconnect attempt
    if case.version == "1.3":
        assert set(r["chan_errors"]) == {"chA", "chB", "chPA"}
    else:
        assert sorted(r["chan_errors"]) == ["chA", "chB", "chPA"]


@params
def test_leave(matrix: dict[str, Any], case: Case) -> None:
    rs = section(matrix, case, "restart")
    lv = section(matrix, case, "leave")
    jr, topic = rs["join_refs"]["a"][1], case.topic
    ref = lv["reply"]["ref"]
    assert (lv["reply"]["status"], lv["reply"]["response"]) == ("ok", {})
    assert lv["sent"] == [[jr, ref, topic, "phx_leave", {}]]
    assert reply(jr, ref, topic, "ok", {}) in lv["received"]
    assert [jr, jr, topic, "phx_close", {}] in lv["received"]
    assert lv["state"] == "closed"
    assert lv["a_after_leave"] == 0  # b's later broadcast no longer reaches a
