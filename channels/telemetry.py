"""Telemetry hooks in the style of Erlang's ``:telemetry``: named events, attached handlers.

Every endpoint has one :class:`Telemetry` (``endpoint.telemetry``). The runtime *executes*
events at points of interest; your handlers turn them into whatever you export (StatsD,
OpenTelemetry, logs)::

    def on_join(event, measurements, metadata):
        statsd.timing("join", measurements["duration"] * 1000, tags=[metadata["channel"]])

    endpoint.telemetry.attach(("channels", "join"), on_join)

Handlers run synchronously, in the task that executed the event, so they must be quick and
must not block. A handler that raises is logged once and detached (as ``:telemetry`` does);
the runtime carries on. Nothing is measured or built for an event nobody listens to.

The events the runtime executes are listed in :data:`EVENTS` (and in docs/operations.md).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "BROADCAST",
    "CONNECT",
    "CRASH",
    "EVENTS",
    "HANDLE_IN_EXCEPTION",
    "HANDLE_IN_STOP",
    "JOIN",
    "LEAVE",
    "PROTECTION",
    "Event",
    "Handler",
    "Telemetry",
]

log = logging.getLogger("channels.telemetry")

Event = tuple[str, ...]
#: ``handler(event, measurements, metadata)``.
Handler = Callable[[Event, dict[str, Any], dict[str, Any]], None]

#: A WebSocket upgrade was answered. measurements: ``duration`` (s, request to answer, your
#: ``connect`` included). metadata: ``status`` (101, or the refusal's HTTP status), ``path``,
#: ``peer``, ``socket`` (class name), ``transport``, ``connection_id``.
CONNECT: Event = ("channels", "connect")
#: A join was answered. measurements: ``duration`` (s, your ``join``). metadata: ``topic``,
#: ``channel`` (class name), ``status`` (``"ok"``, ``"error"`` or ``"crash"``),
#: ``connection_id``, ``socket_id``.
JOIN: Event = ("channels", "join")
#: A client left a topic. metadata: ``topic``, ``channel``, ``connection_id``.
LEAVE: Event = ("channels", "leave")
#: ``handle_in`` returned. measurements: ``duration`` (s). metadata: ``topic``, ``event``,
#: ``channel``, ``status`` (the reply's status, or None for no reply).
HANDLE_IN_STOP: Event = ("channels", "handle_in", "stop")
#: ``handle_in`` raised (the channel crashes). measurements: ``duration``. metadata: ``topic``,
#: ``event``, ``channel``, ``exception``.
HANDLE_IN_EXCEPTION: Event = ("channels", "handle_in", "exception")
#: A channel crashed (any callback). metadata: ``topic``, ``channel``, ``exception``,
#: ``connection_id``.
CRASH: Event = ("channels", "crash")
#: A broadcast was delivered on this node. measurements: ``recipients``. metadata: ``topic``,
#: ``event``.
BROADCAST: Event = ("channels", "broadcast")
#: A protection kicked in. metadata: ``kind`` (``"rate_limited"``, ``"rate_limit_close"``,
#: ``"overloaded"``, ``"slow_consumer"``, ``"idle_close"``), ``peer``, ``connection_id``,
#: and ``topic`` where there is one.
PROTECTION: Event = ("channels", "protection")

#: Every event the runtime executes.
EVENTS: tuple[Event, ...] = (CONNECT, JOIN, LEAVE, HANDLE_IN_STOP, HANDLE_IN_EXCEPTION, CRASH,
                             BROADCAST, PROTECTION)

_ids = itertools.count(1)


class Telemetry:
    """Attached handlers by event name; :meth:`execute` calls them.

    ``active`` is the set of events with at least one handler: the runtime checks it before
    measuring anything, so an event with no handler costs a set lookup.
    """

    def __init__(self) -> None:
        self._handlers: dict[Event, list[tuple[str, Handler]]] = {}
        #: Events with at least one handler (read-only; rebuilt on attach and detach).
        self.active: frozenset[Event] = frozenset()
        #: Called after every attach/detach (the endpoint re-decides what to measure).
        self.on_change: Callable[[], None] | None = None

    def attach(self, event: Iterable[str], handler: Handler, *,
               handler_id: str | None = None) -> str:
        """Call ``handler(event, measurements, metadata)`` on every ``event``; returns the
        handler id (give your own to detach it by name; ids are unique)."""
        return self.attach_many([event], handler, handler_id=handler_id)

    def attach_many(self, events: Iterable[Iterable[str]], handler: Handler, *,
                    handler_id: str | None = None) -> str:
        """Attach one handler to several events under one id."""
        if not callable(handler):
            raise TypeError(f"handler {handler!r} is not callable")
        names = [_event(e) for e in events]
        hid = handler_id if handler_id is not None else f"handler-{next(_ids)}"
        if any(h == hid for hs in self._handlers.values() for h, _ in hs):
            raise ValueError(f"a telemetry handler with id {hid!r} is already attached")
        for name in names:
            self._handlers.setdefault(name, []).append((hid, handler))
        self._changed()
        return hid

    def detach(self, handler_id: str) -> bool:
        """Remove the handler attached under ``handler_id``; False if there was none."""
        found = False
        for name in list(self._handlers):
            kept = [(h, fn) for h, fn in self._handlers[name] if h != handler_id]
            if len(kept) != len(self._handlers[name]):
                found = True
                if kept:
                    self._handlers[name] = kept
                else:
                    del self._handlers[name]
        if found:
            self._changed()
        return found

    def handlers(self, event: Iterable[str] | None = None) -> list[tuple[Event, str]]:
        """``(event, handler_id)`` of the attached handlers (of ``event`` only, if given)."""
        wanted = None if event is None else _event(event)
        return [(name, hid) for name, hs in self._handlers.items()
                if wanted is None or name == wanted for hid, _ in hs]

    def execute(self, event: Event, measurements: dict[str, Any],
                metadata: dict[str, Any]) -> None:
        """Call the handlers of ``event`` (all get the same dicts: do not change them).
        A handler that raises is logged and detached."""
        handlers = self._handlers.get(event)
        if not handlers:
            return
        for hid, handler in list(handlers):
            try:
                handler(event, measurements, metadata)
            except Exception:
                log.exception("telemetry handler %r of %s raised: detached", hid,
                              ".".join(event))
                self.detach(hid)

    def _changed(self) -> None:
        self.active = frozenset(self._handlers)
        if self.on_change is not None:
            self.on_change()


def _event(event: Iterable[str]) -> Event:
    name = tuple(event) if not isinstance(event, str) else (event,)
    if not name or not all(isinstance(part, str) and part for part in name):
        raise ValueError(f"an event name is a tuple of non-empty strings, got {event!r}")
    return name
