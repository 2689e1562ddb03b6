"""The server of the soak and overload runs (``python -m bench.soak``).

    trio-channels serve bench.apps.soak_app:endpoint

``pub`` burns ``SOAK_WORK_US`` microseconds of CPU (default 0: a node whose capacity is set
by that work, for the overload run), broadcasts ``msg`` with the payload to the topic and
replies ``ok``. The socket keeps the runtime's default protections (write_timeout,
max_buffer, back-pressure, max_push_age, idle_timeout: the generator sends heartbeats) except
the rate limit, which one publisher of the overload run would exceed on purpose.
"""

from __future__ import annotations

import os
import time
from typing import Any

from channels import Channel, Endpoint, Reply, Socket

WORK = float(os.environ.get("SOAK_WORK_US", "0")) / 1e6


class SoakChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return None

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "pub":
            if WORK:
                end = time.perf_counter() + WORK
                while time.perf_counter() < end:
                    pass
            await self.broadcast("msg", payload)
            return Reply.ok()
        return Reply.error({"reason": "unknown event"})


class SoakSocket(Socket):
    channels = {"room:*": SoakChannel, "load:*": SoakChannel}
    rate_limit = None


endpoint = Endpoint({"/socket": SoakSocket})
