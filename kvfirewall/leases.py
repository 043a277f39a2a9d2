"""Access leases, as values: the `POST /api/leases` request, and the lease it grants.

The parser is as strict as the reconcile one (`api.py`), for the same reason: a lease opens a
firewall, so a typo must be refused, never guessed at. `ip` is one public IPv4 address, not a
range: a lease admits one caller. Without it, the caller's own address is the right-most
`X-Forwarded-For` entry, the one App Service's front end appends (entries to its left come from
the client and prove nothing).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from kvfirewall.api import BadRequest, json_object, json_type, vault_field
from kvfirewall.rules import RuleError, VaultRef, parse_vault_id, public_ipv4_network

__all__ = [
    "DEFAULT_MINUTES",
    "MAX_VAULTS",
    "Lease",
    "LeaseRequest",
    "caller_address",
    "lease_rules",
    "parse_address",
    "parse_lease_request",
]

FIELDS = ("vaults", "minutes", "ip", "reason")
MAX_VAULTS = 20
DEFAULT_MINUTES = 30
MAX_REASON = 200


@dataclass(frozen=True, kw_only=True)
class LeaseRequest:
    vaults: tuple[VaultRef, ...]
    minutes: int
    ip: ipaddress.IPv4Address
    reason: str | None = None


def parse_lease_request(
    body: bytes, *, max_minutes: int, forwarded_for: str | None
) -> LeaseRequest:
    """Parse and validate a lease request; `forwarded_for` is the `X-Forwarded-For` header,
    used when the body names no `ip`. `minutes` defaults to 30, or `max_minutes` if lower."""
    document = json_object(body, fields=FIELDS)
    if "ip" in document:
        if not isinstance(document["ip"], str):
            raise BadRequest(f"ip must be a string, not {json_type(document['ip'])}")
        ip = parse_address(document["ip"], field="ip")
    elif forwarded_for is not None and forwarded_for.strip():
        ip = caller_address(forwarded_for)
    else:
        raise BadRequest("ip is required: the caller's address is not known")
    return LeaseRequest(
        vaults=_vaults(document.get("vaults")),
        minutes=_minutes(document.get("minutes", min(DEFAULT_MINUTES, max_minutes)), max_minutes),
        ip=ip,
        reason=_reason(document),
    )


def _vaults(value: object) -> tuple[VaultRef, ...]:
    if not isinstance(value, list):
        raise BadRequest(f"vaults must be an array of vault ids, not {json_type(value)}")
    if not 1 <= len(value) <= MAX_VAULTS:
        raise BadRequest(f"vaults must list 1 to {MAX_VAULTS} vault ids, not {len(value)}")
    refs: list[VaultRef] = []
    for index, item in enumerate(value):
        ref = vault_field(item, field=f"vaults[{index}]")
        if any(ref.key == seen.key for seen in refs):
            raise BadRequest(f"vaults[{index}] repeats {ref.id}")
        refs.append(ref)
    return tuple(refs)


def _minutes(value: object, max_minutes: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"minutes must be a whole number, not {json_type(value)}")
    if not 1 <= value <= max_minutes:
        raise BadRequest(f"minutes must be between 1 and {max_minutes}, not {value}")
    return value


def _reason(document: dict) -> str | None:
    if "reason" not in document:
        return None
    value = document["reason"]
    if not isinstance(value, str):
        raise BadRequest(f"reason must be a string, not {json_type(value)}")
    if len(value) > MAX_REASON:
        raise BadRequest(f"reason must be at most {MAX_REASON} characters, not {len(value)}")
    if not value.isprintable():  # it is logged: no line breaks or control characters
        raise BadRequest("reason must be printable text (no line breaks or control characters)")
    return value


def parse_address(value: str, *, field: str) -> ipaddress.IPv4Address:
    """One public IPv4 address: refused are ranges (even a /32), IPv6 and private addresses."""
    text = value.strip()
    if "/" in text:
        raise BadRequest(f"{field} must be one address, not a range ({text[:50]!r})")
    try:
        network = public_ipv4_network(text)
    except RuleError as exc:
        raise BadRequest(f"{field}: {exc}") from None
    return network.network_address


def caller_address(forwarded_for: str) -> ipaddress.IPv4Address:
    """The caller's address from `X-Forwarded-For`: its right-most entry, the port removed."""
    entry = forwarded_for.rsplit(",", 1)[-1].strip()
    host, colon, port = entry.rpartition(":")
    if colon and host and ":" not in host and port.isdigit():
        entry = host
    elif entry.startswith("[") and "]:" in entry:  # IPv6 with a port
        entry = entry[1 : entry.index("]")]
    return parse_address(entry, field="the caller's address (X-Forwarded-For)")


@dataclass(frozen=True, kw_only=True)
class Lease:
    """One grant: `ip` may reach `vaults` until `expires_at`, on behalf of `principal`."""

    id: str
    ip: ipaddress.IPv4Address
    principal: str
    expires_at: datetime
    vaults: tuple[VaultRef, ...]
    reason: str | None = None

    @staticmethod
    def grant(request: LeaseRequest, *, principal: str, now: datetime) -> Lease:
        """A new lease for `request`, expiring `minutes` after `now` (whole seconds, UTC)."""
        start = now.astimezone(timezone.utc).replace(microsecond=0)
        return Lease(
            id=str(uuid.uuid4()),
            ip=request.ip,
            principal=principal,
            expires_at=start + timedelta(minutes=request.minutes),
            vaults=request.vaults,
            reason=request.reason,
        )

    def active(self, now: datetime) -> bool:
        return now < self.expires_at

    def to_json(self) -> dict[str, Any]:
        """The lease object of the HTTP API, also the stored form."""
        return {
            "id": self.id,
            "ip": str(self.ip),
            "principal": self.principal,
            "expiresAt": self.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "vaults": [v.id for v in self.vaults],
            "reason": self.reason,
        }

    @staticmethod
    def from_json(doc: dict[str, Any]) -> Lease:
        """Read back a stored lease; ValueError if it is not one."""
        try:
            expires = datetime.strptime(doc["expiresAt"], "%Y-%m-%dT%H:%M:%SZ")
            return Lease(
                id=str(uuid.UUID(doc["id"])),
                ip=ipaddress.IPv4Address(doc["ip"]),
                principal=str(uuid.UUID(doc["principal"])),
                expires_at=expires.replace(tzinfo=timezone.utc),
                vaults=tuple(parse_vault_id(v) for v in doc["vaults"]),
                reason=doc.get("reason"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a stored lease: {exc}") from None


def lease_rules(leases: Iterable[Lease]) -> dict[str, dict[ipaddress.IPv4Network, str]]:
    """Per vault (its lower-cased id), the /32 each active lease wants there, with why: the
    lease that ends last (several leases for one address share its one rule)."""
    rules: dict[str, dict[ipaddress.IPv4Network, str]] = {}
    holders: dict[tuple[str, ipaddress.IPv4Network], list[Lease]] = {}
    for lease in leases:
        for vault in lease.vaults:
            holders.setdefault((vault.key, ipaddress.IPv4Network(lease.ip)), []).append(lease)
    for (vault, network), held in sorted(holders.items(), key=lambda item: item[0][0]):
        last = max(held, key=lambda lease: (lease.expires_at, lease.id))
        more = f" (and {len(held) - 1} more)" if len(held) > 1 else ""
        rules.setdefault(vault, {})[network] = (
            f"lease {last.id} of {last.principal} until "
            f"{last.expires_at.strftime('%Y-%m-%dT%H:%M:%SZ')}{more}"
        )
    return rules
