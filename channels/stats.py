"""Plain-int counters of an endpoint, kept always (an add per event) and read at scrape time.

The hot paths only add to ints here; nothing calls a metrics library per message. The
Prometheus exporter (:mod:`channels.metrics`) turns these into metric families when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["FANOUT_BUCKETS", "LATENCY_BUCKETS", "Counters", "Histogram"]

#: Seconds: handle_in durations.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Recipients of one broadcast on this node.
FANOUT_BUCKETS = (0.0, 1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0)


class Histogram:
    """Fixed buckets of plain ints: :meth:`observe` is a bisect and two adds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` per bucket, ending with ``inf``."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Counters:
    """What happened on one endpoint since it was made. Keys of the dicts are channel classes
    (``joins`` by ``(class, status)``), turned into names at scrape time."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connects",
        "crashes",
        "handle_in",
        "idle_closes",
        "joins",
        "leaves",
        "messages_in",
        "messages_out",
        "overloaded",
        "rate_limit_closes",
        "rate_limited",
        "replies",
        "slow_consumers",
        "timed",
    )

    def __init__(self) -> None:
        self.messages_in = 0
        self.bytes_in = 0
        #: Frames this node wrote itself (replies, pushes); fastlane broadcast frames are
        #: counted by the pubsub (``PubSub.fastlane_frames``).
        self.messages_out = 0
        self.bytes_out = 0
        self.connects: dict[int, int] = {}  # HTTP status -> upgrades answered
        self.joins: dict[tuple[type, str], int] = {}  # (channel class, ok/error/crash)
        self.leaves: dict[type, int] = {}
        self.crashes: dict[type, int] = {}
        self.replies: dict[str, int] = {}  # reply status -> replies to pushes
        self.rate_limited = 0
        self.rate_limit_closes = 0
        self.overloaded = 0
        self.slow_consumers = 0
        self.idle_closes = 0
        #: True when handle_in must be timed (metrics on, or a telemetry handler listens).
        self.timed = False
        #: handle_in durations per channel class (filled only while metrics are on).
        self.handle_in: dict[type, Histogram] | None = None
