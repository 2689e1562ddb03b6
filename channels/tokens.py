"""Token verification for :meth:`Socket.connect <channels.socket.Socket.connect>`.

Two kinds of token:

* JWTs, checked by :class:`JWTVerifier` (on pyjwt). The server fixes the accepted
  algorithms; the token header only picks among them, and ``none`` is never accepted.
* Phoenix.Token-style signed tokens for apps without JWT: :func:`sign_token` and
  :func:`verify_token`.

Typical use, with the phoenix.js ``authToken`` or a ``?token=`` query parameter::

    verifier = JWTVerifier(SECRET, algorithms=["HS256"], audience="chat")

    class UserSocket(Socket):
        async def connect(self, params, connect_info):
            try:
                claims = verifier.verify(socket_token(params, connect_info))
            except TokenError:
                raise Refuse(403) from None
            return {"user_id": claims["sub"]}

Errors never carry the token, and :func:`mask_token` / :func:`masked_params` keep it out
of logs. RS/PS/ES/EdDSA keys need the ``cryptography`` package; HS secrets do not.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import jwt
import orjson
from jwt.algorithms import HMACAlgorithm
from jwt.utils import is_pem_format, is_ssh_key

__all__ = [
    "FILTERED",
    "ExpiredToken",
    "InvalidToken",
    "JWTVerifier",
    "MissingToken",
    "TokenError",
    "mask_token",
    "masked_params",
    "sign_jwt",
    "sign_token",
    "socket_token",
    "verify_token",
]


# -- errors ------------------------------------------------------------------------------------


class TokenError(Exception):
    """A token was refused. ``reason`` is a short machine-readable cause (safe to log)."""

    default_reason: str = "invalid"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason


class ExpiredToken(TokenError):
    """The token was valid but its lifetime (``exp`` or ``max_age``) has passed."""

    default_reason = "expired"


class InvalidToken(TokenError):
    """Bad signature, tampered, malformed, disallowed algorithm, wrong aud/iss, unknown kid.

    ``reason`` is one of ``"malformed"``, ``"signature"``, ``"algorithm"``, ``"kid"``,
    ``"audience"``, ``"issuer"``, ``"claims"``, ``"not_yet_valid"``.
    """


class MissingToken(TokenError):
    """No token was given (``None`` or empty)."""

    default_reason = "missing"


# -- JWT ---------------------------------------------------------------------------------------

Family = Literal["hmac", "rsa", "ec", "okp"]

_ALGORITHM_FAMILY: Final[Mapping[str, Family]] = {
    "HS256": "hmac", "HS384": "hmac", "HS512": "hmac",
    "RS256": "rsa", "RS384": "rsa", "RS512": "rsa",
    "PS256": "rsa", "PS384": "rsa", "PS512": "rsa",
    "ES256": "ec", "ES256K": "ec", "ES384": "ec", "ES512": "ec", "ES521": "ec",
    "EdDSA": "okp",
}

#: A key as accepted by :class:`JWTVerifier` and :func:`sign_jwt`: an HMAC secret
#: (``str``/``bytes``), a PEM (or OpenSSH public) key as ``str``/``bytes``, or a
#: ``cryptography`` key object (public or private).
KeyLike = str | bytes | Any

DEFAULT_MAX_JWT_LENGTH: Final = 8192


@dataclass(frozen=True, slots=True)
class _Key:
    family: Family
    verify_key: Any  # bytes for HMAC, a public key object otherwise
    sign_key: Any | None  # bytes for HMAC, a private key object, or None
    algorithms: tuple[str, ...]  # the server's algorithms that fit this key


def _check_algorithms(algorithms: Iterable[str]) -> tuple[str, ...]:
    if isinstance(algorithms, str):
        # A bare string would be iterated character by character.
        raise TypeError("algorithms must be a list of names, e.g. ['HS256']")
    result: list[str] = []
    for name in algorithms:
        if not isinstance(name, str):
            raise TypeError(f"algorithm names must be strings, got {type(name).__name__}")
        if name.lower() == "none":
            raise ValueError("the 'none' algorithm is never accepted")
        family = _ALGORITHM_FAMILY.get(name)
        if family is None:
            raise ValueError(f"unknown JWT algorithm {name!r}")
        if family != "hmac" and not jwt.algorithms.has_crypto:
            raise ValueError(f"{name} needs the 'cryptography' package")
        if name not in result:
            result.append(name)
    if not result:
        raise ValueError("at least one algorithm is required")
    return tuple(result)


def _looks_asymmetric(raw: bytes) -> bool:
    return is_pem_format(raw) or is_ssh_key(raw)


def _load_asymmetric(raw: bytes) -> tuple[Any, Any | None]:
    """(public key, private key or None) from PEM / OpenSSH text."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import (
            load_pem_private_key,
            load_pem_public_key,
            load_ssh_public_key,
        )
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError(
            "PEM/SSH keys need the 'cryptography' package (and are never HMAC secrets)"
        ) from None

    if is_ssh_key(raw):
        return load_ssh_public_key(raw), None
    try:
        return load_pem_public_key(raw), None
    except ValueError:
        pass
    try:
        private = load_pem_private_key(raw, password=None)
        return private.public_key(), private
    except (ValueError, TypeError):
        pass
    try:
        return x509.load_pem_x509_certificate(raw).public_key(), None
    except ValueError:
        raise ValueError("unreadable PEM key (encrypted private keys are not supported)") from None


def _key_object_family(key: Any) -> tuple[Family, Any, Any | None]:
    """(family, public key, private key or None) for a ``cryptography`` key object."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    except ImportError:  # pragma: no cover - depends on the environment
        raise TypeError("key objects need the 'cryptography' package") from None

    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa", key.public_key(), key
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa", key, None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ec", key.public_key(), key
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec", key, None
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return "okp", key.public_key(), key
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "okp", key, None
    raise TypeError(f"unsupported key type {type(key).__name__}")


def _load_key(key: KeyLike, algorithms: tuple[str, ...], label: str) -> _Key:
    if isinstance(key, str | bytes):
        raw = key.encode() if isinstance(key, str) else key
        if _looks_asymmetric(raw):
            public, private = _load_asymmetric(raw)
            family, public, private = _key_object_family(private or public)
        else:
            family, public, private = "hmac", raw, raw
    else:
        family, public, private = _key_object_family(key)

    fitting = tuple(a for a in algorithms if _ALGORITHM_FAMILY[a] == family)
    if not fitting:
        if family != "hmac" and any(_ALGORITHM_FAMILY[a] == "hmac" for a in algorithms):
            # Verifying HS* with a public key as the HMAC secret is the classic
            # algorithm-confusion attack: anyone holding the public key could forge tokens.
            raise ValueError(
                f"{label} is an asymmetric key and cannot be used as an HMAC secret"
            )
        raise ValueError(f"{label} ({family}) fits none of the algorithms {list(algorithms)}")

    if family == "hmac":
        assert isinstance(public, bytes)
        if not public:
            raise ValueError(f"{label}: the HMAC secret is empty")
        for name in fitting:
            hmac_alg = jwt.algorithms.get_default_algorithms()[name]
            assert isinstance(hmac_alg, HMACAlgorithm)
            try:
                # Also refuses DER keys and JWK JSON passed as a raw secret.
                hmac_alg.prepare_key(public)
            except jwt.InvalidKeyError:
                raise ValueError(
                    f"{label} looks like an asymmetric key or JWK, not an HMAC secret"
                ) from None
            # RFC 7518 §3.2: the secret must be at least as long as the hash output.
            if hmac_alg.check_key_length(public) is not None:
                minimum = hmac_alg.hash_alg().digest_size
                raise ValueError(
                    f"{label}: an {name} secret must be at least {minimum} bytes"
                )
    return _Key(family, public, private, fitting)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _sign_with(
    key: _Key,
    claims: Mapping[str, Any],
    *,
    algorithm: str | None,
    kid: str | None,
    expires_in: float | None,
    now: float | None,
    headers: Mapping[str, Any] | None,
) -> str:
    if key.sign_key is None:
        raise ValueError("signing needs an HMAC secret or a private key, not a public key")
    alg = key.algorithms[0] if algorithm is None else algorithm
    if alg not in key.algorithms:
        raise ValueError(f"algorithm {alg!r} does not fit this key ({list(key.algorithms)})")
    payload = dict(claims)
    if expires_in is not None:
        issued = time.time() if now is None else now
        payload.setdefault("iat", int(issued))
        payload["exp"] = int(issued + expires_in)
    header = dict(headers or {})
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(payload, key.sign_key, algorithm=alg, headers=header or None)


def sign_jwt(
    claims: Mapping[str, Any],
    key: KeyLike,
    *,
    algorithm: str = "HS256",
    kid: str | None = None,
    expires_in: float | None = None,
    now: float | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """Sign ``claims`` as a JWT with an HMAC secret or a private key.

    ``expires_in`` (seconds) sets ``exp`` and, unless given, ``iat`` from ``now``
    (default: the wall clock). ``kid`` goes into the header.
    """
    algorithms = _check_algorithms([algorithm])
    return _sign_with(
        _load_key(key, algorithms, "key"), claims, algorithm=algorithm, kid=kid,
        expires_in=expires_in, now=now, headers=headers,
    )


_PYJWT_REASONS: Final[tuple[tuple[type[Exception], str], ...]] = (
    # InvalidSignatureError subclasses DecodeError, so it must come first.
    (jwt.InvalidSignatureError, "signature"),
    (jwt.InvalidAlgorithmError, "algorithm"),
    (jwt.InvalidKeyError, "algorithm"),  # e.g. an ES384 token against a P-256 key
    (jwt.InvalidAudienceError, "audience"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.DecodeError, "malformed"),
)


def _reason_for(exc: Exception) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        # pyjwt reports a configured audience/issuer absent from the token this way.
        return {"aud": "audience", "iss": "issuer"}.get(exc.claim, "claims")
    for kind, reason in _PYJWT_REASONS:
        if isinstance(exc, kind):
            return reason
    return "claims"


class JWTVerifier:
    """Verifies JWTs against keys and algorithms fixed by the server.

    Give either one ``key`` or ``keys`` by ``kid`` for rotation
    (``keys={"2026-10": old, "2026-11": new}``): the token header's ``kid`` picks the key,
    and a token without ``kid`` is refused unless ``default_kid`` is set or only one key is
    configured. Keys are HMAC secrets, PEM strings or ``cryptography`` key objects; each key
    is only ever used with the given ``algorithms`` of its own kind, so a public key never
    serves as an HMAC secret. ``exp``/``nbf``/``iat`` are checked with ``leeway`` seconds;
    ``audience`` and ``issuer`` are checked when given (a token carrying ``aud`` is refused
    when no ``audience`` is configured).
    """

    def __init__(
        self,
        key: KeyLike | None = None,
        *,
        algorithms: Sequence[str],
        keys: Mapping[str, KeyLike] | None = None,
        default_kid: str | None = None,
        audience: str | Sequence[str] | None = None,
        issuer: str | Sequence[str] | None = None,
        leeway: float = 30.0,
        required_claims: Iterable[str] = ("exp",),
        max_length: int = DEFAULT_MAX_JWT_LENGTH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.algorithms = _check_algorithms(algorithms)
        if (key is None) == (keys is None):
            raise ValueError("give exactly one of key= or keys=")
        self._single: _Key | None = None
        self._keys: dict[str, _Key] = {}
        if keys is None:
            if default_kid is not None:
                raise ValueError("default_kid needs keys=")
            self._single = _load_key(key, self.algorithms, "key")
        else:
            if not keys:
                raise ValueError("keys= is empty")
            for kid, value in keys.items():
                if not isinstance(kid, str) or not kid:
                    raise ValueError("each kid must be a non-empty string")
                self._keys[kid] = _load_key(value, self.algorithms, f"key {kid!r}")
            if default_kid is not None and default_kid not in self._keys:
                raise ValueError(f"default_kid {default_kid!r} is not among the keys")
        self.default_kid = default_kid
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        self.leeway = float(leeway)
        self.audience = audience
        self.issuer = issuer
        self.required_claims = tuple(required_claims)
        self.max_length = max_length
        self.clock = clock

    def _key_for(self, kid: Any) -> _Key:
        if self._single is not None:
            return self._single
        if kid is None:
            if self.default_kid is not None:
                return self._keys[self.default_kid]
            if len(self._keys) == 1:
                return next(iter(self._keys.values()))
            raise InvalidToken("token has no kid and several keys are configured", "kid")
        if not isinstance(kid, str) or kid not in self._keys:
            raise InvalidToken("unknown key id (kid)", "kid")
        return self._keys[kid]

    def verify(self, token: str | None, *, now: float | None = None) -> dict[str, Any]:
        """Return the claims of a valid ``token``.

        Raises :class:`MissingToken`, :class:`ExpiredToken` or :class:`InvalidToken`.
        ``now`` (Unix seconds) defaults to ``clock()``.
        """
        if token is None or token == "":
            raise MissingToken("no token given")
        if not isinstance(token, str):
            raise InvalidToken("token is not a string", "malformed")
        if len(token) > self.max_length:
            raise InvalidToken(f"token longer than {self.max_length} characters", "malformed")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise InvalidToken("malformed token", "malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken("token algorithm not allowed", "algorithm")
        key = self._key_for(header.get("kid"))
        if alg not in key.algorithms:
            raise InvalidToken("token algorithm does not fit the selected key", "algorithm")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.verify_key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                # Time claims are checked below, against an injectable clock.
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            reason = _reason_for(exc)
            raise InvalidToken(f"token refused ({reason})", reason) from None
        except (ValueError, TypeError, RecursionError):
            raise InvalidToken("malformed token", "malformed") from None
        self._check_claims(claims, self.clock() if now is None else now)
        return claims

    def _check_claims(self, claims: dict[str, Any], now: float) -> None:
        for name in self.required_claims:
            if claims.get(name) is None:
                raise InvalidToken(f"token lacks the required claim {name!r}", "claims")
        times: dict[str, float] = {}
        for name in ("exp", "nbf", "iat"):
            if name in claims:
                value = _number(claims[name])
                if value is None:
                    raise InvalidToken(f"claim {name!r} must be a number", "claims")
                times[name] = value
        if "exp" in times and times["exp"] <= now - self.leeway:
            raise ExpiredToken("token has expired")
        if "nbf" in times and times["nbf"] > now + self.leeway:
            raise InvalidToken("token is not valid yet (nbf)", "not_yet_valid")
        if "iat" in times and times["iat"] > now + self.leeway:
            raise InvalidToken("token is issued in the future (iat)", "not_yet_valid")

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        kid: str | None = None,
        algorithm: str | None = None,
        expires_in: float | None = None,
        now: float | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign ``claims`` with this verifier's key (an HMAC secret or a private key).

        With ``keys=``, ``kid`` (default: ``default_kid``, or the only key) picks the key and
        is written to the header. ``algorithm`` defaults to the first allowed one for the key.
        """
        if self._single is not None:
            if kid is not None:
                raise ValueError("this verifier has a single key without a kid")
            key = self._single
        else:
            if kid is None:
                if self.default_kid is not None:
                    kid = self.default_kid
                elif len(self._keys) == 1:
                    kid = next(iter(self._keys))
                else:
                    raise ValueError("several keys are configured: pass kid=")
            if kid not in self._keys:
                raise ValueError(f"unknown kid {kid!r}")
            key = self._keys[kid]
        return _sign_with(key, claims, algorithm=algorithm, kid=kid,
                          expires_in=expires_in, now=now, headers=headers)


# -- Phoenix.Token-style tokens ----------------------------------------------------------------
#
# Same layout and key derivation as Phoenix.Token / Plug.Crypto.MessageVerifier:
#   "SFMyNTY." <> b64url(payload) <> "." <> b64url(HMAC-SHA256(key, "SFMyNTY." <> b64url(payload)))
#   key = PBKDF2-HMAC-SHA256(secret, salt, 1000 iterations, 32 bytes)
# but the payload is JSON {"d": data, "s": signed_at_ms, "m": max_age}, not the Erlang term
# format, so tokens are NOT interchangeable with Elixir-issued ones (each side refuses the
# other's as invalid).

_PROTECTED: Final = "SFMyNTY"  # base64 of "HS256"
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
MIN_SECRET_BYTES: Final = 32
DEFAULT_MAX_AGE: Final = 86400


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _secret_bytes(secret: str | bytes) -> bytes:
    raw = secret.encode() if isinstance(secret, str) else secret
    if not isinstance(raw, bytes):
        raise TypeError("secret must be str or bytes")
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(f"secret must be at least {MIN_SECRET_BYTES} bytes")
    return raw


@functools.lru_cache(maxsize=128)
def _derive_key(secret: bytes, salt: bytes) -> bytes:
    # PBKDF2 is deliberately slow; verifying on every connect must not pay it each time.
    return hashlib.pbkdf2_hmac("sha256", secret, salt, 1000, 32)


def _key(secret: str | bytes, salt: str | bytes) -> bytes:
    return _derive_key(_secret_bytes(secret), salt.encode() if isinstance(salt, str) else salt)


def _mac(key: bytes, signed_part: str) -> str:
    return _b64encode(hmac.new(key, signed_part.encode("ascii"), hashlib.sha256).digest())


def sign_token(
    secret: str | bytes,
    salt: str | bytes,
    data: Any,
    *,
    max_age: int = DEFAULT_MAX_AGE,
    now: float | None = None,
) -> str:
    """Sign ``data`` (anything orjson can encode) like ``Phoenix.Token.sign``.

    ``secret`` is the app's secret key base (at least 32 bytes), ``salt`` names the purpose
    (``"user socket"``). ``max_age`` (seconds) is stored in the token; ``now`` (Unix
    seconds) defaults to the wall clock. Not interchangeable with Elixir-issued tokens.
    """
    if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0:
        raise ValueError("max_age must be a non-negative integer (seconds)")
    signed_at_ms = int((time.time() if now is None else now) * 1000)
    payload = orjson.dumps({"d": data, "s": signed_at_ms, "m": max_age})
    signed_part = f"{_PROTECTED}.{_b64encode(payload)}"
    return f"{signed_part}.{_mac(_key(secret, salt), signed_part)}"


def verify_token(
    secret: str | bytes,
    salt: str | bytes,
    token: str | None,
    *,
    max_age: float | None = None,
    now: float | None = None,
) -> Any:
    """Return the data of a token from :func:`sign_token`, like ``Phoenix.Token.verify``.

    ``max_age`` (seconds; ``math.inf`` for no limit) overrides the one stored in the token.
    A token is expired when ``signed_at + max_age < now``. Raises :class:`MissingToken`,
    :class:`ExpiredToken` or :class:`InvalidToken`.
    """
    if max_age is not None and (
        isinstance(max_age, bool) or not isinstance(max_age, int | float)
        or math.isnan(max_age) or max_age < 0
    ):
        raise ValueError("max_age must be a non-negative number of seconds or None")
    key = _key(secret, salt)
    if token is None or token == "":
        raise MissingToken("no token given")
    if not isinstance(token, str):
        raise InvalidToken("token is not a string", "malformed")
    parts = token.split(".")
    if len(parts) != 3 or not all(_B64URL.fullmatch(part) for part in parts):
        raise InvalidToken("malformed token", "malformed")
    protected, payload_b64, signature = parts
    if protected != _PROTECTED:
        raise InvalidToken("unsupported token digest", "algorithm")
    # All parts are ASCII here, so comparing their bytes is safe and constant-time.
    expected = _mac(key, f"{protected}.{payload_b64}")
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
        raise InvalidToken("bad token signature", "signature")
    try:
        padded = payload_b64 + "=" * (-len(payload_b64) % 4)
        decoded = orjson.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, binascii.Error):
        raise InvalidToken("undecodable token payload", "malformed") from None
    if not isinstance(decoded, dict) or "d" not in decoded:
        raise InvalidToken("unexpected token payload", "malformed")
    signed_at = _number(decoded.get("s"))
    stored_max_age = _number(decoded.get("m"))
    if signed_at is None or stored_max_age is None:
        raise InvalidToken("unexpected token payload", "malformed")
    limit = stored_max_age if max_age is None else max_age
    now_ms = int((time.time() if now is None else now) * 1000)
    if signed_at + limit * 1000 < now_ms:
        raise ExpiredToken("token has expired")
    return decoded["d"]


# -- helpers -----------------------------------------------------------------------------------

FILTERED: Final = "[FILTERED]"
#: Keys whose values :func:`masked_params` hides; matched as case-insensitive substrings,
#: like Phoenix's ``filter_parameters`` (so ``auth_token`` and ``client_secret`` match too).
DEFAULT_FILTERS: Final[tuple[str, ...]] = ("token", "password", "secret", "authorization")


def mask_token(value: str | None) -> str:
    """A loggable stand-in for a token: ``"[MISSING]"``, ``"[EMPTY]"`` or ``"[FILTERED]"``."""
    if value is None:
        return "[MISSING]"
    if value == "":
        return "[EMPTY]"
    return FILTERED


def _mask(value: Any, filters: tuple[str, ...]) -> Any:
    if isinstance(value, Mapping):
        return {
            k: FILTERED if isinstance(k, str) and any(f in k.lower() for f in filters)
            else _mask(v, filters)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask(item, filters) for item in value]
    return value


def masked_params(
    params: Mapping[Any, Any], filters: Iterable[str] = DEFAULT_FILTERS
) -> dict[Any, Any]:
    """A copy of ``params`` for logging, with secret-looking values replaced by ``"[FILTERED]"``.

    Keys containing any of ``filters`` (case-insensitive) are masked, recursively through
    nested dicts and lists. The input is not modified.
    """
    masked: dict[Any, Any] = _mask(params, tuple(f.lower() for f in filters))
    return masked


def socket_token(
    params: Mapping[str, Any], connect_info: Mapping[str, Any], *, param: str = "token"
) -> str | None:
    """The client's token: phoenix.js ``authToken`` if sent, else the ``param`` query value."""
    for candidate in (connect_info.get("auth_token"), params.get(param)):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None
