"""Server-to-client WebSocket framing.

Server frames are never masked, so one framed ``bytes`` object can be written to every
subscriber of a broadcast unchanged: this is what makes the fastlane cheap.
"""

from __future__ import annotations

import struct

_SHORT = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")

# Close codes used by the runtime (RFC 6455 §7.4 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # "disconnect" broadcast on the socket id
CLOSE_PROTOCOL_ERROR = 1002  # protocol errors and idle timeout (as Bandit does)
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012  # drain at shutdown: the JS client reconnects
CLOSE_TRY_AGAIN_LATER = 1013  # slow consumer


def ws_frame(data: bytes, binary: bool = False) -> bytes:
    """Frame ``data`` as one final, unmasked text (or binary) WebSocket frame."""
    first = 0x82 if binary else 0x81
    n = len(data)
    if n < 126:
        return bytes((first, n)) + data
    if n < 65536:
        return _SHORT.pack(first, 126, n) + data
    return _LONG.pack(first, 127, n) + data
