"""The check the phoenix.js history tests apply to each client (tests/support/history_driver.py
``judge``), on hand-written event sequences: it must catch what it claims to catch."""

from __future__ import annotations

from typing import Any

from tests.support.history_driver import judge

E1, E2 = "e1", "e2"


def msg(n: int, epoch: str | None = E1, offset: int | None = None) -> dict[str, Any]:
    pos = None if epoch is None else {"epoch": epoch, "offset": n if offset is None else offset}
    return {"id": "c", "ev": "msg", "n": n, "pos": pos}


def told(reason: str = "epoch changed", epoch: str = E2) -> dict[str, Any]:
    return {"id": "c", "ev": "recovery",
            "info": {"recovered": False, "epoch": epoch, "offset": 0, "replayed": 0,
                     "reason": reason}}


def ok_join() -> dict[str, Any]:
    return {"id": "c", "ev": "recovery",
            "info": {"recovered": True, "epoch": E1, "offset": 0, "replayed": 0}}


EXPECTED = list(range(1, 7))


def problems(events: list[dict[str, Any]]) -> list[str]:
    return judge(events, "c", EXPECTED).problems


def test_complete_in_order() -> None:
    assert problems([ok_join(), *[msg(n) for n in EXPECTED]]) == []


def test_duplicates_and_disorder_are_caught() -> None:
    assert any("duplicates" in p for p in problems([msg(1), msg(2), msg(2, offset=3),
                                                     *[msg(n, offset=n + 1) for n in (3, 4, 5, 6)]]))
    assert any("out of order" in p for p in problems([msg(1), msg(3), msg(2), msg(4), msg(5),
                                                      msg(6)]))
    assert any("offset" in p for p in problems([msg(1), msg(2, offset=1), msg(3), msg(4),
                                                msg(5), msg(6)]))


def test_a_silent_gap_is_caught_a_told_one_is_not() -> None:
    silent = [msg(1), msg(2), msg(5), msg(6)]
    assert any("without being told" in p for p in problems(silent))
    told_at_rejoin = [msg(1), msg(2), told(), msg(5, E2, 1), msg(6, E2, 2)]
    assert problems(told_at_rejoin) == []
    # Told, but only later than the first positioned message past the gap: not enough.
    told_late = [msg(1), msg(2), msg(5), told(), msg(6, E2, 1)]
    assert any("without being told" in p for p in problems(told_late))
    # Unpositioned ones (not stored) may come first; the told must precede the stream's return.
    unstored_then_told = [msg(1), msg(2), msg(4, None), told(), msg(5, E2, 1), msg(6, E2, 2)]
    assert problems(unstored_then_told) == []
    # Told about an earlier gap does not cover a later one.
    twice = [msg(1), told(), msg(3, E2, 1), msg(4, E2, 2), msg(6, E2, 4)]
    assert any("without being told" in p for p in problems(twice))


def test_order_within_each_epoch_once_told() -> None:
    # An unstored one overtaking a late positioned one: tolerated once told, per epoch.
    events = [msg(1), msg(2), msg(4, None), msg(3), told(), msg(5, E2, 1), msg(6, E2, 2)]
    assert problems(events) == []
    assert any("out of order" in p for p in problems([msg(1), msg(2), msg(4, None), msg(3),
                                                      msg(5), msg(6)]))


def test_missing_at_the_end_or_nothing_at_all() -> None:
    assert any("without being told" in p for p in problems([msg(1), msg(2), msg(3)]))
    assert problems([]) == ["saw nothing"]
