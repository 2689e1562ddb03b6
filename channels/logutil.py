"""Log-volume helpers: repeated lines once per interval, and at most N lines per second.

A node under attack or with a broken dependency must not write a line per event: the log
would cost more than the events. :class:`Throttled` reports a repeating message once per
interval with the number held back; :class:`Sampler` keeps a busy informational log (access,
joins) under a rate, saying how many lines it skipped.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

__all__ = ["Sampler", "Throttled"]


class Throttled:
    """Logs a message at most once per ``interval`` seconds per key, counting the repeats.

    ``throttled(key, level, msg, *args)``: the first call for ``key`` logs; calls within the
    next ``interval`` seconds are counted; the next one logged after that says
    ``(N similar messages suppressed)``.
    """

    __slots__ = ("_last", "interval", "logger")

    def __init__(self, logger: logging.Logger, interval: float = 5.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[object, tuple[float, int]] = {}

    def __call__(self, key: object, level: int, msg: str, *args: object,
                 exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        last, held = self._last.get(key, (-math.inf, 0))
        if now - last < self.interval:
            self._last[key] = (last, held + 1)
            return
        if held:
            msg += " (%d similar messages suppressed)"
            args = (*args, held)
        if len(self._last) > 10_000:  # keys made of unbounded values must not grow memory
            self._last.clear()
        self._last[key] = (now, 0)
        self.logger.log(level, msg, *args, exc_info=exc_info, stacklevel=2)


class Sampler:
    """At most ``rate`` lines per second (per sampler); the rest are counted, and the next
    line logged says how many were skipped (also as the ``skipped`` field in JSON logs).

    ``rate=None`` logs every line.
    """

    __slots__ = ("_count", "_skipped", "_window", "level", "logger", "rate")

    def __init__(self, logger: logging.Logger, rate: float | None = 100.0,
                 level: int = logging.INFO) -> None:
        self.logger = logger
        self.rate = rate
        self.level = level
        self._window = -math.inf
        self._count = 0
        self._skipped = 0

    def enabled(self) -> bool:
        """Whether a line would be written at all (check it before computing the line)."""
        return self.logger.isEnabledFor(self.level)

    def __call__(self, msg: str, *args: object, extra: dict[str, Any] | None = None) -> None:
        if self.rate is not None:
            now = time.monotonic()
            if now - self._window >= 1.0:
                self._window = now
                self._count = 0
            if self._count >= self.rate:
                self._skipped += 1
                return
            self._count += 1
        if self._skipped:
            msg += " (%d lines skipped by sampling)"
            args = (*args, self._skipped)
            extra = {**(extra or {}), "skipped": self._skipped}
            self._skipped = 0
        self.logger.log(self.level, msg, *args, extra=extra, stacklevel=2)

    @property
    def skipped(self) -> int:
        """Lines skipped since the last line written."""
        return self._skipped
