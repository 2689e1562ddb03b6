"""Wire fidelity with Phoenix, for clients other than phoenix.js, with raw frames.

- Refs are echoed as decoded: ``1`` comes back ``1`` (not ``"1"``), and any other JSON value
  comes back as itself; join_refs compare as Elixir's ``===`` does (``"1"``, ``1``, ``1.0``
  and ``true`` are four different join_refs).
- Integers beyond 64 bits stay exact, both ways.
- V1 JSON in a binary frame is read like a text frame; V2 binary frames stay binary pushes.
- A frame header declaring more than ``max_frame_size`` closes with 1009 at once (Bandit).
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from channels import Endpoint
from channels.protocol import same_ref
from tests.support.client import RawClient, connect

V1, V2 = "1.0.0", "2.0.0"
OK: dict[str, Any] = {"status": "ok", "response": {}}
MAX = 64 * 1024  # tests.support.app.UserSocket.max_frame_size


@pytest.fixture(params=[V1, V2])
def vsn(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _same(a: Any, b: Any) -> bool:
    """Equal with the same JSON types throughout (what a client keyed by its refs needs)."""
    return same_ref(a, b)


async def _raw(c: RawClient, timeout: float = 5) -> str | bytes:
    with trio.fail_after(timeout):
        return await c.ws.get_message()


async def _heartbeat_flush(c: RawClient, ref: Any) -> None:
    """Send a heartbeat and wait for its reply: no other reply came before it."""
    await c.send(None, ref, "phoenix", "heartbeat", {})
    while (m := await c.recv())[2] != "phoenix":
        assert m[3] not in ("phx_reply", "phx_close"), m
    assert m[3] == "phx_reply" and _same(m[1], ref), m


# ------------------------------------------------------------------------------------------------
# refs


async def test_integer_refs_come_back_integers(endpoint: Endpoint, vsn: str) -> None:
    # What phxsocket 0.1.5 and chunnel 0.1.0 need: they key pending pushes by integer refs.
    v2 = vsn == V2
    async with connect(endpoint.port, vsn) as c:  # type: ignore[attr-defined]
        await c.send(None, 5, "phoenix", "heartbeat", {})  # type: ignore[arg-type]
        m = await c.recv()
        assert m == [None, 5, "phoenix", "phx_reply", OK] and type(m[1]) is int

        await c.send(1, 1, "room:ints", "phx_join", {})  # type: ignore[arg-type]
        m = await c.recv_until("phx_reply")
        assert m == [1 if v2 else None, 1, "room:ints", "phx_reply", OK]
        assert type(m[1]) is int and (not v2 or type(m[0]) is int)
        joined = await c.recv_until("joined")
        assert joined[0] == (1 if v2 else None) and joined[1] is None

        await c.send(1, 2, "room:ints", "echo", {"a": 1})  # type: ignore[arg-type]
        m = await c.recv_until("phx_reply")
        assert m == [1 if v2 else None, 2, "room:ints", "phx_reply",
                     {"status": "ok", "response": {"a": 1}}]
        assert type(m[1]) is int

        await c.send(1, 3, "room:ints", "assigns", {})  # type: ignore[arg-type]
        m = await c.recv_until("phx_reply")
        assert m[4]["response"]["join_ref"] == 1 and type(m[4]["response"]["join_ref"]) is int

        await c.send(1, 4, "room:ints", "phx_leave", {})  # type: ignore[arg-type]
        m = await c.recv_until("phx_reply")
        assert m == [1 if v2 else None, 4, "room:ints", "phx_reply", OK] and type(m[1]) is int
        close = await c.recv_until("phx_close")
        assert close == [1 if v2 else None, 1, "room:ints", "phx_close", {}]
        assert type(close[1]) is int


async def test_integer_refs_in_raw_v2_text(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        await c.send_raw('[7,8,"room:raw","phx_join",{}]')
        assert await _raw(c) == '[7,8,"room:raw","phx_reply",{"status":"ok","response":{}}]'
        await c.send_raw('[null,9,"phoenix","heartbeat",{}]')
        while (text := await _raw(c)) != \
                '[null,9,"phoenix","phx_reply",{"status":"ok","response":{}}]':
            assert isinstance(text, str) and ',"phx_reply",' not in text, text


async def test_integer_refs_in_raw_v1_text(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V1) as c:  # type: ignore[attr-defined]
        await c.send_raw('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":12}')
        assert await _raw(c) == \
            '{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},' \
            '"ref":12}'


REFS = [1.5, True, False, {"a": [1, "x"]}, [1, "x"], [], {}, "", 0, -1, 2**64, 10**30]


@pytest.mark.parametrize("ref", REFS, ids=repr)
async def test_any_json_ref_is_echoed(endpoint: Endpoint, vsn: str, ref: Any) -> None:
    # Phoenix treats refs as opaque values: whatever JSON was sent is put back in the reply.
    async with connect(endpoint.port, vsn) as c:  # type: ignore[attr-defined]
        await c.send_raw(_frame(vsn, None, ref, "phoenix", "heartbeat", {}))
        m = _decode(vsn, await _raw(c))
        assert m[2:] == ["phoenix", "phx_reply", OK] and _same(m[1], ref), m


@pytest.mark.parametrize("join_ref", [{"k": [1, "x"]}, [1, 2], 1.5, True, 7, "7", 2**70],
                         ids=repr)
async def test_any_json_join_ref_routes_pushes(endpoint: Endpoint, join_ref: Any) -> None:
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        await c.send_raw(_frame(V2, join_ref, "1", "room:jr", "phx_join", {}))
        m = _decode(V2, await _raw(c))
        assert m[1:] == ["1", "room:jr", "phx_reply", OK] and _same(m[0], join_ref), m
        await c.send_raw(_frame(V2, join_ref, "2", "room:jr", "echo", {"n": 1}))
        m = await c.recv_until("phx_reply")
        assert _same(m[0], join_ref) and m[1] == "2" and m[4]["response"] == {"n": 1}
        await c.send_raw(_frame(V2, join_ref, "3", "room:jr", "phx_leave", {}))
        assert (await c.recv_until("phx_reply"))[1] == "3"
        close = await c.recv_until("phx_close")
        assert _same(close[0], join_ref) and _same(close[1], join_ref)


@pytest.mark.parametrize(("joined_with", "pushed_with"), [
    ("1", 1), (1, "1"), (1, 1.0), (1, True), (0, False), (1.0, 1), (0.0, -0.0),
    ({"a": 1}, {"a": 1.0}), ([1], [True]), ({"a": 1}, {"a": 1, "b": 2}), ([1, 2], [2, 1]),
], ids=repr)
async def test_join_refs_compare_as_elixir_strict_equality(
    endpoint: Endpoint, joined_with: Any, pushed_with: Any
) -> None:
    # Phoenix: join_ref === existing_join_ref, else the message is stale and dropped silently.
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        await c.send_raw(_frame(V2, joined_with, "1", "room:strict", "phx_join", {}))
        assert (await c.recv_until("phx_reply"))[4] == OK
        await c.recv_until("joined")
        await c.send_raw(_frame(V2, pushed_with, "2", "room:strict", "echo", {}))
        await c.send_raw(_frame(V2, pushed_with, "3", "room:strict", "phx_leave", {}))
        await _heartbeat_flush(c, "4")  # neither was answered: both dropped as stale
        await c.send_raw(_frame(V2, joined_with, "5", "room:strict", "echo", {}))
        assert (await c.recv_until("phx_reply"))[1] == "5"


# ------------------------------------------------------------------------------------------------
# integers beyond 64 bits


BIG = [18446744073709551616, -9223372036854775809, 123456789012345678901234567890,
       -(10**300), 18446744073709551615, -9223372036854775808]


async def test_big_integers_are_echoed_exactly_v2(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        await c.join("room:big", "1", "1")
        numbers = ",".join(map(str, BIG))
        await c.send_raw(f'["1","2","room:big","echo",{{"n":[{numbers}],"i":{BIG[0]}}}]')
        text = await _raw(c)
        while isinstance(text, str) and '"phx_reply"' not in text:
            text = await _raw(c)
        assert text == f'["1","2","room:big","phx_reply",{{"status":"ok","response":' \
                       f'{{"n":[{numbers}],"i":{BIG[0]}}}}}]'
        assert "e+" not in text and "e1" not in text  # the float it used to be


async def test_big_integers_are_echoed_exactly_v1(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V1) as c:  # type: ignore[attr-defined]
        await c.join("room:big", "1", "1")
        await c.send_raw('{"topic":"room:big","event":"echo","ref":"2","join_ref":"1",'
                         f'"payload":{{"n":{BIG[0]}}}}}')
        while True:
            m = msgspec.json.decode(await _raw(c))
            if m["event"] == "phx_reply":
                break
        assert m["payload"]["response"] == {"n": BIG[0]} and type(m["payload"]["response"]["n"]) \
            is int


async def test_big_integer_refs_are_echoed_exactly(endpoint: Endpoint, vsn: str) -> None:
    async with connect(endpoint.port, vsn) as c:  # type: ignore[attr-defined]
        await c.send_raw(_frame(vsn, None, BIG[0], "phoenix", "heartbeat", {}))
        text = await _raw(c)
        assert isinstance(text, str) and str(BIG[0]) in text
        assert _decode(vsn, text)[1] == BIG[0]


# ------------------------------------------------------------------------------------------------
# opcodes


async def test_v1_json_in_a_binary_frame_is_read_as_json(endpoint: Endpoint) -> None:
    # Phoenix's V1 serializer decodes whatever the opcode; replies are text frames.
    async with connect(endpoint.port, V1) as c:  # type: ignore[attr-defined]
        await c.send_raw(b'{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}')
        assert await _raw(c) == '{"topic":"phoenix","event":"phx_reply","payload":' \
                                '{"status":"ok","response":{}},"ref":"1"}'
        await c.send_raw(b'{"topic":"room:b","event":"phx_join","payload":{},"ref":"2",'
                         b'"join_ref":"2"}')
        assert await c.recv_until("phx_reply") == [None, "2", "room:b", "phx_reply", OK]
        await c.send_raw(b'{"topic":"room:b","event":"echo","payload":{"x":[1]},"ref":"3",'
                         b'"join_ref":"2"}')
        assert await c.recv_until("phx_reply") == [
            None, "3", "room:b", "phx_reply", {"status": "ok", "response": {"x": [1]}}]


async def test_v1_malformed_binary_frame_is_1007(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V1) as c:  # type: ignore[attr-defined]
        await c.send_raw(b"\x00\x01\x01\x01\x01abcd")
        assert await c.closed() == 1007


async def test_v2_binary_frames_keep_their_binary_meaning(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2) as c:  # type: ignore[attr-defined]
        await c.join("room:bin", "1", "1")
        await c.send("1", "2", "room:bin", "binary_event", b"\x01\x02")
        m = await c.recv_until("phx_reply")
        assert m == ["1", "2", "room:bin", "phx_reply",
                     {"status": "ok", "response": b"\x01\x02\x03\x04"}]
        # JSON text in a V2 binary frame is not a binary push (kind byte "[").
        await c.send_raw(b'["1","3","room:bin","echo",{}]')
        assert await c.closed() == 1007


# ------------------------------------------------------------------------------------------------
# declared frame lengths


HANDSHAKE = (b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n"
             b"connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"sec-websocket-version: 13\r\n\r\n")
NO_MASK = b"\x00\x00\x00\x00"  # a zero masking key leaves the payload as it is


def _header(length: int, first: int = 0x81) -> bytes:
    """A masked client frame header declaring ``length`` bytes (any 64-bit value)."""
    if length < 126:
        return bytes((first, 0x80 | length)) + NO_MASK
    if length < 1 << 16:
        return bytes((first, 0x80 | 126)) + struct.pack("!H", length) + NO_MASK
    return bytes((first, 0x80 | 127)) + struct.pack("!Q", length) + NO_MASK


class _Raw:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def upgrade(self) -> None:
        await self.stream.send_all(HANDSHAKE)
        while b"\r\n\r\n" not in self.buf:
            self.buf += await self.stream.receive_some()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head

    async def frame(self, timeout: float) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload); server frames are never masked."""
        with trio.fail_after(timeout):
            while True:
                if len(self.buf) >= 2:
                    n, at = self.buf[1] & 0x7F, 2
                    if n == 126 and len(self.buf) >= 4:
                        n, at = struct.unpack("!H", self.buf[2:4])[0], 4
                    elif n == 127 and len(self.buf) >= 10:
                        n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
                    if n < 126 and len(self.buf) >= at + n:
                        frame = (self.buf[0] & 0x0F, self.buf[at:at + n])
                        self.buf = self.buf[at + n:]
                        return frame
                data = await self.stream.receive_some()
                if not data:
                    raise EOFError
                self.buf += data

    async def close_code(self, timeout: float = 2) -> int:
        while True:
            op, payload = await self.frame(timeout)
            if op == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])


async def _open(endpoint: Endpoint) -> _Raw:
    raw = _Raw(await trio.open_tcp_stream("127.0.0.1", endpoint.port))  # type: ignore[attr-defined]
    await raw.upgrade()
    return raw


@pytest.mark.parametrize("declared", [2**62, 2**63 - 1, 2**63, 2**64 - 1, MAX + 1, 10 * MAX],
                         ids=["2^62", "2^63-1", "2^63", "2^64-1", "max+1", "10max"])
@pytest.mark.parametrize("opcode", [0x81, 0x82], ids=["text", "binary"])
async def test_declared_length_over_max_closes_1009_at_once(
    endpoint: Endpoint, declared: int, opcode: int
) -> None:
    raw = await _open(endpoint)
    async with raw.stream:
        # Only the header (the idle timeout is 60 s: waiting for the bytes would hang here).
        await raw.stream.send_all(_header(declared, opcode))
        assert await raw.close_code() == 1009


async def test_declared_length_with_some_payload_closes_1009_at_once(endpoint: Endpoint) -> None:
    raw = await _open(endpoint)
    async with raw.stream:
        await raw.stream.send_all(_header(2**62) + b'["1","1","phoenix","heartbeat"' + b" " * 500)
        assert await raw.close_code() == 1009


async def test_fragment_declaring_past_max_closes_1009_at_once(endpoint: Endpoint) -> None:
    raw = await _open(endpoint)
    async with raw.stream:
        first = b"[" + b" " * 40_000
        await raw.stream.send_all(_header(len(first), 0x01) + first)  # TEXT, not final
        # The continuation's header takes the message past max_frame_size.
        await raw.stream.send_all(_header(MAX - len(first) + 1, 0x80))
        assert await raw.close_code() == 1009


async def test_declared_length_at_max_is_served(endpoint: Endpoint) -> None:
    raw = await _open(endpoint)
    async with raw.stream:
        head = b'[null,"hb","phoenix","heartbeat",{"pad":"'
        tail = b'"}]'
        msg = head + b"x" * (MAX - len(head) - len(tail)) + tail
        assert len(msg) == MAX
        await raw.stream.send_all(_header(MAX) + msg[:1000])
        with trio.move_on_after(0.3):  # left open while the rest comes
            await raw.frame(1)
            raise AssertionError("the server answered a frame still arriving")
        await raw.stream.send_all(msg[1000:])
        op, payload = await raw.frame(5)
        assert op == 0x1 and payload.startswith(b'[null,"hb","phoenix","phx_reply"')


async def test_bystanders_unaffected_by_huge_headers(endpoint: Endpoint) -> None:
    async with connect(endpoint.port, V2) as bystander:  # type: ignore[attr-defined]
        await bystander.join("room:calm", "1", "1")
        for declared in (2**62, 2**63 - 1, 2**63):
            raw = await _open(endpoint)
            async with raw.stream:
                await raw.stream.send_all(_header(declared))
                assert await raw.close_code() == 1009
        await _heartbeat_flush(bystander, "2")


# ------------------------------------------------------------------------------------------------
# same_ref (the join_ref comparison)


def test_same_ref_is_elixir_strict_equality() -> None:
    assert same_ref("1", "1") and same_ref(1, 1) and same_ref(None, None)
    assert same_ref({"a": [1, {"b": 2.5}]}, {"a": [1, {"b": 2.5}]})
    assert same_ref(2**80, 2**80)
    for a, b in [("1", 1), (1, 1.0), (1, True), (0, False), (0.0, -0.0), (None, False),
                 ([1], [1.0]), ({"a": 1}, {"a": True}), ({"a": 1}, {"b": 1}), ([1], (1,)),
                 ({"a": 1}, {"a": 1, "b": 1}), ([1, 2], [1])]:
        assert not same_ref(a, b) and not same_ref(b, a), (a, b)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=10,
)


@given(json_values, json_values)
def test_same_ref_properties(a: Any, b: Any) -> None:
    assert same_ref(a, a)
    assert same_ref(a, b) == same_ref(b, a)
    if same_ref(a, b):
        assert a == b  # never looser than Python's ==


# ------------------------------------------------------------------------------------------------
# helpers


def _frame(vsn: str, join_ref: Any, ref: Any, topic: str, event: str, payload: Any) -> str:
    """A client text frame with refs of any JSON type (msgspec: integers of any size)."""
    if vsn == V1:
        msg: Any = {"topic": topic, "event": event, "payload": payload, "ref": ref}
        if join_ref is not None:
            msg["join_ref"] = join_ref
    else:
        msg = [join_ref, ref, topic, event, payload]
    return msgspec.json.encode(msg).decode()


def _decode(vsn: str, text: str | bytes) -> list[Any]:
    assert isinstance(text, str)
    m = msgspec.json.decode(text)
    if vsn == V1:
        assert "join_ref" not in m
        return [None, m["ref"], m["topic"], m["event"], m["payload"]]
    assert isinstance(m, list)
    return m
