"""User code at start and stop: a lifespan, startup/shutdown hooks, and supervised services.

The endpoint runs them in this order: lifespan entered, startup hooks, services started, (serve),
services stopped, shutdown hooks, lifespan exited. A service that crashes is restarted with
back-off within its restart intensity; past it, the service stays down and says so in the log,
and the node serves on.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from supervisor import RestartIntensity

log = logging.getLogger("channels.lifecycle")

#: What hooks are called with: the endpoint (``channels.endpoint.Hook`` is the hook type).
T = TypeVar("T")


class Service:
    """A supervised background task of the endpoint (see :meth:`Endpoint.service`).

    ``fn(*args)`` runs for the node's life. Returning ends it; raising restarts it after
    ``backoff`` seconds (doubling up to 30 s) unless it crashed more than ``max_restarts``
    times within ``period`` seconds: then it gives up (logged) and the node carries on.
    """

    def __init__(self, fn: Callable[..., Awaitable[object]], *args: object, name: str = "",
                 max_restarts: int = 5, period: float = 60.0, backoff: float = 0.5) -> None:
        RestartIntensity(max_restarts, period)  # validate eagerly
        if not inspect.iscoroutinefunction(fn) and not callable(fn):
            raise TypeError(f"{fn!r} is not an async function")
        self.fn = fn
        self.args = args
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        self.max_restarts = max_restarts
        self.period = period
        self.backoff = backoff
        self.restarts = 0
        self.running = False
        self.gave_up = False

    async def run(self) -> None:
        """Run with restarts until it returns, gives up, or is cancelled."""
        intensity = RestartIntensity(self.max_restarts, self.period)
        delay = self.backoff
        while True:
            self.running = True
            try:
                await self.fn(*self.args)
                log.info("service %s returned", self.name)
                return
            except Exception as exc:
                log.error("service %s crashed", self.name, exc_info=exc)
                if not intensity.record(trio.current_time()):
                    self.gave_up = True
                    log.error("service %s crashed more than %d times in %gs: giving up (the "
                              "node serves on without it)", self.name, self.max_restarts,
                              self.period)
                    return
            finally:
                self.running = False
            self.restarts += 1
            log.info("restarting service %s in %gs", self.name, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def run_hooks(hooks: list[Callable[[T], Awaitable[None] | None]], arg: T,
                    what: str) -> None:
    """Run ``hook(arg)`` for each hook in order; at startup an error propagates (the node
    does not start)."""
    for hook in hooks:
        try:
            result = hook(arg)
            if inspect.isawaitable(result):
                await result
        except Exception:
            if what == "startup":
                raise
            log.exception("%s hook %r failed", what, hook)
