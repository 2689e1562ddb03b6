"""ClientPresence.sync_state / sync_diff against phoenix.js's own (run by node), on random
states and diffs: same states, same key order, same callbacks with the same arguments."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.client import ClientPresence
from channels.client.presence import _keys

ORACLE = Path(__file__).with_name("presence_oracle.mjs")
ROOT = Path(__file__).resolve().parents[2]

KEYS = st.sampled_from(["a", "b", "c", "10", "2", "0", "constructor", "07"])
REFS = st.sampled_from([f"r{i}" for i in range(6)])
META = st.fixed_dictionaries({"phx_ref": REFS, "v": st.integers(0, 3)})
PRESENCES = st.dictionaries(KEYS, st.fixed_dictionaries(
    {"metas": st.lists(META, min_size=1, max_size=3)}), max_size=5)
OPS = st.lists(st.one_of(
    st.tuples(st.just("state"), PRESENCES),
    st.tuples(st.just("diff"), st.fixed_dictionaries({"joins": PRESENCES,
                                                      "leaves": PRESENCES}))), max_size=6)


@pytest.fixture(scope="module")
def oracle() -> Iterator[subprocess.Popen[bytes]]:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "phoenix").is_dir():
        pytest.skip("node and node_modules/phoenix are needed (./scripts/setup)")
    proc = subprocess.Popen([node, str(ORACLE)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    yield proc
    proc.kill()
    proc.wait()


def _ask(proc: subprocess.Popen[bytes], op: str, state: Any, arg: Any) -> Any:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(orjson.dumps({"op": op, "state": state, "arg": arg}) + b"\n")
    proc.stdin.flush()
    return orjson.loads(proc.stdout.readline())


def _python(op: str, state: Any, arg: Any) -> Any:
    log: list[Any] = []

    def snap(value: Any) -> Any:
        return None if value is None else orjson.loads(orjson.dumps(value))

    def on_join(key: str, current: Any, joined: Any) -> None:
        log.append(["join", key, snap(current), snap(joined)])

    def on_leave(key: str, current: Any, left: Any) -> None:
        log.append(["leave", key, snap(current), snap(left)])

    sync = ClientPresence.sync_state if op == "state" else ClientPresence.sync_diff
    result = sync(state, arg, on_join, on_leave)
    listed = ClientPresence.list_presences(
        result, lambda key, p: [key, [m["phx_ref"] for m in p["metas"]]])
    return {"state": result, "keys": _keys(result), "list": listed, "log": log}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_same_as_phoenix_js(oracle: subprocess.Popen[bytes], ops: list[tuple[str, Any]]) -> None:
    state: Any = {}
    for op, arg in ops:
        js = _ask(oracle, op, state, arg)
        py = _python(op, orjson.loads(orjson.dumps(state)), orjson.loads(orjson.dumps(arg)))
        assert py["log"] == js["log"], (op, state, arg)
        assert py["keys"] == js["keys"] and py["list"] == js["list"]
        assert py["state"] == js["state"]
        state = js["state"]
