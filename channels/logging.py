"""Log formats and the connection context of log lines.

``channels.logging.configure(format="json")`` writes one JSON object per line to stderr::

    {"time": "2026-11-30T10:04:05.123+00:00", "level": "INFO", "logger": "channels.access",
     "message": "connect 10.0.0.7:51234 /socket/websocket?vsn=2.0.0&token=[FILTERED] 101 2.1ms",
     "connection_id": 17, "peer": "10.0.0.7:51234", "path": "/socket/websocket", "status": 101,
     "duration_ms": 2.1, "socket": "UserSocket"}

While the JSON format is on, every line logged by a connection's tasks (the runtime's and
your own ``logging`` calls in ``connect``, ``join`` and the channel callbacks) carries the
``connection_id``, ``peer``, ``socket_id`` (your ``Socket.id()``), ``topic`` and ``event``
it knows of, taken from context variables; fields given with ``extra=`` win.

Two informational logs come with the runtime, each sampled to at most
:data:`SAMPLE_RATE` lines per second (the next line written says how many were skipped):
``channels.access`` (one line per WebSocket upgrade answered, token-like query parameters
masked) and ``channels.join`` (one line per join answered). Silence them with
``logging.getLogger("channels.access").setLevel(logging.WARNING)``.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from contextvars import ContextVar
from typing import Any, TextIO
from urllib.parse import parse_qsl, quote

import orjson

from channels.logutil import Sampler

__all__ = [
    "JsonFormatter",
    "access_log",
    "configure",
    "enable_context",
    "join_log",
    "mask_query",
]

#: Lines per second of each sampled log (``channels.access``, ``channels.join``).
SAMPLE_RATE = 100.0

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The connection a task serves: ``{"connection_id", "peer", "socket_id"}`` (one dict per
#: connection, shared by its channel tasks, so ``socket_id`` set after connect shows in all).
connection_var: ContextVar[dict[str, Any] | None] = ContextVar("channels_connection",
                                                                default=None)
topic_var: ContextVar[str | None] = ContextVar("channels_topic", default=None)
event_var: ContextVar[str | None] = ContextVar("channels_event", default=None)


class _State:
    """Module switches read on the hot path (a module attribute lookup)."""

    #: Set context variables per connection, channel and message (on with the JSON format:
    #: the text format does not show them, and each costs a little memory and time).
    context = False


state = _State()

access_log = Sampler(logging.getLogger("channels.access"), SAMPLE_RATE)
join_log = Sampler(logging.getLogger("channels.join"), SAMPLE_RATE)

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}
_CONTEXT_FIELDS = ("connection_id", "peer", "socket_id")


def enable_context(on: bool = True) -> None:
    """Attach connection, topic and event context to log records (see the module doc); the
    JSON format turns it on. Affects connections and channels started afterwards."""
    state.context = on


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the context
    fields known (``connection_id``, ``peer``, ``socket_id``, ``topic``, ``event``), any
    ``extra=`` fields, and ``exception`` / ``stack`` when present."""

    def __init__(self) -> None:
        super().__init__()
        enable_context()

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        conn = connection_var.get()
        if conn is not None:
            for key in _CONTEXT_FIELDS:
                value = conn.get(key)
                if value is not None:
                    obj[key] = value
        topic = topic_var.get()
        if topic is not None:
            obj["topic"] = topic
        event = event_var.get()
        if event is not None:
            obj["event"] = event
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                obj[key] = value
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            obj["exception"] = record.exc_text
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(obj, default=str).decode()
        except TypeError:  # an int past 64 bits, a non-str key: the stdlib is more lenient
            return json.dumps(obj, default=str, skipkeys=True)


def configure(format: str = "text", level: int | str = "INFO",
              stream: TextIO | None = None) -> logging.Handler:
    """Log to ``stream`` (stderr) in ``format`` ``"text"`` or ``"json"`` at ``level``.

    Replaces the root logger's handlers (and the one an earlier call installed); returns the
    handler. ``trio-channels serve --log-format json`` calls this.
    """
    if format not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


def mask_query(query: str) -> str:
    """``query`` with the values of token-like parameters (``token``, ``password``, ``secret``,
    ``authorization`` in the name, as :func:`channels.tokens.masked_params`) replaced by
    ``[FILTERED]``."""
    if not query:
        return query
    from channels.tokens import DEFAULT_FILTERS

    parts = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        lowered = key.lower()
        if any(f in lowered for f in DEFAULT_FILTERS):
            value = "[FILTERED]"
        parts.append(f"{quote(key, safe='[]')}={quote(value, safe='[]')}")
    return "&".join(parts)
