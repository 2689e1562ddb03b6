"""The rate limiter as a plain object (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.limits import InboundLimiter, TokenBucket


def test_bucket_burst_then_rate() -> None:
    b = TokenBucket(rate=10, burst=3, now=0)
    assert [b.take(0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(0.05)   # half a token
    assert b.take(0.1)        # one token after 0.1 s
    assert [b.take(100) for _ in range(4)] == [True, True, True, False]  # capped at burst


@given(st.lists(st.floats(0, 0.5), max_size=200), st.floats(1, 50), st.integers(1, 20))
def test_bucket_never_exceeds_rate_plus_burst(gaps: list[float], rate: float, burst: int) -> None:
    b = TokenBucket(rate, burst, 0)
    now, taken = 0.0, 0
    for gap in gaps:
        now += gap
        taken += b.take(now)
    assert taken <= burst + rate * now + 1e-6


def test_limiter_refuses_then_flags_abuse() -> None:
    lim = InboundLimiter(rate=1, burst=2, now=0, abuse_after=3)
    assert [lim.check(0) for _ in range(6)] == [True, True, False, False, False, None]
    assert lim.check(10) is True and lim.refused_in_a_row == 0


def test_bad_config() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
