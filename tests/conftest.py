from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import trio

from channels import Endpoint
from tests.support.app import make_endpoint

logging.getLogger("channels").setLevel(logging.DEBUG)


@pytest.fixture
async def endpoint(nursery: trio.Nursery) -> AsyncIterator[Endpoint]:
    ep = make_endpoint()
    ep.port = await nursery.start(ep.serve, "127.0.0.1", 0)  # type: ignore[attr-defined]
    yield ep
