"""The Django example (examples/django_notify): Django views, driven by Django's test client in
the isolated .venv-django, notify users connected to a real trio-channels node through a
private redis-server, with the publisher (no trio in the Django process)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from tests.cluster.redis_server import RedisServer
from tests.support.client import connect
from tests.support.django_venv import EXAMPLE, ensure_django_venv
from tests.support.server import ROOT, ServerProcess

SECRET = "test-notify-secret-0123456789abcdef0123"
DRIVER = ROOT / "tests" / "support" / "django_driver.py"


@pytest.fixture(scope="module")
def django_python() -> str:
    return str(ensure_django_venv())


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def realtime(redis: RedisServer) -> Iterator[ServerProcess]:
    server = ServerProcess("examples.django_notify.realtime:endpoint",
                           env={"NOTIFY_SECRET": SECRET},
                           args=["--redis-url", redis.url, "--node-name", "notify-a"])
    server.start()
    try:
        yield server
    finally:
        server.kill()


def django_env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{EXAMPLE}",
            "TRIO_CHANNELS_REDIS_URL": redis_url, "NOTIFY_SECRET": SECRET}


async def django(python: str, redis_url: str, *args: str) -> dict[str, Any]:
    """Run one request through the example's views (a fresh Django process, as a worker)."""
    result = await trio.run_process([python, str(DRIVER), *args], cwd=EXAMPLE,
                                    env=django_env(redis_url), capture_stdout=True,
                                    capture_stderr=True, check=False)
    out = result.stdout.decode()
    lines = [line for line in out.splitlines() if line.startswith("RESULT:")]
    assert result.returncode == 0 and lines, (out, result.stderr.decode()[-3000:])
    return json.loads(lines[-1].removeprefix("RESULT:"))  # type: ignore[no-any-return]


async def test_manage_py_check(django_python: str, redis: RedisServer) -> None:
    result = await trio.run_process([django_python, "manage.py", "check"], cwd=EXAMPLE,
                                    env=django_env(redis.url), capture_stdout=True,
                                    capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert b"System check identified no issues" in result.stdout
    # Django is in its own venv, never in the project's.
    probe = await trio.run_process([django_python, "-c", "import django, sys; "
                                    "print(django.get_version(), sys.prefix)"],
                                   capture_stdout=True)
    assert probe.stdout.decode().split()[1].endswith(".venv-django")


async def test_a_django_view_notifies_connected_users(
        django_python: str, redis: RedisServer, realtime: ServerProcess) -> None:
    token = (await django(django_python, redis.url, "token", "42"))["body"]
    assert token["topic"] == "notifications:42"
    other = (await django(django_python, redis.url, "token", "7"))["body"]["token"]
    async with connect(realtime.port, query=f"token={token['token']}") as ada, \
            connect(realtime.port, query=f"token={token['token']}") as ada_tab2, \
            connect(realtime.port, query=f"token={other}") as bob:
        for client in (ada, ada_tab2):
            reply = await client.join("notifications:42", "1", "1")
            assert reply[4] == {"status": "ok", "response": {}}
        # A user cannot listen to someone else's notifications.
        refused = await bob.join("notifications:42", "1", "1")
        assert refused[4] == {"status": "error", "response": {"reason": "unauthorized"}}
        await bob.join("notifications:7", "2", "2")

        result = await django(django_python, redis.url, "notify", "42", "Your order shipped")
        assert result == {"status": 200, "body": {"sent": True, "nodes": 1}}
        for client in (ada, ada_tab2):
            message = await client.recv()
            assert message[2:4] == ["notifications:42", "notification"]
            assert message[4]["text"] == "Your order shipped"
            assert isinstance(message[4]["at"], int)

        # The view checks its input; nothing is published.
        bad = await django(django_python, redis.url, "notify-raw", "42", "{not json")
        assert bad == {"status": 400, "body": {"error": 'expected {"text": "..."}'}}
        assert (await django(django_python, redis.url, "get-notify", "42"))["status"] == 405

        # Sign out everywhere: both of user 42's sockets close; user 7's stays.
        result = await django(django_python, redis.url, "sign-out", "42")
        assert result == {"status": 200, "body": {"sent": True}}
        assert await ada.closed() == 1001
        assert await ada_tab2.closed() == 1001
        await bob.send(None, "hb", "phoenix", "heartbeat", {})
        assert (await bob.recv())[1:4] == ["hb", "phoenix", "phx_reply"]


async def test_a_clear_503_when_redis_is_unreachable(django_python: str) -> None:
    # Nothing listens there: the publisher raises PublishError, the view answers 503.
    result = await django(django_python, "redis://127.0.0.1:1", "notify", "42", "hello")
    assert result["status"] == 503
    assert result["body"]["sent"] is False
    assert result["body"]["error"].startswith("cannot connect to Redis at 127.0.0.1:1")
