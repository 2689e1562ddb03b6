"""Drive Supabase's ``realtime`` (PyPI; asyncio, V1 JSON, string refs) against a server.

    .venv-clients/bin/python tests/matrix/clients/realtime_client.py ws://HOST:PORT/socket NAME

The client joins ``realtime:NAME`` (it adds the prefix) with Supabase's ``{"config": ...}``
join payload (tests/matrix/matrix_app.py serves it). Two clients (users rt_a, rt_b) subscribe;
a pushes echo (realtime parses an ok reply's response into its postgres_changes model, so
only the status is seen) and error_reply (the response is seen), a sends a broadcast (b's
on_broadcast gets it; a joined without config.broadcast.self, so not a), a unsubscribes
(leave; its channel is closed on the ok reply), a broadcast from b (joined with
config.broadcast.self) reaches b but no longer a, b pushes integers beyond 64 bits (the
echo checked on the wire), both close. Prints ``RESULT:<json>``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from _common import BIG, STEP_TIMEOUT, StepFailed, Steps, install_tap

install_tap()

from realtime import (  # noqa: E402  (after the tap)
    AsyncRealtimeClient,
    RealtimeAcknowledgementStatus,
    RealtimeSubscribeStates,
)


async def reply(push: Any) -> dict[str, Any]:
    """Wait for the push's ok/error/timeout; ok responses as realtime hands them over."""
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def settle(status: str) -> Any:
        def cb(*args: Any) -> None:
            if not done.done():
                resp = args[0] if args else None
                if hasattr(resp, "model_dump"):
                    resp = {"model": type(resp).__name__, **resp.model_dump()}
                done.set_result({"status": status, "response": resp})
        return cb

    push.receive(RealtimeAcknowledgementStatus.Ok, settle("ok"))
    push.receive(RealtimeAcknowledgementStatus.Error, settle("error"))
    push.receive(RealtimeAcknowledgementStatus.Timeout, settle("timeout"))
    async with asyncio.timeout(STEP_TIMEOUT):
        return await done


async def main(base: str, name: str) -> None:
    steps = Steps("realtime", "realtime")
    clients: list[AsyncRealtimeClient] = []
    got: dict[str, asyncio.Queue[Any]] = {"a": asyncio.Queue(), "b": asyncio.Queue()}
    states: dict[str, list[str]] = {"a": [], "b": []}
    a_closed = asyncio.Event()
    step = steps.begin("connect")
    try:
        for who in ("a", "b"):
            client = AsyncRealtimeClient(base, params={"user_id": f"rt_{who}"},
                                         auto_reconnect=False, timeout=int(STEP_TIMEOUT))
            async with asyncio.timeout(STEP_TIMEOUT):
                await client.connect()
            clients.append(client)
        steps.ok(step, True)
        a, b = clients
        def config(self_: bool) -> Any:
            return {"config": {"broadcast": {"ack": True, "self": self_},
                               "presence": {"key": ""}, "private": False}}

        # a does not get its own broadcasts back, b does (config.broadcast.self)
        cha, chb = a.channel(name, config(False)), b.channel(name, config(True))
        cha.on_broadcast("shout", lambda msg: got["a"].put_nowait(dict(msg)))
        chb.on_broadcast("shout", lambda msg: got["b"].put_nowait(dict(msg)))
        step = steps.begin("join")
        for who, ch in (("a", cha), ("b", chb)):
            def on_state(state: RealtimeSubscribeStates, err: Exception | None, who: str = who) -> None:
                states[who].append(state.value if err is None else f"{state.value}: {err}")
                if who == "a" and state == RealtimeSubscribeStates.CLOSED:
                    a_closed.set()
            async with asyncio.timeout(STEP_TIMEOUT):
                await ch.subscribe(on_state)
        steps.ok(step, {"states": states, "topic": cha.topic, "joined": [cha.is_joined, chb.is_joined]})
        step = steps.begin("echo")
        payload = {"n": 1, "s": "héllo", "list": [1, "two", None, True], "nested": {"x": 1.5}}
        steps.ok(step, {"payload": payload, "reply": await reply(await cha.push("echo", payload))})
        step = steps.begin("error_reply")
        steps.ok(step, await reply(await cha.push("error_reply", {})))
        step = steps.begin("broadcast")
        await cha.send_broadcast("shout", {"from": "a", "n": 1})
        async with asyncio.timeout(STEP_TIMEOUT):
            got_b = await got["b"].get()
        await asyncio.sleep(0.2)
        steps.ok(step, {"b": got_b, "a_self": got["a"].qsize()})
        step = steps.begin("leave")
        await cha.unsubscribe()
        async with asyncio.timeout(STEP_TIMEOUT):
            await a_closed.wait()  # the subscribe callback's CLOSED
        await chb.send_broadcast("shout", {"from": "b", "n": 2})
        async with asyncio.timeout(STEP_TIMEOUT):
            got_b2 = await got["b"].get()
        await asyncio.sleep(0.2)
        steps.ok(step, {"closed": cha.is_closed, "b": got_b2, "a_after_leave": got["a"].qsize()})
        step = steps.begin("big_int")
        steps.ok(step, {"payload": BIG, "reply": await reply(await chb.push("echo", BIG))})
        step = steps.begin("close")
        for client in clients:
            async with asyncio.timeout(STEP_TIMEOUT):
                await client.close()
        clients.clear()
        steps.ok(step, True)
    except StepFailed:
        pass
    except BaseException as exc:  # reported, not raised
        steps.failed(step, exc)
    finally:
        for client in clients:
            try:
                await client.close()
            except BaseException:  # closing what is left: best effort
                pass
        steps.emit()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
