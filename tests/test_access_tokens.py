"""Bearer token validation through PyJWT against the emulator's Entra-like authority."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from emulator import Emulator
from emulator.entra import V1_ISSUER_HOST, SigningKey
from kvfirewall.access_tokens import (
    MAX_KEY_AGE_SECONDS,
    AccessTokenValidator,
    Principal,
    TokenRejected,
)

TENANT = "3f1c2a4b-1111-4222-8333-444455556666"
OTHER_TENANT = "9e8d7c6b-aaaa-4bbb-8ccc-ddddeeeeffff"
AUDIENCE = "api://kvfirewall-leases"
CLIENT_ID = "0b6f1a2c-3d4e-4f50-8a61-72839405a6b7"
OID = "5d1e0f3a-2b4c-4d6e-8f70-819203a4b5c6"
APP = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def validator(emulator: Emulator, clock: Clock) -> AccessTokenValidator:
    return AccessTokenValidator(
        tenant=TENANT, audiences=[AUDIENCE, CLIENT_ID], authority=emulator.url, clock=clock
    )


def claims(emu: Emulator, **overrides: Any) -> dict[str, Any]:
    version = overrides.pop("version", "2.0")
    tenant = overrides.pop("tenant", TENANT)
    doc = emu.authority.claims(
        emu.url, tenant=tenant, audience=AUDIENCE, object_id=OID, app_id=APP, version=version
    )
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def key_fetches(emu: Emulator) -> int:
    return sum(1 for r in emu.requests if "/discovery/" in r.path)


def test_v2_token_gives_its_principal(emulator: Emulator, validator: AccessTokenValidator) -> None:
    token = emulator.authority.sign(claims(emulator))
    assert validator.validate(token) == Principal(OID, TENANT, APP, "2.0")


def test_v1_token_is_accepted_with_the_issuer_its_document_states(
    emulator: Emulator, validator: AccessTokenValidator
) -> None:
    """The v1 issuer is on another host than the authority: only read from the document."""
    doc = claims(emulator, version="1.0", aud=CLIENT_ID)
    assert doc["iss"] == f"{V1_ISSUER_HOST}/{TENANT}/"
    principal = validator.validate(emulator.authority.sign(doc))
    assert principal == Principal(OID, TENANT, APP, "1.0")


def test_keys_and_documents_are_fetched_once(
    emulator: Emulator, validator: AccessTokenValidator
) -> None:
    for _ in range(5):
        validator.validate(emulator.authority.sign(claims(emulator)))
    paths = sorted(r.path for r in emulator.requests)
    assert paths == sorted(
        [
            f"/{TENANT}/v2.0/.well-known/openid-configuration",
            f"/{TENANT}/.well-known/openid-configuration",
            f"/{TENANT}/discovery/v2.0/keys",
            "/common/discovery/keys",
        ]
    )


def test_a_token_a_minute_past_expiry_is_within_the_leeway(
    emulator: Emulator, validator: AccessTokenValidator
) -> None:
    now = int(time.time())
    token = emulator.authority.sign(claims(emulator, exp=now - 30))
    assert validator.validate(token).object_id == OID


def _forgeries() -> dict[str, tuple[Callable[[Emulator], str], str]]:
    """name -> (how the forged token is made, what the refusal says)."""
    now = int(time.time())

    def signed(**overrides: Any) -> Callable[[Emulator], str]:
        return lambda emu: emu.authority.sign(claims(emu, **overrides))

    def other_tenant(emu: Emulator) -> str:
        # Entra signs every tenant's tokens with the same keys: this one is validly signed.
        return emu.authority.sign(claims(emu, tenant=OTHER_TENANT))

    def unknown_kid(emu: Emulator) -> str:
        return emu.authority.sign(claims(emu), key=SigningKey.generate())

    def tampered(emu: Emulator) -> str:
        token = emu.authority.sign(claims(emu))
        return emu.authority.tampered(token, oid="00000000-0000-4000-8000-000000000001")

    return {
        "expired": (signed(iat=now - 7200, nbf=now - 7200, exp=now - 3600), "expired"),
        "not yet valid": (signed(nbf=now + 3600, exp=now + 7200), "not valid yet"),
        "wrong audience": (signed(aud="api://someone-else"), "another audience"),
        "other tenant": (other_tenant, "another issuer"),
        "issuer built from the authority": (
            lambda emu: emu.authority.sign(claims(emu, iss=f"{emu.url}/{TENANT}/")),
            "another issuer",
        ),
        "tid of another tenant": (signed(tid=OTHER_TENANT), "another tenant"),
        "alg none": (lambda emu: emu.authority.unsigned(claims(emu)), "RS256"),
        "HS256 keyed with the public key": (
            lambda emu: emu.authority.hs256_with_public_key(claims(emu)),
            "RS256",
        ),
        "unknown kid": (unknown_kid, "unknown key"),
        "tampered payload": (tampered, "signature"),
        "no oid": (signed(oid=None), "'oid'"),
        "oid not an object id": (signed(oid="alice"), "oid"),
        "no exp": (signed(exp=None), "'exp'"),
        "not a JWT": (lambda emu: "not-a-token", "not a JWT"),
    }


@pytest.mark.parametrize("name", sorted(_forgeries()))
def test_hostile_tokens_are_refused_without_echoing_them(
    name: str, emulator: Emulator, validator: AccessTokenValidator
) -> None:
    make, says = _forgeries()[name]
    token = make(emulator)
    with pytest.raises(TokenRejected) as caught:
        validator.validate(token)
    message = str(caught.value)
    assert says in message
    assert not caught.value.transient
    for part in token.split("."):
        assert len(part) < 8 or part not in message


def test_rotated_key_is_fetched_at_most_once_a_minute(
    emulator: Emulator, validator: AccessTokenValidator, clock: Clock
) -> None:
    authority = emulator.authority
    validator.validate(authority.sign(claims(emulator)))
    fetched = key_fetches(emulator)
    authority.rotate()
    rotated = authority.sign(claims(emulator))

    clock.now += 10  # a new kid so soon after the last fetch: no request, refused
    with pytest.raises(TokenRejected, match="unknown key"):
        validator.validate(rotated)
    assert key_fetches(emulator) == fetched

    clock.now += 50  # a minute after the last fetch: one refresh, and the new key is known
    assert validator.validate(rotated).object_id == OID
    fetched = key_fetches(emulator)

    forged = authority.sign(claims(emulator), key=SigningKey.generate())
    for _ in range(3):  # a stream of unknown kids costs the authority nothing more
        clock.now += 5
        with pytest.raises(TokenRejected, match="unknown key"):
            validator.validate(forged)
    assert key_fetches(emulator) == fetched


def test_a_retired_key_stops_being_trusted_within_a_day(
    emulator: Emulator, validator: AccessTokenValidator, clock: Clock
) -> None:
    authority = emulator.authority
    old_kid = authority.signing_key.kid
    old = authority.sign(claims(emulator))
    validator.validate(old)
    authority.rotate()
    authority.retire(old_kid)
    assert old_kid not in {k["kid"] for k in authority.jwks()["keys"]}
    assert validator.validate(old).object_id == OID  # cached: still within the day
    clock.now += MAX_KEY_AGE_SECONDS
    with pytest.raises(TokenRejected, match="unknown key"):
        validator.validate(old)
    assert validator.validate(authority.sign(claims(emulator))).object_id == OID


def test_an_unreachable_authority_is_transient_and_retried_after_a_minute(
    emulator: Emulator, validator: AccessTokenValidator, clock: Clock
) -> None:
    token = emulator.authority.sign(claims(emulator))
    emulator.fail("GET", r"/discovery/", 503)
    with pytest.raises(TokenRejected) as caught:
        validator.validate(token)
    assert caught.value.transient
    assert token not in str(caught.value)
    with pytest.raises(TokenRejected) as caught:  # no second attempt within the minute
        validator.validate(token)
    assert caught.value.transient
    clock.now += 60
    assert validator.validate(token).object_id == OID


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"tenant": "contoso.onmicrosoft.com"}, "GUID"),
        ({"audiences": []}, "audiences"),
        ({"audiences": [" "]}, "audiences"),
        ({"authority": "http://login.example"}, "https"),
    ],
)
def test_bad_parameters_are_refused(options: dict[str, Any], says: str) -> None:
    params: dict[str, Any] = {"tenant": TENANT, "audiences": [AUDIENCE]} | options
    with pytest.raises(ValueError, match=says):
        AccessTokenValidator(**params)
