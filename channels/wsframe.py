"""Client-to-server WebSocket frames (RFC 6455 §5), parsed without I/O, for the server side.

:class:`FrameParser` turns the bytes a client sends into whole messages (``str`` for text,
``bytes`` for binary), :class:`Ping` and :class:`Close` events, and at most one
:class:`Failure` (after which it parses nothing more). It keeps wsproto's ``FrameProtocol``
rules, in the same order and with the same close codes and reasons: 1002 for protocol errors
(bad opcodes, fragmented or long control frames, non-minimal lengths, RSV bits without an
extension, unmasked frames, bad continuations, bad close payloads), 1007 for text that is not
UTF-8 (as soon as the bytes arrive, fragment by fragment), and 1009 as soon as a data frame's
header takes its message past ``max_size`` (or declares 2**63 bytes or more) instead of
waiting for the bytes.

It is the inbound hot path of every connection, so the common case (a whole, final frame in
one read) takes one branch per check and no intermediate object, and short payloads are
unmasked as one big integer instead of byte by byte.
"""

from __future__ import annotations

import codecs
from typing import Any, Final, TypeAlias

__all__ = [
    "Close",
    "Event",
    "Failure",
    "FrameParser",
    "Ping",
    "close_frame",
    "pong_frame",
    "unmask",
]

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

_PROTOCOL_ERROR = 1002
_INVALID_DATA = 1007
_TOO_BIG = 1009
_NO_STATUS = 1005
# Codes a peer may not send (RFC 6455 §7.4.1); answered as 1000 when echoed.
_LOCAL_ONLY = frozenset((1005, 1006, 1015))
# Codes below 3000 a peer may send: the IANA registry as wsproto knows it.
_KNOWN_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013))
# How wsproto names an opcode in "expected CONTINUATION, got ..." (the close reason).
_OPCODE_REPR = {TEXT: "<Opcode.TEXT: 1>", BINARY: "<Opcode.BINARY: 2>"}
_VALID_OPCODES = frozenset((CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG))
# The longest length each extended length form may not carry (the shorter form would do).
_LONGEST_SHORTER = {2: 125, 8: 0xFFFF}
# Up to this many bytes the big-integer XOR is the fastest pure-Python unmasking; past it the
# per-lane translate tables (wsproto's way) win (measured: equal at ~2 KiB).
_INT_UNMASK_MAX = 2048
_XOR_TABLES = [bytes(a ^ b for a in range(256)) for b in range(256)]
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")
_from_bytes = int.from_bytes


class Ping:
    """A ping from the client: answer with :func:`pong_frame` of ``payload``."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __repr__(self) -> str:
        return f"Ping({self.payload!r})"


class Close:
    """The client's close frame (``code`` 1005 when it carried none). Nothing follows it."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"Close({self.code}, {self.reason!r})"


class Failure:
    """The stream broke the protocol: close with ``code``. Nothing follows it.

    ``size``: for 1009, the message size the client declared (2**63 for a length whose most
    significant bit is set); 0 otherwise.
    """

    __slots__ = ("code", "reason", "size")

    def __init__(self, code: int, reason: str, size: int = 0) -> None:
        self.code = code
        self.reason = reason
        self.size = size

    def __repr__(self) -> str:
        return f"Failure({self.code}, {self.reason!r}, {self.size})"


Event: TypeAlias = str | bytes | Ping | Close | Failure
"""What :meth:`FrameParser.feed` returns: a text message (``str``), a binary one
(``bytes``), a ping, the client's close, or the failure that ends the stream."""


def unmask(data: bytes, mask: bytes) -> bytes:
    """``data`` XORed with the 4-byte ``mask`` repeated (RFC 6455 §5.3)."""
    n = len(data)
    if n <= _INT_UNMASK_MAX:
        key = _from_bytes(mask * ((n >> 2) + 1), "little") & ((1 << (n << 3)) - 1)
        return (_from_bytes(data, "little") ^ key).to_bytes(n, "little")
    out = bytearray(data)
    for lane in range(4):
        out[lane::4] = out[lane::4].translate(_XOR_TABLES[mask[lane]])
    return bytes(out)


def close_frame(code: int, reason: str = "") -> bytes:
    """A server close frame with ``code`` (1005, 1006 and 1015 become 1000, as in wsproto) and
    ``reason`` cut to fit a control frame on a character boundary."""
    if code in _LOCAL_ONLY:
        code = 1000
    raw = reason.encode()
    if len(raw) > 123:
        raw = raw[:123].decode("utf-8", "ignore").encode()
    payload = code.to_bytes(2, "big") + raw
    return bytes((0x88, len(payload))) + payload


def pong_frame(payload: bytes) -> bytes:
    """A server pong frame echoing a ping's ``payload`` (at most 125 bytes)."""
    return bytes((0x8A, len(payload))) + payload


class FrameParser:
    """Sans-IO parser of a client's WebSocket byte stream (no extensions).

    ``feed(data)`` returns the events completed by ``data``; bytes that do not finish a
    header wait for the next call, and the payload of a data frame still arriving is taken
    (unmasked, and UTF-8 checked for text) as it comes.
    """

    __slots__ = ("_buf", "_decoder", "_done", "_fin", "_left", "_mask", "_msg", "_parts",
                 "_size", "max_size")

    def __init__(self, max_size: int, initial: bytes = b"") -> None:
        #: Largest message (bytes, all fragments) accepted; a header going past it fails 1009.
        self.max_size = max_size
        # Bytes of a header not complete yet (or of a control frame whose payload is not).
        self._buf = initial
        # The data frame still arriving: payload bytes to come, its mask (rotated past what was
        # taken) and FIN bit. _left == 0: between frames.
        self._left = 0
        self._mask = b""
        self._fin = False
        # The message being assembled from fragments or partial frames: its opcode (0: none),
        # parts so far, size in bytes, and the UTF-8 decoder of a text message.
        self._msg = 0
        self._parts: list[Any] | None = None
        self._size = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        self._done = False

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data`` (the next bytes of the stream); the events it completes, in order."""
        # The most common read of all: one whole, final, masked text frame under 126 bytes,
        # with nothing pending. Anything else (or text that is not UTF-8) takes the full path.
        if (len(data) > 6 and data[0] == 0x81 and 0x80 < data[1] < 0xFE
                and len(data) == data[1] - 0x7A and not (self._buf or self._left or self._msg
                                                        or self._done)
                and data[1] - 0x80 <= self.max_size):
            try:
                return [unmask(data[6:], data[2:6]).decode()]
            except UnicodeDecodeError:
                pass
        events: list[Event] = []
        if self._done:
            return events
        if self._buf:
            data = self._buf + data
            self._buf = b""
        end = len(data)
        pos = 0
        if self._left:
            pos = self._take(data, 0, events)
            if self._done:
                return events
        while pos < end:
            if end - pos < 2:
                self._buf = data[pos:]
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            op = b0 & 0x0F
            n = b1 & 0x7F
            at = pos + 2
            # wsproto's checks, in its order.
            if op not in _VALID_OPCODES:
                return self._fail(events, _PROTOCOL_ERROR, f"Invalid opcode {op:#x}")
            control = op & 0x08
            if control:
                if not b0 & 0x80:
                    return self._fail(events, _PROTOCOL_ERROR,
                                      "Invalid attempt to fragment control frame")
                if n > 125:
                    return self._fail(events, _PROTOCOL_ERROR,
                                      "Control frame with payload len > 125")
            if n > 125:  # 126: a 2-byte length follows, 127: an 8-byte one
                k = 2 if n == 126 else 8
                if end - at < k:
                    self._buf = data[pos:]
                    break
                n = _from_bytes(data[at:at + k], "big")
                at += k
                if n <= _LONGEST_SHORTER[k]:
                    return self._fail(events, _PROTOCOL_ERROR, f"Payload length used {k} bytes "
                                      f"when {k >> 2 or 1} would have sufficed")
                if n >> 63:
                    return self._fail(events, _TOO_BIG,
                                      "8-byte payload length with non-zero MSB", 1 << 63)
            if b0 & 0x70:
                return self._fail(events, _PROTOCOL_ERROR, "Reserved bit set unexpectedly")
            if not b1 & 0x80:
                return self._fail(events, _PROTOCOL_ERROR,
                                  "server received unexpected unmasked frame")
            if end - at < 4:  # the masking key
                self._buf = data[pos:]
                break
            stop = at + 4 + n
            if control:
                if stop > end:  # control frames are taken whole (125 bytes at most)
                    self._buf = data[pos:]
                    break
                payload = unmask(data[at + 4:stop], data[at:at + 4])
                pos = stop
                if op == PING:
                    events.append(Ping(payload))
                elif op == CLOSE:
                    self._done = True
                    events.append(_close_event(payload))
                    return events
                continue  # a pong: nothing to answer
            if op == CONTINUATION:
                if not self._msg:
                    return self._fail(events, _PROTOCOL_ERROR, "unexpected CONTINUATION")
            elif self._msg:
                return self._fail(events, _PROTOCOL_ERROR,
                                  f"expected CONTINUATION, got {_OPCODE_REPR[op]}")
            declared = self._size + n
            if declared > self.max_size:
                return self._fail(events, _TOO_BIG, "message too big", declared)
            if stop <= end and b0 & 0x80 and op:
                # The common case: a whole message in one frame, all of it here.
                payload = unmask(data[at + 4:stop], data[at:at + 4])
                pos = stop
                if op == TEXT:
                    try:
                        events.append(payload.decode())
                    except UnicodeDecodeError as exc:
                        return self._fail(events, _INVALID_DATA, str(exc))
                else:
                    events.append(payload)
                continue
            # A fragment, or a frame still arriving: assembled across frames and reads.
            if op:
                self._msg = op
                self._parts = []
                if op == TEXT:
                    self._decoder = _Utf8Decoder()
            self._fin = bool(b0 & 0x80)
            self._left = n
            self._mask = data[at:at + 4]
            pos = self._take(data, at + 4, events)
            if self._done:
                return events
        return events

    def _take(self, data: bytes, at: int, events: list[Event]) -> int:
        """Take what ``data`` holds from ``at`` of the data frame being received; the
        position after it."""
        k = min(self._left, len(data) - at)
        if k <= 0 and self._left:
            return at
        chunk = unmask(data[at:at + k], self._mask)
        self._left -= k
        turn = k & 3
        if turn:
            self._mask = self._mask[turn:] + self._mask[:turn]
        self._size += k
        finished = not self._left and self._fin
        parts = self._parts
        assert parts is not None
        if self._msg == TEXT:
            decoder = self._decoder
            assert decoder is not None
            try:
                text = decoder.decode(chunk, finished)
            except UnicodeDecodeError as exc:
                self._fail(events, _INVALID_DATA, str(exc))
                return at + k
            if text:
                parts.append(text)
            if finished:
                events.append("".join(parts))
        else:
            if chunk:
                parts.append(chunk)
            if finished:
                events.append(b"".join(parts))
        if finished:
            self._msg = 0
            self._parts = None
            self._decoder = None
            self._size = 0
        return at + k

    def _fail(self, events: list[Event], code: int, reason: str, size: int = 0) -> list[Event]:
        self._done = True
        self._buf = b""
        events.append(Failure(code, reason, size))
        return events


def _close_event(payload: bytes) -> Close | Failure:
    """The client's close frame checked as wsproto does."""
    if not payload:
        return Close(_NO_STATUS)
    if len(payload) == 1:
        return Failure(_PROTOCOL_ERROR, "CLOSE with 1 byte payload")
    code = (payload[0] << 8) | payload[1]
    if code < 1000 or code > 4999:
        return Failure(_PROTOCOL_ERROR, "CLOSE with invalid code")
    if code in _LOCAL_ONLY:
        return Failure(_PROTOCOL_ERROR, "remote CLOSE with local-only reason")
    if code <= 2999 and code not in _KNOWN_CODES:
        return Failure(_PROTOCOL_ERROR, "CLOSE with unknown reserved code")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError as exc:
        return Failure(_INVALID_DATA, "Error decoding CLOSE reason: " + str(exc))
    return Close(code, reason)
