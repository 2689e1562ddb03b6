"""Tests for channels.serializer: reference examples, error cases and hypothesis properties."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from channels.serializer import (
    V1,
    V2,
    DecodeError,
    EncodeError,
    Message,
    ProtocolError,
    Serializer,
    V1JSONSerializer,
    V2JSONSerializer,
    decode_server_frame,
    encode_client_binary_push,
    serializer_for_vsn,
)

SERIALIZERS = [V1, V2]
EFG = bytes.fromhex("656667")  # the payload bytes of the Phoenix serializer tests (b"efg")


# ------------------------------------------------------------------------------------------------
# reference examples (protocol reference sections 2, 3 and 9 items 62-65)


def test_v2_message_example() -> None:
    assert V2.encode(None, None, "t", "e", {"m": 1}) == (False, b'[null,null,"t","e",{"m":1}]')


def test_v2_broadcast_example() -> None:
    assert V2.encode_broadcast("t", "e", {"m": 1}) == (False, b'[null,null,"t","e",{"m":1}]')


def test_v2_decode_example() -> None:
    assert V2.decode(b'[null,null,"t","e",{"m":1}]', False) == Message(
        None, None, "t", "e", {"m": 1}
    )


def test_v2_reply_json() -> None:
    assert V2.encode_reply("3", "3", "room:lobby", "ok", {"a": 1}) == (
        False,
        b'["3","3","room:lobby","phx_reply",{"status":"ok","response":{"a":1}}]',
    )
    assert V2.encode_reply(None, "8", "phoenix", "ok", {}) == (
        False,
        b'[null,"8","phoenix","phx_reply",{"status":"ok","response":{}}]',
    )


def test_client_frames_observed_from_phoenix_js() -> None:
    assert V2.decode('["3","3","room:lobby","phx_join",{"user":"x"}]', False) == Message(
        "3", "3", "room:lobby", "phx_join", {"user": "x"}
    )
    assert V2.decode(b'[null,"8","phoenix","heartbeat",{}]', False) == Message(
        None, "8", "phoenix", "heartbeat", {}
    )
    assert V1.decode(
        b'{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"8"}', False
    ) == Message(None, "8", "phoenix", "heartbeat", {})


def test_v2_binary_push_example() -> None:
    expected = bytes([0, 2, 5, 5]) + b"12" + b"topic" + b"event" + EFG
    assert V2.encode("12", None, "topic", "event", EFG) == (True, expected)
    # The ref has no slot in the server->client push layout.
    assert V2.encode("12", "999", "topic", "event", EFG) == (True, expected)


def test_v2_binary_push_null_join_ref_is_empty() -> None:
    assert V2.encode(None, None, "t", "e", b"\x01") == (True, b"\x00\x00\x01\x01te\x01")


def test_v2_binary_reply_example() -> None:
    expected = bytes([1, 2, 3, 5, 2]) + b"12" + b"123" + b"topic" + b"ok" + EFG
    assert V2.encode_reply("12", "123", "topic", "ok", EFG) == (True, expected)


def test_v2_binary_broadcast_example() -> None:
    expected = bytes([2, 5, 5]) + b"topic" + b"event" + EFG
    assert V2.encode_broadcast("topic", "event", EFG) == (True, expected)


@pytest.mark.parametrize("payload", [bytearray(EFG), memoryview(EFG)])
def test_v2_binary_accepts_bytes_like(payload: bytearray | memoryview) -> None:
    assert V2.encode_broadcast("topic", "event", payload) == V2.encode_broadcast(
        "topic", "event", EFG
    )


def test_client_binary_push_example() -> None:
    frame = bytes.fromhex("0001010a03") + b"3" + b"6" + b"room:lobby" + b"bin" + b"\x01\x02\x03"
    assert encode_client_binary_push("3", "6", "room:lobby", "bin", b"\x01\x02\x03") == frame
    assert V2.decode(frame, True) == Message("3", "6", "room:lobby", "bin", b"\x01\x02\x03")


def test_phoenix_client_push_decode_example() -> None:
    frame = bytes([0, 2, 3, 5, 5]) + b"12" + b"123" + b"topic" + b"event" + EFG
    msg = V2.decode(frame, True)
    assert msg == Message("12", "123", "topic", "event", EFG)
    assert type(msg.payload) is bytes


def test_binary_decode_empty_refs_are_none() -> None:
    frame = encode_client_binary_push(None, None, "t", "e", b"")
    assert frame == b"\x00\x00\x00\x01\x01te"
    assert V2.decode(frame, True) == Message(None, None, "t", "e", b"")
    assert V2.decode(bytearray(frame), True) == Message(None, None, "t", "e", b"")


def test_binary_conformance_scenario_27() -> None:
    _, reply = V2.encode_reply("11", "2", "room:lobby", "ok", b"\x01\x02\x03\x04")
    assert decode_server_frame(reply, True) == Message(
        "11", "2", "room:lobby", "phx_reply", {"status": "ok", "response": b"\x01\x02\x03\x04"}
    )
    _, push = V2.encode("11", None, "room:lobby", "binary_event", b"\x00\x01")
    assert decode_server_frame(push, True) == Message(
        "11", None, "room:lobby", "binary_event", b"\x00\x01"
    )


# ------------------------------------------------------------------------------------------------
# V1


def test_v1_encode_exact_and_never_emits_join_ref() -> None:
    assert V1.encode("11", "1", "t", "e", {"m": 1}) == (
        False,
        b'{"topic":"t","event":"e","payload":{"m":1},"ref":"1"}',
    )
    assert V1.encode_reply("11", "1", "t", "ok", {}) == (
        False,
        b'{"topic":"t","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}',
    )
    assert V1.encode_broadcast("t", "e", {"m": 1}) == (
        False,
        b'{"topic":"t","event":"e","payload":{"m":1},"ref":null}',
    )
    for _, frame in (
        V1.encode("11", "1", "t", "e", {}),
        V1.encode_reply("11", "1", "t", "ok", {}),
        V1.encode_broadcast("t", "e", {}),
    ):
        assert "join_ref" not in orjson.loads(frame)


def test_v1_decode_join_ref_optional() -> None:
    base = {"topic": "t", "event": "e", "payload": {"a": 1}, "ref": None}
    assert V1.decode(orjson.dumps(base), False) == Message(None, None, "t", "e", {"a": 1})
    with_jr = orjson.dumps({**base, "join_ref": "11", "ref": "1"})
    assert V1.decode(with_jr, False) == Message("11", "1", "t", "e", {"a": 1})


@pytest.mark.parametrize("key", ["topic", "event", "payload", "ref"])
def test_v1_decode_missing_key(key: str) -> None:
    msg = {"topic": "t", "event": "e", "payload": {}, "ref": None}
    del msg[key]
    with pytest.raises(DecodeError, match=key):
        V1.decode(orjson.dumps(msg), False)


def test_v1_has_no_binary_format() -> None:
    assert not V1.supports_binary and V2.supports_binary
    with pytest.raises(EncodeError, match="binary"):
        V1.encode("1", "1", "t", "e", b"x")
    with pytest.raises(EncodeError, match="binary"):
        V1.encode_reply("1", "1", "t", "ok", b"x")
    with pytest.raises(EncodeError, match="binary"):
        V1.encode_broadcast("t", "e", b"x")
    # Phoenix's V1 serializer ignores the opcode: a binary frame is JSON like a text frame.
    with pytest.raises(DecodeError, match="binary frame is not valid UTF-8 JSON"):
        V1.decode(encode_client_binary_push("1", "1", "t", "e", b""), True)


def test_v1_decodes_json_from_binary_frames() -> None:
    frame = b'{"topic":"t","event":"e","payload":{"a":1},"ref":"2","join_ref":"1"}'
    assert V1.decode(frame, True) == V1.decode(frame, False) == Message(
        "1", "2", "t", "e", {"a": 1}
    )
    assert V1.decode(bytearray(frame), True) == Message("1", "2", "t", "e", {"a": 1})


# ------------------------------------------------------------------------------------------------
# encode errors


@pytest.mark.parametrize("ser", SERIALIZERS)
@pytest.mark.parametrize("bad", ["invalid", [1], 1, None, True, 1.5])
def test_non_dict_payload_raises(ser: Serializer, bad: Any) -> None:
    with pytest.raises(EncodeError, match="dict"):
        ser.encode(None, None, "t", "e", bad)
    with pytest.raises(EncodeError, match="dict"):
        ser.encode_broadcast("t", "e", bad)
    with pytest.raises(EncodeError, match="dict"):
        ser.encode_reply(None, "1", "t", "ok", bad)


@pytest.mark.parametrize("ser", SERIALIZERS)
@pytest.mark.parametrize(
    "bad", [{"s": {1, 2}}, {1: "non-str key"}, {"big": [2**64, {"s": {1}}]}, {"i": 10**5000}]
)
def test_unserializable_payload_raises_encode_error(ser: Serializer, bad: Any) -> None:
    with pytest.raises(EncodeError):
        ser.encode(None, None, "t", "e", bad)
    with pytest.raises(EncodeError):
        ser.encode_broadcast("t", "e", bad)
    with pytest.raises(EncodeError):
        ser.encode_reply(None, "1", "t", "ok", bad)


def test_dict_subclass_payload_is_a_map() -> None:
    class Sub(dict[str, int]):
        pass

    assert V2.encode(None, None, "t", "e", Sub(m=1)) == (False, b'[null,null,"t","e",{"m":1}]')


LONG = "x" * 256
OK = "x" * 255
MULTIBYTE = "é" * 128  # 128 characters but 256 UTF-8 bytes


@pytest.mark.parametrize(
    ("field", "call"),
    [
        ("topic", lambda v: V2.encode("12", None, v, "event", EFG)),
        ("event", lambda v: V2.encode("12", None, "topic", v, EFG)),
        ("join_ref", lambda v: V2.encode(v, None, "topic", "event", EFG)),
        ("join_ref", lambda v: V2.encode_reply(v, "1", "topic", "ok", EFG)),
        ("ref", lambda v: V2.encode_reply("12", v, "topic", "ok", EFG)),
        ("topic", lambda v: V2.encode_reply("12", "1", v, "ok", EFG)),
        ("status", lambda v: V2.encode_reply("12", "1", "topic", v, EFG)),
        ("topic", lambda v: V2.encode_broadcast(v, "event", EFG)),
        ("event", lambda v: V2.encode_broadcast("topic", v, EFG)),
        ("join_ref", lambda v: encode_client_binary_push(v, "1", "t", "e", EFG)),
        ("ref", lambda v: encode_client_binary_push("1", v, "t", "e", EFG)),
        ("topic", lambda v: encode_client_binary_push("1", "1", v, "e", EFG)),
        ("event", lambda v: encode_client_binary_push("1", "1", "t", v, EFG)),
    ],
)
def test_binary_field_over_255_bytes_raises(field: str, call: Any) -> None:
    call(OK)  # exactly 255 bytes is fine
    for value in (LONG, MULTIBYTE):
        with pytest.raises(EncodeError, match=f"unable to convert {field} to binary"):
            call(value)


def test_long_fields_are_fine_in_json() -> None:
    assert V2.encode(LONG, LONG, LONG, LONG, {})[0] is False


def test_binary_field_with_lone_surrogate_raises_encode_error() -> None:
    with pytest.raises(EncodeError, match="topic"):
        V2.encode_broadcast("\ud800", "e", b"")


def test_error_hierarchy() -> None:
    assert issubclass(DecodeError, ProtocolError)
    assert issubclass(EncodeError, ProtocolError)


# ------------------------------------------------------------------------------------------------
# decode validation


def test_refs_keep_their_json_type() -> None:
    # Phoenix echoes the decoded value: an integer ref comes back an integer.
    assert V2.decode(b'[11,1,"t","e",{}]', False) == Message(11, 1, "t", "e", {})
    msg = V1.decode(b'{"topic":"t","event":"e","payload":{},"ref":1,"join_ref":11}', False)
    assert msg == Message(11, 1, "t", "e", {})
    assert type(msg.ref) is int and type(msg.join_ref) is int
    assert V2.encode_reply(11, 1, "t", "ok", {}) == (
        False, b'[11,1,"t","phx_reply",{"status":"ok","response":{}}]'
    )
    assert V1.encode_reply(11, 1, "t", "ok", {}) == (
        False, b'{"topic":"t","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":1}'
    )


@pytest.mark.parametrize(
    ("ref", "text"),
    [
        (True, b"true"),
        (False, b"false"),
        (1.5, b"1.5"),
        (-0.0, b"-0.0"),
        (1e300, b"1e+300"),
        ({}, b"{}"),
        ({"a": [1, "x"]}, b'{"a":[1,"x"]}'),
        ([], b"[]"),
        ([1, 2], b"[1,2]"),
        ("", b'""'),
        (0, b"0"),
        (2**64, b"18446744073709551616"),
        (-(2**63) - 1, b"-9223372036854775809"),
        (123456789012345678901234567890, b"123456789012345678901234567890"),
    ],
)
def test_any_json_ref_is_echoed(ref: Any, text: bytes) -> None:
    frame = b"[" + text + b"," + text + b',"t","e",{}]'
    msg = V2.decode(frame, False)
    assert msg == Message(ref, ref, "t", "e", {})
    assert type(msg.ref) is type(ref) and type(msg.join_ref) is type(ref)
    _, reply = V2.encode_reply(msg.join_ref, msg.ref, "t", "ok", {})
    assert reply == b"[" + text + b"," + text + b',"t","phx_reply",{"status":"ok","response":{}}]'
    v1 = V1.decode(b'{"topic":"t","event":"e","payload":{},"ref":' + text + b"}", False)
    assert v1 == Message(None, ref, "t", "e", {}) and type(v1.ref) is type(ref)
    _, reply = V1.encode_reply(None, v1.ref, "t", "ok", {})
    assert reply.endswith(b',"ref":' + text + b"}")


@pytest.mark.parametrize(
    ("ref", "field"),
    [(1, b"1"), (2**64, b"18446744073709551616"), (True, b"true"), (False, b"false"),
     (1.5, b"1.5"), ("7", b"7"), (None, b"")],
)
def test_non_string_refs_in_binary_frames_are_text(ref: Any, field: bytes) -> None:
    # Phoenix's V2 serializer writes to_string(ref) into a binary header.
    _, frame = V2.encode_reply(ref, ref, "t", "ok", b"\x01")
    n = len(field)
    assert frame == bytes([1, n, n, 1, 2]) + field + field + b"tok\x01"
    _, frame = V2.encode(ref, None, "t", "e", b"\x01")
    assert frame == bytes([0, n, 1, 1]) + field + b"te\x01"


@pytest.mark.parametrize("ref", [{}, [1], 10**400])
def test_unrepresentable_refs_in_binary_frames_raise(ref: Any) -> None:
    with pytest.raises(EncodeError):
        V2.encode_reply(ref, "1", "t", "ok", b"")


BIG = 18446744073709551616  # 2**64: one past orjson's range


@pytest.mark.parametrize("ser", SERIALIZERS)
@pytest.mark.parametrize(
    "value", [BIG, -BIG, -(2**63) - 1, 2**64 - 1, -(2**63), 10**300, -(10**4000)]
)
def test_big_ints_are_exact(ser: Serializer, value: int) -> None:
    payload = {"n": value, "nested": [{"m": value}], "t": (value,)}
    expected = {"n": value, "nested": [{"m": value}], "t": [value]}
    for is_binary, frame in (
        ser.encode(1, 2, "t", "e", payload),
        ser.encode_broadcast("t", "e", payload),
        ser.encode_reply(1, 2, "t", "ok", payload),
    ):
        assert not is_binary
        assert str(value).encode() in frame
        decoded = ser.decode(frame, False).payload
        assert decoded.get("response", decoded) == expected
    # The user-reported case: the payload comes back exactly as sent.
    frame = b'["1","2","t","e",{"n":' + str(value).encode() + b"}]"
    msg = V2.decode(frame, False)
    assert type(msg.payload["n"]) is int and msg.payload["n"] == value
    assert V2.encode_reply(msg.join_ref, msg.ref, "t", "ok", msg.payload)[1] == (
        b'["1","2","t","phx_reply",{"status":"ok","response":{"n":' + str(value).encode() + b"}}]"
    )


def test_ints_past_pythons_digit_limit_are_decode_errors() -> None:
    with pytest.raises(DecodeError):
        V2.decode(b'["1","2","t","e",{"n":' + b"9" * 5000 + b"}]", False)


def test_deep_nesting_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        V2.decode("[" * 1500 + "]" * 1500, False)


def test_extra_v2_elements_ignored_and_any_payload_returned() -> None:
    assert V2.decode(b'["1","2","t","e",[1,2],"extra",7]', False) == Message(
        "1", "2", "t", "e", [1, 2]
    )
    assert V2.decode(b'[null,null,"t","e","str"]', False).payload == "str"


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "JSON"),
        (b"[1,2", "JSON"),
        (b"\xff\xfe", "JSON"),
        ('["\ud800","1","t","e",{}]', "JSON"),
        (b'{"topic":"t"}', "array"),
        (b'"x"', "array"),
        (b"null", "array"),
        (b'["1","2","t","e"]', "5 elements"),
        (b'["1","2",3,"e",{}]', "topic"),
        (b'["1","2","t",null,{}]', "event"),
        (b'[true,1.5,2,"e",{}]', "topic"),
    ],
)
def test_v2_decode_errors(frame: bytes | str, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        V2.decode(frame, False)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"[]", "object"),
        (b"not json", "JSON"),
        (b'{"topic":1,"event":"e","payload":{},"ref":null}', "topic"),
        (b'{"topic":"t","event":[],"payload":{},"ref":false}', "event"),
    ],
)
def test_v1_decode_errors(frame: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        V1.decode(frame, False)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "truncated"),
        (b"\x00\x01\x01\x01", "truncated"),
        (b"\x00\x01\x00\x00\x00", "join_ref"),
        (b"\x00\x00\x00\x05\x00abcd", "topic"),
        (b"\x00\x00\x00\x01\x02te", "event"),
        (b"\x01\x00\x00\x01\x01te", "kind 1"),
        (b"\x02\x01\x01te", "kind 2"),
        (b"\x07", "kind 7"),
        (b"\x00\x00\x00\x01\x01\xffe", "UTF-8"),
        ("\x00\x00\x00\x01\x01te", "bytes"),
    ],
)
def test_v2_binary_decode_errors(frame: bytes | str, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        V2.decode(frame, True)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "empty"),
        (b"\x03abc", "kind 3"),
        (b"\x00\x00\x01", "truncated"),
        (b"\x01\x00\x00\x01\x05t", "truncated"),
        (b"\x02\x01\x01t", "truncated"),
        (b"\x02\x01\x00\xc3", "UTF-8"),
        (b"[", "JSON"),
    ],
)
def test_decode_server_frame_errors(frame: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_server_frame(frame, frame != b"[")


# ------------------------------------------------------------------------------------------------
# vsn negotiation


@pytest.mark.parametrize(
    ("vsn", "expected"),
    [
        (None, V1),
        ("1.0.0", V1),
        ("1.0.1", V1),
        ("1.0.99", V1),
        ("1.0.1-rc.1", V1),
        ("1.0.0+build.5", V1),
        ("2.0.0", V2),
        ("2.0.7", V2),
        ("2.0.1-dev", V2),
        ("2.0.0+sha.abc", V2),
        ("1.0.0-rc.1", None),  # below the lower bound
        ("2.0.0-rc.1", None),
        ("1.1.0", None),
        ("1.1.0-dev", None),  # ~> never includes the upper bound's pre-releases
        ("2.1.0", None),
        ("0.9.0", None),
        ("3.0.0", None),
        ("123.1.1", None),
        ("", None),
        ("2", None),
        ("2.0", None),
        ("v2.0.0", None),
        (" 2.0.0", None),
        ("2.0.0\n", None),
        ("02.0.0", None),
        ("2.00.0", None),
        ("2.0.0-01", None),
        ("2.0.0-", None),
        ("2.0.0+", None),
        ("２.0.0", None),  # noqa: RUF001 - full-width digit must not parse
        ("garbage", None),
    ],
)
def test_serializer_for_vsn(vsn: str | None, expected: Serializer | None) -> None:
    assert serializer_for_vsn(vsn) is expected


def test_serializer_for_vsn_non_string() -> None:
    assert serializer_for_vsn(["2.0.0"]) is None  # type: ignore[arg-type]


def test_singletons() -> None:
    assert isinstance(V1, V1JSONSerializer) and V1.vsn == "1.0.0"
    assert isinstance(V2, V2JSONSerializer) and V2.vsn == "2.0.0"


# ------------------------------------------------------------------------------------------------
# hypothesis properties

texts = st.text(st.characters(exclude_categories=("Cs",)))  # orjson rejects lone surrogates
# Integers of any size, with the edges of orjson's 64-bit range and far past them.
any_ints = (
    st.integers()
    | st.integers(min_value=2**64 - 2, max_value=2**64 + 1)
    | st.integers(min_value=-(2**63) - 1, max_value=-(2**63) + 1)
    | st.integers(min_value=2**64, max_value=10**200)
    | st.integers(min_value=-(10**200), max_value=-(2**63) - 1)
)
ints64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
# Refs as clients send them: phoenix.js strings, other clients' integers (echoed as such).
refs = st.none() | texts | any_ints


def _json(ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | ints | st.floats(allow_nan=False, allow_infinity=False)
        | texts,
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(texts, children, max_size=4),
        max_leaves=12,
    )


json_values = _json(any_ints)
json_values64 = _json(ints64)  # what orjson itself encodes
json_maps = st.dictionaries(texts, json_values, max_size=5)
# Any JSON value is a ref to Phoenix, and is echoed.
any_refs = st.none() | json_values


def _short(max_bytes: int = 255) -> st.SearchStrategy[str]:
    return texts.filter(lambda s: len(s.encode()) <= max_bytes)


short = _short()
short_refs = st.none() | short


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON types throughout (1 is not 1.0 nor True)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if type(a) is list:
        return len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def _same_msg(a: Message, b: Message) -> bool:
    return a == b and all(
        _same(getattr(a, f), getattr(b, f)) for f in ("join_ref", "ref", "topic", "event",
                                                       "payload")
    )


@given(refs, refs, texts, texts, json_maps)
@example(1, 2**64, "t", "e", {"n": 2**64, "m": [-(2**63) - 1]})
def test_v2_json_round_trip(
    join_ref: Any, ref: Any, topic: str, event: str, payload: dict[str, Any]
) -> None:
    is_binary, frame = V2.encode(join_ref, ref, topic, event, payload)
    assert not is_binary
    expected = Message(join_ref, ref, topic, event, payload)
    assert _same_msg(V2.decode(frame, False), expected)
    assert _same_msg(decode_server_frame(frame, False), expected)


@given(st.none() | texts | ints64, st.none() | texts | ints64, texts, texts,
       st.dictionaries(texts, json_values64, max_size=5))
def test_v2_json_fast_path_is_plain_orjson(
    join_ref: Any, ref: Any, topic: str, event: str, payload: dict[str, Any]
) -> None:
    # Within orjson's range the frames are orjson's own bytes, and decoding them (msgspec)
    # gives back exactly what orjson was given.
    _, frame = V2.encode(join_ref, ref, topic, event, payload)
    assert frame == orjson.dumps([join_ref, ref, topic, event, payload])
    assert _same_msg(V2.decode(frame, False), Message(join_ref, ref, topic, event, payload))


@given(json_values)
def test_any_json_value_decodes_as_orjson_or_exactly(value: Any) -> None:
    _, frame = V2.encode(None, None, "t", "e", {"v": value})
    decoded = V2.decode(frame, False).payload["v"]
    assert _same(decoded, value)
    try:
        plain = orjson.loads(frame)[4]["v"]
    except orjson.JSONDecodeError:
        return  # an integer orjson cannot even approximate
    if _same(plain, value):  # no integer past 64 bits in it: both decoders agree
        assert _same(decoded, plain)


@given(any_refs, any_refs, texts, texts, json_maps)
def test_any_refs_round_trip(
    join_ref: Any, ref: Any, topic: str, event: str, payload: dict[str, Any]
) -> None:
    for ser, jr in ((V2, join_ref), (V1, None)):
        _, frame = ser.encode_reply(join_ref, ref, topic, "ok", payload)
        body = {"status": "ok", "response": payload}
        assert _same_msg(ser.decode(frame, False), Message(jr, ref, topic, "phx_reply", body))


@given(refs, refs, texts, texts, json_maps)
def test_v1_json_round_trip_drops_join_ref(
    join_ref: Any, ref: Any, topic: str, event: str, payload: dict[str, Any]
) -> None:
    is_binary, frame = V1.encode(join_ref, ref, topic, event, payload)
    assert not is_binary
    expected = Message(None, ref, topic, event, payload)
    assert _same_msg(V1.decode(frame, False), expected)
    assert _same_msg(V1.decode(frame, True), expected)  # JSON in a binary frame: the same


@given(refs, refs, texts, texts, json_maps)
def test_reply_json_round_trip(
    join_ref: Any, ref: Any, topic: str, status: str, response: dict[str, Any]
) -> None:
    body = {"status": status, "response": response}
    _, frame = V2.encode_reply(join_ref, ref, topic, status, response)
    assert _same_msg(V2.decode(frame, False), Message(join_ref, ref, topic, "phx_reply", body))
    _, frame = V1.encode_reply(join_ref, ref, topic, status, response)
    assert _same_msg(V1.decode(frame, False), Message(None, ref, topic, "phx_reply", body))


def _none_if_empty(value: str | None) -> str | None:
    return value or None


@given(short_refs, short_refs, short, short, st.binary())
@example("3", "6", "room:lobby", "bin", b"\x01\x02\x03")
def test_client_binary_push_round_trip(
    join_ref: str | None, ref: str | None, topic: str, event: str, payload: bytes
) -> None:
    frame = encode_client_binary_push(join_ref, ref, topic, event, payload)
    msg = V2.decode(frame, True)
    # An empty string and None share the zero-length encoding.
    assert msg == Message(_none_if_empty(join_ref), _none_if_empty(ref), topic, event, payload)


@given(short_refs, short_refs, short, short, st.binary())
def test_server_binary_round_trip(
    join_ref: str | None, ref: str | None, topic: str, name: str, payload: bytes
) -> None:
    jr = _none_if_empty(join_ref)
    # kind 0: push, no ref slot
    is_binary, frame = V2.encode(join_ref, ref, topic, name, payload)
    assert is_binary and frame[0] == 0
    assert decode_server_frame(frame, True) == Message(jr, None, topic, name, payload)
    # kind 1: reply
    is_binary, frame = V2.encode_reply(join_ref, ref, topic, name, payload)
    assert is_binary and frame[0] == 1
    assert decode_server_frame(frame, True) == Message(
        jr, _none_if_empty(ref), topic, "phx_reply", {"status": name, "response": payload}
    )
    # kind 2: broadcast
    is_binary, frame = V2.encode_broadcast(topic, name, payload)
    assert is_binary and frame[0] == 2
    assert decode_server_frame(frame, True) == Message(None, None, topic, name, payload)


def _decode_or_decode_error(decode: Any, data: bytes | str, binary: bool) -> None:
    try:
        msg = decode(data, binary)
    except DecodeError:
        return
    assert isinstance(msg, Message)
    assert type(msg.topic) is str and type(msg.event) is str
    # Refs are any JSON value (echoed as decoded); binary frames' refs are strings.
    if binary and isinstance(data, bytes | bytearray) and data[:1] in (b"\x00", b"\x01"):
        assert msg.join_ref is None or type(msg.join_ref) is str


# Mostly-valid inputs reach deeper branches than uniformly random bytes.
near_json = st.builds(
    lambda xs: msgspec.json.encode(xs),  # integers of any size, unlike orjson
    st.lists(json_values | st.integers(-(2**63), 2**63 - 1), max_size=7)
    | st.dictionaries(
        st.sampled_from(["topic", "event", "payload", "ref", "join_ref"]), json_values
    ),
)
near_binary = st.builds(
    lambda kind, lens, tail: bytes([kind, *lens]) + tail,
    st.integers(0, 3),
    st.lists(st.integers(0, 12), max_size=5),
    st.binary(max_size=40),
)
fuzz_inputs = st.binary() | st.text() | near_json | near_binary


@given(fuzz_inputs, st.booleans())
@example(b"\x00\x05\x05\x05\x05", True)
@example("\ud800", False)
@example("[" * 5000, False)
@example(b'[1e400,"1","t","e",{}]', False)
@example(b'[18446744073709551616,"1","t","e",{}]', False)
@example(b'{"topic":"t","event":"e","payload":{},"ref":1}', True)
@example("[" * 1200 + "]" * 1200, False)
def test_decode_raises_only_decode_error(data: bytes | str, binary: bool) -> None:
    _decode_or_decode_error(V2.decode, data, binary)
    _decode_or_decode_error(V1.decode, data, binary)
    _decode_or_decode_error(decode_server_frame, data, binary)
