"""Wire serializers for the Phoenix Channels protocol (V1 and V2 JSON, V2 binary frames).

Byte-compatible with Phoenix 1.8.x and the ``phoenix`` npm client 1.8.16. Everything here is
pure and stateless: the socket layer picks a serializer with :func:`serializer_for_vsn` and
gets ``(is_binary, bytes)`` frames back from the encoders.

As in Phoenix (whose JSON library, Jason, keeps integers of any size), a decoded value is
exactly what the client sent: refs keep their JSON type (``"1"`` and ``1`` are different refs,
each echoed as it came) and integers beyond 64 bits stay exact ints. Decoding uses msgspec,
which parses integers of any size (up to Python's 4300-digit limit for int parsing) and is as
fast as orjson; encoding uses orjson, and only when it refuses an integer beyond 64 bits does
the value go through :func:`_widen` (the common path pays nothing for it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import msgspec
import orjson

__all__ = [
    "V1",
    "V2",
    "DecodeError",
    "EncodeError",
    "Message",
    "Payload",
    "ProtocolError",
    "Ref",
    "Serializer",
    "V1JSONSerializer",
    "V2JSONSerializer",
    "decode_server_frame",
    "encode_client_binary_push",
    "serializer_for_vsn",
]

Payload: TypeAlias = Any
"""A decoded JSON value, or ``bytes`` for a binary payload."""

Ref: TypeAlias = Any
"""A ``ref`` or ``join_ref`` as the client sent it, echoed back unchanged: any JSON value
(``str | int | float | bool | list | dict | None``; ``None`` is null). phoenix.js sends
strings, other clients integers. Compare refs with :func:`channels.protocol.same_ref`
(Elixir's ``===``: ``1``, ``1.0`` and ``true`` are different refs)."""

_dumps = orjson.dumps
_loads = msgspec.json.Decoder().decode
_JSONEncodeError = orjson.JSONEncodeError
# msgspec.DecodeError (ValidationError for numbers out of range is a subclass); ValueError for
# a str holding lone surrogates (it cannot be UTF-8); RecursionError for deep nesting.
_JSONDecodeError = (msgspec.DecodeError, ValueError, RecursionError)
_BINARY = (bytes, bytearray, memoryview)

# Binary frame kind bytes (section 3 of the protocol reference).
_PUSH = 0
_REPLY = 1
_BROADCAST = 2
_MAX_FIELD = 255

_REPLY_EVENT = "phx_reply"


class ProtocolError(Exception):
    """Base class for wire-format errors."""


class DecodeError(ProtocolError):
    """An inbound frame is malformed; the message says what is wrong."""


class EncodeError(ProtocolError):
    """An outbound message cannot be represented on the wire."""


@dataclass(slots=True)
class Message:
    """One inbound or outbound Phoenix message.

    ``payload`` is usually a dict, may be any JSON value on decode, and is ``bytes`` for a
    binary frame.
    """

    join_ref: Ref
    ref: Ref
    topic: str
    event: str
    payload: Any


class Serializer(Protocol):
    """What the socket layer needs from a wire serializer."""

    vsn: str
    #: Whether the serializer has binary frames of its own (the V2 binary push format). V1
    #: has none: it reads JSON from text and binary frames alike, as Phoenix does.
    supports_binary: bool

    def decode(self, data: bytes | str, binary: bool) -> Message:
        """Decode one inbound frame; raise only :class:`DecodeError`."""
        ...

    def encode(
        self, join_ref: Ref, ref: Ref, topic: str, event: str, payload: Any
    ) -> tuple[bool, bytes]:
        """Encode a push; return ``(is_binary, frame)``."""
        ...

    def encode_reply(
        self, join_ref: Ref, ref: Ref, topic: str, status: str, response: Any
    ) -> tuple[bool, bytes]:
        """Encode a ``phx_reply``; return ``(is_binary, frame)``."""
        ...

    def encode_broadcast(self, topic: str, event: str, payload: Any) -> tuple[bool, bytes]:
        """Encode a fastlane broadcast (both refs null); return ``(is_binary, frame)``."""
        ...


# ---------------------------------------------------------------------------------------------
# shared helpers


def _json_type(value: object) -> str:
    """Name a value by its JSON type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _not_a_map(what: str, value: object) -> EncodeError:
    return EncodeError(f"{what} must be a dict (JSON object), got {type(value).__name__}")


def _message(join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any) -> Message:
    """Validate the envelope fields of a decoded JSON message.

    Refs are not checked: as in Phoenix, any JSON value is a ref, echoed back as it came.
    """
    if type(topic) is not str:
        raise DecodeError(f"topic must be a string, got {_json_type(topic)}")
    if type(event) is not str:
        raise DecodeError(f"event must be a string, got {_json_type(event)}")
    return Message(join_ref, ref, topic, event, payload)


# orjson encodes integers in [-2**63, 2**64 - 1]; msgspec decodes any size.
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1


def _widen(value: Any) -> Any:
    """A copy of ``value`` in which integers beyond orjson's 64 bits are raw JSON numbers."""
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return value
        return orjson.Fragment(str(int(value)))
    if isinstance(value, dict):
        return {k: _widen(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_widen(v) for v in value]
    return value


def _dumps_slow(value: Any, what: str, exc: Exception) -> bytes:
    """orjson refused ``value``: encode it again with integers beyond 64 bits as raw JSON
    numbers (Phoenix sends them exactly); if that was not the reason, raise EncodeError.
    Only ever reached from an encoder's ``except``: the common path pays nothing."""
    try:
        return _dumps(_widen(value))
    except (_JSONEncodeError, ValueError, RecursionError):
        # ValueError: an int too long for str() (Python's 4300-digit limit).
        raise EncodeError(f"{what} is not JSON serializable: {exc}") from exc


def _ref_field(value: Ref, name: str) -> bytes:
    """A ref in a binary header: as text, like Elixir's ``to_string`` in Phoenix's serializer
    (``1`` becomes ``"1"``, ``true`` ``"true"``); ``None`` is the empty field."""
    if value is None or isinstance(value, str):
        return _field(value, name)
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, float):
        return _field(_dumps(value).decode(), name)
    if isinstance(value, int):
        if value.bit_length() > 1000:  # over 300 digits (and str() could refuse it)
            raise EncodeError(
                f"unable to convert {name} to binary: must be less than or equal to "
                f"{_MAX_FIELD} bytes, but is an integer of over 300 digits"
            )
        return _field(str(value), name)
    raise EncodeError(
        f"{name} must be a string, number, boolean or None in a binary frame, "
        f"got {_json_type(value)}"
    )


def _field(value: str | None, name: str) -> bytes:
    """UTF-8 encode one binary header field; ``None`` becomes the empty field."""
    if value is None:
        return b""
    if not isinstance(value, str):
        raise EncodeError(f"{name} must be a string or None, got {type(value).__name__}")
    try:
        raw = value.encode()
    except UnicodeEncodeError as exc:
        raise EncodeError(f"{name} is not encodable as UTF-8: {exc}") from None
    if len(raw) > _MAX_FIELD:
        # Same wording as Phoenix and phoenix.js.
        raise EncodeError(
            f"unable to convert {name} to binary: must be less than or equal to "
            f"{_MAX_FIELD} bytes, but is {len(raw)} bytes"
        )
    return raw


def _frame(kind: int, fields: tuple[bytes, ...], payload: bytes | bytearray | memoryview) -> bytes:
    header = bytes((kind, *map(len, fields)))
    return b"".join((header, *fields, payload))


def _as_bytes(data: bytes | str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise DecodeError(f"binary frame must be bytes, got {type(data).__name__}")


def _unpack(data: bytes, kind_name: str, names: tuple[str, ...]) -> tuple[list[str], bytes]:
    """Split a binary frame whose header is the kind byte plus one length byte per field."""
    size = len(data)
    header = 1 + len(names)
    if size < header:
        raise DecodeError(
            f"binary {kind_name} frame truncated: needs a {header}-byte header, got {size} bytes"
        )
    fields: list[str] = []
    offset = header
    for i, name in enumerate(names, 1):
        end = offset + data[i]
        if end > size:
            raise DecodeError(
                f"binary {kind_name} frame truncated: {name} ({data[i]} bytes at offset "
                f"{offset}) runs past the end of the {size}-byte frame"
            )
        try:
            fields.append(data[offset:end].decode())
        except UnicodeDecodeError:
            raise DecodeError(f"binary {kind_name} frame: {name} is not valid UTF-8") from None
        offset = end
    return fields, data[offset:]


def _decode_client_push(data: bytes | str) -> Message:
    """Decode a client->server binary push (kind 0, 5-byte header)."""
    raw = _as_bytes(data)
    if raw and raw[0] != _PUSH:
        raise DecodeError(f"unknown binary frame kind {raw[0]}; clients may only send push (0)")
    (join_ref, ref, topic, event), payload = _unpack(
        raw, "push", ("join_ref", "ref", "topic", "event")
    )
    return Message(join_ref or None, ref or None, topic, event, payload)


# ---------------------------------------------------------------------------------------------
# serializers


class V2JSONSerializer:
    """V2: JSON arrays ``[join_ref, ref, topic, event, payload]`` plus binary frames."""

    __slots__ = ()
    vsn: str = "2.0.0"
    supports_binary: bool = True

    def decode(self, data: bytes | str, binary: bool) -> Message:
        """Decode a client frame.

        Text frames must be JSON arrays of at least five elements (extra ones are ignored);
        refs are returned as decoded (any JSON value). Binary frames must be client pushes
        (kind 0); their payload is returned as ``bytes`` and empty refs as ``None``.
        """
        if binary:
            return _decode_client_push(data)
        try:
            msg = _loads(data)
        except _JSONDecodeError as exc:
            raise DecodeError(f"text frame is not valid UTF-8 JSON: {exc}") from None
        if type(msg) is not list:
            raise DecodeError(f"V2 text frame must be a JSON array, got {_json_type(msg)}")
        if len(msg) < 5:
            raise DecodeError(
                f"V2 text frame must have 5 elements [join_ref, ref, topic, event, payload], "
                f"got {len(msg)}"
            )
        topic, event = msg[2], msg[3]
        if type(topic) is str and type(event) is str:
            return Message(msg[0], msg[1], topic, event, msg[4])
        return _message(msg[0], msg[1], topic, event, msg[4])

    def encode(
        self, join_ref: Ref, ref: Ref, topic: str, event: str, payload: Any
    ) -> tuple[bool, bytes]:
        """Encode a push; a bytes-like payload becomes a binary push (kind 0, no ref)."""
        if isinstance(payload, dict):
            msg = [join_ref, ref, topic, event, payload]
            try:
                return False, _dumps(msg)
            except _JSONEncodeError as exc:
                return False, _dumps_slow(msg, "payload", exc)
        if isinstance(payload, _BINARY):
            fields = (
                _ref_field(join_ref, "join_ref"), _field(topic, "topic"), _field(event, "event")
            )
            return True, _frame(_PUSH, fields, payload)
        raise _not_a_map("payload", payload)

    def encode_reply(
        self, join_ref: Ref, ref: Ref, topic: str, status: str, response: Any
    ) -> tuple[bool, bytes]:
        """Encode a ``phx_reply``; a bytes-like response becomes a binary reply (kind 1)."""
        if isinstance(response, dict):
            msg = [join_ref, ref, topic, _REPLY_EVENT, {"status": status, "response": response}]
            try:
                return False, _dumps(msg)
            except _JSONEncodeError as exc:
                return False, _dumps_slow(msg, "response", exc)
        if isinstance(response, _BINARY):
            fields = (
                _ref_field(join_ref, "join_ref"),
                _ref_field(ref, "ref"),
                _field(topic, "topic"),
                _field(status, "status"),
            )
            return True, _frame(_REPLY, fields, response)
        raise _not_a_map("response", response)

    def encode_broadcast(self, topic: str, event: str, payload: Any) -> tuple[bool, bytes]:
        """Encode a fastlane broadcast; a bytes-like payload becomes kind 2."""
        if isinstance(payload, dict):
            msg = [None, None, topic, event, payload]
            try:
                return False, _dumps(msg)
            except _JSONEncodeError as exc:
                return False, _dumps_slow(msg, "payload", exc)
        if isinstance(payload, _BINARY):
            fields = (_field(topic, "topic"), _field(event, "event"))
            return True, _frame(_BROADCAST, fields, payload)
        raise _not_a_map("payload", payload)


class V1JSONSerializer:
    """V1: JSON objects ``{"topic", "event", "payload", "ref"}``; text only.

    Output never carries ``join_ref`` (as in Phoenix); input may.
    """

    __slots__ = ()
    vsn: str = "1.0.0"
    supports_binary: bool = False

    def decode(self, data: bytes | str, binary: bool) -> Message:
        """Decode a client frame; ``join_ref`` is optional, refs are returned as decoded.

        Text and binary frames alike hold the JSON object, as in Phoenix's V1 serializer
        (which ignores the opcode).
        """
        try:
            msg = _loads(data)
        except _JSONDecodeError as exc:
            kind = "binary" if binary else "text"
            raise DecodeError(f"{kind} frame is not valid UTF-8 JSON: {exc}") from None
        if type(msg) is not dict:
            raise DecodeError(f"V1 text frame must be a JSON object, got {_json_type(msg)}")
        try:
            topic = msg["topic"]
            event = msg["event"]
            payload = msg["payload"]
            ref = msg["ref"]
        except KeyError as exc:
            raise DecodeError(f"V1 message is missing the {exc.args[0]!r} key") from None
        return _message(msg.get("join_ref"), ref, topic, event, payload)

    def encode(
        self, join_ref: Ref, ref: Ref, topic: str, event: str, payload: Any
    ) -> tuple[bool, bytes]:
        """Encode a push; ``join_ref`` is dropped because V1 never emits it."""
        if isinstance(payload, dict):
            msg = {"topic": topic, "event": event, "payload": payload, "ref": ref}
            try:
                return False, _dumps(msg)
            except _JSONEncodeError as exc:
                return False, _dumps_slow(msg, "payload", exc)
        if isinstance(payload, _BINARY):
            raise EncodeError("binary payloads are not supported by the V1 serializer")
        raise _not_a_map("payload", payload)

    def encode_reply(
        self, join_ref: Ref, ref: Ref, topic: str, status: str, response: Any
    ) -> tuple[bool, bytes]:
        """Encode a ``phx_reply``; ``join_ref`` is dropped."""
        if isinstance(response, dict):
            msg = {
                "topic": topic,
                "event": _REPLY_EVENT,
                "payload": {"status": status, "response": response},
                "ref": ref,
            }
            try:
                return False, _dumps(msg)
            except _JSONEncodeError as exc:
                return False, _dumps_slow(msg, "response", exc)
        if isinstance(response, _BINARY):
            raise EncodeError("binary payloads are not supported by the V1 serializer")
        raise _not_a_map("response", response)

    def encode_broadcast(self, topic: str, event: str, payload: Any) -> tuple[bool, bytes]:
        """Encode a fastlane broadcast (``ref`` null)."""
        return self.encode(None, None, topic, event, payload)


V1 = V1JSONSerializer()
V2 = V2JSONSerializer()


# ---------------------------------------------------------------------------------------------
# vsn negotiation

# SemVer 2.0.0, as strict as Elixir's Version.parse: no leading zeros, no "v", no whitespace.
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    rf"({_NUM})\.({_NUM})\.({_NUM})"
    rf"(-{_PRE_ID}(?:\.{_PRE_ID})*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?",
    re.ASCII,
)


def serializer_for_vsn(vsn: str | None) -> Serializer | None:
    """Pick the serializer for a client's ``vsn`` query param, as Phoenix does.

    A missing vsn means V1. ``~> 1.0.0`` (>= 1.0.0, < 1.1.0) selects V1 and ``~> 2.0.0``
    selects V2. As in Elixir's ``Version.match?``, pre-releases inside the range match
    (``1.0.1-rc``) but the bound's own pre-release (``1.0.0-rc``) and the next minor's do not.
    Anything else (unparseable, other versions, non-strings) returns ``None``: refuse with 403.
    """
    if vsn is None:
        return V1
    if not isinstance(vsn, str):
        return None
    match = _SEMVER.fullmatch(vsn)
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    if minor != "0" or (patch == "0" and pre is not None):
        return None
    if major == "1":
        return V1
    if major == "2":
        return V2
    return None


# ---------------------------------------------------------------------------------------------
# client side (tests and a future Python client)


def encode_client_binary_push(
    join_ref: Ref, ref: Ref, topic: str, event: str, payload: bytes
) -> bytes:
    """Build a client->server binary push (kind 0, 5-byte header) as phoenix.js does.

    ``None`` refs become empty fields, which the server decodes back to ``None``.
    """
    fields = (
        _ref_field(join_ref, "join_ref"),
        _ref_field(ref, "ref"),
        _field(topic, "topic"),
        _field(event, "event"),
    )
    return _frame(_PUSH, fields, payload)


def decode_server_frame(data: bytes | str, binary: bool) -> Message:
    """Decode a V2 server->client frame the way phoenix.js does.

    Binary kind 0 (push) has no ref; kind 1 (reply) becomes event ``phx_reply`` with payload
    ``{"status": status, "response": bytes}``; kind 2 (broadcast) has neither ref. Empty refs
    become ``None``. Unlike phoenix.js, which ignores unknown kinds, those raise DecodeError.
    """
    if not binary:
        return V2.decode(data, False)
    raw = _as_bytes(data)
    if not raw:
        raise DecodeError("binary frame is empty")
    kind = raw[0]
    if kind == _PUSH:
        (join_ref, topic, event), payload = _unpack(raw, "push", ("join_ref", "topic", "event"))
        return Message(join_ref or None, None, topic, event, payload)
    if kind == _REPLY:
        (join_ref, ref, topic, status), response = _unpack(
            raw, "reply", ("join_ref", "ref", "topic", "status")
        )
        return Message(
            join_ref or None,
            ref or None,
            topic,
            _REPLY_EVENT,
            {"status": status, "response": response},
        )
    if kind == _BROADCAST:
        (topic, event), payload = _unpack(raw, "broadcast", ("topic", "event"))
        return Message(None, None, topic, event, payload)
    raise DecodeError(f"unknown binary frame kind {kind}")
