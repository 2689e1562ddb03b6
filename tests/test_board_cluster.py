"""The kanban board on a two-node cluster: two ``trio-channels serve`` processes (board-a,
board-b) sharing a private redis-server, as ``./scripts/board-cluster`` runs them (but on free
ports). A board's room lives on one node, its snapshot in Redis.

* One Chromium page per node edits the same board at the same time, then the node owning the
  board stops and starts again, the other node restarts, the pages reload: both pages always
  end with the same board, and nothing acknowledged is lost (tests/browser/board_cluster.mjs).
* Over raw WebSockets: a change acknowledged by the room survives a kill -9 of its node.

Needs redis-server, Node, ``npm ci`` and Debian's Chromium (``./scripts/test`` installs them);
a missing piece fails the tests rather than skipping them. The timeouts below bound waits;
they are not timing assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from tests.cluster.redis_server import RedisServer
from tests.support.client import RawClient, connect
from tests.support.server import ROOT, ServerProcess
from tests.test_board_browser import CHROMIUM, check_prerequisites, node_executable

APP = "examples.board.app:endpoint"
V2 = "2.0.0"
SCRIPT = ROOT / "tests/browser/board_cluster.mjs"
NODES = ("board-a", "board-b")
#: board_cluster.mjs has its own 180 s watchdog; this only catches a wedged node process.
NODE_TIMEOUT = 240


@dataclass
class BoardCluster:
    redis: RedisServer
    nodes: dict[str, ServerProcess]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.nodes[name].port}/"

    def owner(self, board_id: str) -> str | None:
        """The node whose room holds the board now (from its owner lease in Redis)."""
        value = self.redis.command("GET", f"trio_channels:room:Board:{board_id}:owner")
        if not isinstance(value, bytes):
            return None
        holder = value.decode().rpartition("|")[0]
        return holder.rpartition("/")[0]

    def output(self) -> str:
        return "".join(f"--- {name} ---\n{''.join(node.output)}"
                       for name, node in self.nodes.items())


@contextmanager
def board_cluster() -> Iterator[BoardCluster]:
    with RedisServer() as redis:
        nodes = {name: ServerProcess(APP, args=["--redis-url", redis.url, "--node-name", name])
                 for name in NODES}
        try:
            for node in nodes.values():
                node.start()
            yield BoardCluster(redis, nodes)
        finally:
            for node in nodes.values():
                node.kill()


# -- Chromium, one page per node ----------------------------------------------------------------


class Restarter:
    """Answers the script's requests to stop, start and restart nodes."""

    def __init__(self, cluster: BoardCluster, board_id: str) -> None:
        self.cluster = cluster
        self.board_id = board_id
        self.stopped: str | None = None
        self.log: list[str] = []

    def __call__(self, what: str) -> dict[str, Any]:
        nodes = self.cluster.nodes
        if what == "stop-owner":
            owner = self.cluster.owner(self.board_id)
            if owner not in nodes:
                return {"error": f"the board's owner is {owner!r}"}
            code = nodes[owner].stop()
            self.log.append(f"stopped {owner} (exit {code})")
            if code != 0:
                return {"error": f"{owner} exited with {code} on SIGTERM"}
            self.stopped = owner
            return {"stopped": owner}
        if what == "start-stopped":
            if self.stopped is None:
                return {"error": "no node is stopped"}
            nodes[self.stopped].start()
            self.log.append(f"started {self.stopped}")
            started, self.stopped = self.stopped, None
            return {"started": started}
        if what == "restart-non-owner":
            owner = self.cluster.owner(self.board_id)
            if owner not in nodes:
                return {"error": f"the board's owner is {owner!r}"}
            other = next(name for name in nodes if name != owner)
            nodes[other].restart()
            self.log.append(f"restarted {other} (owner {owner})")
            return {"restarted": other, "owner": owner}
        return {"error": f"unknown request {what!r}"}


def run_script(cluster: BoardCluster, board_id: str, screenshot: Path) -> tuple[dict[str, Any], str]:
    """Run board_cluster.mjs, answering its requests; its result and a report for failures."""
    node = node_executable()
    restarter = Restarter(cluster, board_id)
    proc = subprocess.Popen(
        [node, str(SCRIPT), cluster.url("board-a"), cluster.url("board-b"), board_id,
         str(screenshot)],
        cwd=ROOT, env={**os.environ, "CHROMIUM_PATH": CHROMIUM}, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    stderr: list[str] = []
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    err_stream = proc.stderr
    reader = threading.Thread(target=lambda: stderr.extend(err_stream), daemon=True)
    reader.start()
    watchdog = threading.Timer(NODE_TIMEOUT, proc.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith('{"ask"'):
                try:
                    answer = restarter(json.loads(line)["ask"])
                except Exception as exc:  # tell the script, which then fails and reports
                    answer = {"error": repr(exc)}
                proc.stdin.write(json.dumps(answer) + "\n")
                proc.stdin.flush()
        proc.wait(10)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(5)
    report = (f"exit {proc.returncode}\nstdout:\n{''.join(lines)}\nstderr:\n{''.join(stderr)}\n"
              f"restarts: {restarter.log}\nservers:\n{cluster.output()}")
    assert lines, report
    return json.loads(lines[-1]), report


def texts(board: dict[str, Any]) -> dict[str, list[str]]:
    return {c["id"]: [card["text"] for card in c["cards"]] for c in board["columns"]}


def test_two_pages_on_two_nodes_edit_one_board_through_restarts(tmp_path: Path) -> None:
    check_prerequisites()
    screenshot = tmp_path / "ada.png"
    with board_cluster() as cluster:
        result, report = run_script(cluster, "launch", screenshot)
    assert result["ok"] is True, report
    assert result["problems"] == [], report
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    boards = result["boards"]
    # both pages agreed at every step (waitSame); what they agreed on:
    after_adds = texts(boards["after_adds"])
    assert sorted(after_adds["todo"]) == sorted(
        [f"ada {i:02}" for i in range(1, 11)] + [f"bea {i:02}" for i in range(1, 11)])
    for who in ("ada", "bea"):  # each page's adds kept their order
        assert [t for t in after_adds["todo"] if t.startswith(who)] == \
            [f"{who} {i:02}" for i in range(1, 11)]

    concurrent = texts(boards["concurrent"])
    assert sorted(concurrent["todo"]) == sorted(
        [f"ada {i:02}" for i in range(4, 10)] + ["ada 10 edited"]
        + [f"bea {i:02}" for i in range(4, 10)])
    assert concurrent["doing"] == ["ada 01", "ada 02", "ada 03"]
    assert concurrent["done"] == ["bea 01", "bea 02", "bea 03"]

    # the owner stopped: the page on the other node went on, with the room moved to its node
    survivor = result["survivor"]
    survivor_node = "board-a" if survivor == "ada" else "board-b"
    assert result["stopped_owner"] != survivor_node
    while_down = boards["while_down"]
    assert while_down["node"] == survivor_node
    assert texts(while_down)["doing"] == [*concurrent["doing"], f"{survivor} 11", "ada 04"]

    final = boards["final"]
    assert final["version"] == 37
    assert final["uid"] == boards["after_adds"]["uid"]  # the same board all along
    want = {
        "todo": sorted([f"ada {i:02}" for i in range(5, 10)] + ["ada 10 edited"]
                       + [f"bea {i:02}" for i in range(4, 10)] + ["ada 13", "bea 13"]),
        "doing": ["ada 01", "ada 02", "ada 03", f"{survivor} 11", "ada 04"],
        "done": sorted(["bea 01", "bea 02", "bea 03", "ada 12", "bea 12"]),
    }
    got = texts(final)
    assert {"todo": sorted(got["todo"]), "doing": got["doing"], "done": sorted(got["done"])} \
        == want
    assert result["restarted"]["restarted"] != result["restarted"]["owner"]


# -- raw WebSockets ------------------------------------------------------------------------------


async def join(ws: RawClient, board_id: str, user: str) -> dict[str, Any]:
    reply = await ws.join(f"board:{board_id}", "1", "1", {"user": user})
    assert reply[4]["status"] == "ok", reply
    board: dict[str, Any] = reply[4]["response"]["board"]
    return board


async def push(ws: RawClient, board_id: str, ref: int, event: str,
               payload: dict[str, Any]) -> dict[str, Any]:
    await ws.send("1", str(ref), f"board:{board_id}", event, payload)
    while True:
        m = await ws.recv(10)
        if m[3] == "phx_reply" and m[1] == str(ref):
            reply: dict[str, Any] = m[4]
            return reply


async def test_acknowledged_changes_survive_kill_9_of_the_owner() -> None:
    board_id = "kill9"
    with board_cluster() as cluster:
        a, b = cluster.nodes["board-a"], cluster.nodes["board-b"]
        async with connect(a.port, V2) as ws:
            assert (await join(ws, board_id, "Ada"))["node"] == "board-a"
            for i in range(5):
                reply = await push(ws, board_id, 10 + i, "op",
                                   {"type": "add", "column": "todo", "text": f"card {i}",
                                    "opid": f"op-{i}"})
                assert reply["status"] == "ok" and reply["response"]["version"] == i + 1
        assert cluster.owner(board_id) == "board-a"
        a.kill()  # SIGKILL: no handoff; the lease runs out and board-b takes the room over
        async with connect(b.port, V2) as ws:
            # the join is refused with "retry" while the dead node's lease lasts (≤ 5 s)
            with trio.fail_after(30):
                while True:
                    joined = await ws.join(f"board:{board_id}", "1", "1", {"user": "Bea"})
                    if joined[4]["status"] == "ok":
                        break
                    assert joined[4]["response"].get("retry") is True, joined
                    await trio.sleep(0.5)
            board: dict[str, Any] = joined[4]["response"]["board"]
            assert board["node"] == "board-b"
            assert board["version"] == 5
            assert [c["text"] for c in board["columns"][0]["cards"]] == \
                [f"card {i}" for i in range(5)]
            # a resend of an op acknowledged by the dead node is recognized, not applied again
            again = await push(ws, board_id, 20, "op",
                               {"type": "add", "column": "todo", "text": "card 4",
                                "opid": "op-4"})
            assert again["status"] == "ok" and again["response"]["version"] == 5
            fresh = await push(ws, board_id, 21, "op",
                               {"type": "add", "column": "todo", "text": "card 5"})
            assert fresh["status"] == "ok" and fresh["response"]["version"] == 6
