"""The Python examples of docs/client.md run as written against the server named in their
first line (``# server: trio-channels serve MODULE:ATTR --port 4000``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.server import ROOT, running_server

DOC = ROOT / "docs" / "client.md"
BLOCK = re.compile(r"```python\n(# server: trio-channels serve (\S+) --port 4000\n.*?)```",
                   re.DOTALL)
EXAMPLES = BLOCK.findall(DOC.read_text())


def test_the_doc_has_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("code,app", EXAMPLES, ids=[f"example-{i}" for i in
                                                    range(len(EXAMPLES))])
def test_example_runs(code: str, app: str) -> None:
    with running_server(app, args=["--log-level", "WARNING"]) as server:
        script = code.replace("ws://127.0.0.1:4000", f"ws://127.0.0.1:{server.port}")
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                              text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    if "docs.examples.quickstart" in app and "ReplyError" in code:
        assert "{'welcome': 'ada'}" in out and "{'pong': 1}" in out
        assert "refused: {'reason': 'unauthorized'}" in out
        assert "new_msg: {'user': 'ada', 'body': 'hello'}" in out
    elif "docs.examples.quickstart" in app:
        assert out.splitlines()[-1] == "new_msg {'user': 'bob', 'body': 'hi'}"
        assert out.startswith("hello {'topic': 'room:lobby'}")
    else:
        assert "online: ['py-bot']" in out and "py-bot: hello from Python" in out
        assert "'recovered': False" in out
