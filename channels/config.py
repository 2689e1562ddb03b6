"""Checks of an endpoint's configuration, run once when it starts (not per connection).

:func:`check_endpoint` returns the problems as text, one line each: errors stop the node
from starting (:class:`ConfigError`); warnings are logged.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from channels.channel import Channel, Socket
from channels.rooms import Room, Rooms, room_classes

__all__ = ["BindError", "ConfigError", "check_endpoint"]

CHANNEL_CALLBACKS = ("join", "handle_in", "handle_info", "handle_out", "terminate")
ROOM_CALLBACKS = ("init", "handle_call", "handle_cast", "handle_info", "terminate")
ROOM_SYNC = ("snapshot", "restore")


class ConfigError(ValueError):
    """The endpoint's configuration is wrong; ``problems`` lists each error on one line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class BindError(OSError):
    """A listening socket could not be bound (a busy port, a foreign address)."""

    def __init__(self, what: str, host: str, port: int, error: OSError) -> None:
        super().__init__(error.errno, error.strerror or str(error))
        self.what = what
        self.host = host
        self.port = port

    def __str__(self) -> str:
        why = (self.strerror or "").lower() or "error"
        return f"cannot listen on {self.host}:{self.port} ({self.what}): {why}"


class Configured(Protocol):
    """What is checked of an endpoint: its socket mounts and its rooms."""

    @property
    def sockets(self) -> Mapping[str, Any]: ...
    @property
    def rooms(self) -> Rooms | None: ...


def check_endpoint(endpoint: Configured) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` for the endpoint's sockets, channels and rooms."""
    errors: list[str] = []
    warnings: list[str] = []
    seen_channels: set[type] = set()
    for mount, socket_cls in endpoint.sockets.items():
        if not (isinstance(socket_cls, type) and issubclass(socket_cls, Socket)):
            errors.append(f"socket {mount!r}: {socket_cls!r} is not a Socket subclass")
            continue
        _check_async(socket_cls, ("connect",), Socket, errors)
        earlier: list[str] = []
        for pattern, channel_cls in socket_cls.channels.items():
            where = f"{socket_cls.__name__}.channels[{pattern!r}]"
            if not (isinstance(channel_cls, type) and issubclass(channel_cls, Channel)):
                errors.append(f"{where}: {channel_cls!r} is not a Channel subclass")
            elif channel_cls not in seen_channels:
                seen_channels.add(channel_cls)
                _check_callbacks(channel_cls, Channel, CHANNEL_CALLBACKS, (), errors, warnings)
                if channel_cls.join is Channel.join:
                    warnings.append(f"{channel_cls.__name__} does not define join(): every "
                                    f"join of {pattern!r} is accepted")
            if not isinstance(pattern, str) or not pattern:
                errors.append(f"{where}: a topic pattern must be a non-empty string")
                continue
            if "*" in pattern[:-1]:
                errors.append(f"{where}: only a trailing '*' is supported (as in Phoenix), "
                              f"so {pattern!r} would only match literally")
            for other in earlier:
                if _shadows(other, pattern):
                    errors.append(f"{where}: never matches: {other!r} is listed before it "
                                  f"and matches every topic it does (list the narrower "
                                  f"pattern first)")
                    break
            earlier.append(pattern)
    rooms = endpoint.rooms
    if rooms is not None:
        for room_cls in room_classes(rooms):
            _check_callbacks(room_cls, Room, ROOM_CALLBACKS, ROOM_SYNC, errors, warnings)
    return errors, warnings


def _shadows(earlier: str, later: str) -> bool:
    """True if every topic ``later`` matches is matched by ``earlier`` first."""
    if earlier.endswith("*"):
        prefix = earlier[:-1]
        return later.startswith(prefix)
    return earlier == later


def _check_async(cls: type, names: Iterable[str], base: type, errors: list[str]) -> None:
    for name in names:
        fn = getattr(cls, name, None)
        if fn is None or fn is getattr(base, name, None):
            continue
        if not inspect.iscoroutinefunction(fn):
            errors.append(f"{cls.__name__}.{name} must be defined with 'async def'")


def _check_callbacks(cls: type, base: type, callbacks: tuple[str, ...], sync: tuple[str, ...],
                     errors: list[str], warnings: list[str]) -> None:
    _check_async(cls, callbacks, base, errors)
    for name in sync:
        fn = getattr(cls, name, None)
        if fn is not None and fn is not getattr(base, name, None) \
                and inspect.iscoroutinefunction(fn):
            errors.append(f"{cls.__name__}.{name} must be a plain 'def' (not async)")
    known = set(callbacks) | set(sync) | set(dir(base))
    for klass in cls.__mro__:
        if klass is base or not issubclass(klass, base):
            continue
        for name, value in vars(klass).items():
            if name in known or name.startswith("__") or not callable(value):
                continue
            guess = _likely_typo(name, (*callbacks, *sync))
            if guess is not None:
                warnings.append(f"{klass.__name__}.{name} is not a {base.__name__} callback "
                                f"and is never called: did you mean {guess}?")


def _likely_typo(name: str, callbacks: tuple[str, ...]) -> str | None:
    match: list[Any] = difflib.get_close_matches(name, callbacks, n=1, cutoff=0.8)
    if match:
        return str(match[0])
    if name.startswith("handle_"):
        return " or ".join(c for c in callbacks if c.startswith("handle_"))
    return None
