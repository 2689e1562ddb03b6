"""Drive ``phxsocket`` (PyPI; threads, V1 JSON, integer refs from 0) against a server.

    .venv-clients/bin/python tests/matrix/clients/phxsocket_client.py ws://HOST:PORT/socket TOPIC

Two clients (users phx_a, phx_b) join TOPIC; a pushes echo and error_reply (replies), a
broadcasts (b receives it), a leaves (its channel's on_close fires on the server's phx_close),
a broadcast from b no longer reaches a, b pushes integers beyond 64 bits (echoed exactly),
both close. Prints ``RESULT:<json>``.
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any

from _common import BIG, STEP_TIMEOUT, StepFailed, Steps, in_thread, install_tap

install_tap()

from phxsocket import Client  # noqa: E402  (after the tap)


def wait_reply(sent: Any) -> Any:
    if not sent.event.wait(STEP_TIMEOUT):
        raise TimeoutError
    return sent.message


def main(base: str, topic: str) -> None:
    steps = Steps("phxsocket", "phxsocket")
    clients: list[Client] = []
    got: dict[str, queue.Queue[Any]] = {"a": queue.Queue(), "b": queue.Queue()}
    a_closed = threading.Event()
    step = steps.begin("connect")
    try:
        for who in ("a", "b"):
            client = Client(f"{base}/websocket", {"user_id": f"phx_{who}"})
            in_thread(client.connect)
            clients.append(client)
        steps.ok(step, True)
        a, b = clients
        cha, chb = a.channel(topic, {"reply": True}), b.channel(topic, {"reply": True})
        cha.on("shout", lambda payload: got["a"].put(payload))
        chb.on("shout", lambda payload: got["b"].put(payload))
        cha.on_close = a_closed.set
        step = steps.begin("join")
        steps.ok(step, {"a": in_thread(cha.join), "b": in_thread(chb.join)})
        step = steps.begin("echo")
        payload = {"n": 1, "s": "héllo", "list": [1, "two", None, True], "nested": {"x": 1.5}}
        steps.ok(step, {"payload": payload, "reply": wait_reply(cha.push("echo", payload, reply=True))})
        step = steps.begin("error_reply")
        steps.ok(step, wait_reply(cha.push("error_reply", {}, reply=True)))
        step = steps.begin("broadcast")
        reply = wait_reply(cha.push("shout", {"from": "a", "n": 1}, reply=True))
        steps.ok(step, {"reply": reply, "b": got["b"].get(timeout=STEP_TIMEOUT),
                        "a": got["a"].get(timeout=STEP_TIMEOUT)})
        step = steps.begin("leave")
        # phxsocket's Channel.leave() returns (False, <traceback>) whatever the server answers
        # (it calls a response() its SentMessage lacks): the reply shows on the wire only, and
        # the server's phx_close reaches the channel's on_close.
        returned = in_thread(cha.leave)
        if not a_closed.wait(STEP_TIMEOUT):
            raise TimeoutError
        wait_reply(chb.push("shout", {"from": "b", "n": 2}, reply=True))
        got_b2 = got["b"].get(timeout=STEP_TIMEOUT)
        a_after = None
        try:
            a_after = got["a"].get(timeout=0.2)
        except queue.Empty:
            pass
        steps.ok(step, {"returned_ok": returned[0], "on_close": True, "b": got_b2,
                        "a_after_leave": a_after})
        step = steps.begin("big_int")
        steps.ok(step, {"payload": BIG, "reply": wait_reply(chb.push("echo", BIG, reply=True))})
        step = steps.begin("close")
        for client in clients:
            in_thread(client.close)
        clients.clear()
        steps.ok(step, True)
    except StepFailed:
        pass
    except BaseException as exc:  # reported, not raised
        steps.failed(step, exc)
    finally:
        for client in clients:
            try:
                in_thread(client.close, 2)
            except BaseException:  # closing what is left: best effort
                pass
        steps.emit()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
