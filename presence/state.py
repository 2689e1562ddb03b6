"""Pure delta-CRDT state for presence replication (the Phoenix.Tracker model).

An add-wins observed-remove set of presence entries ``(topic, owner, key, meta)``. Every entry is
identified by the *dot* ``(replica, counter)`` of the event that added it and has a single
writer: only the replica whose ``owner`` tracked it ever adds, updates or removes it. Other
replicas only hide entries (replica down) or purge them (permdown).

Design choices beyond Phoenix.Tracker (see docs/presence.md):

* Entries are stored per dot; the row ``(replica, topic, owner, key)`` keeps only its newest dot.
  Because a single writer never holds two live dots for one row, *any* known dot of a row with a
  higher counter proves every lower dot of that row dead. Dots received out of order stay in
  ``clouds`` together with their row, so a stale full transfer (phoenix_pubsub#148) can neither
  overwrite newer meta nor resurrect an entry whose removal is known only as a cloud dot.
* Deltas carry the row of every removed dot (not just the dot), which is what makes the rule
  above work for removals too.
* A delta never describes the requester's own replica: extracts strip it entirely (values, dots
  and range), so a generation built from a transfer can never claim to cover dots whose values it
  lacks (a plausible cause of phoenix_pubsub#74).
* A transfer is answered with a generation only when merging it brings the requester's clock up
  to ours on every shared replica; otherwise the full state is sent.
* A generation that a new delta does not touch contiguously drops the offending replicas and
  restarts their window from that delta, so generations never get stuck after a gap. Each
  generation stays within its cap unless a single delta alone is bigger.

Nothing here does I/O; payloads convert to msgpack-able builtins with ``to_wire``/``from_wire``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeAlias

__all__ = [
    "DEFAULT_DELTA_CAPS",
    "WIRE_VERSION",
    "AlreadyTracked",
    "Delta",
    "Diff",
    "Dot",
    "Entry",
    "Meta",
    "NotTracked",
    "Owner",
    "PresenceError",
    "ReplicaRef",
    "Snapshot",
    "State",
    "WireError",
    "clock_from_wire",
    "clock_to_wire",
    "dominates",
    "merge_deltas",
    "payload_from_wire",
]

DEFAULT_DELTA_CAPS: tuple[int, ...] = (100, 1000, 10_000)
WIRE_VERSION = 1


class ReplicaRef(NamedTuple):
    """One incarnation of a tracker shard: node name plus a version that grows on restart."""

    # A NamedTuple rather than a frozen dataclass: refs are hashed on every dot lookup and tuple
    # hashing runs in C.
    node: str
    vsn: int


Meta: TypeAlias = dict[str, Any]
#: Opaque id of the local process/channel that tracks a presence. To cross the wire it must be a
#: str, int, bytes or a (nested) tuple of those; tuples come back as tuples.
Owner: TypeAlias = Hashable
Row: TypeAlias = tuple[str, Owner, str]  # (topic, owner, key)
RowId: TypeAlias = tuple[ReplicaRef, str, Owner, str]  # (replica, topic, owner, key)
Clock: TypeAlias = dict[ReplicaRef, int]


class Dot(NamedTuple):
    """The event ``counter`` of ``replica`` that created (or removed) an entry."""

    replica: ReplicaRef
    counter: int


class Entry(NamedTuple):
    """One presence; ``dot`` is its identity. Treat ``meta`` as immutable."""

    topic: str
    owner: Owner
    key: str
    meta: Meta
    dot: Dot


class Diff(NamedTuple):
    """Visible changes caused by an operation: entries that appeared and that disappeared."""

    joins: list[Entry]
    leaves: list[Entry]


class PresenceError(Exception):
    """Base class of the errors raised by this module."""


class AlreadyTracked(PresenceError):
    """``join`` of a (topic, owner, key) that the owner already tracks."""


class NotTracked(PresenceError):
    """``update`` of a (topic, owner, key) that the owner does not track."""


class WireError(PresenceError, ValueError):
    """A wire payload is malformed."""


def dominates(a: Mapping[ReplicaRef, int], b: Mapping[ReplicaRef, int]) -> bool:
    """True when clock ``a`` has seen everything ``b`` has (missing entries count as 0)."""
    return all(a.get(r, 0) >= n for r, n in b.items())


# --------------------------------------------------------------------------- payloads


@dataclass(slots=True)
class Delta:
    """A batch of changes: added entries and removed dots, covering a clock range.

    For every replica ``r`` in ``start``, every dot of ``r`` with a counter in
    ``(start[r], end[r]]`` is in ``values`` or ``removed``. A dot in ``removed`` is dead; its row
    is kept so that receivers can tell which older dots it supersedes.
    """

    start: Clock = field(default_factory=dict)
    end: Clock = field(default_factory=dict)
    values: dict[Dot, Entry] = field(default_factory=dict)
    removed: dict[Dot, Row] = field(default_factory=dict)

    def __len__(self) -> int:
        """Size counted against generation caps: entries plus removed dots."""
        return len(self.values) + len(self.removed)

    def copy(self) -> Delta:
        return Delta(dict(self.start), dict(self.end), dict(self.values), dict(self.removed))

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-able form (see ``payload_from_wire``)."""
        refs = _RefTable()
        by_topic: dict[str, list[list[Any]]] = {}
        for dot, e in self.values.items():
            by_topic.setdefault(e.topic, []).append(
                [refs(dot.replica), dot.counter, _owner_to_wire(e.owner), e.key, e.meta]
            )
        return {
            "v": WIRE_VERSION,
            "kind": "delta",
            "start": [[refs(r), n] for r, n in self.start.items()],
            "end": [[refs(r), n] for r, n in self.end.items()],
            "values": [[t, items] for t, items in by_topic.items()],
            "removed": [
                [refs(d.replica), d.counter, t, _owner_to_wire(o), k]
                for d, (t, o, k) in self.removed.items()
            ],
            "replicas": refs.wire(),
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Delta:
        """Parse ``to_wire`` output; raises ``WireError``."""
        with _parsing("delta"):
            _check_header(obj, "delta")
            refs = _parse_refs(obj["replicas"])
            start = _parse_clock(obj["start"], refs)
            end = _parse_clock(obj["end"], refs)
            if start.keys() != end.keys() or any(start[r] > end[r] for r in start):
                raise WireError("delta range is inconsistent")
            removed: dict[Dot, Row] = {}
            for ri, c, topic, owner, key in obj["removed"]:
                removed[Dot(_at(refs, ri), _counter(c))] = _row(topic, owner, key)
            values: dict[Dot, Entry] = {}
            for e in _parse_values(obj["values"], refs):
                if e.dot not in removed:
                    values[e.dot] = e
            return cls(start, end, values, removed)


@dataclass(slots=True)
class Snapshot:
    """A full-state extract (what a transfer sends when no generation fits).

    ``clouds`` maps each replica to its out-of-order counters and their rows; ``values`` holds
    entries per replica and counter.
    """

    replica: ReplicaRef
    context: Clock
    clouds: dict[ReplicaRef, dict[int, Row]]
    values: dict[ReplicaRef, dict[int, Entry]]

    def __len__(self) -> int:
        return sum(len(v) for v in self.values.values())

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-able form (see ``payload_from_wire``)."""
        refs = _RefTable()
        by_topic: dict[str, list[list[Any]]] = {}
        for r, vals in self.values.items():
            ri = refs(r)
            for c, e in vals.items():
                by_topic.setdefault(e.topic, []).append(
                    [ri, c, _owner_to_wire(e.owner), e.key, e.meta]
                )
        return {
            "v": WIRE_VERSION,
            "kind": "state",
            "from": refs(self.replica),
            "context": [[refs(r), n] for r, n in self.context.items()],
            "clouds": [
                [refs(r), c, t, _owner_to_wire(o), k]
                for r, cloud in self.clouds.items()
                for c, (t, o, k) in cloud.items()
            ],
            "values": [[t, items] for t, items in by_topic.items()],
            "replicas": refs.wire(),
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Snapshot:
        """Parse ``to_wire`` output; raises ``WireError``."""
        with _parsing("state"):
            _check_header(obj, "state")
            refs = _parse_refs(obj["replicas"])
            replica = _at(refs, obj["from"])
            context = _parse_clock(obj["context"], refs)
            clouds: dict[ReplicaRef, dict[int, Row]] = {}
            for ri, c, topic, owner, key in obj["clouds"]:
                r = _at(refs, ri)
                # Normalise: clouds only ever hold counters beyond the context.
                if r in context and _counter(c) > context[r]:
                    clouds.setdefault(r, {})[c] = _row(topic, owner, key)
            values: dict[ReplicaRef, dict[int, Entry]] = {}
            for e in _parse_values(obj["values"], refs):
                if e.dot.replica in context:
                    values.setdefault(e.dot.replica, {})[e.dot.counter] = e
            return cls(replica, context, clouds, values)


def payload_from_wire(obj: Any) -> Delta | Snapshot:
    """Parse either payload kind from its wire form; raises ``WireError``.

    Both forms are maps with ``"v"`` (``WIRE_VERSION``), ``"kind"`` (``"delta"`` or
    ``"state"``) and ``"replicas"``, a table ``[[node, vsn], ...]`` that the other fields index
    as ``ri``. Entries travel grouped by topic as ``"values": [[topic, [[ri, counter, owner,
    key, meta], ...]], ...]``. A delta adds ``"start"``/``"end"``: ``[[ri, counter], ...]`` and
    ``"removed"``: ``[[ri, counter, topic, owner, key], ...]``. A state adds ``"from"``: ri,
    ``"context"``: ``[[ri, counter], ...]`` and ``"clouds"``: ``[[ri, counter, topic, owner,
    key], ...]``.
    """
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind == "delta":
        return Delta.from_wire(obj)
    if kind == "state":
        return Snapshot.from_wire(obj)
    raise WireError(f"unknown payload kind {kind!r}")


def clock_to_wire(clock: Mapping[ReplicaRef, int]) -> list[list[Any]]:
    """A clock as ``[[node, vsn, counter], ...]``."""
    return [[r.node, r.vsn, n] for r, n in clock.items()]


def clock_from_wire(obj: Any) -> Clock:
    """Parse ``clock_to_wire`` output; raises ``WireError``."""
    with _parsing("clock"):
        out: Clock = {}
        for node, vsn, n in obj:
            out[_ref(node, vsn)] = _count(n)
        return out


def merge_deltas(a: Delta, b: Delta) -> Delta | None:
    """Join two deltas whose ranges overlap or touch; ``None`` when they are not contiguous.

    The result covers the union of both ranges. An entry survives unless the other side holds
    its dot as removed; removed dots stay as tombstones. Commutative, associative, idempotent.
    """
    if _gaps(a, b):
        return None
    out = a.copy()
    _merge_into(out, b)
    return out


# --------------------------------------------------------------------------- the state


class State:
    """The presence CRDT of one replica: local ops, merge, extracts and delta generations.

    Not thread-safe; one tracker shard owns it. ``delta_caps`` are the size caps of the delta
    generations kept to answer transfer requests cheaply (empty disables them).
    """

    def __init__(
        self, replica: ReplicaRef, *, delta_caps: Sequence[int] = DEFAULT_DELTA_CAPS
    ) -> None:
        if any(cap < 1 for cap in delta_caps):
            raise ValueError("delta caps must be positive")
        self.replica = replica
        # Replicas enter the context only through replica_up; merge never adds any.
        self._context: Clock = {replica: 0}
        self._clouds: dict[ReplicaRef, dict[int, Row]] = {}
        self._cloud_rows: dict[RowId, int] = {}  # highest cloud counter per row
        self._down: set[ReplicaRef] = set()
        self._values: dict[ReplicaRef, dict[int, Entry]] = {}
        self._rows: dict[RowId, Entry] = {}
        self._topics: dict[str, dict[str, dict[Dot, Entry]]] = {}
        self._owned: dict[Owner, dict[tuple[str, str], Entry]] = {}
        self._caps = tuple(delta_caps)
        self._gens: list[Delta] = [Delta() for _ in self._caps]
        self._delta = self._fresh_delta()

    # ----------------------------------------------------------------- local operations

    def join(self, owner: Owner, topic: str, key: str, meta: Meta) -> Diff:
        """Track a new presence; raises ``AlreadyTracked`` if the row exists."""
        if (self.replica, topic, owner, key) in self._rows:
            raise AlreadyTracked((topic, owner, key))
        e = Entry(topic, owner, key, meta, self._bump())
        self._insert(e)
        self._delta.values[e.dot] = e
        return Diff([e], [])

    def update(self, owner: Owner, topic: str, key: str, meta: Meta) -> Diff:
        """Replace the meta of a tracked presence in one step (old dot out, new dot in)."""
        old = self._rows.get((self.replica, topic, owner, key))
        if old is None:
            raise NotTracked((topic, owner, key))
        self._remove(old)
        self._delta_remove(old)
        e = Entry(topic, owner, key, meta, self._bump())
        self._insert(e)
        self._delta.values[e.dot] = e
        return Diff([e], [old])

    def leave(self, owner: Owner, topic: str, key: str) -> Diff:
        """Untrack one presence; a no-op if it is not tracked."""
        old = self._rows.get((self.replica, topic, owner, key))
        if old is None:
            return Diff([], [])
        self._remove(old)
        self._delta_remove(old)
        # The removal takes a dot of its own so that peers which already hold the old dot see
        # our clock move and learn they are behind.
        self._delta.removed[self._bump()] = (topic, owner, key)
        return Diff([], [old])

    def leave_owner(self, owner: Owner) -> Diff:
        """Untrack everything ``owner`` tracked (its channel ended)."""
        leaves: list[Entry] = []
        for e in list(self._owned.get(owner, {}).values()):
            leaves += self.leave(owner, e.topic, e.key).leaves
        return Diff([], leaves)

    @property
    def has_delta(self) -> bool:
        """True when local changes wait to be broadcast."""
        return bool(self._delta)

    def take_delta(self) -> Delta | None:
        """Hand over the pending local delta (``None`` if empty) and record it in generations."""
        if not self._delta:
            return None
        delta, self._delta = self._delta, self._fresh_delta()
        self._push_generation(delta)
        return delta

    # ----------------------------------------------------------------- merge

    def merge(self, remote: Delta | Snapshot | State) -> Diff:
        """Merge a heartbeat delta, a transfer delta or a full extract; returns visible changes.

        Entries are accepted only from replicas in our context; our own entries are never
        touched. Merging the same input again changes nothing. Deltas are also recorded in the
        generations.
        """
        if isinstance(remote, State):
            remote = remote.extract(self.replica, self._context)
        touched: dict[RowId, Entry | None] = {}
        if isinstance(remote, Delta):
            fresh = self._fresh_part(remote)
            self._merge_delta(remote, touched)
            if fresh:
                self._push_generation(fresh)
        else:
            self._merge_snapshot(remote, touched)
        return self._diff(touched)

    # ----------------------------------------------------------------- extracts / transfers

    def extract(self, for_replica: ReplicaRef, its_context: Mapping[ReplicaRef, int]) -> Snapshot:
        """Full state for ``for_replica``, pruned to the replicas it knows, without its own."""
        keep = [r for r in self._context if r in its_context and r != for_replica]
        return Snapshot(
            self.replica,
            {r: self._context[r] for r in keep},
            {r: dict(self._clouds[r]) for r in keep if r in self._clouds},
            {r: dict(self._values[r]) for r in keep if r in self._values},
        )

    def extract_delta(
        self, delta: Delta, for_replica: ReplicaRef, its_context: Mapping[ReplicaRef, int]
    ) -> Delta:
        """``delta`` pruned to the replicas ``for_replica`` knows, without its own."""

        def keep(r: ReplicaRef) -> bool:
            return r in its_context and r != for_replica

        return Delta(
            {r: n for r, n in delta.start.items() if keep(r)},
            {r: n for r, n in delta.end.items() if keep(r)},
            {d: e for d, e in delta.values.items() if keep(d.replica)},
            {d: row for d, row in delta.removed.items() if keep(d.replica)},
        )

    def transfer_for(
        self, requester: ReplicaRef, its_context: Mapping[ReplicaRef, int]
    ) -> Delta | Snapshot:
        """Answer a transfer request: the smallest generation that brings ``its_context`` up to
        our clock on every replica both sides know, else the full state.

        Local changes not yet taken with ``take_delta`` are not required: the next heartbeat
        carries them.
        """
        need: Clock = {}
        for r, n in self._context.items():
            if r == self.replica:
                n = self._delta.start[r]
            if r != requester and r in its_context and its_context[r] < n:
                need[r] = n
        if not need:
            return Delta()
        for gen in self._gens:
            if all(
                r in gen.start and gen.start[r] <= its_context[r] and gen.end[r] >= n
                for r, n in need.items()
            ):
                return self.extract_delta(gen, requester, its_context)
        return self.extract(requester, its_context)

    @property
    def generations(self) -> tuple[Delta, ...]:
        """The delta generations, smallest cap first (read-only view)."""
        return tuple(self._gens)

    # ----------------------------------------------------------------- replica liveness

    def replica_up(self, ref: ReplicaRef) -> list[Entry]:
        """Mark ``ref`` up (adding it to the context at 0 if new); returns re-shown entries."""
        if ref not in self._context:
            self._context[ref] = 0
            return []
        if ref not in self._down:
            return []
        self._down.discard(ref)
        return list(self._values.get(ref, {}).values())

    def replica_down(self, ref: ReplicaRef) -> list[Entry]:
        """Hide ``ref``'s entries (kept for a heal); returns the entries that disappeared."""
        if ref == self.replica or ref not in self._context or ref in self._down:
            return []
        self._down.add(ref)
        return list(self._values.get(ref, {}).values())

    def remove_down_replica(self, ref: ReplicaRef) -> list[Entry]:
        """Permdown: purge ``ref``'s entries, clock, clouds and generation data.

        Returns the entries that were still visible (none if it was already down).
        """
        if ref == self.replica:
            raise ValueError("cannot permdown the local replica")
        if ref not in self._context:
            return []
        gone = list(self._values.get(ref, {}).values())
        for e in gone:
            self._remove(e)
        for c, row in self._clouds.pop(ref, {}).items():
            rid = (ref, *row)
            if self._cloud_rows.get(rid) == c:
                del self._cloud_rows[rid]
        del self._context[ref]
        was_down = ref in self._down
        self._down.discard(ref)
        _strip(self._delta, ref)
        for gen in self._gens:
            _strip(gen, ref)
        return [] if was_down else gone

    def replica_restarted(self, ref: ReplicaRef) -> Diff:
        """A new incarnation of ``ref.node`` appeared: purge every other one, bring ``ref`` up.

        A no-op if a newer incarnation of that node is already known, or if ``ref`` names our
        own node.
        """
        if ref.node == self.replica.node:
            return Diff([], [])
        others = [r for r in self._context if r.node == ref.node and r != ref]
        if any(r.vsn > ref.vsn for r in others):
            return Diff([], [])
        leaves: list[Entry] = []
        for r in others:
            leaves += self.remove_down_replica(r)
        return Diff(self.replica_up(ref), leaves)

    def replicas(self) -> dict[ReplicaRef, Literal["up", "down"]]:
        """Every known replica (including ourselves) and its status."""
        return {r: ("down" if r in self._down else "up") for r in self._context}

    def clocks(self) -> Clock:
        """The context to advertise: down replicas left out (phoenix_pubsub#136)."""
        if not self._down:
            return dict(self._context)
        return {r: n for r, n in self._context.items() if r not in self._down}

    @property
    def context(self) -> Clock:
        """A copy of the full causal context (down replicas included)."""
        return dict(self._context)

    @property
    def clouds(self) -> dict[ReplicaRef, set[int]]:
        """Counters seen out of order, per replica (a copy; empty once gaps are filled)."""
        return {r: set(cloud) for r, cloud in self._clouds.items()}

    # ----------------------------------------------------------------- reads

    def get_by_topic(self, topic: str) -> dict[str, list[Meta]]:
        """Visible presences of ``topic`` grouped by key: ``{key: [meta, ...]}``."""
        down = self._down
        out: dict[str, list[Meta]] = {}
        for key, dots in self._topics.get(topic, {}).items():
            metas = [e.meta for d, e in dots.items() if d.replica not in down]
            if metas:
                out[key] = metas
        return out

    def online_list(self, topic: str) -> list[Entry]:
        """Visible entries of ``topic``."""
        down = self._down
        return [
            e
            for dots in self._topics.get(topic, {}).values()
            for d, e in dots.items()
            if d.replica not in down
        ]

    def get_by_key(self, topic: str, key: str) -> list[Entry]:
        """Visible entries of ``key`` in ``topic`` (one per tracking owner and replica)."""
        down = self._down
        dots = self._topics.get(topic, {}).get(key, {})
        return [e for d, e in dots.items() if d.replica not in down]

    def get_by_owner(self, owner: Owner) -> list[Entry]:
        """Everything the local ``owner`` tracks."""
        return list(self._owned.get(owner, {}).values())

    def lookup(self, owner: Owner, topic: str, key: str) -> Entry | None:
        """The local entry of ``owner`` for ``(topic, key)``, if tracked."""
        return self._rows.get((self.replica, topic, owner, key))

    def topics(self) -> list[str]:
        """Topics with at least one visible presence."""
        if not self._down:
            return list(self._topics)
        down = self._down
        return [
            t
            for t, keys in self._topics.items()
            if any(d.replica not in down for dots in keys.values() for d in dots)
        ]

    def online(self) -> Iterator[Entry]:
        """Every visible entry, all topics."""
        for r, vals in self._values.items():
            if r not in self._down:
                yield from vals.values()

    def __len__(self) -> int:
        """Stored entries, hidden ones included."""
        return len(self._rows)

    # ----------------------------------------------------------------- internals: indexes

    def _insert(self, e: Entry) -> None:
        r = e.dot.replica
        self._values.setdefault(r, {})[e.dot.counter] = e
        self._rows[(r, e.topic, e.owner, e.key)] = e
        self._topics.setdefault(e.topic, {}).setdefault(e.key, {})[e.dot] = e
        if r == self.replica:
            self._owned.setdefault(e.owner, {})[(e.topic, e.key)] = e

    def _remove(self, e: Entry) -> None:
        r = e.dot.replica
        vals = self._values[r]
        del vals[e.dot.counter]
        if not vals:
            del self._values[r]
        del self._rows[(r, e.topic, e.owner, e.key)]
        keys = self._topics[e.topic]
        dots = keys[e.key]
        del dots[e.dot]
        if not dots:
            del keys[e.key]
            if not keys:
                del self._topics[e.topic]
        if r == self.replica:
            owned = self._owned[e.owner]
            del owned[(e.topic, e.key)]
            if not owned:
                del self._owned[e.owner]

    # ----------------------------------------------------------------- internals: local delta

    def _fresh_delta(self) -> Delta:
        n = self._context[self.replica]
        return Delta({self.replica: n}, {self.replica: n})

    def _bump(self) -> Dot:
        n = self._context[self.replica] + 1
        self._context[self.replica] = n
        self._delta.end[self.replica] = n
        return Dot(self.replica, n)

    def _delta_remove(self, old: Entry) -> None:
        self._delta.values.pop(old.dot, None)
        self._delta.removed[old.dot] = (old.topic, old.owner, old.key)

    # ----------------------------------------------------------------- internals: causal context

    def _covered(self, r: ReplicaRef, c: int) -> bool:
        return c <= self._context[r] or c in self._clouds.get(r, ())

    def _cloud_add(self, r: ReplicaRef, c: int, row: Row) -> None:
        cloud = self._clouds.setdefault(r, {})
        if c in cloud:
            return
        cloud[c] = row
        rid = (r, *row)
        if self._cloud_rows.get(rid, 0) < c:
            self._cloud_rows[rid] = c

    def _cloud_pop(self, r: ReplicaRef, cloud: dict[int, Row], c: int) -> None:
        rid = (r, *cloud.pop(c))
        # Clouds shrink only from the bottom, so popping a row's highest counter means all of
        # that row's cloud counters are gone.
        if self._cloud_rows.get(rid) == c:
            del self._cloud_rows[rid]

    def _compact(self, r: ReplicaRef, floor: int = 0) -> None:
        n = max(self._context[r], floor)
        cloud = self._clouds.get(r)
        if cloud:
            old = self._context[r]
            if n > old:
                if len(cloud) < n - old:
                    stale = [c for c in cloud if c <= n]
                else:
                    stale = [c for c in range(old + 1, n + 1) if c in cloud]
                for c in stale:
                    self._cloud_pop(r, cloud, c)
            while n + 1 in cloud:
                n += 1
                self._cloud_pop(r, cloud, n)
            if not cloud:
                del self._clouds[r]
        self._context[r] = n

    # ----------------------------------------------------------------- internals: merge

    def _kill_upto(self, rid: RowId, c: int, touched: dict[RowId, Entry | None]) -> None:
        cur = self._rows.get(rid)
        if cur is not None and cur.dot.counter <= c:
            touched.setdefault(rid, cur)
            self._remove(cur)

    def _admit(
        self, e: Entry, touched: dict[RowId, Entry | None], dead_rows: Mapping[RowId, int]
    ) -> None:
        r, c = e.dot
        rid = (r, e.topic, e.owner, e.key)
        cur = self._rows.get(rid)
        if cur is not None and cur.dot.counter > c:
            return
        # A later dot of the same row (an update or a removal) proves this one dead.
        if self._cloud_rows.get(rid, 0) > c or dead_rows.get(rid, 0) > c:
            return
        touched.setdefault(rid, cur)
        if cur is not None:
            self._remove(cur)
        self._insert(e)

    def _merge_delta(self, d: Delta, touched: dict[RowId, Entry | None]) -> None:
        me, ctx = self.replica, self._context
        dirty: set[ReplicaRef] = set()
        dead_rows: dict[RowId, int] = {}
        for dot, row in d.removed.items():
            r, c = dot
            if r == me or r not in ctx:
                continue
            rid = (r, *row)
            self._kill_upto(rid, c, touched)
            if dead_rows.get(rid, 0) < c:
                dead_rows[rid] = c
            if not self._covered(r, c):
                self._cloud_add(r, c, row)
                dirty.add(r)
        for dot, e in d.values.items():
            r, c = dot
            if r == me or r not in ctx or self._covered(r, c):
                continue
            self._admit(e, touched, dead_rows)
            self._cloud_add(r, c, (e.topic, e.owner, e.key))
            dirty.add(r)
        for r in dirty:
            self._compact(r)

    def _merge_snapshot(self, s: Snapshot, touched: dict[RowId, Entry | None]) -> None:
        me, ctx = self.replica, self._context
        target = {r: max(ctx[r], n) for r, n in s.context.items() if r != me and r in ctx}
        dirty: set[ReplicaRef] = set()
        dead_rows: dict[RowId, int] = {}
        # Coverage checks below use our context from before this merge; counters at or under
        # the merged context need no cloud entry.
        for r, cloud in s.clouds.items():
            if r not in target:
                continue
            svals = s.values.get(r, {})
            for c, row in cloud.items():
                if c in svals:
                    continue
                rid = (r, *row)
                self._kill_upto(rid, c, touched)
                if dead_rows.get(rid, 0) < c:
                    dead_rows[rid] = c
                if c > target[r] and not self._covered(r, c):
                    self._cloud_add(r, c, row)
                    dirty.add(r)
        for r, vals in s.values.items():
            if r not in target:
                continue
            t = target[r]
            for c, e in vals.items():
                if self._covered(r, c):
                    continue
                self._admit(e, touched, dead_rows)
                if c > t:
                    self._cloud_add(r, c, (e.topic, e.owner, e.key))
                    dirty.add(r)
        # Observed remove: the sender has seen these dots and no longer holds them.
        for r in target:
            local = self._values.get(r)
            if not local:
                continue
            sc, scl, sv = s.context[r], s.clouds.get(r, {}), s.values.get(r, {})
            for c, e in list(local.items()):
                if c not in sv and (c <= sc or c in scl):
                    touched.setdefault((r, e.topic, e.owner, e.key), e)
                    self._remove(e)
        for r, t in target.items():
            self._compact(r, t)
        for r in dirty - target.keys():
            self._compact(r)

    def _diff(self, touched: Mapping[RowId, Entry | None]) -> Diff:
        joins: list[Entry] = []
        leaves: list[Entry] = []
        for rid, old in touched.items():
            new = self._rows.get(rid)
            if new is old or rid[0] in self._down:
                continue
            if old is not None:
                leaves.append(old)
            if new is not None:
                joins.append(new)
        return Diff(joins, leaves)

    # ----------------------------------------------------------------- internals: generations

    def _fresh_part(self, d: Delta) -> Delta | None:
        """What of a received delta is worth recording: known replicas, not ours, not stale."""
        ctx, me = self._context, self.replica

        def keep(r: ReplicaRef) -> bool:
            return r != me and r in ctx and not (r in d.end and d.end[r] <= ctx[r])

        # Empty ranges say nothing but could still look like a gap to a generation.
        ranged = [r for r, s in d.start.items() if keep(r) and s < d.end[r]]
        out = Delta(
            {r: d.start[r] for r in ranged},
            {r: d.end[r] for r in ranged},
            {dot: e for dot, e in d.values.items() if keep(dot.replica)},
            {dot: row for dot, row in d.removed.items() if keep(dot.replica)},
        )
        return out if out else None

    def _push_generation(self, delta: Delta) -> None:
        # Sliding windows as in Phoenix's DeltaGeneration.push: every level absorbs the delta;
        # a level that outgrows its cap restarts from the level below merged with the delta,
        # or, when even that is too big, from what the level below now holds. Unlike Phoenix
        # this keeps each level within its cap unless a single delta alone exceeds it.
        # "free" marks objects no level holds, which may be stored without a copy.
        below_merged, below_merged_free = delta.copy(), True
        below_kept, below_kept_free = below_merged, True
        for i, cap in enumerate(self._caps):
            gen = self._gens[i]
            for r in _gaps(gen, delta):
                _strip(gen, r)
            _merge_into(gen, delta)
            if len(gen) <= cap:
                below_merged, below_merged_free = gen, False
                below_kept, below_kept_free = gen, False
                continue
            if len(below_merged) <= cap:
                pick, free = below_merged, below_merged_free
            else:
                pick, free = below_kept, below_kept_free
            self._gens[i] = pick if free else pick.copy()
            below_merged, below_merged_free = gen, True
            below_kept, below_kept_free = self._gens[i], False


# --------------------------------------------------------------------------- delta helpers


def _gaps(a: Delta, b: Delta) -> list[ReplicaRef]:
    """Replicas on which the ranges of ``a`` and ``b`` neither overlap nor touch."""
    return [
        r for r, s in b.start.items() if r in a.start and (s > a.end[r] or a.start[r] > b.end[r])
    ]


def _merge_into(a: Delta, b: Delta) -> None:
    for r, s in b.start.items():
        if r in a.start:
            a.start[r] = min(a.start[r], s)
            a.end[r] = max(a.end[r], b.end[r])
        else:
            a.start[r] = s
            a.end[r] = b.end[r]
    for dot, row in b.removed.items():
        a.values.pop(dot, None)
        a.removed[dot] = row
    for dot, e in b.values.items():
        if dot not in a.removed:
            a.values[dot] = e


def _strip(d: Delta, r: ReplicaRef) -> None:
    d.start.pop(r, None)
    d.end.pop(r, None)
    for dot in [dot for dot in d.values if dot.replica == r]:
        del d.values[dot]
    for dot in [dot for dot in d.removed if dot.replica == r]:
        del d.removed[dot]


# --------------------------------------------------------------------------- wire helpers


class _RefTable:
    """Interns replica refs so that each travels once per payload."""

    def __init__(self) -> None:
        self._index: dict[ReplicaRef, int] = {}

    def __call__(self, r: ReplicaRef) -> int:
        i = self._index.get(r)
        if i is None:
            i = self._index[r] = len(self._index)
        return i

    def wire(self) -> list[list[Any]]:
        return [[r.node, r.vsn] for r in self._index]


@contextmanager
def _parsing(what: str) -> Iterator[None]:
    """Turns any structural error while parsing into ``WireError``."""
    try:
        yield
    except WireError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise WireError(f"malformed {what}: {exc!r}") from exc


def _check_header(obj: Any, kind: str) -> None:
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        raise WireError(f"not a {kind} payload")
    if obj.get("v") != WIRE_VERSION:
        raise WireError(f"unsupported wire version {obj.get('v')!r}")


def _ref(node: Any, vsn: Any) -> ReplicaRef:
    if not isinstance(node, str) or not isinstance(vsn, int) or isinstance(vsn, bool):
        raise WireError("bad replica ref")
    return ReplicaRef(node, vsn)


def _parse_refs(obj: Any) -> list[ReplicaRef]:
    return [_ref(node, vsn) for node, vsn in obj]


def _at(refs: Sequence[ReplicaRef], i: Any) -> ReplicaRef:
    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(refs):
        raise WireError("bad replica index")
    return refs[i]


def _count(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise WireError("bad counter")
    return n


def _counter(n: Any) -> int:
    c = _count(n)
    if c < 1:
        raise WireError("bad dot counter")
    return c


def _parse_clock(obj: Any, refs: Sequence[ReplicaRef]) -> Clock:
    return {_at(refs, ri): _count(n) for ri, n in obj}


def _owner_to_wire(owner: Owner) -> Any:
    return owner  # tuples pack as arrays; _owner_from_wire turns them back into tuples


def _owner_from_wire(obj: Any) -> Owner:
    if isinstance(obj, list):
        return tuple(_owner_from_wire(x) for x in obj)
    if isinstance(obj, dict):
        raise WireError("owner must be hashable")
    owner: Owner = obj
    return owner


def _row(topic: Any, owner: Any, key: Any) -> Row:
    if not isinstance(topic, str) or not isinstance(key, str):
        raise WireError("topic and key must be strings")
    return (topic, _owner_from_wire(owner), key)


def _parse_values(obj: Any, refs: Sequence[ReplicaRef]) -> Iterable[Entry]:
    for topic, items in obj:
        for ri, c, owner, key, meta in items:
            if not isinstance(meta, dict):
                raise WireError("meta must be a map")
            t, o, k = _row(topic, owner, key)
            yield Entry(t, o, k, meta, Dot(_at(refs, ri), _counter(c)))
