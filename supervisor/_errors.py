"""Exceptions raised by the supervisor package."""

from __future__ import annotations

__all__ = ["CallTimeout", "MailboxClosed", "SupervisorEscalation"]


class SupervisorEscalation(Exception):
    """A supervisor exceeded its restart intensity and shut down.

    ``name`` is the supervisor's name, ``child`` the id/name of the child whose
    failure tipped it over; the child's exception (if it raised one) is ``__cause__``.
    """

    def __init__(self, name: str, child: str) -> None:
        super().__init__(f"supervisor {name!r}: restart intensity exceeded (last: {child!r})")
        self.name = name
        self.child = child


class MailboxClosed(Exception):
    """The mailbox is closed, or the actor stopped/exited before replying to a call."""


class CallTimeout(TimeoutError):
    """``Actor.call`` got no reply within its timeout."""
