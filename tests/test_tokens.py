"""channels.tokens: JWT verification, Phoenix.Token-style tokens and log masking."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from typing import Any, cast

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from channels.socket import Refuse, Socket
from channels.tokens import (
    FILTERED,
    ExpiredToken,
    InvalidToken,
    JWTVerifier,
    MissingToken,
    TokenError,
    mask_token,
    masked_params,
    sign_jwt,
    sign_token,
    socket_token,
    verify_token,
)

NOW = 1_800_000_000.0
SECRET = "s" * 32 + "-hs256-test-secret"
OTHER_SECRET = "o" * 32 + "-another-test-secret"
BASE = "k" * 64  # a Phoenix-style secret_key_base


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def craft(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"",
          hmac_key: bytes | None = None) -> str:
    """A JWT built by hand, bypassing pyjwt's own safeguards."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "user:42", "exp": int(NOW) + 3600, **extra}


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def hs() -> JWTVerifier:
    return JWTVerifier(SECRET, algorithms=["HS256"])


# -- valid tokens ------------------------------------------------------------------------------


def test_hs256_round_trip(hs: JWTVerifier) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert hs.verify(token, now=NOW) == claims()


def test_rs256_with_pem_and_key_object(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    for key in (public_pem(rsa_key), public_pem(rsa_key).encode(), rsa_key.public_key()):
        verifier = JWTVerifier(key, algorithms=["RS256"])
        assert verifier.verify(token, now=NOW)["sub"] == "user:42"


def test_es256(ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    verifier = JWTVerifier(public_pem(ec_key), algorithms=["RS256", "ES256"])
    assert verifier.verify(token, now=NOW)["sub"] == "user:42"


def test_ec_curve_must_match_algorithm(ec_key: ec.EllipticCurvePrivateKey) -> None:
    verifier = JWTVerifier(ec_key.public_key(), algorithms=["ES256", "ES384"])
    token = jwt.encode(claims(), ec.generate_private_key(ec.SECP384R1()), algorithm="ES384")
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token, now=NOW)
    assert info.value.reason == "algorithm"


def test_eddsa() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    token = sign_jwt(claims(), key, algorithm="EdDSA")
    assert JWTVerifier(key.public_key(), algorithms=["EdDSA"]).verify(token, now=NOW)


def test_sign_with_private_pem_verifies_with_public(rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign_jwt({"sub": "u"}, private_pem(rsa_key), algorithm="RS256", kid="r1",
                     expires_in=60, now=NOW)
    assert jwt.get_unverified_header(token)["kid"] == "r1"
    verifier = JWTVerifier(keys={"r1": public_pem(rsa_key)}, algorithms=["RS256"])
    assert verifier.verify(token, now=NOW) == {"sub": "u", "iat": int(NOW), "exp": int(NOW) + 60}


def test_verifier_signs_with_private_key_object(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JWTVerifier(rsa_key, algorithms=["RS256"])
    assert verifier.verify(verifier.sign(claims()), now=NOW) == claims()


def test_clock_callable_is_used() -> None:
    times = [NOW]
    verifier = JWTVerifier(SECRET, algorithms=["HS256"], leeway=0, clock=lambda: times[0])
    token = verifier.sign({}, expires_in=10, now=NOW)
    assert verifier.verify(token)["exp"] == int(NOW) + 10
    times[0] = NOW + 10
    with pytest.raises(ExpiredToken):
        verifier.verify(token)


# -- rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_rejected(hs: JWTVerifier, alg: str) -> None:
    token = craft({"alg": alg, "typ": "JWT"}, claims())
    with pytest.raises(InvalidToken) as info:
        hs.verify(token, now=NOW)
    assert info.value.reason == "algorithm"


@pytest.mark.parametrize("algorithms", [["none"], ["HS256", "none"], ["HS256", "None"]])
def test_none_is_refused_at_construction(algorithms: list[str]) -> None:
    with pytest.raises(ValueError, match="none"):
        JWTVerifier(SECRET, algorithms=algorithms)


def test_algorithms_are_required_and_checked() -> None:
    with pytest.raises(ValueError):
        JWTVerifier(SECRET, algorithms=[])
    with pytest.raises(ValueError, match="unknown"):
        JWTVerifier(SECRET, algorithms=["HS257"])
    with pytest.raises(TypeError):
        JWTVerifier(SECRET, algorithms="HS256")


def test_wrong_key(hs: JWTVerifier, rsa_key: rsa.RSAPrivateKey,
                   other_rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InvalidToken) as info:
        hs.verify(jwt.encode(claims(), OTHER_SECRET, algorithm="HS256"), now=NOW)
    assert info.value.reason == "signature"
    verifier = JWTVerifier(public_pem(rsa_key), algorithms=["RS256"])
    with pytest.raises(InvalidToken) as info:
        verifier.verify(jwt.encode(claims(), other_rsa_key, algorithm="RS256"), now=NOW)
    assert info.value.reason == "signature"


def test_expiry_and_leeway(hs: JWTVerifier) -> None:
    token = jwt.encode({"exp": int(NOW)}, SECRET, algorithm="HS256")
    assert hs.verify(token, now=NOW - 1)
    assert hs.verify(token, now=NOW + 29)  # past exp, within the default 30 s leeway
    with pytest.raises(ExpiredToken) as info:
        hs.verify(token, now=NOW + 30)
    assert info.value.reason == "expired"
    with pytest.raises(ExpiredToken):
        JWTVerifier(SECRET, algorithms=["HS256"], leeway=0).verify(token, now=NOW)
    assert JWTVerifier(SECRET, algorithms=["HS256"], leeway=120).verify(token, now=NOW + 100)


def test_nbf_in_the_future(hs: JWTVerifier) -> None:
    token = jwt.encode(claims(nbf=int(NOW) + 60), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken) as info:
        hs.verify(token, now=NOW)
    assert info.value.reason == "not_yet_valid"
    assert hs.verify(token, now=NOW + 31)  # within leeway of nbf


def test_iat_in_the_future(hs: JWTVerifier) -> None:
    token = jwt.encode(claims(iat=int(NOW) + 600), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken) as info:
        hs.verify(token, now=NOW)
    assert info.value.reason == "not_yet_valid"


def test_hs256_token_given_to_rs256_verifier(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JWTVerifier(public_pem(rsa_key), algorithms=["RS256"])
    with pytest.raises(InvalidToken) as info:
        verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256"), now=NOW)
    assert info.value.reason == "algorithm"


def test_hs_rs_confusion_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = public_pem(rsa_key)
    # The attack: HMAC-sign with the (public!) PEM bytes as the secret.
    forged = craft({"alg": "HS256", "typ": "JWT"}, claims(), hmac_key=pem.encode())
    for algorithms in (["RS256"], ["HS256", "RS256"]):
        verifier = JWTVerifier(pem, algorithms=algorithms)
        with pytest.raises(InvalidToken) as info:
            verifier.verify(forged, now=NOW)
        assert info.value.reason == "algorithm"
    # Same attack through key rotation: an HS secret and an RSA key side by side.
    mixed = JWTVerifier(keys={"h": SECRET, "r": pem}, algorithms=["HS256", "RS256"])
    forged_kid = craft({"alg": "HS256", "kid": "r"}, claims(), hmac_key=pem.encode())
    with pytest.raises(InvalidToken) as info:
        mixed.verify(forged_kid, now=NOW)
    assert info.value.reason == "algorithm"
    assert mixed.verify(jwt.encode(claims(), SECRET, algorithm="HS256",
                                   headers={"kid": "h"}), now=NOW)


def test_hs_verifier_cannot_be_built_from_a_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    for key in (public_pem(rsa_key), public_pem(rsa_key).encode(), rsa_key.public_key()):
        with pytest.raises(ValueError, match="HMAC"):
            JWTVerifier(key, algorithms=["HS256"])
    ssh = rsa_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with pytest.raises(ValueError, match="HMAC"):
        JWTVerifier(ssh, algorithms=["HS256"])


def test_key_kind_must_fit_algorithms() -> None:
    with pytest.raises(ValueError, match="fits none"):
        JWTVerifier(SECRET, algorithms=["RS256"])
    with pytest.raises(ValueError, match="at least 32 bytes"):
        JWTVerifier("short", algorithms=["HS256"])
    with pytest.raises(ValueError, match="at least 64 bytes"):
        JWTVerifier(SECRET, algorithms=["HS512"])
    with pytest.raises(ValueError):
        JWTVerifier(algorithms=["HS256"])
    with pytest.raises(ValueError):
        JWTVerifier(SECRET, keys={"a": SECRET}, algorithms=["HS256"])


def test_tampered_payload(hs: JWTVerifier) -> None:
    header, _, signature = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    evil = b64(json.dumps(claims(sub="admin")).encode())
    with pytest.raises(InvalidToken) as info:
        hs.verify(f"{header}.{evil}.{signature}", now=NOW)
    assert info.value.reason == "signature"


def test_audience_and_issuer() -> None:
    verifier = JWTVerifier(SECRET, algorithms=["HS256"], audience="chat", issuer="auth.example")
    good = jwt.encode(claims(aud="chat", iss="auth.example"), SECRET, algorithm="HS256")
    assert verifier.verify(good, now=NOW)["aud"] == "chat"
    for bad, reason in [
        (claims(aud="billing", iss="auth.example"), "audience"),
        (claims(iss="auth.example"), "audience"),
        (claims(aud="chat", iss="evil.example"), "issuer"),
        (claims(aud="chat"), "issuer"),
    ]:
        with pytest.raises(InvalidToken) as info:
            verifier.verify(jwt.encode(bad, SECRET, algorithm="HS256"), now=NOW)
        assert info.value.reason == reason


def test_token_with_aud_needs_a_configured_audience(hs: JWTVerifier) -> None:
    with pytest.raises(InvalidToken) as info:
        hs.verify(jwt.encode(claims(aud="chat"), SECRET, algorithm="HS256"), now=NOW)
    assert info.value.reason == "audience"


def test_required_claims(hs: JWTVerifier) -> None:
    token = jwt.encode({"sub": "u"}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken) as info:
        hs.verify(token, now=NOW)
    assert info.value.reason == "claims"
    assert JWTVerifier(SECRET, algorithms=["HS256"], required_claims=()).verify(token, now=NOW)
    strict = JWTVerifier(SECRET, algorithms=["HS256"], required_claims=["exp", "sub", "jti"])
    with pytest.raises(InvalidToken, match="jti"):
        strict.verify(jwt.encode(claims(), SECRET, algorithm="HS256"), now=NOW)


@pytest.mark.parametrize("bad", [
    {"exp": "1800003600"}, {"exp": True}, {"exp": [1]}, {"exp": float("nan")},
    {"exp": float("inf")}, {"exp": int(NOW) + 60, "nbf": "soon"}, {"exp": int(NOW) + 60, "iat": None},
])
def test_non_numeric_time_claims(hs: JWTVerifier, bad: dict[str, Any]) -> None:
    token = craft({"alg": "HS256"}, bad, hmac_key=SECRET.encode())
    with pytest.raises(InvalidToken) as info:
        hs.verify(token, now=NOW)
    assert info.value.reason == "claims"


def test_key_rotation() -> None:
    old, new = "o" * 40, "n" * 40
    verifier = JWTVerifier(keys={"2026-10": old, "2026-11": new}, algorithms=["HS256"])
    for kid, secret in (("2026-10", old), ("2026-11", new)):
        token = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": kid})
        assert verifier.verify(token, now=NOW)["sub"] == "user:42"
        assert verifier.verify(verifier.sign(claims(), kid=kid), now=NOW) == claims()
    # A kid pointing at the other key fails the signature, not the lookup.
    swapped = jwt.encode(claims(), old, algorithm="HS256", headers={"kid": "2026-11"})
    with pytest.raises(InvalidToken) as info:
        verifier.verify(swapped, now=NOW)
    assert info.value.reason == "signature"

    retired = JWTVerifier(keys={"2026-11": new}, algorithms=["HS256"])
    old_token = jwt.encode(claims(), old, algorithm="HS256", headers={"kid": "2026-10"})
    with pytest.raises(InvalidToken) as info:
        retired.verify(old_token, now=NOW)
    assert info.value.reason == "kid"


def test_kid_selection_rules() -> None:
    a, b = "a" * 40, "b" * 40
    no_kid = jwt.encode(claims(), b, algorithm="HS256")
    several = JWTVerifier(keys={"a": a, "b": b}, algorithms=["HS256"])
    with pytest.raises(InvalidToken) as info:
        several.verify(no_kid, now=NOW)
    assert info.value.reason == "kid"
    with pytest.raises(ValueError):
        several.sign(claims())
    with_default = JWTVerifier(keys={"a": a, "b": b}, algorithms=["HS256"], default_kid="b")
    assert with_default.verify(no_kid, now=NOW)
    assert jwt.get_unverified_header(with_default.sign(claims()))["kid"] == "b"
    assert JWTVerifier(keys={"b": b}, algorithms=["HS256"]).verify(no_kid, now=NOW)
    for bad_kid in ("c", 7, ["a"]):
        token = craft({"alg": "HS256", "kid": bad_kid}, claims(), hmac_key=b.encode())
        with pytest.raises(InvalidToken) as info:
            several.verify(token, now=NOW)
        # pyjwt itself refuses a non-string kid while reading the header.
        assert info.value.reason == ("kid" if bad_kid == "c" else "malformed")
    with pytest.raises(ValueError):
        JWTVerifier(keys={"a": a}, algorithms=["HS256"], default_kid="z")


def test_missing_and_non_string_tokens(hs: JWTVerifier) -> None:
    for missing in (None, ""):
        with pytest.raises(MissingToken) as info:
            hs.verify(missing, now=NOW)
        assert info.value.reason == "missing"
    for junk in (42, ["a.b.c"], b"a.b.c"):
        with pytest.raises(InvalidToken):
            hs.verify(cast(str, junk), now=NOW)


def test_oversized_token(hs: JWTVerifier) -> None:
    token = jwt.encode(claims(pad="x" * 10_000), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken) as info:
        hs.verify(token, now=NOW)
    assert info.value.reason == "malformed"
    big = JWTVerifier(SECRET, algorithms=["HS256"], max_length=100_000)
    assert big.verify(token, now=NOW)["pad"]


def test_sign_refuses_public_keys_and_none(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="private key"):
        JWTVerifier(public_pem(rsa_key), algorithms=["RS256"]).sign(claims())
    with pytest.raises(ValueError, match="none"):
        sign_jwt(claims(), SECRET, algorithm="none")
    with pytest.raises(ValueError):
        sign_jwt(claims(), public_pem(rsa_key), algorithm="HS256")


def test_errors_never_contain_the_token(hs: JWTVerifier) -> None:
    token = jwt.encode(claims(), OTHER_SECRET, algorithm="HS256")
    with pytest.raises(TokenError) as info:
        hs.verify(token, now=NOW)
    for part in token.split("."):
        assert part not in str(info.value) and part not in repr(info.value)
    # pyjwt's exception is not chained: its context could carry pieces of the token.
    assert info.value.__cause__ is None and info.value.__suppress_context__


b64url_part = st.from_regex(r"[A-Za-z0-9_\-]{0,60}", fullmatch=True)


@given(st.one_of(
    st.text(max_size=300),
    st.tuples(b64url_part, b64url_part, b64url_part).map(".".join),
    st.tuples(st.just("eyJhbGciOiJIUzI1NiJ9"), b64url_part, b64url_part).map(".".join),
))
def test_jwt_arbitrary_strings_only_raise_token_errors(text: str) -> None:
    verifier = JWTVerifier(SECRET, algorithms=["HS256"])
    try:
        verifier.verify(text, now=NOW)
    except TokenError:
        pass


# -- Phoenix.Token-style tokens ----------------------------------------------------------------

json_data = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@given(json_data)
def test_phoenix_token_round_trip(data: Any) -> None:
    token = sign_token(BASE, "user socket", data, now=NOW)
    assert verify_token(BASE, "user socket", token, now=NOW) == data


def test_phoenix_token_layout() -> None:
    token = sign_token(BASE, "user socket", {"user_id": 42}, max_age=600, now=NOW)
    protected, payload, signature = token.split(".")
    assert protected == "SFMyNTY" and base64.b64decode(protected + "=") == b"HS256"
    assert "=" not in token
    assert orjson.loads(unb64(payload)) == {"d": {"user_id": 42}, "s": int(NOW * 1000), "m": 600}
    key = hashlib.pbkdf2_hmac("sha256", BASE.encode(), b"user socket", 1000, 32)
    mac = hmac.new(key, f"{protected}.{payload}".encode(), hashlib.sha256).digest()
    assert signature == b64(mac)


def test_phoenix_token_expiry() -> None:
    token = sign_token(BASE, "s", "data", max_age=60, now=NOW)
    assert verify_token(BASE, "s", token, now=NOW + 60) == "data"  # signed + max_age == now
    with pytest.raises(ExpiredToken):
        verify_token(BASE, "s", token, now=NOW + 60.002)
    default = sign_token(BASE, "s", "data", now=NOW)
    assert verify_token(BASE, "s", default, now=NOW + 86400) == "data"
    with pytest.raises(ExpiredToken):
        verify_token(BASE, "s", default, now=NOW + 86401)


def test_phoenix_token_max_age_override() -> None:
    token = sign_token(BASE, "s", "data", max_age=60, now=NOW)
    with pytest.raises(ExpiredToken):
        verify_token(BASE, "s", token, max_age=10, now=NOW + 11)
    assert verify_token(BASE, "s", token, max_age=3600, now=NOW + 3000) == "data"
    assert verify_token(BASE, "s", token, max_age=math.inf, now=NOW + 10**9) == "data"
    for bad in (-1, float("nan"), True):
        with pytest.raises(ValueError):
            verify_token(BASE, "s", token, max_age=bad, now=NOW)
    with pytest.raises(ValueError):
        sign_token(BASE, "s", "data", max_age=-5)


def test_phoenix_token_wrong_salt_or_secret() -> None:
    token = sign_token(BASE, "user socket", 1, now=NOW)
    for secret, salt in ((BASE, "admin socket"), ("x" * 64, "user socket")):
        with pytest.raises(InvalidToken) as info:
            verify_token(secret, salt, token, now=NOW)
        assert info.value.reason == "signature"
    assert verify_token(BASE.encode(), b"user socket", token, now=NOW) == 1


def test_phoenix_token_tampering() -> None:
    protected, payload, signature = sign_token(BASE, "s", {"id": 1}, now=NOW).split(".")
    evil = b64(orjson.dumps({"d": {"id": 2}, "s": int(NOW * 1000), "m": 86400}))
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for token in (f"{protected}.{evil}.{signature}", f"{protected}.{payload}.{flipped}",
                  f"{protected}.{payload}.{signature[:-1]}"):
        with pytest.raises(InvalidToken) as info:
            verify_token(BASE, "s", token, now=NOW)
        assert info.value.reason == "signature"
    other_digest = f"SFMzODQ.{payload}.{signature}"
    with pytest.raises(InvalidToken) as info:
        verify_token(BASE, "s", other_digest, now=NOW)
    assert info.value.reason == "algorithm"


def test_elixir_token_is_refused_as_invalid() -> None:
    # term_to_binary({"hi", 1800000000000, 86400}): a correctly signed Elixir-format payload.
    etf = bytes([131, 104, 3, 109, 0, 0, 0, 2]) + b"hi" + bytes([110, 6, 0]) \
        + (1_800_000_000_000).to_bytes(6, "little") + bytes([98]) + (86400).to_bytes(4, "big")
    key = hashlib.pbkdf2_hmac("sha256", BASE.encode(), b"s", 1000, 32)
    signed = f"SFMyNTY.{b64(etf)}"
    token = f"{signed}.{b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())}"
    with pytest.raises(InvalidToken) as info:
        verify_token(BASE, "s", token, now=NOW)
    assert info.value.reason == "malformed"


def test_phoenix_token_missing_and_weak_secret() -> None:
    for missing in (None, ""):
        with pytest.raises(MissingToken):
            verify_token(BASE, "s", missing)
    with pytest.raises(ValueError, match="32 bytes"):
        sign_token("short", "s", 1)
    with pytest.raises(ValueError, match="32 bytes"):
        verify_token("short", "s", "a.b.c")


@given(st.one_of(
    st.text(max_size=300),
    st.tuples(st.just("SFMyNTY"), b64url_part, b64url_part).map(".".join),
    st.lists(b64url_part, max_size=5).map(".".join),
))
def test_phoenix_token_arbitrary_strings_only_raise_token_errors(text: str) -> None:
    try:
        verify_token(BASE, "s", text, now=NOW)
    except TokenError as exc:
        if len(text) > 12:
            assert text not in str(exc)


@given(st.binary(max_size=200))
def test_phoenix_token_signed_garbage_payloads(payload: bytes) -> None:
    # Even with a valid signature, a payload we did not produce must not crash the verifier.
    key = hashlib.pbkdf2_hmac("sha256", BASE.encode(), b"s", 1000, 32)
    signed = f"SFMyNTY.{b64(payload)}" if payload else "SFMyNTY.AA"
    token = f"{signed}.{b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())}"
    try:
        verify_token(BASE, "s", token, now=NOW)
    except TokenError:
        pass


# -- masking and socket integration ------------------------------------------------------------


def test_mask_token() -> None:
    assert mask_token(None) == "[MISSING]"
    assert mask_token("") == "[EMPTY]"
    assert mask_token("eyJhbGciOi.secret.sig") == FILTERED == "[FILTERED]"


def test_masked_params() -> None:
    params: dict[Any, Any] = {
        "token": "t", "auth_token": "a", "Password": "p", "client_secret": "s",
        "room": "lobby", 1: "non-str key",
        "nested": {"refresh_token": "r", "page": 2, "deeper": [{"password": "q"}, "keep"]},
    }
    masked = masked_params(params)
    assert masked == {
        "token": FILTERED, "auth_token": FILTERED, "Password": FILTERED,
        "client_secret": FILTERED, "room": "lobby", 1: "non-str key",
        "nested": {"refresh_token": FILTERED, "page": 2,
                   "deeper": [{"password": FILTERED}, "keep"]},
    }
    assert params["token"] == "t" and params["nested"]["refresh_token"] == "r"
    assert masked_params({"pin": "1234", "token": "t"}, filters=["PIN"]) == {
        "pin": FILTERED, "token": "t"}


def test_socket_token_prefers_auth_token() -> None:
    assert socket_token({"token": "q"}, {"auth_token": "h"}) == "h"
    assert socket_token({"token": "q"}, {"auth_token": None}) == "q"
    assert socket_token({"t": "q"}, {}, param="t") == "q"
    assert socket_token({"token": ["q"]}, {"auth_token": ""}) is None


class TokenSocket(Socket):
    verifier = JWTVerifier(SECRET, algorithms=["HS256"])

    async def connect(self, params: dict[str, Any],
                      connect_info: dict[str, Any]) -> bool | dict[str, Any]:
        try:
            found = self.verifier.verify(socket_token(params, connect_info), now=NOW)
        except TokenError:
            raise Refuse(403) from None
        return {"user_id": found["sub"]}


async def test_socket_connect_pattern() -> None:
    sock = TokenSocket(cast(Any, None))
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert await sock.connect({}, {"auth_token": token}) == {"user_id": "user:42"}
    assert await sock.connect({"token": token}, {"auth_token": None}) == {"user_id": "user:42"}
    attempts: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, {}), ({"token": token + "x"}, {})]
    for params, info in attempts:
        with pytest.raises(Refuse) as refused:
            await sock.connect(params, info)
        assert refused.value.status == 403
