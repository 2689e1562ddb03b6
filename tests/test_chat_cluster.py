"""The example chat app as a two-node cluster: two ``trio-channels serve`` processes (chat-a,
chat-b) sharing a private redis-server, as ``./scripts/chat-cluster`` runs it (but on free ports).

Messages, presence and history cross nodes, checked over raw WebSockets and with one Chromium
page per node (tests/browser/chat_cluster.mjs). The history is the runtime's, in a Redis stream
per room: every node has the same, a client that comes back (to its node or another) gets what
it missed once, and it outlives a node's restart. Needs redis-server, Node, ``npm ci`` and
Debian's Chromium (``./scripts/test`` installs them); a missing piece fails the tests rather
than skipping them. The timeouts below bound waits; they are not timing assertions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cluster.redis_server import RedisServer
from tests.support.client import RawClient, connect
from tests.support.server import ROOT, ServerProcess

APP = "examples.chat.app:endpoint"
V2 = "2.0.0"
SCRIPT = ROOT / "tests/browser/chat_cluster.mjs"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
#: chat_cluster.mjs has its own 120 s watchdog; this only catches a wedged node process.
NODE_TIMEOUT = 150
#: Presence crosses nodes with tracker heartbeats (every 1.5 s by default) and nodes that just
#: started must find each other first: the bound on one cross-node wait.
CROSS_NODE = 20.0


@dataclass
class ChatCluster:
    redis: RedisServer
    a: ServerProcess  # node chat-a
    b: ServerProcess  # node chat-b

    def output(self) -> str:
        return "".join(f"--- {name} ---\n{''.join(node.output)}"
                       for name, node in (("chat-a", self.a), ("chat-b", self.b)))


@contextmanager
def chat_cluster() -> Iterator[ChatCluster]:
    with RedisServer() as redis:
        a, b = (ServerProcess(APP, args=["--redis-url", redis.url, "--node-name", name])
                for name in ("chat-a", "chat-b"))
        try:
            a.start()
            b.start()
            yield ChatCluster(redis, a, b)
        finally:
            a.kill()
            b.kill()


@pytest.fixture(scope="module")
def cluster() -> Iterator[ChatCluster]:
    with chat_cluster() as c:
        yield c


# -- raw WebSockets -----------------------------------------------------------------------------


class Client:
    """A raw client in one room that keeps its presence list (phoenix.js semantics) and its
    chat messages as they arrive (replayed ones included, they come as ``new_msg`` too)."""

    def __init__(self, ws: RawClient, topic: str) -> None:
        self.ws = ws
        self.topic = topic
        self.presences: dict[str, list[dict[str, Any]]] = {}
        self.messages: list[dict[str, Any]] = []
        self.recovery: dict[str, Any] = {}
        self._refs = 0

    async def join(self, user: str, position: dict[str, Any] | None = None) -> dict[str, Any]:
        """Join as the page does (the recent 50 on a first join, or from ``position``);
        returns the reply's ``phx_recovery``."""
        pos = position if position is not None else {"last": 50}
        reply = await self.ws.join(self.topic, "1", "1", {"user": user, "phx_pos": pos})
        assert reply[4]["status"] == "ok", reply
        self.recovery = reply[4]["response"]["phx_recovery"]
        return self.recovery

    @property
    def bodies(self) -> list[str]:
        return [m["body"] for m in self.messages]

    @property
    def position(self) -> dict[str, Any]:
        """The position of the last message received."""
        pos: dict[str, Any] = self.messages[-1]["phx_pos"]
        return pos

    def _apply(self, event: str, payload: dict[str, Any]) -> None:
        if event == "presence_state":
            self.presences = {k: list(v["metas"]) for k, v in payload.items()}
        elif event == "presence_diff":
            for key, entry in payload["joins"].items():
                refs = {m["phx_ref"] for m in entry["metas"]}
                kept = [m for m in self.presences.get(key, []) if m["phx_ref"] not in refs]
                self.presences[key] = kept + list(entry["metas"])
            for key, entry in payload["leaves"].items():
                refs = {m["phx_ref"] for m in entry["metas"]}
                left = [m for m in self.presences.get(key, []) if m["phx_ref"] not in refs]
                if left:
                    self.presences[key] = left
                else:
                    self.presences.pop(key, None)
        elif event == "new_msg":
            self.messages.append(payload)

    async def until(self, done: Any, timeout: float = CROSS_NODE) -> None:
        """Handle incoming messages until ``done(self)`` is true."""
        with trio.fail_after(timeout):
            while not done(self):
                m = await self.ws.recv(timeout)
                self._apply(m[3], m[4])

    async def until_present(self, names: set[str], timeout: float = CROSS_NODE) -> None:
        await self.until(lambda c: set(c.presences) == names, timeout)

    async def say(self, body: str) -> None:
        self._refs += 1
        await self.ws.send("1", f"msg{self._refs}", self.topic, "new_msg", {"body": body})


async def test_messages_presence_and_history_cross_nodes(cluster: ChatCluster) -> None:
    topic = "room:raw-cluster"
    async with connect(cluster.a.port, V2) as ws_a, connect(cluster.b.port, V2) as ws_b:
        ada, bea = Client(ws_a, topic), Client(ws_b, topic)
        await ada.join("Ada")
        await bea.join("Bea")
        # each node lists both, and each presence names the node its client is on
        await ada.until_present({"Ada", "Bea"})
        await bea.until_present({"Ada", "Bea"})
        for c in (ada, bea):
            assert [m["node"] for m in c.presences["Ada"]] == ["chat-a"]
            assert [m["node"] for m in c.presences["Bea"]] == ["chat-b"]
        assert ada.presences == bea.presences

        # a message sent on one node reaches the other, in both directions, exactly once
        await ada.say("from a")
        await bea.until(lambda c: [m["body"] for m in c.messages] == ["from a"])
        await bea.say("from b")
        await ada.until(lambda c: [m["body"] for m in c.messages] == ["from a", "from b"])
        await bea.until(lambda c: [m["body"] for m in c.messages] == ["from a", "from b"])
        assert ada.messages == bea.messages
        assert [m["user"] for m in ada.messages] == ["Ada", "Bea"]

        # one stream, shared by the nodes: both got the same positions, in order
        epoch = ada.messages[0]["phx_pos"]["epoch"]
        assert [m["phx_pos"] for m in ada.messages] == [
            {"offset": 1, "epoch": epoch}, {"offset": 2, "epoch": epoch}]
        # a newcomer on either node gets both as the room's recent messages, same positions
        for port in (cluster.a.port, cluster.b.port):
            async with connect(port, V2) as ws:
                cy = Client(ws, topic)
                info = await cy.join("Cy")
                assert info == {"recovered": False, "epoch": epoch, "offset": 2, "replayed": 2}
                await cy.until(lambda c: len(c.messages) == 2)
                assert cy.messages == ada.messages

        # a second tab of Ada, on the other node: one name, two metas, two nodes
        async with connect(cluster.b.port, V2) as ws:
            ada2 = Client(ws, topic)
            await ada2.join("Ada")
            await bea.until(lambda c: len(c.presences.get("Ada", [])) == 2)
            assert sorted(m["node"] for m in bea.presences["Ada"]) == ["chat-a", "chat-b"]
            await ada.until(lambda c: len(c.presences.get("Ada", [])) == 2)
        # that tab closed: node a sees Ada with one tab again, and Bea still there
        await ada.until(lambda c: len(c.presences.get("Ada", [])) == 1
                        and set(c.presences) == {"Ada", "Bea"})

    # both gone: a newcomer on node a sees nobody else once node b's leaves arrive
    async with connect(cluster.a.port, V2) as ws:
        dee = Client(ws, topic)
        await dee.join("Dee")
        await dee.until_present({"Dee"})


async def test_a_client_that_comes_back_gets_what_it_missed_on_either_node(
        cluster: ChatCluster) -> None:
    topic = "room:raw-recovery"
    async with connect(cluster.a.port, V2) as ws_a:
        ada = Client(ws_a, topic)
        await ada.join("Ada")
        async with connect(cluster.b.port, V2) as ws_b:
            bea = Client(ws_b, topic)
            await bea.join("Bea")
            await ada.until_present({"Ada", "Bea"})
            await ada.say("seen by bea")
            await bea.until(lambda c: c.bodies == ["seen by bea"])
        seen = bea.position
        # Bea's connection to node b is gone; Ada goes on, on node a
        for body in ("missed 1", "missed 2"):
            await ada.say(body)
        await ada.until(lambda c: c.bodies == ["seen by bea", "missed 1", "missed 2"])
        # Bea comes back, to node b or to node a (a move to another node): from her position
        # she gets exactly what she missed, in order, then live messages
        await comes_back(cluster.b.port, ada, seen, ["missed 1", "missed 2"], "live on b")
        await comes_back(cluster.a.port, ada, seen, ["missed 1", "missed 2", "live on b"],
                         "live on a")


async def comes_back(port: int, ada: Client, seen: dict[str, Any], missed: list[str],
                     live: str) -> None:
    """Bea joins on ``port`` from ``seen``: she gets ``missed`` replayed, then Ada's ``live``."""
    async with connect(port, V2) as ws:
        back = Client(ws, ada.topic)
        info = await back.join("Bea", seen)
        assert info == {"recovered": True, "epoch": seen["epoch"],
                        "offset": seen["offset"] + len(missed), "replayed": len(missed)}
        await back.until(lambda c: len(c.messages) == len(missed))
        assert back.bodies == missed
        await ada.say(live)
        await back.until(lambda c: len(c.messages) == len(missed) + 1)
        assert back.bodies == [*missed, live]
        await ada.until(lambda c: c.bodies[-1:] == [live])
        assert back.messages == ada.messages[1:]  # same payloads, positions included


async def test_history_outlives_a_node_restart() -> None:
    """The history is in Redis: a node that restarts has it all, including what was said while
    it was down, and its clients recover across the restart."""
    with chat_cluster() as cluster:
        topic = "room:raw-restart"
        async with connect(cluster.b.port, V2) as ws_b:
            bea = Client(ws_b, topic)
            await bea.join("Bea")
            await bea.say("before the restart")
            await bea.until(lambda c: c.bodies == ["before the restart"])
        seen = bea.position
        assert await trio.to_thread.run_sync(cluster.b.stop) == 0
        async with connect(cluster.a.port, V2) as ws_a:
            ada = Client(ws_a, topic)
            await ada.join("Ada")
            await ada.until(lambda c: c.bodies == ["before the restart"])
            await ada.say("while b was down")
            await ada.until(lambda c: len(c.messages) == 2)
            await trio.to_thread.run_sync(cluster.b.start)
            # Bea comes back to the restarted node b from her position: recovered
            async with connect(cluster.b.port, V2) as ws:
                back = Client(ws, topic)
                info = await back.join("Bea", seen)
                assert (info["recovered"], info["replayed"]) == (True, 1)
                await back.until(lambda c: c.bodies == ["while b was down"])
            # a newcomer on the restarted node gets the room's messages, same as node a
            async with connect(cluster.b.port, V2) as ws:
                cy = Client(ws, topic)
                await cy.join("Cy")
                await cy.until(lambda c: len(c.messages) == 2)
                assert cy.messages == ada.messages


async def test_a_first_join_gets_the_newest_50_of_a_long_room(cluster: ChatCluster) -> None:
    """Redis trims a stream only approximately (it may hold more than the 100 kept): a first
    join still gets the newest 50, not the last 50 of the oldest 100."""
    topic = "room:raw-long"
    async with connect(cluster.a.port, V2) as ws_a:
        ada = Client(ws_a, topic)
        await ada.join("Ada")
        for i in range(150):
            await ada.say(f"m{i}")
        await ada.until(lambda c: len(c.messages) == 150, timeout=60)
    async with connect(cluster.b.port, V2) as ws_b:
        cy = Client(ws_b, topic)
        info = await cy.join("Cy")
        assert (info["offset"], info["replayed"]) == (150, 50)
        await cy.until(lambda c: len(c.messages) == 50)
        assert cy.bodies == [f"m{i}" for i in range(100, 150)]


# -- Chromium, one page per node ----------------------------------------------------------------


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the browser tests need Node.js 18+")
    return node


def _check_prerequisites() -> None:
    if not (ROOT / "node_modules/playwright-core/package.json").is_file():
        pytest.fail("node_modules/playwright-core is missing: run `npm ci`")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run ./scripts/test (it installs it) "
                    "or `apt-get install chromium`")


def test_two_browsers_on_two_nodes(cluster: ChatCluster, tmp_path: Path) -> None:
    node = _node()
    _check_prerequisites()
    screenshot = tmp_path / "ada.png"
    proc = subprocess.run(
        [node, str(SCRIPT), f"http://127.0.0.1:{cluster.a.port}/",
         f"http://127.0.0.1:{cluster.b.port}/", str(screenshot)],
        cwd=ROOT, env={**os.environ, "CHROMIUM_PATH": CHROMIUM},
        capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False,
    )
    lines = proc.stdout.strip().splitlines()
    detail = (f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
              f"servers:\n{cluster.output()}")
    assert lines, detail
    result = json.loads(lines[-1])
    assert result["ok"] is True and proc.returncode == 0, detail
    assert result["problems"] == []

    def person(name: str, me: bool, node: str) -> dict[str, object]:
        return {"name": name, "tabs": 1, "me": me, "nodes": node}

    def sidebar(*people: dict[str, object]) -> dict[str, object]:
        return {"title": f"Online in #lobby ({len(people)})", "people": list(people),
                "state": "live"}

    online = result["online"]
    # each page lists both users, with the node each one is connected to
    assert online["ada"] == sidebar(person("Ada", True, "chat-a"), person("Bea", False, "chat-b"))
    assert online["bea"] == sidebar(person("Ada", False, "chat-a"), person("Bea", True, "chat-b"))
    assert online["ada_with_four"] == sidebar(
        person("Ada", True, "chat-a"), person("Bea", False, "chat-b"),
        person("Cy", False, "chat-b"), person("Dee", False, "chat-a"))
    # Bea closed her page on node b: she left the list of Ada's page on node a
    assert online["ada_after_bea_left"] == sidebar(
        person("Ada", True, "chat-a"), person("Cy", False, "chat-b"),
        person("Dee", False, "chat-a"))

    from_a = {"user": "Ada", "body": "Hello from node a <i>not italic</i>"}
    from_b = {"user": "Bea", "body": "Hi Ada, this is node b 👋"}
    # typed on node a, shown on node b and back, each once (then the messages below)
    assert [m for m in result["ada"] if "user" in m][:2] == [from_a, from_b]
    # newcomers on node b (Cy) and node a (Dee) got both messages as the recent ones, in order
    assert result["cy"] == [{"system": "Joined #lobby as Cy."}, from_a, from_b]
    assert result["dee"] == [{"system": "Joined #lobby as Dee."}, from_a, from_b]

    # Bea's page on node b lost its connection while Ada said two things on node a: once it
    # was back, it got them once, in order, replayed from the Redis stream, then live ones
    missed = [{"user": "Ada", "body": f"Bea, are you there? ({i})"} for i in (1, 2)]
    welcome = {"user": "Ada", "body": "Welcome back"}
    back = {"user": "Bea", "body": "Back on node b"}
    assert result["bea"] == [
        {"system": "Joined #lobby as Bea."}, from_a, from_b,
        {"system": "Connection lost. Reconnecting…"}, {"system": "Reconnected."},
        {"system": "Rejoined #lobby."}, *missed, welcome, back]
    first, rejoin = result["recoveries"]["bea"]
    assert (first["recovered"], first["offset"], first["replayed"]) == (False, 0, 0)
    assert rejoin == {"recovered": True, "epoch": first["epoch"], "offset": 4, "replayed": 2}
    assert [m for m in result["ada"] if "user" in m] == [from_a, from_b, *missed, welcome, back]
    # pages opened afterwards, on node a (Eve) and node b (Fay), show the same messages
    everything = [from_a, from_b, *missed, welcome, back]
    assert result["eve"] == [{"system": "Joined #lobby as Eve."}, *everything]
    assert result["fay"] == [{"system": "Joined #lobby as Fay."}, *everything]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- a clean stop -------------------------------------------------------------------------------


async def test_clean_stop_leaves_other_nodes_at_once() -> None:
    with chat_cluster() as cluster:
        topic = "room:clean-stop"
        async with connect(cluster.a.port, V2) as ws_a, connect(cluster.b.port, V2) as ws_b:
            ada, bea = Client(ws_a, topic), Client(ws_b, topic)
            await ada.join("Ada")
            await bea.join("Bea")
            await ada.until_present({"Ada", "Bea"})
            # Bea is still connected: node b's drain closes her, and the node leaves the cluster
            # (the chat's Presence has permdown_on_shutdown=True)
            assert await trio.to_thread.run_sync(cluster.b.stop) == 0
            # well within down_period (30 s): only the clean stop itself can explain the leave
            await ada.until_present({"Ada"}, timeout=10)
