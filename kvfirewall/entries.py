"""What the ledger holds for one vault: the rules kvfirewall owns there, and what it knows of
the vault itself. A model of its own, so that the pure planner and the status page use it
without importing the storage that keeps it (`ledger.py`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from kvfirewall.rules import PARSED_RULES


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """The rules kvfirewall owns on one vault (IPv4 networks and lower-cased subnet ids)."""

    ip_rules: frozenset[IPv4Network] = frozenset()
    subnets: frozenset[str] = frozenset()
    pending_ip_rules: frozenset[IPv4Network] = frozenset()
    pending_subnets: frozenset[str] = frozenset()
    # The vault's creation time (systemData.createdAt): a vault deleted and created again under
    # the same id is another vault, and must not inherit this one's ownership.
    generation: str = ""
    location: str = ""  # the vault's region: where its deleted vault is looked for
    # A vault that answered 404 is kept, marked, while Key Vault can still recover it with its
    # rules (soft-delete); these are when it was deleted and when it is purged (ISO 8601).
    deleted_at: str = ""
    purge_at: str = ""
    # The stored version this entry was read as (a Table ETag, a file digest; "" when there
    # was none): a write succeeds only over that version. Not part of the entry's value.
    version: str = field(default="", compare=False)

    def __bool__(self) -> bool:
        return bool(self.ip_rules or self.subnets or self.pending_ip_rules or self.pending_subnets)

    def to_json(self) -> dict:
        return {
            "ipRules": sorted(map(str, self.ip_rules)),
            "subnets": sorted(self.subnets),
            "pendingIpRules": sorted(map(str, self.pending_ip_rules)),
            "pendingSubnets": sorted(self.pending_subnets),
            "generation": self.generation,
            "location": self.location,
            "deletedAt": self.deleted_at,
            "purgeAt": self.purge_at,
        }

    @classmethod
    def from_json(cls, data: dict) -> LedgerEntry:
        return cls(
            ip_rules=frozenset(map(_network, data.get("ipRules", ()))),
            subnets=frozenset(data.get("subnets", ())),
            pending_ip_rules=frozenset(map(_network, data.get("pendingIpRules", ()))),
            pending_subnets=frozenset(data.get("pendingSubnets", ())),
            generation=str(data.get("generation", "")),
            location=str(data.get("location", "")),
            deleted_at=str(data.get("deletedAt", "")),
            purge_at=str(data.get("purgeAt", "")),
        )


@functools.lru_cache(maxsize=PARSED_RULES)
def _network(text: str) -> IPv4Network:
    """A stored network (strictly parsed); cached, as every entry holds the same ranges."""
    return IPv4Network(text)
