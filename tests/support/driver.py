"""Drive ``tests/js/driver.mjs`` (official phoenix.js clients) from synchronous tests."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.support.server import ROOT

Event = dict[str, Any]


class Driver:
    """One Node process hosting any number of named phoenix.js clients."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["node", str(ROOT / "tests/js/driver.mjs")], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.events: list[Event] = []
        self._queue: queue.Queue[Event] = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()
        self.wait(lambda e: e.get("ev") == "driver_ready", 20)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"ev": "stdout", "line": line.rstrip()}
            self._queue.put(event)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def _drain(self, timeout: float) -> bool:
        try:
            event = self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        if event.get("ev") == "driver_error":
            raise AssertionError(f"driver error: {event['error']}")
        self.events.append(event)
        return True

    def wait(self, pred: Callable[[Event], bool], timeout: float = 10.0,
             since: int = 0) -> Event:
        """The first event (at index >= ``since``) matching ``pred``, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            for i in range(checked, len(self.events)):
                if pred(self.events[i]):
                    return self.events[i]
            checked = max(checked, len(self.events))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = "\n".join(json.dumps(e) for e in self.events[-15:])
                raise AssertionError(f"timed out waiting; last events:\n{tail}")
            self._drain(remaining)

    def mark(self) -> int:
        """An index to wait for events after this point."""
        while self._drain(0):
            pass
        return len(self.events)

    # -- conveniences ---------------------------------------------------------------------

    def connect(self, cid: str, url: str, **params: Any) -> None:
        since = self.mark()
        self.send(op="connect", id=cid, url=url, params=params)
        self.wait(lambda e: e.get("id") == cid and e["ev"] == "open", 10, since)

    def join(self, cid: str, topic: str, **params: Any) -> Event:
        since = self.mark()
        self.send(op="join", id=cid, topic=topic, params=params)
        return self.wait(lambda e: e.get("id") == cid and e.get("topic") == topic
                         and e["ev"] in ("join_ok", "join_error"), 10, since)

    def push(self, cid: str, topic: str, event: str, payload: dict[str, Any] | None = None,
             timeout: float = 10.0) -> Event:
        since = self.mark()
        tag = f"{cid}-{since}"
        self.send(op="push", id=cid, topic=topic, event=event, payload=payload or {}, tag=tag)
        return self.wait(lambda e: e.get("ev") == "reply" and e.get("tag") == tag, timeout, since)

    def presence(self, cid: str, topic: str) -> dict[str, list[str]]:
        since = self.mark()
        tag = f"list-{cid}-{since}"
        self.send(op="list", id=cid, topic=topic, tag=tag)
        event = self.wait(lambda e: e.get("ev") == "list" and e.get("tag") == tag, 10, since)
        return event["list"]  # type: ignore[no-any-return]

    def wait_presence(self, cid: str, topic: str, pred: Callable[[dict[str, list[str]]], bool],
                      timeout: float = 10.0) -> dict[str, list[str]]:
        """Wait until ``cid``'s phoenix.js Presence list for ``topic`` satisfies ``pred``."""
        current = self.presence(cid, topic)
        if pred(current):
            return current
        event = self.wait(lambda e: e.get("id") == cid and e.get("topic") == topic
                          and e["ev"] == "presence_sync" and pred(e["list"]), timeout,
                          len(self.events))
        return event["list"]  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="exit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def driver() -> Iterator[Driver]:
    d = Driver()
    try:
        yield d
    finally:
        d.close()
