"""A history test app (tests/cluster/test_history_cluster.py, tests/history/test_history_*).

Clients join ``feed:<anything>`` (a channel with history) or ``plain:<anything>`` (none).
Pushes on a ``feed:`` topic:

* ``publish`` ``{"n": N}`` -> broadcasts ``msg`` ``{"n": N}`` on the topic (positioned by the
  history), replies ``{}``;
* ``stats`` -> ``{"node": name, "history": this node's HistoryService.stats(), "stored":
  entries held by a memory store (or null)}``.

The join reply carries the node that answered (``node``) besides ``phx_recovery``.
``TEST_HISTORY_SIZE`` (default 1000) and ``TEST_HISTORY_TTL`` (s, default 600) configure the
history, so a test can exceed retention.
"""

from __future__ import annotations

import os
from typing import Any

from channels import Channel, Endpoint, Reply, Socket
from channels.history import History, MemoryHistoryStore

SIZE = int(os.environ.get("TEST_HISTORY_SIZE", "1000"))
TTL = float(os.environ.get("TEST_HISTORY_TTL", "600"))

_endpoint: Endpoint | None = None


def _node() -> str:
    return _endpoint.pubsub.node_name if _endpoint is not None else "?"


class FeedChannel(Channel):
    history = History(size=SIZE, ttl=TTL)

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return {"node": _node()}

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "publish":
            await self.broadcast("msg", {"n": payload["n"]})
            return Reply.ok()
        if event == "stats":
            history = _endpoint.history if _endpoint is not None else None
            store = history._store if history is not None else None
            return Reply.ok({
                "node": _node(),
                "history": history.stats() if history is not None else None,
                "stored": store.stored() if isinstance(store, MemoryHistoryStore) else None,
            })
        return Reply.error({"reason": "unknown event"})


class PlainChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return {"node": _node()}

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "publish":
            await self.broadcast("msg", {"n": payload["n"]})
            return Reply.ok()
        return Reply.error({"reason": "unknown event"})


class HistorySocket(Socket):
    channels = {"feed:*": FeedChannel, "plain:*": PlainChannel}


def make_endpoint() -> Endpoint:
    global _endpoint
    _endpoint = Endpoint({"/socket": HistorySocket})
    return _endpoint
