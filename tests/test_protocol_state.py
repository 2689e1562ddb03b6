"""The socket's protocol rules as a plain object: no sockets, no trio."""

from __future__ import annotations

from typing import Any

from channels.protocol import Route, SocketState
from channels.serializer import Message


def msg(topic: str, event: str, join_ref: str | None = None, payload: Any = None) -> Message:
    return Message(join_ref, "1", topic, event, {} if payload is None else payload)


def test_heartbeat_is_answered_before_any_lookup() -> None:
    state: SocketState[str] = SocketState()
    assert state.route(msg("phoenix", "heartbeat")) is Route.HEARTBEAT
    assert state.route(msg("phoenix", "heartbeat", payload=[1])) is Route.HEARTBEAT


def test_join_leave_forward_unmatched() -> None:
    state: SocketState[str] = SocketState()
    assert state.route(msg("room:a", "phx_join", "1")) is Route.JOIN
    assert state.route(msg("room:a", "new_msg", "1")) is Route.UNMATCHED
    assert state.route(msg("room:a", "phx_leave", "1")) is Route.LEAVE_NOT_JOINED
    state.add("room:a", "1", "proc-a")
    assert state.route(msg("room:a", "new_msg", "1")) is Route.FORWARD
    assert state.route(msg("room:a", "phx_leave", "1")) is Route.LEAVE
    # a join for a joined topic is still a join (the runtime replaces the old channel)
    assert state.route(msg("room:a", "phx_join", "2")) is Route.JOIN


def test_join_ref_rules() -> None:
    state: SocketState[str] = SocketState()
    state.add("room:a", "5", "proc")
    assert state.route(msg("room:a", "ev", None)) is Route.FORWARD      # null: accepted (#6800)
    assert state.route(msg("room:a", "ev", "5")) is Route.FORWARD
    assert state.route(msg("room:a", "ev", "4")) is Route.STALE         # dropped silently
    assert state.route(msg("room:a", "phx_leave", "4")) is Route.STALE
    assert state.route(msg("room:a", "phx_leave", None)) is Route.LEAVE


def test_invalid_payloads() -> None:
    state: SocketState[str] = SocketState()
    for payload in ([1], "s", 3, None):
        m = Message("1", "1", "room:a", "phx_join", payload)
        assert state.route(m) is Route.INVALID
    assert state.route(Message("1", "1", "room:a", "phx_join", b"bin")) is Route.JOIN


def test_channel_limit_ignores_the_duplicate() -> None:
    state: SocketState[str] = SocketState(max_channels=2)
    assert state.can_join("a")
    state.add("a", "1", "pa")
    state.add("b", "2", "pb")
    assert not state.can_join("c")
    assert state.can_join("a")  # a duplicate join replaces its old channel


def test_add_returns_replaced_and_remove_checks_owner() -> None:
    state: SocketState[str] = SocketState()
    assert state.add("a", "1", "old") is None
    replaced = state.add("a", "2", "new")
    assert replaced is not None and replaced.handle == "old" and replaced.join_ref == "1"
    assert state.remove("a", "old") is None  # the old process may not remove the new one
    removed = state.remove("a", "new")
    assert removed is not None and removed.join_ref == "2"
    assert state.get("a") is None
