"""Presence: a delta-CRDT tracker replicated between nodes, and the phoenix.js Presence API.

:class:`Presence` is what channels use (``track`` / ``update`` / ``untrack`` / ``list``);
:class:`~presence.tracker.Tracker` replicates it; :mod:`presence.state` is the pure CRDT.
"""

from presence.presence import Presence, Presences
from presence.tracker import Tracker

__all__ = ["Presence", "Presences", "Tracker"]
