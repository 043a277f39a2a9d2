"""What a Key Vault firewall rule is, in canonical form.

The service stores `1.2.3.4` as `1.2.3.4/32` and lower-cases subnet ids, so any comparison of
rules must go through these helpers; string comparison would make every run write again.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

IPV4_RULE_LIMIT = 1000
VNET_RULE_LIMIT = 200
# The widest rule kvfirewall will add. Azure DevOps ranges are /23 to /30; anything near /8 is
# a typo or a tampered source, and would open a vault to a large part of the Internet.
WIDEST_PREFIX = 16
# Rule values parsed and kept: every vault holds the same desired ranges, and a run compares
# each vault's rules several times (plan, ownership, the check after the write).
PARSED_RULES = 4096
# IANA IPv4 special-purpose registry (RFC 6890 and successors): never part of a public rule.
# A rule that merely *overlaps* one (0.0.0.0/0, 8.0.0.0/6 ...) is refused as well.
SPECIAL_PURPOSE = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
)  # fmt: skip

_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# Resource group names: 1-90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'.
_RG = r"[-\w.()]{0,89}[-\w()]"
_NAME = r"[A-Za-z0-9][-A-Za-z0-9_.]{0,79}"

SUBNET_ID_RE = re.compile(
    rf"^/subscriptions/(?P<sub>{_GUID})/resourceGroups/(?P<rg>{_RG})"
    rf"/providers/Microsoft\.Network/virtualNetworks/(?P<vnet>{_NAME})/subnets/(?P<subnet>{_NAME})\Z",
    re.IGNORECASE,
)
VAULT_ID_RE = re.compile(
    rf"^/subscriptions/(?P<sub>{_GUID})/resourceGroups/(?P<rg>{_RG})"
    r"/providers/Microsoft\.KeyVault/vaults/(?P<name>[A-Za-z0-9-]{3,24})\Z",
    re.IGNORECASE,
)
SUBSCRIPTION_RE = re.compile(rf"^{_GUID}\Z")


class RuleError(ValueError):
    """A value that cannot be a Key Vault firewall rule."""


def public_ipv4_network(value: str, *, widest: int = WIDEST_PREFIX) -> ipaddress.IPv4Network:
    """Parse a rule kvfirewall may *add*: a canonical, public IPv4 address or CIDR.

    Strict on purpose: host bits, IPv6 and private ranges are refused rather than "fixed",
    because a silently reinterpreted rule could admit more than the operator meant. `widest`:
    the widest prefix accepted (wider for the AzureCloud tag, which is checked, never added).
    """
    text = value.strip()
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            fixed = ipaddress.ip_network(text, strict=False)
            raise RuleError(f"{text!r} has host bits set (did you mean {fixed}?)") from None
        raise RuleError(f"{text!r} is not an IPv4 address or CIDR") from None
    if network.version != 4:
        raise RuleError(f"{text!r} is IPv6; Key Vault firewalls accept IPv4 only")
    special = next((r for r in SPECIAL_PURPOSE if network.overlaps(r)), None)
    if special is not None:
        relation = "lies in" if network.subnet_of(special) else "overlaps"
        raise RuleError(
            f"{text!r} is not a public address range (it {relation} the reserved {special}); "
            "Key Vault firewalls accept public IPv4 only"
        )
    if network.prefixlen < widest:
        raise RuleError(
            f"{text!r} is wider than /{widest}; kvfirewall does not add rules that wide"
        )
    return network


@functools.lru_cache(maxsize=PARSED_RULES)
def current_ip_network(value: str) -> ipaddress.IPv4Network | None:
    """Parse an ipRules value read back from a vault, or None if it is not IPv4.

    Lenient (host bits allowed) because it only serves to recognise the network a stored rule
    denotes; a value it cannot parse is someone else's and is kept verbatim. Cached: networks
    are immutable, and parsing one costs more than the rest of comparing it.
    """
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None
    return network if network.version == 4 else None


def subnet_key(subnet_id: str) -> str:
    """The comparison key of a subnet id: the service lower-cases ids it returns."""
    return subnet_id.strip().rstrip("/").lower()


def canonical_subnet_id(value: str) -> str:
    """Validate a virtual network rule subnet id (full resource id) and return it trimmed."""
    text = value.strip()
    if not _ascii_outside_rg(SUBNET_ID_RE.match(text), text):
        raise RuleError(
            f"{text!r} is not a subnet resource id (expected /subscriptions/<guid>/resourceGroups/"
            "<rg>/providers/Microsoft.Network/virtualNetworks/<vnet>/subnets/<subnet>)"
        )
    return text


def _ascii_outside_rg(match: re.Match | None, value: str) -> bool:
    """A match that is ASCII everywhere but in the resource group name (which may hold Unicode
    letters). Case-insensitive matching folds look-alikes such as the Kelvin sign into `k` and
    the long s into `s`; such an id is not what it seems, and must not reach Resource Manager."""
    if match is None:
        return False
    return (value[: match.start("rg")] + value[match.end("rg") :]).isascii()


@dataclass(frozen=True)
class VaultRef:
    """A parsed Key Vault resource id."""

    subscription: str
    resource_group: str
    name: str

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.KeyVault/vaults/{self.name}"
        )

    @property
    def key(self) -> str:
        """Ledger key: ARM ids are case-insensitive."""
        return self.id.lower()


def parse_vault_id(value: str) -> VaultRef:
    """Parse a Key Vault resource id strictly (no query strings, `..`, encodings or extras)."""
    if not isinstance(value, str):
        raise RuleError("a vault id must be a string")
    match = VAULT_ID_RE.match(value)
    if not _ascii_outside_rg(match, value):
        shown = value if len(value) <= 300 else value[:300] + "…"
        raise RuleError(
            f"{shown!r} is not a Key Vault resource id (expected /subscriptions/<guid>/"
            "resourceGroups/<rg>/providers/Microsoft.KeyVault/vaults/<name>)"
        )
    return VaultRef(match["sub"].lower(), match["rg"], match["name"])
