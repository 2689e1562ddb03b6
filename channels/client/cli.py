"""``trio-channels client URL TOPIC``: join a topic and print every event as a JSON line."""

from __future__ import annotations

import argparse
import base64
import logging
import signal
import sys
import time
from typing import IO, Any

import orjson

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``client`` subcommand's arguments."""
    parser.add_argument("url", help="the socket's URL, e.g. ws://127.0.0.1:4000/socket "
                                    "(several, comma-separated: tried in turn on reconnect)")
    parser.add_argument("topic", help="the topic to join, e.g. room:lobby")
    parser.add_argument("--param", action="append", default=[], metavar="K=V",
                        help="a connect param (query string), repeatable")
    parser.add_argument("--join-param", action="append", default=[], metavar="K=V",
                        help="a join param, repeatable; K:=JSON gives a JSON value")
    parser.add_argument("--token", help="the auth token (phoenix.js authToken)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds for the connection and the join (default 10)")
    parser.add_argument("--heartbeat", type=float, default=30.0,
                        help="heartbeat interval in seconds (default 30)")
    parser.add_argument("--log-level", default="WARNING", help="client logs on stderr")


def _pairs(items: list[str], option: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"trio-channels client: {option} expects K=V, got {item!r}")
        if key.endswith(":"):
            try:
                params[key[:-1]] = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise SystemExit(f"trio-channels client: {option} {key}= is not JSON: "
                                 f"{value!r}") from None
        else:
            params[key] = value
    return params


def _json(payload: Any) -> Any:
    if isinstance(payload, bytes):
        return {"binary": base64.b64encode(payload).decode("ascii")}
    return payload


async def _client(args: argparse.Namespace, out: IO[str]) -> int:
    import trio

    from channels.client import ClientError, connect

    def emit(kind: str, **fields: Any) -> None:
        out.write(orjson.dumps({"at": round(time.time(), 3), "type": kind, **fields}).decode()
                  + "\n")
        out.flush()

    urls = [u.strip() for u in args.url.split(",") if u.strip()]
    join_params = _pairs(args.join_param, "--join-param")
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()  # leaves the socket cleanly
                    return

            nursery.start_soon(stop_on_signal)
            try:
                code = await _session(args, urls, join_params, emit, connect)
            except ClientError as exc:
                emit("error", error=str(exc))
                code = 1
            nursery.cancel_scope.cancel()
    return code


async def _session(args: argparse.Namespace, urls: list[str], join_params: dict[str, Any],
                   emit: Any, connect: Any) -> int:
    from channels.client import ReplyError

    async with connect(urls, params=_pairs(args.param, "--param"), auth_token=args.token,
                       timeout=args.timeout, connect_timeout=args.timeout,
                       heartbeat_interval=args.heartbeat or None) as socket:
        emit("open", url=socket.url)
        socket.on_open(lambda: emit("open", url=socket.url))
        socket.on_close(lambda code, reason: emit("close", code=code, reason=reason))
        socket.on_error(lambda error: emit("connect_error", error=repr(error)))
        channel = socket.channel(args.topic, join_params)
        channel.on_join(lambda reply: emit("joined", topic=args.topic,
                                           join_ref=channel.join_ref, reply=_json(reply)))
        async with channel.messages() as stream:
            try:
                await channel.join()
            except ReplyError as exc:
                emit("join_error", topic=args.topic, reply=_json(exc.response))
                return 1
            async for message in stream:
                emit("message", topic=message.topic, event=message.event,
                     payload=_json(message.payload), ref=message.ref,
                     join_ref=message.join_ref)
        return 0


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run the client until Ctrl-C (exit 0), a refused join or connection (exit 1), or the
    server closing the channel (exit 0)."""
    import trio

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return trio.run(_client, args, out or sys.stdout)
