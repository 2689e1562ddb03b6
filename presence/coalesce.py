"""Coalescing presence diffs: the diffs of one topic over a window, as one diff.

:class:`DiffWindow` folds a topic's diffs (``{key: [meta, ...]}`` joins and leaves, as the
tracker reports them) into one diff that phoenix.js ``Presence.syncDiff`` applies to the same
state as the individual diffs applied in order. What syncDiff does with a diff, per key: the
joined metas replace any meta with the same ``phx_ref`` and go to the end of the key's list
(joins first), then the metas whose ``phx_ref`` is among the leaves are removed, and a key left
with no meta disappears. So for each ``phx_ref`` only its last event in the window matters:

* last event a join: the meta is in the merged joins, and the joins of a key are in the order
  of their last join (which is the order applying them one by one leaves them in);
* last event a leave: the meta is in the merged leaves if a client may hold it, that is if it
  was present when the window opened (its first event in the window is a leave) or a listing
  of the topic was taken since it joined (:meth:`DiffWindow.observed`: a client may have got
  that listing as ``presence_state``); otherwise it joined and left inside the window, seen by
  no client, and nets out (it is in neither).

A meta update is a leave of the old ``phx_ref`` and a join of the new one (with
``phx_ref_prev``): two refs, each following the rules above. Within one diff joins are folded
before leaves, as syncDiff applies them.

For a client whose state was the topic's state when the window opened, the merged diff gives
exactly the state the individual diffs give: the same keys, each with the same metas in the
same order (key-level fields added by a ``fetch`` hook come from the fetch of the merged diff).
For a client whose state is a listing taken during the window, it gives the same keys and the
same metas per key (a meta that joined before the listing goes to the end of its key's list
once more). Only the object key order can differ (a key that went empty and came back is
re-inserted at the end by the individual diffs, kept in place by the merged one): phoenix.js
keys have no meaningful order (Phoenix's own listings come from Elixir maps).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DiffWindow", "merge_diffs"]

Meta = dict[str, Any]
#: ``{key: [meta, ...]}``
Metas = dict[str, list[Meta]]

# A record per (key, phx_ref): [joined, meta, known, epoch]. ``joined``: the last event was a
# join; ``known``: a client may hold the meta (it was present when the window opened); ``epoch``:
# the observation epoch of its last join (a listing taken since makes it known too).
_JOINED, _META, _KNOWN, _EPOCH = range(4)


class DiffWindow:
    """The net effect of a topic's diffs since the window opened (see the module docstring)."""

    __slots__ = ("_epoch", "_keys", "diffs")

    def __init__(self) -> None:
        self._keys: dict[str, dict[Any, list[Any]]] = {}
        self._epoch = 0
        #: Diffs folded in so far.
        self.diffs = 0

    def __bool__(self) -> bool:
        """True when the folded diffs left anything to send."""
        return bool(self._keys)

    def add(self, joins: Mapping[str, list[Meta]], leaves: Mapping[str, list[Meta]]) -> None:
        """Fold one diff in (its joins first, then its leaves, as syncDiff applies them)."""
        self.diffs += 1
        keys = self._keys
        epoch = self._epoch
        for key, metas in joins.items():
            refs = keys.get(key)
            if refs is None:
                refs = keys[key] = {}
            for meta in metas:
                ref = meta.get("phx_ref")
                old = refs.pop(ref, None)  # re-inserted: joins keep the order of the last join
                known = old is not None and (old[_KNOWN] or old[_EPOCH] < epoch)
                refs[ref] = [True, meta, known, epoch]
        for key, metas in leaves.items():
            refs = keys.get(key)
            if refs is None:
                refs = keys[key] = {}
            for meta in metas:
                ref = meta.get("phx_ref")
                old = refs.pop(ref, None)
                if (old is None or not old[_JOINED] or old[_KNOWN] or old[_EPOCH] < epoch):
                    refs[ref] = [False, meta, True, epoch]
                # else: joined inside the window and seen by no client: nets out
            if not refs:
                del keys[key]

    def observed(self) -> None:
        """A listing of the topic was taken (it may reach a client as ``presence_state``): the
        metas that joined so far must leave explicitly if they leave in this window."""
        self._epoch += 1

    def diff(self) -> tuple[Metas, Metas]:
        """``(joins, leaves)`` as ``{key: [meta, ...]}``: one diff for the whole window."""
        joins: Metas = {}
        leaves: Metas = {}
        for key, refs in self._keys.items():
            for rec in refs.values():
                if rec[_JOINED]:
                    bucket = joins.get(key)
                    if bucket is None:
                        bucket = joins[key] = []
                else:
                    bucket = leaves.get(key)
                    if bucket is None:
                        bucket = leaves[key] = []
                bucket.append(rec[_META])
        return joins, leaves


def merge_diffs(diffs: list[tuple[Mapping[str, list[Meta]], Mapping[str, list[Meta]]]]
                ) -> tuple[Metas, Metas]:
    """Coalesce ``[(joins, leaves), ...]`` (in order, no listing taken in between)."""
    window = DiffWindow()
    for joins, leaves in diffs:
        window.add(joins, leaves)
    return window.diff()
