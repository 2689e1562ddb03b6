"""channels.wsframe against wsproto's FrameProtocol (what the server used before).

The reference below is the server's earlier read loop on wsproto, without the I/O: messages
assembled from fragments and partial frames, 1009 when a message or a frame header still
arriving goes past the limit, 1009 for lengths of 2**63 or more, ParseFailed's code and
reason otherwise. Random streams (messages fragmented at random, control frames between the
fragments, random masks, broken frames) cut at random points must give the same events.
"""

from __future__ import annotations

import os
import struct
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed, XorMaskerSimple

from channels.wsframe import (
    Close,
    Event,
    Failure,
    FrameParser,
    Ping,
    close_frame,
    pong_frame,
    unmask,
)

BIG = 1 << 40


def frame(op: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bytes | None = b"\x11\x22\x33\x44", length: str = "min") -> bytes:
    """A client frame; ``mask=None``: unmasked; ``length`` "2" or "8" forces a length form."""
    n = len(payload)
    first = (0x80 if fin else 0) | (rsv << 4) | op
    bit = 0x80 if mask is not None else 0
    if length == "2" or (length == "min" and 126 <= n < 1 << 16):
        head = bytes((first, bit | 126)) + struct.pack("!H", n)
    elif length == "8" or (length == "min" and n >= 1 << 16):
        head = bytes((first, bit | 127)) + struct.pack("!Q", n)
    else:
        head = bytes((first, bit | n))
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def header(op: int, declared: int, mask: bytes = b"\0\0\0\0", fin: bool = True) -> bytes:
    """Only the header of a masked frame declaring ``declared`` bytes."""
    first = (0x80 if fin else 0) | op
    if declared < 126:
        return bytes((first, 0x80 | declared)) + mask
    if declared < 1 << 16:
        return bytes((first, 0x80 | 126)) + struct.pack("!H", declared) + mask
    return bytes((first, 0x80 | 127)) + struct.pack("!Q", declared) + mask


def normal(events: list[Event]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for ev in events:
        if isinstance(ev, str):
            out.append(("text", ev))
        elif isinstance(ev, bytes):
            out.append(("binary", ev))
        elif isinstance(ev, Ping):
            out.append(("ping", ev.payload))
        elif isinstance(ev, Close):
            out.append(("close", ev.code, ev.reason))
        elif ev.code == 1009:
            out.append(("fail", 1009))
        else:
            out.append(("fail", ev.code, ev.reason))
    return out


def parse(chunks: list[bytes], max_size: int = BIG) -> list[tuple[Any, ...]]:
    parser = FrameParser(max_size)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return normal(events)


def reference(chunks: list[bytes], max_size: int = BIG) -> list[tuple[Any, ...]]:
    """The same stream through wsproto, as the server's read loop handled it."""
    frames = FrameProtocol(client=False, extensions=[])
    decoder = frames._frame_decoder
    out: list[tuple[Any, ...]] = []
    text: list[str] = []
    binary: list[bytes] = []
    size = 0
    for chunk in chunks:
        frames.receive_bytes(chunk)
        try:
            for f in frames.received_frames():
                if f.opcode is Opcode.TEXT:
                    assert isinstance(f.payload, str)
                    size += len(f.payload.encode())
                    if size > max_size:
                        return [*out, ("fail", 1009)]
                    text.append(f.payload)
                    if f.message_finished:
                        out.append(("text", "".join(text)))
                        text.clear()
                        size = 0
                elif f.opcode is Opcode.BINARY:
                    assert isinstance(f.payload, bytes)
                    size += len(f.payload)
                    if size > max_size:
                        return [*out, ("fail", 1009)]
                    binary.append(f.payload)
                    if f.message_finished:
                        out.append(("binary", b"".join(binary)))
                        binary.clear()
                        size = 0
                elif f.opcode is Opcode.PING:
                    out.append(("ping", f.payload))
                elif f.opcode is Opcode.CLOSE:
                    assert isinstance(f.payload, tuple)
                    return [*out, ("close", int(f.payload[0]), f.payload[1])]
        except ParseFailed as exc:
            if "non-zero MSB" in str(exc):
                return [*out, ("fail", 1009)]
            return [*out, ("fail", int(exc.code), str(exc))]
        head = decoder.header
        if head is not None and not head.opcode.iscontrol():
            if size + head.payload_len - decoder.payload_consumed > max_size:
                return [*out, ("fail", 1009)]
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(edges)]


# -- random streams ---------------------------------------------------------------------------

masks = st.one_of(st.just(b"\0\0\0\0"), st.binary(min_size=4, max_size=4))
texts = st.one_of(st.text(max_size=60).map(str.encode),
                  st.binary(max_size=40),  # often not UTF-8
                  st.sampled_from([b"\xc3\xa9" * 80, "€😀".encode() * 30, b"x" * 300]))
controls = st.one_of(
    st.builds(lambda p, m: frame(0x9, p, mask=m), st.binary(max_size=125), masks),
    st.builds(lambda p, m: frame(0xA, p, mask=m), st.binary(max_size=125), masks),
)


@st.composite
def messages(draw: st.DrawFn, ascii_only: bool = False) -> bytes:
    """A text or binary message as one or more fragments, control frames between them.

    ``ascii_only``: text is ASCII (the old loop counted a text message's size after decoding,
    so the bytes of a character cut between fragments counted one fragment late).
    """
    op = draw(st.sampled_from([0x1, 0x2]))
    if op == 0x2:
        payload = draw(st.binary(max_size=300))
    else:
        payload = draw(st.text(st.characters(max_codepoint=127), max_size=200).map(str.encode)
                       if ascii_only else texts)
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    pieces = [payload[a:b] for a, b in pairwise([0, *cuts, len(payload)])]
    out = b""
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        out += frame(op if i == 0 else 0x0, piece, fin=last, mask=draw(masks))
        if not last and draw(st.booleans()):
            out += draw(controls)
    return out


close_payloads = st.one_of(
    st.just(b""), st.binary(min_size=1, max_size=1),
    st.builds(lambda c, r: struct.pack("!H", c) + r,
              st.sampled_from([999, 1000, 1001, 1004, 1005, 1006, 1011, 1013, 1014, 1015, 2999,
                               3000, 4000, 4999, 5000]),
              st.one_of(st.text(max_size=20).map(str.encode), st.binary(max_size=10))),
)
bad_frames = st.one_of(
    st.builds(lambda op: frame(op, b"x"), st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xF])),
    st.builds(lambda p: frame(0x9, p, fin=False), st.binary(max_size=10)),   # fragmented ping
    st.just(frame(0x9, b"p" * 126)),                                           # long control
    st.builds(lambda p: frame(0x1, p, length="2"), st.binary(max_size=125)),   # non-minimal
    st.builds(lambda p: frame(0x2, p, length="8"), st.binary(max_size=300)),   # non-minimal
    st.builds(lambda r, p: frame(0x1, p, rsv=r), st.integers(1, 7), st.binary(max_size=5)),
    st.builds(lambda p: frame(0x1, p, mask=None), st.binary(max_size=5)),     # unmasked
    st.builds(lambda p: frame(0x0, p), st.binary(max_size=5)),  # continuation of nothing
    st.builds(lambda p: frame(0x1, p, fin=False) + frame(0x2, p),             # no continuation
              st.binary(max_size=5)),
    st.builds(lambda p: frame(0x8, p), close_payloads),
)
streams = st.lists(st.one_of(messages(), controls, bad_frames), max_size=8).map(b"".join)
cut_lists = st.lists(st.integers(0, 10_000), max_size=12)


@settings(max_examples=1500, deadline=None)
@given(streams, cut_lists)
def test_random_streams_cut_anywhere_decode_as_wsproto_does(data: bytes, cuts: list[int]) -> None:
    chunks = split(data, cuts)
    expected = reference(chunks)
    assert parse(chunks) == expected
    whole = parse([data])
    assert whole == reference([data])
    # However the stream is cut, the same events (a UTF-8 error's position counts from the
    # start of the bytes decoded together, in wsproto too).
    assert [e[:2] for e in whole] == [e[:2] for e in expected]


@settings(max_examples=500, deadline=None)
@given(st.lists(messages(ascii_only=True), min_size=1, max_size=6).map(b"".join), cut_lists,
       st.integers(0, 700))
def test_message_size_limit_as_wsproto_and_the_read_loop(data: bytes, cuts: list[int],
                                                         max_size: int) -> None:
    chunks = split(data, cuts)
    assert parse(chunks, max_size) == reference(chunks, max_size)


# -- the limit at the header ------------------------------------------------------------------

@pytest.mark.parametrize("declared", [2**62, 2**63 - 1, 2**63, 2**64 - 1, 1001, 10_000])
@pytest.mark.parametrize("op", [0x1, 0x2])
def test_a_header_past_the_limit_fails_1009_at_once(declared: int, op: int) -> None:
    [fail] = FrameParser(1000).feed(header(op, declared))
    assert isinstance(fail, Failure) and fail.code == 1009
    assert fail.size == min(declared, 2**63)


def test_a_fragment_taking_the_message_past_the_limit_fails_at_its_header() -> None:
    parser = FrameParser(1000)
    assert parser.feed(frame(0x1, b"[" * 600, fin=False)) == []
    [fail] = parser.feed(header(0x0, 401))
    assert isinstance(fail, Failure) and (fail.code, fail.size) == (1009, 1001)


def test_a_message_at_the_limit_is_taken_as_it_arrives() -> None:
    parser = FrameParser(1000)
    data = frame(0x1, b"a" * 1000, mask=os.urandom(4))
    assert parser.feed(data[:500]) == []
    assert parser.feed(data[500:]) == ["a" * 1000]


def test_a_whole_frame_past_the_limit_fails_1009_before_its_text_is_checked() -> None:
    # A deliberate difference: wsproto's loop decoded a frame that had arrived whole before
    # checking its size (1007 here), but 1009 when only its header had arrived. The header
    # decides now, however the bytes arrive.
    data = frame(0x1, b"\xff" * 200)
    assert parse([data], 100) == [("fail", 1009)] == parse([data[:8], data[8:]], 100)
    assert reference([data], 100)[0][:2] == ("fail", 1007)
    assert reference([data[:8], data[8:]], 100)[0][:2] == ("fail", 1009)


def test_events_before_a_failure_come_first_and_nothing_after() -> None:
    parser = FrameParser(100)
    events = parser.feed(frame(0x1, b"one") + frame(0x9, b"p") + header(0x2, 101) + b"rest")
    assert normal(events) == [("text", "one"), ("ping", b"p"), ("fail", 1009)]
    assert parser.feed(frame(0x1, b"two")) == []


# -- control frames and other events ----------------------------------------------------------

@pytest.mark.parametrize("payload, expected", [
    (b"", ("close", 1005, "")),
    (b"\x03", ("fail", 1002, "CLOSE with 1 byte payload")),
    (struct.pack("!H", 999), ("fail", 1002, "CLOSE with invalid code")),
    (struct.pack("!H", 5000), ("fail", 1002, "CLOSE with invalid code")),
    (struct.pack("!H", 1006), ("fail", 1002, "remote CLOSE with local-only reason")),
    (struct.pack("!H", 1004), ("fail", 1002, "CLOSE with unknown reserved code")),
    (struct.pack("!H", 1000) + b"bye", ("close", 1000, "bye")),
    (struct.pack("!H", 4321) + "ça".encode(), ("close", 4321, "ça")),
])
def test_close_frames(payload: bytes, expected: tuple[Any, ...]) -> None:
    data = frame(0x8, payload) + frame(0x1, b"after the close")
    assert parse([data]) == [expected] == reference([data])


def test_a_close_reason_that_is_not_utf8_fails_1007() -> None:
    data = frame(0x8, struct.pack("!H", 1000) + b"\xff")
    [event] = parse([data])
    assert event[:2] == ("fail", 1007)
    assert parse([data]) == reference([data])


def test_invalid_text_fails_1007_as_its_fragment_arrives() -> None:
    parser = FrameParser(BIG)
    [fail] = parser.feed(frame(0x1, b"ok \xff", fin=False))
    assert isinstance(fail, Failure) and fail.code == 1007
    parser = FrameParser(BIG)
    data = frame(0x1, b"x" * 50 + b"\xfe" + b"y" * 50)
    [fail] = parser.feed(data[:60])  # the frame is not complete: its first bytes are checked
    assert isinstance(fail, Failure) and fail.code == 1007


@pytest.mark.parametrize("data, max_size, expected", [
    (frame(0x1, b"short"), BIG, [("text", "short")]),
    (frame(0x1, b"bad \xff"), BIG, None),   # not UTF-8: the full path says why
    (frame(0x1, b"x" * 125), 124, None),   # past the limit
    (frame(0x1, b"x" * 125), 125, [("text", "x" * 125)]),
])
def test_one_short_text_frame_the_fast_way(data: bytes, max_size: int,
                                           expected: list[tuple[Any, ...]] | None) -> None:
    got = parse([data], max_size)
    assert got == reference([data], max_size)
    if expected is not None:
        assert got == expected


def test_pings_between_fragments_and_pongs_ignored() -> None:
    data = (frame(0x2, b"ab", fin=False) + frame(0x9, b"hi") + frame(0xA, b"x")
            + frame(0x0, b"cd", fin=False) + frame(0x0, b"", fin=True))
    assert parse([data]) == [("ping", b"hi"), ("binary", b"abcd")]


def test_initial_bytes_are_the_first_frames() -> None:
    world = frame(0x1, b"world")
    parser = FrameParser(BIG, frame(0x1, b"hello") + world[:4])
    assert parser.feed(b"") == ["hello"]
    assert parser.feed(world[4:]) == ["world"]
    assert parser.feed(b"") == []


def test_split_multibyte_characters_across_fragments() -> None:
    raw = "né😀".encode()
    data = b"".join(frame(0x1 if i == 0 else 0x0, raw[i:i + 1], fin=i == len(raw) - 1)
                    for i in range(len(raw)))
    assert parse(split(data, list(range(0, len(data), 3)))) == [("text", "né😀")]


# -- unmasking and server frames --------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 127, 2047, 2048, 2049, 70_001])
def test_unmask_matches_wsproto(n: int) -> None:
    data, mask = os.urandom(n), os.urandom(4)
    assert unmask(data, mask) == bytes(XorMaskerSimple(mask).process(bytearray(data)))


@pytest.mark.parametrize("code, reason", [
    (1000, ""), (1002, "Reserved bit set unexpectedly"), (1005, ""), (1006, "x"), (1009, "big"),
    (1013, "slow consumer"), (4000, "é" * 70), (1011, "a" * 200),
])
def test_close_frame_matches_wsproto(code: int, reason: str) -> None:
    assert close_frame(code, reason) == bytes(FrameProtocol(False, []).close(code, reason))


def test_pong_frame_matches_wsproto() -> None:
    assert pong_frame(b"ping!") == bytes(FrameProtocol(False, []).pong(b"ping!"))
