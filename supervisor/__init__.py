"""Erlang/OTP-style supervision and actors for trio.

* :class:`Supervisor`: a fixed, ordered set of children (:class:`ChildSpec`) with
  one_for_one / one_for_all / rest_for_one restarts and restart intensity.
* :class:`DynamicSupervisor`: cheap, runtime-added children (one actor per topic).
* :class:`Actor` / :class:`Mailbox`: one-message-at-a-time state owners with timers
  and request/reply.
* :class:`RestartIntensity`, :func:`children_to_restart`, :func:`should_restart`: the
  sans-IO restart decisions the supervisors are built on.
"""

from ._actor import Actor, TimerRef
from ._dynamic import ChildHandle, DynamicSupervisor
from ._errors import CallTimeout, MailboxClosed, SupervisorEscalation
from ._mailbox import Mailbox
from ._policy import Restart, RestartIntensity, Strategy, children_to_restart, should_restart
from ._supervisor import ChildSpec, Supervisor

__all__ = [
    "Actor",
    "CallTimeout",
    "ChildHandle",
    "ChildSpec",
    "DynamicSupervisor",
    "Mailbox",
    "MailboxClosed",
    "Restart",
    "RestartIntensity",
    "Strategy",
    "Supervisor",
    "SupervisorEscalation",
    "TimerRef",
    "children_to_restart",
    "should_restart",
]
