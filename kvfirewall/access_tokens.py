"""Entra ID bearer tokens, validated here against the tenant's published keys.

kvfirewall authenticates lease callers itself (the routes are anonymous at the host), so this
is the whole gate: RS256 only (never `none` or a symmetric algorithm, whose "secret" a forger
could take from the public key); `aud` one of the accepted audiences; `iss` one of the two
issuers that the tenant's OpenID configuration documents state (v1 and v2 tokens), read from
the documents and never built here, because the v1 issuer lives on another host in each cloud;
`tid` the tenant, since Entra signs every tenant's tokens with the same keys; `exp` and `nbf`
with a small leeway; `oid`, the principal. Keys come from the documents' `jwks_uri`, are
cached, and are fetched again on an unknown `kid` (Entra rotates them) at most once a minute,
so that a stream of forged key ids cannot turn into a stream of requests to the authority.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

import jwt
import requests

__all__ = ["AccessTokenValidator", "Principal", "TokenRejected"]

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
LEEWAY_SECONDS = 60
REFRESH_INTERVAL_SECONDS = 60.0  # the soonest an unknown kid may fetch the keys again
MAX_KEY_AGE_SECONDS = 24 * 3600.0  # keys retired by Entra stop being trusted within a day
FETCH_TIMEOUT = (10, 10)
REQUIRED_CLAIMS = ("exp", "nbf", "iss", "aud", "tid", "oid")

TokenVersion = Literal["1.0", "2.0"]


class TokenRejected(Exception):
    """The caller is not authenticated. The message is safe to return and log: it never
    holds the token. `transient`: the token could not be checked (the authority was
    unreachable or answered nonsense), so the answer is 503 rather than 401."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Principal:
    """Who presented the token: `object_id` is what authorization and leases are keyed on."""

    object_id: str
    tenant_id: str
    app_id: str | None  # `appid` in v1 tokens, `azp` in v2
    version: TokenVersion


@dataclass(frozen=True)
class _Metadata:
    issuers: frozenset[str]
    jwks_uris: tuple[str, ...]


class AccessTokenValidator:
    """Validates bearer tokens of one tenant; safe to share between threads."""

    def __init__(
        self,
        *,
        tenant: str,
        audiences: Collection[str],
        authority: str = DEFAULT_AUTHORITY,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`session`: the HTTP client for the authority; the default trusts what the rest of
        kvfirewall trusts (`REQUESTS_CA_BUNDLE`). `clock` paces key refreshes."""
        try:
            tenant_guid = uuid.UUID(tenant)
        except (TypeError, ValueError):
            raise ValueError(f"tenant must be a tenant id (a GUID), not {tenant!r}") from None
        if not audiences or not all(isinstance(a, str) and a.strip() for a in audiences):
            raise ValueError("audiences must be one or more non-empty strings")
        if not authority.startswith("https://"):
            raise ValueError(f"authority must be an https:// URL, not {authority!r}")
        self.tenant = str(tenant_guid)
        self.audiences = tuple(a.strip() for a in audiences)
        self.authority = authority.rstrip("/")
        self._session = session or requests.Session()
        self._clock = clock
        self._lock = threading.Lock()
        self._metadata: _Metadata | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # the last successful fetch of the keys
        self._attempted_at: float | None = None  # the last fetch, successful or not

    def validate(self, token: str) -> Principal:
        """The principal of a valid token; `TokenRejected` for anything else."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("the bearer token is not a JWT") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("the bearer token names no signing key (kid)")
        key, metadata = self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self.audiences,
                issuer=tuple(sorted(metadata.issuers)),
                leeway=LEEWAY_SECONDS,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the bearer token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("the bearer token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("the bearer token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("the bearer token is from another issuer") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRejected("the bearer token is not signed with RS256") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"the bearer token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("the bearer token's signature is not valid") from None
        except jwt.PyJWTError:
            raise TokenRejected("the bearer token is not valid") from None
        return _principal(claims, self.tenant)

    def _key(self, kid: str) -> tuple[jwt.PyJWK, _Metadata]:
        """The published key `kid`, fetching the key set when it is unknown or old, but never
        sooner than a minute after the last attempt (failed ones too)."""
        with self._lock:
            now = self._clock()
            due = self._attempted_at is None or now - self._attempted_at >= REFRESH_INTERVAL_SECONDS
            stale = self._fetched_at is None or now - self._fetched_at >= MAX_KEY_AGE_SECONDS
            if due and (stale or kid not in self._keys):
                self._attempted_at = now
                self._refresh(now)
            if self._metadata is None or self._fetched_at is None:
                raise TokenRejected(
                    "the authority's signing keys are not available", transient=True
                )
            key, metadata = self._keys.get(kid), self._metadata
        if key is None:
            raise TokenRejected("the bearer token is signed with an unknown key")
        return key, metadata

    def _refresh(self, now: float) -> None:
        """Fetch the documents (once) and every key set they name. Called under the lock."""
        if self._metadata is None:
            documents = [
                self._get_json(
                    f"{self.authority}/{self.tenant}/v2.0/.well-known/openid-configuration"
                ),
                self._get_json(f"{self.authority}/{self.tenant}/.well-known/openid-configuration"),
            ]
            issuers, uris = [], []
            for doc in documents:
                issuer, uri = doc.get("issuer"), doc.get("jwks_uri")
                if not isinstance(issuer, str) or not isinstance(uri, str):
                    raise TokenRejected(
                        "the authority's OpenID configuration has no issuer or jwks_uri",
                        transient=True,
                    )
                issuers.append(issuer)
                if uri not in uris:
                    uris.append(uri)
            self._metadata = _Metadata(frozenset(issuers), tuple(uris))
        keys: dict[str, jwt.PyJWK] = {}
        for uri in self._metadata.jwks_uris:
            try:
                key_set = jwt.PyJWKSet.from_dict(self._get_json(uri))
            except jwt.PyJWTError:
                raise TokenRejected(
                    "the authority's key set holds no usable key", transient=True
                ) from None
            for key in key_set.keys:
                if key.key_id and key.public_key_use in (None, "sig"):
                    keys[key.key_id] = key
        self._keys = keys
        self._fetched_at = now

    def _get_json(self, url: str) -> dict:
        try:
            response = self._session.get(url, timeout=FETCH_TIMEOUT)
            response.raise_for_status()
            doc = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise TokenRejected(
                f"the authority could not be read ({type(exc).__name__})", transient=True
            ) from None
        if not isinstance(doc, dict):
            raise TokenRejected("the authority answered something else than JSON", transient=True)
        return doc


def _principal(claims: dict, tenant: str) -> Principal:
    """The principal of verified claims: `tid` must be the tenant, `oid` an object id."""
    tid, oid, version = claims.get("tid"), claims.get("oid"), claims.get("ver")
    if not isinstance(tid, str) or tid.lower() != tenant:
        raise TokenRejected("the bearer token is from another tenant")
    try:
        object_id = str(uuid.UUID(oid))
    except (TypeError, ValueError, AttributeError):
        raise TokenRejected("the bearer token's oid is not an object id") from None
    if version not in ("1.0", "2.0"):
        raise TokenRejected("the bearer token is neither a v1 nor a v2 access token")
    app_id = claims.get("appid" if version == "1.0" else "azp")
    return Principal(
        object_id=object_id,
        tenant_id=tenant,
        app_id=app_id if isinstance(app_id, str) else None,
        version=version,
    )
