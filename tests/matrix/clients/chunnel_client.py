"""Drive ``chunnel`` (PyPI; asyncio, V1 JSON, integer refs from 1) against a server.

    .venv-clients/bin/python tests/matrix/clients/chunnel_client.py ws://HOST:PORT/socket TOPIC

Two sockets (users chunnel_a, chunnel_b) join TOPIC; a pushes echo (reply) and error_reply
(chunnel raises on any non-ok reply), a broadcasts (b receives it), a leaves (chunnel's
leave() returns once the reply is ok), a broadcast from b no longer reaches a, b pushes
integers beyond 64 bits (echoed exactly), both disconnect. Prints ``RESULT:<json>``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from _common import BIG, STEP_TIMEOUT, StepFailed, Steps, install_tap

install_tap()

from chunnel.socket import Socket  # noqa: E402  (after the tap)


async def next_event(channel: Any, event: str, timeout: float = STEP_TIMEOUT) -> Any:
    """The payload of the channel's next incoming ``event`` (others are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await channel.receive()
            if msg.event == event:
                return msg.payload


async def main(base: str, topic: str) -> None:
    steps = Steps("chunnel", "chunnel")
    sockets: list[Socket] = []
    step = steps.begin("connect")
    try:
        for who in ("a", "b"):
            sock = Socket(f"{base}/websocket", {"user_id": f"chunnel_{who}"})
            async with asyncio.timeout(STEP_TIMEOUT):
                await sock.connect()
            sockets.append(sock)
        steps.ok(step, True)
        a, b = sockets
        cha, chb = a.channel(topic, {"reply": True}), b.channel(topic, {"reply": True})
        step = steps.begin("join")
        async with asyncio.timeout(STEP_TIMEOUT):
            steps.ok(step, {"a": await cha.join(), "b": await chb.join()})
        step = steps.begin("echo")
        payload = {"n": 1, "s": "héllo", "list": [1, "two", None, True], "nested": {"x": 1.5}}
        async with asyncio.timeout(STEP_TIMEOUT):
            response = await (await cha.push("echo", payload)).response()
        steps.ok(step, {"payload": payload, "reply": {"status": "ok", "response": response}})
        step = steps.begin("error_reply")
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                await (await cha.push("error_reply", {})).response()
            steps.ok(step, {"raised": None})
        except TimeoutError:
            raise
        except Exception as exc:  # chunnel: Exception("Response not ok!") for an error reply
            steps.ok(step, {"raised": str(exc)})
        step = steps.begin("broadcast")
        async with asyncio.timeout(STEP_TIMEOUT):
            response = await (await cha.push("shout", {"from": "a", "n": 1})).response()
        steps.ok(step, {"reply": {"status": "ok", "response": response},
                        "b": await next_event(chb, "shout"), "a": await next_event(cha, "shout")})
        step = steps.begin("leave")
        async with asyncio.timeout(STEP_TIMEOUT):
            await cha.leave()
        closed = await next_event(cha, "phx_close")
        async with asyncio.timeout(STEP_TIMEOUT):
            await (await chb.push("shout", {"from": "b", "n": 2})).response()
        got_b2 = await next_event(chb, "shout")
        try:
            a_after = await next_event(cha, "shout", 0.2)
        except TimeoutError:
            a_after = None
        steps.ok(step, {"returned": True, "phx_close": closed, "b": got_b2, "a_after_leave": a_after})
        step = steps.begin("big_int")
        async with asyncio.timeout(STEP_TIMEOUT):
            response = await (await chb.push("echo", BIG)).response()
        steps.ok(step, {"payload": BIG, "reply": {"status": "ok", "response": response}})
        step = steps.begin("close")
        for sock in sockets:
            async with asyncio.timeout(STEP_TIMEOUT):
                await sock.disconnect()
        sockets.clear()
        steps.ok(step, True)
    except StepFailed:
        pass
    except BaseException as exc:  # reported, not raised
        steps.failed(step, exc)
    finally:
        steps.emit()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
