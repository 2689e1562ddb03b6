"""Helpers for the client tests."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_for(predicate: Callable[[], object], timeout: float = 15) -> None:
    """Wait until ``predicate()`` is true; ``TooSlowError`` after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - conditions set by client callbacks
            await trio.sleep(0.01)
