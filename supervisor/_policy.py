"""Sans-IO restart policy: restart types, strategies and the intensity window.

Nothing here touches trio, so the decisions can be tested as plain functions.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence

__all__ = [
    "Restart",
    "RestartIntensity",
    "Strategy",
    "children_to_restart",
    "should_restart",
]


class Restart(enum.Enum):
    """When a child that has ended is started again."""

    PERMANENT = "permanent"
    """Always restarted, whether it crashed or returned."""
    TRANSIENT = "transient"
    """Restarted only if it ended with an exception."""
    TEMPORARY = "temporary"
    """Never restarted."""


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one of them fails (OTP semantics)."""

    ONE_FOR_ONE = "one_for_one"
    """Only the failed child."""
    ONE_FOR_ALL = "one_for_all"
    """Every child."""
    REST_FOR_ONE = "rest_for_one"
    """The failed child and every child started after it."""


def should_restart(restart: Restart, crashed: bool) -> bool:
    """Whether a child of type ``restart`` that ended (``crashed`` or not) is restarted."""
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return crashed
    return False


def children_to_restart(
    strategy: Strategy, child_ids_in_start_order: Sequence[str], failed_id: str
) -> list[str]:
    """Ids of the children to restart after ``failed_id`` failed, in start order.

    The caller stops the affected ones in reverse of this order, then starts them in
    this order. Raises ``ValueError`` if ``failed_id`` is not among the children.
    """
    ids = list(child_ids_in_start_order)
    try:
        index = ids.index(failed_id)
    except ValueError:
        raise ValueError(f"unknown child id {failed_id!r}") from None
    if strategy is Strategy.ONE_FOR_ONE:
        return [failed_id]
    if strategy is Strategy.ONE_FOR_ALL:
        return ids
    return ids[index:]


class RestartIntensity:
    """At most ``max_restarts`` restarts within any trailing ``period`` seconds.

    A restart at time ``t`` is still inside the window at time ``now`` while
    ``now - t <= period`` (inclusive, as in OTP). Only the newest ``max_restarts + 1``
    timestamps can decide the answer, so memory is bounded by ``max_restarts``.
    """

    __slots__ = ("_times", "max_restarts", "period")

    def __init__(self, max_restarts: int, period: float) -> None:
        if max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        if not period > 0:
            raise ValueError("period must be > 0")
        self.max_restarts = max_restarts
        self.period = period
        self._times: deque[float] = deque(maxlen=max_restarts + 1)

    def record(self, now: float) -> bool:
        """Record a restart at ``now``; return False if the intensity is now exceeded.

        ``now`` must not go backwards between calls (use a monotonic clock).
        """
        times = self._times
        if times and now < times[-1]:
            raise ValueError("time went backwards")
        times.append(now)
        # The window holds more than max_restarts entries iff the oldest of the
        # newest max_restarts + 1 entries is still inside it.
        return len(times) <= self.max_restarts or now - times[0] > self.period
