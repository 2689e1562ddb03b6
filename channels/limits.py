"""Rate limiting as plain objects (sans-IO): a token bucket and an abuse counter."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; ``take(now)`` spends one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one (refilling for the time since the last call)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


class InboundLimiter:
    """Per-connection inbound message limit.

    Over the limit a message is refused; a client that keeps sending while refused (more than
    ``abuse_after`` refusals in a row) is abusive and should be disconnected.
    """

    __slots__ = ("abuse_after", "bucket", "refused_in_a_row")

    def __init__(
        self, rate: float, burst: float, now: float, abuse_after: int | None = None
    ) -> None:
        self.bucket = TokenBucket(rate, burst, now)
        self.abuse_after = abuse_after if abuse_after is not None else max(int(burst), 10)
        self.refused_in_a_row = 0

    def check(self, now: float) -> bool | None:
        """True: accept. False: refuse this message. None: abuse, close the connection."""
        if self.bucket.take(now):
            self.refused_in_a_row = 0
            return True
        self.refused_in_a_row += 1
        if self.refused_in_a_row > self.abuse_after:
            return None
        return False
