"""Presence scale check (a benchmark, not a test): ``python -m bench.presence_bench``.

Measures, in one process with the local pubsub (no network): track and untrack throughput,
and ``list`` latency, for 10,000 presences on one topic and for 10,000 topics of one
presence each. Diffs go to the Presence dispatcher as in a real node, and are broadcast
to a topic with no subscribers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import trio

from channels.pubsub import PubSub
from presence.tracker import Tracker


async def scenario(n: int, one_topic: bool) -> dict[str, Any]:
    diffs = 0

    def on_diff(topic: str, joins: Any, leaves: Any) -> None:
        nonlocal diffs
        diffs += 1

    pubsub = PubSub()
    tracker = Tracker(pubsub, on_diff=on_diff)
    out: dict[str, Any] = {"presences": n, "layout": "1 topic" if one_topic else f"{n} topics"}
    async with trio.open_nursery() as nursery:
        await nursery.start(pubsub.run)
        await nursery.start(tracker.run)

        def topic(i: int) -> str:
            return "room:big" if one_topic else f"room:{i}"

        t0 = time.perf_counter()
        for i in range(n):
            tracker.track(f"owner-{i}", topic(i), f"user-{i}", {"online_at": i})
        out["track_per_s"] = round(n / (time.perf_counter() - t0))

        samples = []
        for i in range(50 if one_topic else 2000):
            t = time.perf_counter()
            result = tracker.list(topic(i))
            samples.append(time.perf_counter() - t)
            assert result
        samples.sort()
        out["list_p50_ms"] = round(statistics.median(samples) * 1000, 3)
        out["list_p99_ms"] = round(samples[int(len(samples) * 0.99) - 1] * 1000, 3)
        if one_topic:
            assert len(tracker.list("room:big")) == n

        t0 = time.perf_counter()
        for i in range(n):
            tracker.untrack(f"owner-{i}", topic(i), f"user-{i}")
        out["untrack_per_s"] = round(n / (time.perf_counter() - t0))
        assert diffs == 2 * n
        nursery.cancel_scope.cancel()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10_000)
    args = parser.parse_args()
    results = [trio.run(scenario, args.n, True), trio.run(scenario, args.n, False)]
    print(json.dumps({"python": platform.python_version(), "results": results}, indent=2))
    print("\n| layout | presences | track/s | untrack/s | list p50 (ms) | list p99 (ms) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['layout']} | {r['presences']:,} | {r['track_per_s']:,} | "
              f"{r['untrack_per_s']:,} | {r['list_p50_ms']} | {r['list_p99_ms']} |")


if __name__ == "__main__":
    main()
