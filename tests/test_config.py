"""Configuration checks run once when an endpoint starts (channels/config.py)."""

from __future__ import annotations

from typing import Any

import pytest

from channels import Channel, Endpoint, Reply, Room, Rooms, Socket
from channels.config import ConfigError, check_endpoint


class Good(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> None:
        return None

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        return self.helper()

    def helper(self) -> Reply:
        return Reply.ok()


class Typos(Good):
    async def handle_inn(self, event: str, payload: Any) -> None:  # a typo
        pass

    async def handle_vote(self, payload: Any) -> None:  # not a callback either
        pass

    async def handle_zzzzzzz(self, payload: Any) -> None:  # nothing close: name them all
        pass

    async def terminte(self, reason: str) -> None:
        pass


class NoJoin(Channel):
    pass


class SyncInfo(Good):
    def handle_info(self, message: Any) -> None:  # type: ignore[override]
        pass


class BadRoom(Room):
    def handle_call(self, message: Any) -> Any:  # type: ignore[override]
        return message

    async def snapshot(self) -> Any:  # type: ignore[override]
        return {}

    async def handle_cal(self, message: Any) -> Any:
        return message


def check(channels: dict[str, Any], rooms: Rooms | None = None) -> tuple[list[str], list[str]]:
    socket = type("S", (Socket,), {"channels": channels})
    return check_endpoint(Endpoint({"/socket": socket}, rooms=rooms))


def test_a_good_configuration_has_no_problems() -> None:
    assert check({"room:lobby": Good, "room:*": Good, "other": Good}) == ([], [])


@pytest.mark.parametrize(("channels", "expected"), [
    ({"room:*": Good, "room:lobby": Good}, "'room:lobby']: never matches: 'room:*' is listed"),
    ({"room:*": Good, "room:x*": Good}, "'room:x*']: never matches"),
    ({"*": Good, "a": Good}, "'a']: never matches: '*'"),
    ({"*:lobby": Good}, "only a trailing '*' is supported"),
    ({"a:*:b": Good}, "only a trailing '*' is supported"),
    ({"room:*": dict}, "is not a Channel subclass"),
    ({"room:*": SyncInfo}, "SyncInfo.handle_info must be defined with 'async def'"),
])
def test_errors(channels: dict[str, Any], expected: str) -> None:
    errors, _ = check(channels)
    assert len(errors) == 1 and expected in errors[0], errors


def test_typos_and_a_missing_join_are_warned() -> None:
    errors, warnings = check({"room:*": Typos, "free:*": NoJoin})
    assert errors == []
    assert any("Typos.handle_inn" in w and "did you mean handle_in?" in w for w in warnings)
    assert any("Typos.handle_vote is not a Channel callback" in w for w in warnings)
    assert any("Typos.handle_zzzzzzz" in w and "handle_in or handle_info or handle_out" in w
               for w in warnings)
    assert any("Typos.terminte" in w and "did you mean terminate?" in w for w in warnings)
    assert any("NoJoin does not define join()" in w for w in warnings)
    assert not any("helper" in w for w in warnings)


def test_room_classes_are_checked() -> None:
    errors, warnings = check({"room:*": Good}, Rooms(BadRoom))
    assert "BadRoom.handle_call must be defined with 'async def'" in errors
    assert "BadRoom.snapshot must be a plain 'def' (not async)" in errors
    assert any("BadRoom.handle_cal" in w and "did you mean handle_call?" in w for w in warnings)


async def test_serve_refuses_to_start_with_errors() -> None:
    socket = type("S", (Socket,), {"channels": {"a:*:b": Good}})
    with pytest.raises(ConfigError) as info:
        await Endpoint({"/socket": socket}).serve("127.0.0.1", 0)
    assert info.value.problems and "only a trailing" in info.value.problems[0]
