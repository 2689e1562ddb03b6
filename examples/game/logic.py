"""The rules of the pellet arena, as pure functions on plain data (no I/O, no clock, no
global randomness): the same state and inputs always give the same next state.

A state is a dict of msgpack- and JSON-able values, so the room can snapshot it as is::

    {"tick": 0, "rng": <uint32>,
     "players": {"<id>": {"name", "x", "y", "dx", "dy", "score", "color", "seen"}},
     "pellets": [[x, y], ...]}

Coordinates are in arena units (``0..WIDTH``, ``0..HEIGHT``; ``y`` grows downwards). A
player is a dot that moves ``SPEED`` units per second in the direction it holds (``dx``,
``dy`` in -1, 0, 1; diagonals are normalised) and stops at the walls. Touching a pellet eats
it: +1 score, a slightly bigger (and so slower) dot, and a new pellet somewhere else. Every
:data:`GOLDEN_EVERY`-th pellet spawned is golden and worth :data:`GOLDEN_POINTS`. A player
not heard from (input or keep-alive) for :data:`PLAYER_TIMEOUT_TICKS` ticks is dropped.

Functions never mutate their arguments; each returns a new state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

State = dict[str, Any]

TICK_RATE = 20  # ticks per second
WIDTH = 48.0
HEIGHT = 32.0
SPEED = 12.0  # units per second at the base radius
BASE_RADIUS = 1.0
MAX_RADIUS = 2.5
GROWTH = 0.05  # radius gained per point
PELLET_RADIUS = 0.4
PELLET_COUNT = 12
GOLDEN_EVERY = 10
GOLDEN_POINTS = 5
MAX_PLAYERS = 16
#: A player who sent nothing (input or keep-alive) for this many ticks is dropped.
PLAYER_TIMEOUT_TICKS = 8 * TICK_RATE
COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
          "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000",
          "#aaffc3", "#808000")

_LCG_A = 1664525
_LCG_C = 1013904223
_MASK = 0xFFFFFFFF


class ArenaFull(Exception):
    """No room for another player (:data:`MAX_PLAYERS`)."""


def _next(rng: int) -> tuple[int, float]:
    """One step of a 32-bit LCG: the new seed and a float in [0, 1)."""
    rng = (_LCG_A * rng + _LCG_C) & _MASK
    return rng, rng / 2**32


def _random_point(rng: int, margin: float) -> tuple[int, float, float]:
    rng, fx = _next(rng)
    rng, fy = _next(rng)
    x = margin + fx * (WIDTH - 2 * margin)
    y = margin + fy * (HEIGHT - 2 * margin)
    return rng, round(x, 2), round(y, 2)


def radius(score: int) -> float:
    return min(MAX_RADIUS, BASE_RADIUS + GROWTH * score)


def speed(score: int) -> float:
    """Units per tick: bigger dots are slower (down to 60% at the largest radius)."""
    return SPEED / TICK_RATE * BASE_RADIUS / float(radius(score) ** 0.55)


def new_state(seed: int) -> State:
    """An empty arena with its pellets placed from ``seed``."""
    state: State = {"tick": 0, "rng": seed & _MASK, "spawned": 0, "players": {}, "pellets": []}
    return _fill_pellets(state)


def _fill_pellets(state: State) -> State:
    rng, spawned = state["rng"], state["spawned"]
    pellets = list(state["pellets"])
    while len(pellets) < PELLET_COUNT:
        rng, x, y = _random_point(rng, 1.0)
        spawned += 1
        pellets.append([x, y, GOLDEN_POINTS if spawned % GOLDEN_EVERY == 0 else 1])
    return {**state, "rng": rng, "spawned": spawned, "pellets": pellets}


def join(state: State, pid: str, name: str) -> State:
    """Add player ``pid`` at a random spot (a no-op if it is there already, but it counts as
    a sign of life). Raises :class:`ArenaFull`."""
    players = state["players"]
    if pid in players:
        return touch(state, pid, name)
    if len(players) >= MAX_PLAYERS:
        raise ArenaFull(f"the arena is full ({MAX_PLAYERS} players)")
    used = {p["color"] for p in players.values()}
    color = next((c for c in COLORS if c not in used), COLORS[len(players) % len(COLORS)])
    rng, x, y = _random_point(state["rng"], BASE_RADIUS)
    player = {"name": name, "x": x, "y": y, "dx": 0, "dy": 0, "score": 0, "color": color,
              "seen": state["tick"]}
    return {**state, "rng": rng, "players": {**players, pid: player}}


def leave(state: State, pid: str) -> State:
    if pid not in state["players"]:
        return state
    players = {k: v for k, v in state["players"].items() if k != pid}
    return {**state, "players": players}


def touch(state: State, pid: str, name: str) -> State:
    """A sign of life from ``pid``: keeps it, or adds it back if the arena lost it (after a
    restore from a snapshot taken before it joined, or a timeout). A full arena ignores it."""
    player = state["players"].get(pid)
    if player is None:
        try:
            return join(state, pid, name)
        except ArenaFull:
            return state
    return {**state, "players": {**state["players"], pid: {**player, "seen": state["tick"]}}}


def valid_direction(dx: Any, dy: Any) -> bool:
    return all(type(d) is int and d in (-1, 0, 1) for d in (dx, dy))


def step(state: State, inputs: Mapping[str, tuple[int, int]]) -> State:
    """Advance one tick: apply each player's latest input (``{id: (dx, dy)}``; unknown ids
    are ignored), drop silent players, move everyone, eat pellets, respawn them."""
    tick = state["tick"] + 1
    players: dict[str, dict[str, Any]] = {}
    for pid, p in state["players"].items():
        p = dict(p)
        if pid in inputs:
            p["dx"], p["dy"] = inputs[pid]
            p["seen"] = tick
        if tick - p["seen"] > PLAYER_TIMEOUT_TICKS:
            continue
        dx, dy = p["dx"], p["dy"]
        if dx or dy:
            v = speed(p["score"]) / (math.sqrt(2) if dx and dy else 1.0)
            r = radius(p["score"])
            p["x"] = round(min(WIDTH - r, max(r, p["x"] + dx * v)), 3)
            p["y"] = round(min(HEIGHT - r, max(r, p["y"] + dy * v)), 3)
        players[pid] = p
    pellets = state["pellets"]
    # Players eat in id order, so a pellet two players touch at once goes to the same one
    # whatever the order of the dict.
    for pid in sorted(players):
        p = players[pid]
        reach = radius(p["score"]) + PELLET_RADIUS
        kept = []
        for pellet in pellets:
            if (pellet[0] - p["x"]) ** 2 + (pellet[1] - p["y"]) ** 2 <= reach * reach:
                p["score"] += pellet[2]
            else:
                kept.append(pellet)
        pellets = kept
    return _fill_pellets({**state, "tick": tick, "players": players, "pellets": pellets})


def public(state: State) -> dict[str, Any]:
    """What clients see of a state (no RNG, no bookkeeping): ``tick``, ``players`` as a
    list ``{"id", "name", "x", "y", "r", "score", "color", "dx", "dy"}`` sorted by id, and
    ``pellets`` as ``[x, y, points]``."""
    return {
        "tick": state["tick"],
        "players": [
            {"id": pid, "name": p["name"], "x": round(p["x"], 2), "y": round(p["y"], 2),
             "r": round(radius(p["score"]), 2), "score": p["score"], "color": p["color"],
             "dx": p["dx"], "dy": p["dy"]}
            for pid, p in sorted(state["players"].items())
        ],
        "pellets": state["pellets"],
    }


def check_state(data: Any) -> State:
    """``data`` if it looks like a state (a snapshot from an older version is refused with
    ``ValueError`` rather than crashing every tick)."""
    if not isinstance(data, dict):
        raise ValueError("a state is a dict")
    for key, kind in (("tick", int), ("rng", int), ("spawned", int), ("players", dict),
                      ("pellets", list)):
        if not isinstance(data.get(key), kind):
            raise ValueError(f"state[{key!r}] is not a {kind.__name__}")
    return data
