"""The planner: current networkAcls + ledger entry + desired rules -> one complete networkAcls.

Pure (no I/O), so every safety rule lives in one place that property tests can hammer:
- only rules the ledger says kvfirewall added are ever removed;
- a desired rule that someone else already has is left theirs (not claimed);
- defaultAction and bypass are sent exactly as they are, unless an explicit lock-down option
  (off by default) closes an open firewall or turns "disabled" into "selected networks";
  neither ever admits a rule outside the configured set;
- networks are compared as networks (`1.2.3.4` == `1.2.3.4/32`), subnet ids case-insensitively;
- a compliant vault yields no write at all (our own write raises an event; no loops).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from kvfirewall.entries import LedgerEntry
from kvfirewall.ranges import Desired
from kvfirewall.rules import IPV4_RULE_LIMIT, VNET_RULE_LIMIT, current_ip_network, subnet_key

NOT_OURS = "not added by kvfirewall"
# publicNetworkAccess values under which IP and VNet rules are not honoured at all.
INEFFECTIVE = {
    "disabled": "public network access is disabled: firewall rules have no effect",
    "securedbyperimeter": (
        "secured by a network security perimeter: firewall rules have no effect"
    ),
}
ALREADY_THERE = "already present, added by someone else: left to them"
LOCK_OPEN = "KVF_LOCK_OPEN_VAULTS: the firewall was open to every network"
ENABLE_DISABLED = "KVF_ENABLE_DISABLED_VAULTS: public access was disabled"


@dataclass(frozen=True, kw_only=True)
class VaultState:
    """What the planner needs to know about a vault, as Resource Manager returned it."""

    id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    public_network_access: str | None = None
    network_acls: Mapping | None = None  # REST shape: defaultAction, bypass, ipRules, ...
    created_at: str | None = None  # systemData.createdAt: tells a re-created vault apart
    location: str | None = None  # where a deleted vault is looked for


@dataclass(frozen=True)
class Change:
    """One rule in a plan and why it is there."""

    rule: str
    why: str


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What to do with one vault."""

    vault_id: str
    action: str  # "write" | "none" | "skip" | "refuse"
    reason: str
    owned: LedgerEntry  # the ledger entry once the plan is applied
    network_acls: dict | None = None  # the complete networkAcls to PATCH when action == "write"
    added: tuple[Change, ...] = ()
    removed: tuple[Change, ...] = ()
    kept: tuple[Change, ...] = ()  # other people's rules, left in place
    access: tuple[Change, ...] = ()  # defaultAction / publicNetworkAccess changes (lock-down)
    public_network_access: str | None = None  # sent with the ACLs when the plan switches it


def plan_vault(
    vault: VaultState,
    entry: LedgerEntry,
    desired: Desired,
    *,
    lock_open: bool = False,
    enable_disabled: bool = False,
) -> Plan:
    """Plan one vault. See the module docstring for the rules this guarantees.

    `lock_open`: an open firewall (defaultAction Allow, or no ACLs) is closed to Deny.
    `enable_disabled`: a vault with public access Disabled becomes Enabled + Deny, but only
    if every rule it would then honour is in the desired set: its old rules had no effect
    while access was disabled, and switching must not bring someone's stale rule to life.
    """
    public_access = (vault.public_network_access or "").lower()
    enable = enable_disabled and public_access == "disabled"
    if public_access in INEFFECTIVE and not enable:
        return Plan(
            vault_id=vault.id, action="skip", reason=INEFFECTIVE[public_access], owned=entry
        )
    acls = vault.network_acls or {}
    added: list[Change] = []
    removed: list[Change] = []
    kept: list[Change] = []

    owned_ip = entry.ip_rules | entry.pending_ip_rules
    owned_sn = entry.subnets | entry.pending_subnets
    hold = bool(desired.missing_regions)  # an incomplete desired set removes nothing
    hold_subnets = bool(desired.unresolved_pools)  # so does a pool whose networks are unknown
    hold = hold or hold_subnets
    ip_rules, ip_present = _merge(
        ip_values(acls),
        key=current_ip_network,
        canonical=lambda value, net: str(net) if net is not None else value,
        owned=owned_ip,
        desired={net: (str(net), why) for net, why in desired.ip_rules.items()},
        changes=(added, removed, kept),
        may_remove=not hold,
    )
    subnets, subnet_present = _merge(
        subnet_values(acls),
        key=subnet_key,
        canonical=lambda value, _key: value,
        owned=owned_sn,
        desired=dict(desired.subnets),
        changes=(added, removed, kept),
        may_remove=not hold_subnets,
    )
    # Ours afterwards: every desired rule we had (or may have written) or are adding now.
    held = (owned_ip & ip_present) - desired.ip_rules.keys() if hold else frozenset()
    held_sn = (owned_sn & subnet_present) - desired.subnets.keys() if hold_subnets else set()
    owned = LedgerEntry(
        ip_rules=frozenset(n for n in desired.ip_rules if n in owned_ip or n not in ip_present)
        | held,
        subnets=frozenset(k for k in desired.subnets if k in owned_sn or k not in subnet_present)
        | held_sn,
    )
    common = {
        "vault_id": vault.id,
        "added": tuple(added),
        "removed": tuple(removed),
        "kept": tuple(kept),
    }

    if len(ip_rules) > IPV4_RULE_LIMIT or len(subnets) > VNET_RULE_LIMIT:
        return Plan(
            **common,
            action="refuse",
            reason=(
                f"the result would hold {len(ip_rules)} IPv4 and {len(subnets)} virtual network "
                f"rules; Key Vault allows {IPV4_RULE_LIMIT} and {VNET_RULE_LIMIT}"
            ),
            owned=entry,
        )
    access: list[Change] = []
    public = None
    default_action = acls.get("defaultAction") or "Allow"
    is_open = str(default_action).lower() == "allow"
    if enable:
        outside = [v for k, v in ip_rules.items() if k not in desired.ip_rules]
        outside += [v for k, v in subnets.items() if k not in desired.subnets]
        if outside:
            return Plan(
                **common,
                action="skip",
                reason=(
                    f"{INEFFECTIVE['disabled']}; not switched to selected networks: "
                    f"{len(outside)} rules outside the configured set would take effect "
                    f"({', '.join(outside[:3])}{', ...' if len(outside) > 3 else ''})"
                ),
                owned=entry,
            )
        public = "Enabled"
        access.append(Change("publicNetworkAccess: Disabled -> Enabled", ENABLE_DISABLED))
        if is_open:
            access.append(Change(f"defaultAction: {default_action} -> Deny", ENABLE_DISABLED))
            default_action = "Deny"
    elif is_open and lock_open:
        access.append(Change(f"defaultAction: {default_action} -> Deny", LOCK_OPEN))
        default_action = "Deny"
    open_note = ""
    if str(default_action).lower() == "allow":
        open_note = " (firewall open: rules take effect once public access is limited)"
    locked = "".join(f"; {c.rule}" for c in access)
    if not added and not removed and not access:
        return Plan(**common, action="none", reason="compliant" + open_note, owned=owned)
    return Plan(
        **common,
        action="write",
        reason=f"adds {len(added)}, removes {len(removed)}" + open_note + locked,
        owned=owned,
        access=tuple(access),
        public_network_access=public,
        network_acls={
            "defaultAction": default_action,
            "bypass": acls.get("bypass") or "AzureServices",
            "ipRules": [{"value": v} for v in ip_rules.values()],
            # The flag is never echoed back by GET, so an existing rule's value is unknown;
            # true is the only value that cannot make the whole write fail.
            "virtualNetworkRules": [
                {"id": v, "ignoreMissingVnetServiceEndpoint": True} for v in subnets.values()
            ],
        },
    )


def _merge(
    current: list[str],
    *,
    key: Callable[[str], Hashable | None],
    canonical: Callable[[str, Hashable | None], str],
    owned: AbstractSet[Hashable],
    desired: Mapping[Hashable, tuple[str, str]],
    changes: tuple[list[Change], list[Change], list[Change]],
    may_remove: bool,
) -> tuple[dict[Hashable, str], set[Hashable]]:
    """Merge one rule list (IP rules or subnets), appending to (added, removed, kept).

    Returns the rules to send (comparison key -> value) and the keys present before; a value
    `key` cannot parse is its own key, so it is kept verbatim as someone else's.
    """
    added, removed, kept = changes
    result: dict = {}
    present: set = set()
    for value in current:
        k = key(value)
        ident = k if k is not None else value
        if ident in present:
            continue  # the same network twice: send it once
        present.add(ident)
        if ident in owned and ident not in desired and may_remove:
            removed.append(Change(canonical(value, k), "added by kvfirewall, no longer wanted"))
            continue
        result[ident] = canonical(value, k)
        if ident not in owned:
            kept.append(Change(value, ALREADY_THERE if ident in desired else NOT_OURS))
    for ident, (value, why) in desired.items():
        if ident not in result:
            result[ident] = value
            added.append(Change(value, why))
    return result, present


def ip_values(acls: Mapping) -> list[str]:
    """The values of a networkAcls' IP rules, as written (`1.2.3.4` or `1.2.3.4/32`)."""
    return [r["value"] for r in acls.get("ipRules") or () if isinstance(r.get("value"), str)]


def subnet_values(acls: Mapping) -> list[str]:
    """The subnet ids of a networkAcls' virtual network rules, as written."""
    return [r["id"] for r in acls.get("virtualNetworkRules") or () if isinstance(r.get("id"), str)]
