"""Random schedules of joins, updates, leaves, loss, duplication, reordering, partitions, crashes
and restarts (reference §6 item 37). Once the network is whole again and a few sampling periods
pass, every live node lists exactly what the live nodes track, and its diffs agree.

Each seed is one schedule; ``TRACKER_CHAOS_SEEDS=500`` runs more of them.
"""

from __future__ import annotations

import os
import random

import pytest
import trio
from trio.testing import MockClock

from tests.presence.simbus import SimBus
from tests.presence.test_tracker_sim import DOWN, OPTS, Cluster, P

NAMES = ["a", "b", "c", "d"]
TOPICS = ["room:1", "room:2", "room:3"]
SEEDS = int(os.environ.get("TRACKER_CHAOS_SEEDS", "12"))


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_random_schedule_converges(autojump_clock: MockClock, nursery: trio.Nursery,
                                         seed: int) -> None:
    rng = random.Random(seed)
    bus = SimBus(nursery, seed=seed, delay=(0.01, 0.6))
    cluster = Cluster(nursery, bus)
    pool = rng.choice([1, 2])
    caps = rng.choice([(100, 1000, 10_000), (2, 5, 20)])
    for n in NAMES:
        await cluster.start(n, pool_size=pool, max_delta_sizes=caps)
    for _ in range(150):
        roll = rng.random()
        live = list(cluster.nodes)
        if roll < 0.03:
            groups = set(rng.sample(NAMES, rng.randint(1, 3)))
            bus.partition(groups, set(NAMES) - groups)
        elif roll < 0.06:
            bus.heal()
        elif roll < 0.09:
            bus.loss, bus.dup = rng.choice([0.0, 0.2, 0.5]), rng.choice([0.0, 0.1])
        elif roll < 0.11 and len(live) > 1:
            name = rng.choice(live)
            cluster.nodes[name].crash()
            cluster.forget(name)
        elif roll < 0.14:
            down = [n for n in NAMES if n not in cluster.nodes]
            if down:
                await cluster.start(rng.choice(down), pool_size=pool, max_delta_sizes=caps)
        elif roll < 0.20:
            await trio.sleep(rng.uniform(0, 3 * DOWN))
        else:
            name, topic = rng.choice(live), rng.choice(TOPICS)
            key, owner = rng.choice(["k1", "k2", "k3"]), rng.choice(["x", "y"])
            if (topic, f"{name}#{owner}", key) not in cluster.local[name]:
                cluster.track(name, topic, key, {"n": rng.random()}, owner=owner)
            elif rng.random() < 0.5:
                cluster.update(name, topic, key, {"n": rng.random()}, owner=owner)
            else:
                cluster.untrack(name, topic, key, owner=owner)
        await trio.sleep(rng.uniform(0, 0.5))

    bus.heal()
    bus.loss = bus.dup = 0.0
    # Dead nodes go down, live ones heartbeat, sample and transfer.
    await trio.sleep(DOWN + 8 * OPTS["clock_sample_periods"] * P)
    for t in TOPICS:
        cluster.check(t)
    live_refs = {ref for n in cluster.nodes.values() for ref in n.tracker.refs}
    for name, node in cluster.nodes.items():
        ups = {ref for ref, st in node.tracker.replicas().items() if st == "up"}
        assert ups == live_refs - set(node.tracker.refs), name
