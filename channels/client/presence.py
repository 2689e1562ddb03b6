"""Client-side Presence: phoenix.js's ``Presence``, line for line.

``presence_state`` replaces the state (computing joins and leaves against the current one),
``presence_diff`` applies joins then leaves. Diffs that arrive after a (re)join but before
its ``presence_state`` wait and are applied right after it. Keys are iterated in
JavaScript's order (integer-like keys ascending first), so callbacks and :meth:`list` come
in the same order as in the browser.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson

if TYPE_CHECKING:
    from channels.client.channel import ClientChannel

__all__ = ["ClientPresence"]

Presences: TypeAlias = dict[str, Any]
"""``{key: {"metas": [{"phx_ref": ..., ...}, ...]}}``"""
JoinCallback: TypeAlias = Callable[[str, "dict[str, Any] | None", "dict[str, Any]"], object]
LeaveCallback: TypeAlias = Callable[[str, "dict[str, Any]", "dict[str, Any]"], object]


def _noop(*_: Any) -> None:
    return None


def _clone(value: Any) -> Any:
    """``JSON.parse(JSON.stringify(value))``."""
    return orjson.loads(orjson.dumps(value))


def _is_index(key: str) -> bool:
    return (key.isascii() and key.isdigit() and (key == "0" or key[0] != "0")
            and int(key) < 2**32 - 1)


def _keys(obj: Mapping[str, Any]) -> list[str]:
    """``Object.getOwnPropertyNames`` order: array indices ascending, then insertion order."""
    indices = [key for key in obj if _is_index(key)]
    if not indices:
        return list(obj)
    return sorted(indices, key=int) + [key for key in obj if not _is_index(key)]


def _truthy(value: Any) -> bool:
    """JavaScript truthiness (objects and arrays are true even when empty)."""
    if isinstance(value, dict | list):
        return True
    return value is not None and value is not False and value != 0 and value != ""


def _refs(presence: Mapping[str, Any]) -> list[Any]:
    return [meta.get("phx_ref") for meta in presence["metas"]]


class ClientPresence:
    """Tracks a channel's presences: ``ClientPresence(channel)`` before ``channel.join()``.

    ``on_join(fn(key, current, new))``, ``on_leave(fn(key, current, left))`` and
    ``on_sync(fn())`` set the callbacks (usable as decorators); :meth:`list` lists.
    """

    def __init__(self, channel: ClientChannel, events: Mapping[str, str] | None = None) -> None:
        events = events or {"state": "presence_state", "diff": "presence_diff"}
        self.state: Presences = {}
        self.pending_diffs: list[dict[str, Any]] = []
        self.channel = channel
        self.join_ref: str | None = None
        self._on_join: JoinCallback = _noop
        self._on_leave: LeaveCallback = _noop
        self._on_sync: Callable[[], object] = _noop
        channel.on(events["state"], self._handle_state)
        channel.on(events["diff"], self._handle_diff)

    def on_join(self, callback: JoinCallback) -> JoinCallback:
        self._on_join = callback
        return callback

    def on_leave(self, callback: LeaveCallback) -> LeaveCallback:
        self._on_leave = callback
        return callback

    def on_sync(self, callback: Callable[[], object]) -> Callable[[], object]:
        self._on_sync = callback
        return callback

    def list(self, by: Callable[[str, dict[str, Any]], Any] | None = None) -> list[Any]:
        """Every presence, or ``by(key, presence)`` of each."""
        return self.list_presences(self.state, by)

    def in_pending_sync_state(self) -> bool:
        return not self.join_ref or self.join_ref != self.channel.join_ref

    def _handle_state(self, new_state: Any) -> None:
        self.join_ref = self.channel.join_ref
        self.state = self.sync_state(self.state, new_state, self._on_join, self._on_leave)
        for diff in self.pending_diffs:
            self.state = self.sync_diff(self.state, diff, self._on_join, self._on_leave)
        self.pending_diffs = []
        self._on_sync()

    def _handle_diff(self, diff: Any) -> None:
        if self.in_pending_sync_state():
            self.pending_diffs.append(diff)
        else:
            self.state = self.sync_diff(self.state, diff, self._on_join, self._on_leave)
            self._on_sync()

    # -- the static API of phoenix.js ---------------------------------------------------------

    @staticmethod
    def sync_state(current_state: Presences, new_state: Presences,
                   on_join: JoinCallback | None = None,
                   on_leave: LeaveCallback | None = None) -> Presences:
        """The state after ``presence_state``; calls back for every join and leave."""
        state = _clone(current_state)
        joins: Presences = {}
        leaves: Presences = {}
        for key in _keys(state):
            if not _truthy(new_state.get(key)):
                leaves[key] = state[key]
        for key in _keys(new_state):
            new_presence = new_state[key]
            current: Any = state.get(key)
            if _truthy(current):
                new_refs = _refs(new_presence)
                current_refs = _refs(current)
                joined = [m for m in new_presence["metas"] if m.get("phx_ref") not in current_refs]
                left = [m for m in current["metas"] if m.get("phx_ref") not in new_refs]
                if joined:
                    joins[key] = {**new_presence, "metas": joined}
                if left:
                    leaves[key] = {**_clone(current), "metas": left}
            else:
                joins[key] = new_presence
        return ClientPresence.sync_diff(state, {"joins": joins, "leaves": leaves},
                                        on_join, on_leave)

    @staticmethod
    def sync_diff(state: Presences, diff: Mapping[str, Any],
                  on_join: JoinCallback | None = None,
                  on_leave: LeaveCallback | None = None) -> Presences:
        """The state after ``presence_diff`` (joins, then leaves)."""
        state = dict(state)
        cloned = _clone(diff)
        joins: Presences = cloned["joins"]
        leaves: Presences = cloned["leaves"]
        on_join = on_join or _noop
        on_leave = on_leave or _noop
        for key in _keys(joins):
            new_presence = joins[key]
            current: Any = state.get(key)
            state[key] = _clone(new_presence)
            if _truthy(current):
                joined_refs = _refs(state[key])
                current_metas = [m for m in current["metas"]
                                 if m.get("phx_ref") not in joined_refs]
                state[key]["metas"][:0] = current_metas
            on_join(key, current, new_presence)
        for key in _keys(leaves):
            left_presence = leaves[key]
            current = state.get(key)
            if not _truthy(current):
                continue
            refs_to_remove = _refs(left_presence)
            current["metas"] = [m for m in current["metas"]
                                if m.get("phx_ref") not in refs_to_remove]
            on_leave(key, current, left_presence)
            if not current["metas"]:
                del state[key]
        return state

    @staticmethod
    def list_presences(presences: Presences,
                       chooser: Callable[[str, dict[str, Any]], Any] | None = None
                       ) -> builtins.list[Any]:
        """phoenix.js ``Presence.list``: ``chooser(key, presence)`` for each key, in order."""
        if chooser is None:
            return [presences[key] for key in _keys(presences)]
        return [chooser(key, presences[key]) for key in _keys(presences)]
