"""Wire serializers for the Phoenix Channels protocol (V1 and V2 JSON, V2 binary frames).

Byte-compatible with Phoenix 1.8.x and the ``phoenix`` npm client 1.8.16. Everything here is
pure and stateless: the socket layer picks a serializer with :func:`serializer_for_vsn` and
gets ``(is_binary, bytes)`` frames back from the encoders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import orjson

__all__ = [
    "V1",
    "V2",
    "DecodeError",
    "EncodeError",
    "Message",
    "Payload",
    "ProtocolError",
    "Serializer",
    "V1JSONSerializer",
    "V2JSONSerializer",
    "decode_server_frame",
    "encode_client_binary_push",
    "serializer_for_vsn",
]

Payload: TypeAlias = Any
"""A decoded JSON value, or ``bytes`` for a binary payload."""

_dumps = orjson.dumps
_loads = orjson.loads
_JSONEncodeError = orjson.JSONEncodeError
_JSONDecodeError = orjson.JSONDecodeError
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

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any


class Serializer(Protocol):
    """What the socket layer needs from a wire serializer."""

    vsn: str
    supports_binary: bool

    def decode(self, data: bytes | str, binary: bool) -> Message:
        """Decode one inbound frame; raise only :class:`DecodeError`."""
        ...

    def encode(
        self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
    ) -> tuple[bool, bytes]:
        """Encode a push; return ``(is_binary, frame)``."""
        ...

    def encode_reply(
        self, join_ref: str | None, ref: str | None, topic: str, status: str, response: Any
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


def _coerce_ref(value: object, name: str) -> str:
    # phoenix.js always sends string refs, but other clients send integers; refs are opaque
    # to the server, so accepting an int and echoing it back as a string is harmless.
    if type(value) is int:
        return str(value)
    raise DecodeError(f"{name} must be a string or null, got {_json_type(value)}")


def _message(join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any) -> Message:
    """Validate the envelope fields of a decoded JSON message (the decoders' slow path)."""
    if type(topic) is not str:
        raise DecodeError(f"topic must be a string, got {_json_type(topic)}")
    if type(event) is not str:
        raise DecodeError(f"event must be a string, got {_json_type(event)}")
    if join_ref is not None and type(join_ref) is not str:
        join_ref = _coerce_ref(join_ref, "join_ref")
    if ref is not None and type(ref) is not str:
        ref = _coerce_ref(ref, "ref")
    return Message(join_ref, ref, topic, event, payload)


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
        integer refs are converted to strings. Binary frames must be client pushes (kind 0);
        their payload is returned as ``bytes`` and empty refs as ``None``.
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
        join_ref, ref, topic, event = msg[0], msg[1], msg[2], msg[3]
        if (
            type(topic) is str
            and type(event) is str
            and (type(ref) is str or ref is None)
            and (type(join_ref) is str or join_ref is None)
        ):
            return Message(join_ref, ref, topic, event, msg[4])
        return _message(join_ref, ref, topic, event, msg[4])

    def encode(
        self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
    ) -> tuple[bool, bytes]:
        """Encode a push; a bytes-like payload becomes a binary push (kind 0, no ref)."""
        if isinstance(payload, dict):
            try:
                return False, _dumps([join_ref, ref, topic, event, payload])
            except _JSONEncodeError as exc:
                raise EncodeError(f"payload is not JSON serializable: {exc}") from exc
        if isinstance(payload, _BINARY):
            fields = (_field(join_ref, "join_ref"), _field(topic, "topic"), _field(event, "event"))
            return True, _frame(_PUSH, fields, payload)
        raise _not_a_map("payload", payload)

    def encode_reply(
        self, join_ref: str | None, ref: str | None, topic: str, status: str, response: Any
    ) -> tuple[bool, bytes]:
        """Encode a ``phx_reply``; a bytes-like response becomes a binary reply (kind 1)."""
        if isinstance(response, dict):
            try:
                return False, _dumps(
                    [join_ref, ref, topic, _REPLY_EVENT, {"status": status, "response": response}]
                )
            except _JSONEncodeError as exc:
                raise EncodeError(f"response is not JSON serializable: {exc}") from exc
        if isinstance(response, _BINARY):
            fields = (
                _field(join_ref, "join_ref"),
                _field(ref, "ref"),
                _field(topic, "topic"),
                _field(status, "status"),
            )
            return True, _frame(_REPLY, fields, response)
        raise _not_a_map("response", response)

    def encode_broadcast(self, topic: str, event: str, payload: Any) -> tuple[bool, bytes]:
        """Encode a fastlane broadcast; a bytes-like payload becomes kind 2."""
        if isinstance(payload, dict):
            try:
                return False, _dumps([None, None, topic, event, payload])
            except _JSONEncodeError as exc:
                raise EncodeError(f"payload is not JSON serializable: {exc}") from exc
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
        """Decode a client text frame; ``join_ref`` is optional, integer refs become strings."""
        if binary:
            raise DecodeError("binary frames are not supported by the V1 serializer")
        try:
            msg = _loads(data)
        except _JSONDecodeError as exc:
            raise DecodeError(f"text frame is not valid UTF-8 JSON: {exc}") from None
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
        self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
    ) -> tuple[bool, bytes]:
        """Encode a push; ``join_ref`` is dropped because V1 never emits it."""
        if isinstance(payload, dict):
            try:
                return False, _dumps(
                    {"topic": topic, "event": event, "payload": payload, "ref": ref}
                )
            except _JSONEncodeError as exc:
                raise EncodeError(f"payload is not JSON serializable: {exc}") from exc
        if isinstance(payload, _BINARY):
            raise EncodeError("binary payloads are not supported by the V1 serializer")
        raise _not_a_map("payload", payload)

    def encode_reply(
        self, join_ref: str | None, ref: str | None, topic: str, status: str, response: Any
    ) -> tuple[bool, bytes]:
        """Encode a ``phx_reply``; ``join_ref`` is dropped."""
        if isinstance(response, dict):
            payload = {"status": status, "response": response}
            try:
                return False, _dumps(
                    {"topic": topic, "event": _REPLY_EVENT, "payload": payload, "ref": ref}
                )
            except _JSONEncodeError as exc:
                raise EncodeError(f"response is not JSON serializable: {exc}") from exc
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
    join_ref: str | None, ref: str | None, topic: str, event: str, payload: bytes
) -> bytes:
    """Build a client->server binary push (kind 0, 5-byte header) as phoenix.js does.

    ``None`` refs become empty fields, which the server decodes back to ``None``.
    """
    fields = (
        _field(join_ref, "join_ref"),
        _field(ref, "ref"),
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
