"""Cross-node broadcast benchmark (not a test): ``python -m bench.cluster_bench``.

Starts a private redis-server and two trio-channels nodes (bench app, RedisAdapter), puts
subscribers on node B and a publisher on node A (bench/load/cross.mjs), and reports the
cross-node broadcast rate, deliveries/s and p50/p99 latency publisher -> subscriber.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tests.cluster.redis_server import RedisServer
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--window", type=int, default=50)
    args = parser.parse_args()
    rows = []
    with RedisServer() as redis:
        nodes = [ServerProcess("bench.apps.channels_app:endpoint",
                               args=["--redis-url", redis.url, "--node-name", name,
                                     "--log-level", "WARNING"]) for name in ("bench-a", "bench-b")]
        for node in nodes:
            node.start()
        try:
            for subs in args.subscribers:
                out = subprocess.run(
                    ["taskset", "-c", "1", "node", str(ROOT / "bench/load/cross.mjs"),
                     f"ws://127.0.0.1:{nodes[0].port}", f"ws://127.0.0.1:{nodes[1].port}",
                     str(subs), str(args.seconds), str(args.window)],
                    capture_output=True, text=True, timeout=args.seconds + 60, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            for node in nodes:
                node.kill()
    print(json.dumps(rows, indent=2), file=sys.stderr)
    print("| subscribers on B | broadcasts/s A→B | deliveries/s | p50 ms | p99 ms | lost |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['subscribers']:,} | {r['broadcasts_per_s']:,} | {r['deliveries_per_s']:,} "
              f"| {r['p50_ms']} | {r['p99_ms']} | {r['lost']} |")


if __name__ == "__main__":
    main()
