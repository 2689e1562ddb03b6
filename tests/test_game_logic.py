"""The game example's rules (examples/game/logic.py): pure functions, no server."""

from __future__ import annotations

import copy
import math

import msgpack
import pytest

from examples.game import logic


def arena_with(*players: tuple[str, float, float], pellets: list[list[float]] | None = None,
               seed: int = 7) -> logic.State:
    state = logic.new_state(seed)
    for pid, x, y in players:
        state = logic.join(state, pid, pid.title())
        state["players"][pid].update(x=x, y=y)
    if pellets is not None:
        state["pellets"] = pellets
    return state


def test_new_state_is_deterministic_and_inside_the_arena() -> None:
    a, b = logic.new_state(42), logic.new_state(42)
    assert a == b
    assert a != logic.new_state(43)
    assert a["tick"] == 0 and a["players"] == {}
    assert len(a["pellets"]) == logic.PELLET_COUNT
    for x, y, points in a["pellets"]:
        assert 0 < x < logic.WIDTH and 0 < y < logic.HEIGHT
        assert points in (1, logic.GOLDEN_POINTS)


def test_step_moves_by_speed_and_does_not_mutate() -> None:
    state = arena_with(("ann", 10.0, 10.0), ("bob", 20.0, 20.0), pellets=[[40.0, 30.0, 1]])
    frozen = copy.deepcopy(state)
    after = logic.step(state, {"ann": (1, 0), "bob": (-1, -1)})
    assert state == frozen
    v = logic.speed(0)
    assert after["tick"] == 1
    assert after["players"]["ann"]["x"] == pytest.approx(10.0 + v, abs=1e-3)
    assert after["players"]["ann"]["y"] == 10.0
    # diagonals are normalised: the same speed, not sqrt(2) times it
    bob = after["players"]["bob"]
    assert math.hypot(bob["x"] - 20.0, bob["y"] - 20.0) == pytest.approx(v, abs=1e-2)
    # the direction is held: the next tick moves again without new input
    again = logic.step(after, {})
    assert again["players"]["ann"]["x"] == pytest.approx(10.0 + 2 * v, abs=1e-3)
    # and (0, 0) stops
    stopped = logic.step(logic.step(again, {"ann": (0, 0)}), {})
    assert stopped["players"]["ann"]["x"] == again["players"]["ann"]["x"]


def test_walls_stop_players() -> None:
    state = arena_with(("ann", logic.WIDTH - 1.1, 1.1), pellets=[[20.0, 20.0, 1]])
    for _ in range(20):
        state = logic.step(state, {"ann": (1, -1)})
    ann = state["players"]["ann"]
    r = logic.radius(0)
    assert ann["x"] == pytest.approx(logic.WIDTH - r) and ann["y"] == pytest.approx(r)


def test_eating_scores_grows_slows_and_respawns() -> None:
    state = arena_with(("ann", 10.0, 10.0), pellets=[[10.5, 10.0, 1], [30.0, 30.0, 5]])
    after = logic.step(state, {})
    ann = after["players"]["ann"]
    assert ann["score"] == 1
    assert [30.0, 30.0, 5] in after["pellets"]
    assert [10.5, 10.0, 1] not in after["pellets"]
    assert len(after["pellets"]) == logic.PELLET_COUNT
    assert logic.radius(1) > logic.radius(0) and logic.speed(1) < logic.speed(0)
    assert logic.radius(10_000) == logic.MAX_RADIUS
    # every GOLDEN_EVERY-th pellet spawned is golden
    assert sum(p[2] == logic.GOLDEN_POINTS for p in logic.new_state(1)["pellets"]) == \
        logic.PELLET_COUNT // logic.GOLDEN_EVERY


def test_a_pellet_two_players_touch_goes_to_the_lower_id() -> None:
    state = arena_with(("bbb", 10.0, 10.0), ("aaa", 10.8, 10.0), pellets=[[10.4, 10.0, 1]])
    after = logic.step(state, {})
    assert after["players"]["aaa"]["score"] == 1
    assert after["players"]["bbb"]["score"] == 0


def test_silent_players_are_dropped_and_come_back_when_heard() -> None:
    state = arena_with(("ann", 10.0, 10.0), ("bob", 20.0, 20.0))
    for i in range(logic.PLAYER_TIMEOUT_TICKS + 1):
        state = logic.step(state, {"bob": (0, 0)} if i % 50 == 0 else {})
        if i % 50 == 25:
            state = logic.touch(state, "bob", "Bob")
    assert set(state["players"]) == {"bob"}
    # the arena lost ann (say, a snapshot from before she joined): her next sign of life
    # adds her back
    state = logic.touch(state, "ann", "Ann")
    assert state["players"]["ann"]["name"] == "Ann"
    assert state["players"]["ann"]["score"] == 0


def test_join_leave_colors_and_a_full_arena() -> None:
    state = logic.new_state(3)
    for i in range(logic.MAX_PLAYERS):
        state = logic.join(state, f"p{i:02d}", f"P{i}")
    assert len({p["color"] for p in state["players"].values()}) == logic.MAX_PLAYERS
    with pytest.raises(logic.ArenaFull):
        logic.join(state, "extra", "Extra")
    assert logic.touch(state, "extra", "Extra") == state  # ignored, not an error
    rejoined = logic.join(state, "p03", "P3")  # already there: a sign of life only
    assert rejoined["players"]["p03"] == {**state["players"]["p03"], "seen": state["tick"]}
    state = logic.leave(state, "p03")
    assert "p03" not in state["players"]
    assert logic.leave(state, "nobody") is state
    # the freed color goes to the next player
    freed = set(logic.COLORS) - {p["color"] for p in state["players"].values()}
    assert logic.join(state, "new", "New")["players"]["new"]["color"] in freed


def test_the_same_inputs_give_the_same_game() -> None:
    def play(seed: int) -> logic.State:
        state = logic.new_state(seed)
        state = logic.join(state, "ann", "Ann")
        state = logic.join(state, "bob", "Bob")
        for t in range(400):
            state = logic.step(state, {"ann": ((t // 37) % 3 - 1, (t // 23) % 3 - 1),
                                       "bob": ((t // 29) % 3 - 1, (t // 41) % 3 - 1)})
        return state

    assert play(11) == play(11)
    assert play(11)["tick"] == 400


def test_a_state_is_a_snapshot() -> None:
    state = logic.step(arena_with(("ann", 5.0, 5.0)), {"ann": (1, 1)})
    data = msgpack.packb(state, use_bin_type=True)
    back = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert logic.check_state(back) == state
    assert logic.step(back, {}) == logic.step(state, {})
    bad: object
    for bad in (None, [], {"tick": "1"}, {**state, "players": []}):
        with pytest.raises(ValueError):
            logic.check_state(bad)


def test_public_view() -> None:
    state = arena_with(("bob", 5.0, 6.0), ("ann", 7.123456, 8.0))
    view = logic.public(state)
    assert set(view) == {"tick", "players", "pellets"}
    assert [p["id"] for p in view["players"]] == ["ann", "bob"]
    assert view["players"][0] == {"id": "ann", "name": "Ann", "x": 7.12, "y": 8.0, "r": 1.0,
                                  "score": 0, "color": state["players"]["ann"]["color"],
                                  "dx": 0, "dy": 0}


@pytest.mark.parametrize("d", [(-1, 0), (0, 1), (1, 1), (0, 0)])
def test_valid_directions(d: tuple[int, int]) -> None:
    assert logic.valid_direction(*d)


@pytest.mark.parametrize("d", [(2, 0), (0.5, 0), (True, 0), ("1", 0), (None, 0)])
def test_invalid_directions(d: tuple[object, object]) -> None:
    assert not logic.valid_direction(*d)
