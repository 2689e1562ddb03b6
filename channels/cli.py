"""``trio-channels serve MODULE:ATTR``: run an endpoint until SIGINT/SIGTERM, then drain."""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from channels.endpoint import Endpoint

log = logging.getLogger("channels.cli")


class UsageError(Exception):
    """A mistake in how the node was started: printed as one line, exit code 2."""


def load_endpoint(spec: str) -> Endpoint:
    """Import ``module:attr``; ``attr`` is an Endpoint or a zero-argument factory of one."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR (e.g. examples.chat.app:endpoint), got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        dotted = module_name.removesuffix(".py").strip("./").replace("/", ".").replace(
            os.sep, ".")
        raise UsageError(f"{module_name!r} is a file path: give the module name, e.g. "
                         f"{dotted}:{attr} (run from the directory that contains it)")
    sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UsageError(f"cannot import {module_name!r}: no module named {exc.name!r} "
                             f"(current directory: {os.getcwd()})") from None
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Endpoint) and callable(obj):
        obj = obj()
    if not isinstance(obj, Endpoint):
        raise UsageError(f"{spec} is not an Endpoint (or a factory of one)")
    return obj


async def serve(endpoint: Endpoint, host: str, port: int,
                on_ready: Callable[[int], None] | None = None, reuse_port: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then drain clients and return.

    Signals are watched from the start, whatever state the node is in (starting, Redis down,
    draining): the first drains and stops within the endpoint's ``drain_timeout``; a second
    one exits at once.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            serving = False

            async def run_endpoint(task_status: trio.TaskStatus[int]) -> None:
                await endpoint.serve(host, port, reuse_port=reuse_port, task_status=task_status)
                nursery.cancel_scope.cancel()  # serve() returned: stop watching signals

            async def watch_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if nursery.cancel_scope.deadline != math.inf:
                        log.warning("received %s again: exiting now", name)
                        logging.shutdown()
                        os._exit(1)
                    if not serving:
                        log.info("received %s while starting: stopping", name)
                        nursery.cancel_scope.deadline = trio.current_time() + 5.0
                        nursery.cancel_scope.cancel()
                        continue
                    log.info("received %s: draining (at most %gs; send it again to exit at "
                             "once)", name, endpoint.drain_timeout)
                    # Everything after this point (drain, handoff, flush) is bounded; a stop
                    # still running well past the deadline is ended from another thread.
                    nursery.cancel_scope.deadline = trio.current_time() + endpoint.drain_timeout
                    backstop = threading.Timer(endpoint.drain_timeout + 5.0, _hard_exit,
                                               (endpoint.drain_timeout,))
                    backstop.daemon = True
                    backstop.start()
                    nursery.start_soon(endpoint.drain)

            nursery.start_soon(watch_signals)
            bound = await nursery.start(run_endpoint)
            serving = True
            if on_ready is not None:
                on_ready(bound)


def _hard_exit(drain_timeout: float) -> None:
    log.error("did not stop within the drain timeout (%gs): exiting now", drain_timeout)
    logging.shutdown()
    os._exit(1)


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
    p.add_argument("--log-format", choices=("text", "json"),
                   default=os.environ.get("TRIO_CHANNELS_LOG_FORMAT", "text"),
                   help="text (default), or json: one JSON object per line")
    p.add_argument("--metrics-port", type=int,
                   default=os.environ.get("TRIO_CHANNELS_METRICS_PORT"),
                   help="serve Prometheus metrics at /metrics on this port, on --host "
                        "(default: off)")
    p.add_argument("--workers", type=int, default=os.environ.get("TRIO_CHANNELS_WORKERS"),
                   help="run N worker processes on the port as one cluster, under a supervisor "
                        "that restarts them; without --redis-url they connect through a "
                        "private redis-server (default: this process serves alone)")
    p.add_argument("--reuse-port", action="store_true",
                   help="listen with SO_REUSEPORT (several processes on one port)")
    from channels.client.cli import add_arguments as add_client_arguments

    add_client_arguments(sub.add_parser(
        "client", help="join a topic and print every event as one JSON line (debugging)"))
    args = parser.parse_args(argv)
    if args.command == "client":
        from channels.client.cli import run as run_client

        return run_client(args)
    from channels.logging import configure

    configure(format=args.log_format, level=args.log_level)
    if args.workers is not None:  # the supervisor of N worker processes
        from channels.workers import supervise

        return supervise(args)
    try:
        return _serve_command(args)
    except UsageError as exc:
        print(f"trio-channels: {exc}", file=sys.stderr)
        return 2


def _serve_command(args: argparse.Namespace) -> int:
    from channels.api import API_KEYS_ENV
    from channels.config import BindError, ConfigError
    from channels.redis import NodeNameInUse

    endpoint = load_endpoint(args.app)
    api_keys = os.environ.get(API_KEYS_ENV, "").strip()
    if api_keys:  # never a flag: the command line of a process is visible to every user
        try:
            endpoint.enable_api(api_keys)
        except ValueError as exc:
            raise UsageError(f"{API_KEYS_ENV}: {exc}") from None
    if args.metrics_port is not None:
        endpoint.enable_metrics(args.metrics_port)
    if args.redis_url:
        from channels.redis import RedisAdapter

        try:
            endpoint.use_adapter(RedisAdapter(args.redis_url, node_name=args.node_name))
        except ValueError as exc:
            raise UsageError(f"--redis-url: {exc}") from None
    elif args.node_name:
        endpoint.pubsub.adapter.node_name = args.node_name
    from channels.workers import WORKER_ENV, setup_worker, worker_ready_line

    worker = os.environ.get(WORKER_ENV)
    if worker:  # started by `serve --workers N`: tag log lines with the node name
        setup_worker(worker, args.node_name or worker)

    def ready(port: int) -> None:
        # Tests and scripts wait for this line to know the node is up.
        if worker:  # for the supervisor (channels.workers)
            print(worker_ready_line(worker, endpoint), flush=True)
        print(f"trio-channels: serving on http://{args.host}:{port}", flush=True)

    try:
        trio.run(serve, endpoint, args.host, args.port, ready, args.reuse_port)
    except Exception as exc:
        if (conflict := _leaf(exc, NodeNameInUse)) is not None:
            raise UsageError(f"node name {args.node_name!r} is already in use by a live node "
                             f"({conflict})") from None
        if (config := _leaf(exc, ConfigError)) is not None:
            for problem in config.problems:
                print(f"trio-channels: configuration: {problem}", file=sys.stderr)
            return 2
        if (bind := _leaf(exc, BindError)) is not None:
            raise UsageError(str(bind)) from None
        raise
    log.info("stopped")
    return 0


E = TypeVar("E", bound=BaseException)


def _leaf(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of ``kind`` in ``exc`` or, for a group, among its leaves."""
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _leaf(sub, kind)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, kind) else None


if __name__ == "__main__":
    raise SystemExit(main())
