"""``trio-channels serve MODULE:ATTR``: run an endpoint until SIGINT/SIGTERM, then drain."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import trio

from channels.endpoint import Endpoint

log = logging.getLogger("channels.cli")


def load_endpoint(spec: str) -> Endpoint:
    """Import ``module:attr``; ``attr`` is an Endpoint or a zero-argument factory of one."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"expected MODULE:ATTR, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Endpoint) and callable(obj):
        obj = obj()
    if not isinstance(obj, Endpoint):
        raise SystemExit(f"{spec} is not an Endpoint (or a factory of one)")
    return obj


async def serve(endpoint: Endpoint, host: str, port: int,
                on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then drain clients and return."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(endpoint.serve, host, port)
            if on_ready is not None:
                on_ready(bound)
            async for signum in signals:
                log.info("received %s: draining", signal.Signals(signum).name)
                await endpoint.drain()
                # serve() now stops on its own, in order (presence, then pubsub); bound it.
                nursery.cancel_scope.deadline = trio.current_time() + 10
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trio-channels")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run an endpoint")
    p.add_argument("app", help="MODULE:ATTR naming an Endpoint or a factory of one")
    p.add_argument("--host", default=os.environ.get("TRIO_CHANNELS_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("TRIO_CHANNELS_PORT", "4000")))
    p.add_argument("--log-level", default=os.environ.get("TRIO_CHANNELS_LOG_LEVEL", "INFO"))
    p.add_argument("--redis-url", default=os.environ.get("TRIO_CHANNELS_REDIS_URL"),
                   help="join a cluster through this Redis (default: single node)")
    p.add_argument("--node-name", default=os.environ.get("TRIO_CHANNELS_NODE_NAME"),
                   help="this node's unique name in the cluster (default: host-pid)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoint = load_endpoint(args.app)
    if args.redis_url:
        from channels.redis import RedisAdapter

        endpoint.pubsub.adapter = RedisAdapter(args.redis_url, node_name=args.node_name)
    elif args.node_name:
        endpoint.pubsub.adapter.node_name = args.node_name

    def ready(port: int) -> None:
        # Tests and scripts wait for this line to know the node is up.
        print(f"trio-channels: serving on http://{args.host}:{port}", flush=True)

    try:
        trio.run(serve, endpoint, args.host, args.port, ready)
    except Exception as exc:
        from channels.redis import NodeNameInUse

        if isinstance(exc, NodeNameInUse) or (
            isinstance(exc, BaseExceptionGroup)
            and exc.subgroup(NodeNameInUse) is not None
        ):
            print(f"trio-channels: node name {args.node_name!r} is already in use by a live node",
                  file=sys.stderr)
            return 2
        raise
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
