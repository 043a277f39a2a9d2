"""An Entra ID-like authority: OpenID configuration documents, signing keys, and tokens.

Shaped like login.microsoftonline.com: per tenant a v2.0 document (issuer
`{authority}/{tenant}/v2.0`) and a v1 document whose issuer is on another host
(`https://sts.windows.net/{tenant}/` in the public cloud), each naming a `jwks_uri`. One key set
signs the tokens of every tenant, as in Entra, so a token of another tenant is validly signed:
only `iss` and `tid` tell it apart. Tests mint good tokens here, and the forged ones a
validator must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["V1_ISSUER_HOST", "Authority", "SigningKey", "TokenVersion"]

TokenVersion = Literal["1.0", "2.0"]
V1_ISSUER_HOST = "https://sts.windows.net"
_KEY_BITS = 2048
_LIFETIME = 3600


@dataclass(frozen=True)
class SigningKey:
    """An RSA key pair with its key id, as Entra publishes it (`kid`, and `x5t` the same)."""

    kid: str
    private: rsa.RSAPrivateKey

    @staticmethod
    def generate() -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
        return SigningKey(_b64(uuid.uuid4().bytes), private)

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        """The JWKS entry, in Entra's field order (without the certificate chain)."""
        numbers = self.private.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        }


class Authority:
    """The Entra-like authority served by the emulator at its own URL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._initial = SigningKey.generate()  # kept across resets: RSA keys are slow to make
        self.reset()

    def reset(self) -> None:
        """Back to the one initial signing key."""
        with self._lock:
            self._published: list[SigningKey] = [self._initial]
            self._signing = self._initial

    # ------------------------------------------------------------------ keys

    @property
    def signing_key(self) -> SigningKey:
        with self._lock:
            return self._signing

    def rotate(self) -> SigningKey:
        """Publish a new key and sign with it from now on; the old one stays published."""
        key = SigningKey.generate()
        with self._lock:
            self._published.append(key)
            self._signing = key
        return key

    def retire(self, kid: str) -> None:
        """Stop publishing a key (the end of a rotation, or a revoked key)."""
        with self._lock:
            self._published = [k for k in self._published if k.kid != kid]

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.jwk() for k in self._published]}

    # ------------------------------------------------------------------ documents

    @staticmethod
    def issuer(authority: str, tenant: str, version: TokenVersion) -> str:
        if version == "2.0":
            return f"{authority}/{tenant}/v2.0"
        return f"{V1_ISSUER_HOST}/{tenant}/"

    def openid_configuration(
        self, authority: str, tenant: str, version: TokenVersion
    ) -> dict[str, Any]:
        """The document at `{authority}/{tenant}[/v2.0]/.well-known/openid-configuration`."""
        v2 = version == "2.0"
        oauth = f"{authority}/{tenant}/oauth2" + ("/v2.0" if v2 else "")
        return {
            "token_endpoint": f"{oauth}/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": (
                f"{authority}/{tenant}/discovery/v2.0/keys"
                if v2
                else f"{authority}/common/discovery/keys"
            ),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self.issuer(authority, tenant, version),
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{oauth}/authorize",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{oauth}/logout",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }

    def respond(self, method: str, path: str, authority: str) -> tuple[int, Any] | None:
        """(status, JSON body) for an authority path, or None if `path` is not one."""
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2:
            return None
        tenant, rest = parts[0], parts[1:]
        if rest == [".well-known", "openid-configuration"]:
            version: TokenVersion | None = "1.0"
        elif rest == ["v2.0", ".well-known", "openid-configuration"]:
            version = "2.0"
        elif rest in (["discovery", "keys"], ["discovery", "v2.0", "keys"]):
            version = None
        else:
            return None
        if method != "GET":
            return 405, {"error": "invalid_request", "error_description": "Use GET."}
        if version is None:
            return 200, self.jwks()
        if not _is_guid(tenant):
            return 400, {
                "error": "invalid_tenant",
                "error_description": f"AADSTS90002: Tenant '{tenant}' not found.",
            }
        return 200, self.openid_configuration(authority, tenant, version)

    # ------------------------------------------------------------------ tokens

    def claims(
        self,
        authority: str,
        *,
        tenant: str,
        audience: str,
        object_id: str,
        app_id: str,
        version: TokenVersion = "2.0",
        now: float | None = None,
        lifetime: int = _LIFETIME,
    ) -> dict[str, Any]:
        """The claim set of an app-only access token, as Entra issues it for `version`."""
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": self.issuer(authority, tenant, version),
            "iat": issued,
            "nbf": issued,
            "exp": issued + lifetime,
            "aio": _b64(uuid.uuid4().bytes),
        }
        if version == "2.0":
            claims.update({"azp": app_id, "azpacr": "2"})
        else:
            claims.update(
                {"appid": app_id, "appidacr": "2", "idp": self.issuer(authority, tenant, "1.0")}
            )
        claims.update(
            {
                "idtyp": "app",
                "oid": object_id,
                "rh": "0.AAAA" + _b64(uuid.uuid4().bytes),
                "sub": object_id,
                "tid": tenant,
                "uti": _b64(uuid.uuid4().bytes),
                "ver": version,
            }
        )
        return claims

    def sign(self, claims: dict[str, Any], *, key: SigningKey | None = None) -> str:
        """An RS256 token over `claims`, signed by `key` (default: the current signing key)."""
        key = key or self.signing_key
        headers = {"typ": "JWT", "kid": key.kid, "x5t": key.kid}
        return jwt.encode(claims, key.private, algorithm="RS256", headers=headers)

    # ------------------------------------------------------------------ forgeries

    def unsigned(self, claims: dict[str, Any]) -> str:
        """`alg: none` with no signature, naming a published key id."""
        header = {"typ": "JWT", "alg": "none", "kid": self.signing_key.kid}
        return f"{_b64_json(header)}.{_b64_json(claims)}."

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """HS256 keyed with the published public key's PEM: the algorithm-confusion attack.
        PyJWT refuses to produce it, so it is put together by hand."""
        key = self.signing_key
        header = {"typ": "JWT", "alg": "HS256", "kid": key.kid}
        signing_input = f"{_b64_json(header)}.{_b64_json(claims)}"
        mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"

    @staticmethod
    def tampered(token: str, **changes: Any) -> str:
        """A signed token whose payload was changed afterwards; the signature is kept."""
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims.update(changes)
        return f"{header}.{_b64_json(claims)}.{signature}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64_json(doc: dict[str, Any]) -> str:
    return _b64(json.dumps(doc, separators=(",", ":")).encode())


def _is_guid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36
