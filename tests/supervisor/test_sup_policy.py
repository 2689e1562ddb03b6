"""Sans-IO restart policy: no trio involved."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import Restart, RestartIntensity, Strategy, children_to_restart, should_restart

IDS = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("strategy", "failed", "expected"),
    [
        (Strategy.ONE_FOR_ONE, "a", ["a"]),
        (Strategy.ONE_FOR_ONE, "c", ["c"]),
        (Strategy.ONE_FOR_ALL, "a", IDS),
        (Strategy.ONE_FOR_ALL, "c", IDS),
        (Strategy.ONE_FOR_ALL, "d", IDS),
        (Strategy.REST_FOR_ONE, "a", IDS),
        (Strategy.REST_FOR_ONE, "b", ["b", "c", "d"]),
        (Strategy.REST_FOR_ONE, "d", ["d"]),
    ],
)
def test_children_to_restart(strategy: Strategy, failed: str, expected: list[str]) -> None:
    assert children_to_restart(strategy, IDS, failed) == expected


@pytest.mark.parametrize("strategy", list(Strategy))
def test_children_to_restart_single_child(strategy: Strategy) -> None:
    assert children_to_restart(strategy, ("only",), "only") == ["only"]


@pytest.mark.parametrize("strategy", list(Strategy))
def test_children_to_restart_unknown_child(strategy: Strategy) -> None:
    with pytest.raises(ValueError, match="'x'"):
        children_to_restart(strategy, IDS, "x")


def test_children_to_restart_returns_a_fresh_list() -> None:
    ids = ["a", "b"]
    result = children_to_restart(Strategy.ONE_FOR_ALL, ids, "a")
    result.append("z")
    assert ids == ["a", "b"]


@pytest.mark.parametrize(
    ("restart", "crashed", "expected"),
    [
        (Restart.PERMANENT, True, True),
        (Restart.PERMANENT, False, True),
        (Restart.TRANSIENT, True, True),
        (Restart.TRANSIENT, False, False),
        (Restart.TEMPORARY, True, False),
        (Restart.TEMPORARY, False, False),
    ],
)
def test_should_restart(restart: Restart, crashed: bool, expected: bool) -> None:
    assert should_restart(restart, crashed) is expected


def test_intensity_allows_max_restarts_then_refuses() -> None:
    intensity = RestartIntensity(3, 5.0)
    assert [intensity.record(0.0) for _ in range(3)] == [True, True, True]
    assert intensity.record(0.0) is False


def test_intensity_window_slides() -> None:
    intensity = RestartIntensity(2, 10.0)
    assert intensity.record(0.0)
    assert intensity.record(4.0)
    assert not intensity.record(9.0)  # 0, 4, 9 all within 10s
    # At 14.5 the restarts at 0 and 4 have left the window; 9 and 14.5 remain.
    assert intensity.record(14.5)
    assert not intensity.record(15.0)  # 9, 14.5, 15


def test_intensity_window_boundary_is_inclusive() -> None:
    intensity = RestartIntensity(1, 5.0)
    assert intensity.record(0.0)
    assert not intensity.record(5.0)  # exactly `period` ago still counts
    fresh = RestartIntensity(1, 5.0)
    assert fresh.record(0.0)
    assert fresh.record(5.5)


def test_intensity_zero_restarts_refuses_the_first() -> None:
    assert RestartIntensity(0, 1.0).record(0.0) is False


def test_intensity_rejects_time_going_backwards() -> None:
    intensity = RestartIntensity(3, 1.0)
    intensity.record(5.0)
    with pytest.raises(ValueError):
        intensity.record(4.0)


@pytest.mark.parametrize(("max_restarts", "period"), [(-1, 1.0), (1, 0.0), (1, -1.0)])
def test_intensity_validates_arguments(max_restarts: int, period: float) -> None:
    with pytest.raises(ValueError):
        RestartIntensity(max_restarts, period)


class NaiveIntensity:
    """Reference model: keep every restart, count those inside the window."""

    def __init__(self, max_restarts: int, period: float) -> None:
        self.max_restarts = max_restarts
        self.period = period
        self.times: list[float] = []

    def record(self, now: float) -> bool:
        self.times.append(now)
        in_window = [t for t in self.times if now - t <= self.period]
        return len(in_window) <= self.max_restarts


@given(
    max_restarts=st.integers(min_value=0, max_value=6),
    period=st.floats(min_value=0.01, max_value=20.0),
    gaps=st.lists(st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=10.0)), max_size=60),
)
def test_intensity_matches_naive_model(max_restarts: int, period: float, gaps: list[float]) -> None:
    real = RestartIntensity(max_restarts, period)
    model = NaiveIntensity(max_restarts, period)
    for now in itertools.accumulate(gaps):
        assert real.record(now) == model.record(now)
