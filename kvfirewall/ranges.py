"""Azure DevOps inbound ranges: snapshots of the service tag, the guard, and the desired set.

Pure code. Fetching lives in `sources.py`; storing snapshots in `ledger.py`.

A snapshot keeps the IPv4 prefixes of every `AzureDevOps.<Region>` sub-tag, keyed by region,
and the tag's `changeNumber` as its version. The guard decides whether a fresh snapshot may
replace the last good one: an empty or shrunken download must never remove rules, because
historically the AzureDevOps tag has only ever grown.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network

from kvfirewall.geographies import GEOGRAPHY_REGIONS
from kvfirewall.pools import PoolNetworks
from kvfirewall.rules import WIDEST_PREFIX, RuleError, public_ipv4_network, subnet_key
from kvfirewall.settings import Settings

TAG = "AzureDevOps"
# Azure DevOps publishes /23 to /30 prefixes; a much wider one means a broken or forged source.
SOURCE_WIDEST_PREFIX = 20
# The global `AzureCloud` tag: every Azure public address, where Microsoft-hosted agents and
# GitHub-hosted runners come from. Only leases use it (`KVF_LEASE_IP_SCOPE=azure`), to check
# an address, never as rules. Its widest prefixes are /11 and /12; wider means a broken source.
AZURE_CLOUD = "AzureCloud"
AZURE_CLOUD_WIDEST_PREFIX = 10


class RangeSourceError(Exception):
    """The IP source could not be read or did not hold a usable AzureDevOps tag."""


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The AzureDevOps IPv4 prefixes per region at one version of the service tag."""

    version: str
    source: str
    regions: Mapping[str, tuple[IPv4Network, ...]]
    warnings: tuple[str, ...] = ()
    # The AzureCloud IPv4 prefixes: the global tag's, or (a cut-down file without it) the
    # union of the `AzureCloud.<region>` tags it has.
    azure_cloud: tuple[IPv4Network, ...] = ()

    @property
    def prefixes(self) -> frozenset[IPv4Network]:
        return frozenset(p for ps in self.regions.values() for p in ps)

    def in_azure_cloud(self, address: ipaddress.IPv4Address) -> bool:
        """Whether an address lies in a prefix of the AzureCloud tag."""
        return any(address in prefix for prefix in self.azure_cloud)

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "source": self.source,
            "regions": {r: [str(p) for p in ps] for r, ps in sorted(self.regions.items())},
            "azureCloud": [str(p) for p in self.azure_cloud],
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Snapshot:
        """Load a stored snapshot, validated as strictly as a fresh download (it may be old,
        or tampered with); raises ValueError."""
        version = str(data["version"])
        if not version.isdigit():
            raise ValueError(f"stored snapshot has no numeric version ({version!r})")
        regions = {}
        for region, prefixes in dict(data["regions"]).items():
            networks = tuple(public_ipv4_network(str(p)) for p in prefixes)
            if any(n.prefixlen < SOURCE_WIDEST_PREFIX for n in networks):
                raise ValueError(f"stored snapshot has a prefix wider than /{SOURCE_WIDEST_PREFIX}")
            regions[str(region)] = networks
        cloud = tuple(
            public_ipv4_network(str(p), widest=AZURE_CLOUD_WIDEST_PREFIX)
            for p in data.get("azureCloud", ())
        )
        if any(n.prefixlen < AZURE_CLOUD_WIDEST_PREFIX for n in cloud):
            raise ValueError(
                f"stored snapshot has a prefix wider than /{AZURE_CLOUD_WIDEST_PREFIX}"
            )
        return cls(version=version, source=str(data["source"]), regions=regions, azure_cloud=cloud)


def parse_service_tags(document: object, *, source: str) -> Snapshot:
    """Extract the AzureDevOps sub-tags from a ServiceTags document (file or API shape).

    IPv6 prefixes are dropped silently (Key Vault is IPv4-only); prefixes that are malformed,
    private or have host bits set are dropped with a warning instead of being "repaired".
    """
    if not isinstance(document, dict) or not isinstance(document.get("values"), list):
        raise RangeSourceError(f"{source}: not a ServiceTags document (no 'values' list)")
    version: str | None = None
    regions: dict[str, list[IPv4Network]] = {}
    cloud: dict[str, list[IPv4Network]] = {}  # "" for the global tag, else the region
    warnings: list[str] = []
    for entry in document["values"]:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name")
        props = entry.get("properties")
        if not isinstance(name, str) or not isinstance(props, dict):
            continue
        if name == TAG:
            version = _change_number(props.get("changeNumber"), source)
            continue
        if name == AZURE_CLOUD or name.startswith(AZURE_CLOUD + "."):
            _collect(name, props, cloud.setdefault(name[len(AZURE_CLOUD) + 1 :], []), warnings)
            continue
        if not name.startswith(TAG + "."):
            continue
        region = str(props.get("region") or name[len(TAG) + 1 :]).lower()
        prefixes = props.get("addressPrefixes")
        if not isinstance(prefixes, list):
            warnings.append(f"{name}: no addressPrefixes list")
            continue
        for raw in prefixes:
            network = _ipv4_prefix(raw, name, warnings)
            if network is not None:
                regions.setdefault(region, []).append(network)
    if version is None:
        raise RangeSourceError(f"{source}: no {TAG} tag in the document")
    azure_cloud = cloud[""] if "" in cloud else [p for ps in cloud.values() for p in ps]
    return Snapshot(
        version=version,
        source=source,
        regions={r: tuple(sorted(set(ps))) for r, ps in sorted(regions.items())},
        warnings=tuple(warnings),
        azure_cloud=tuple(sorted(set(azure_cloud))),
    )


def _collect(name: str, props: dict, into: list[IPv4Network], warnings: list[str]) -> None:
    """An AzureCloud tag's IPv4 prefixes, checked as strictly as AzureDevOps' (but wider)."""
    prefixes = props.get("addressPrefixes")
    if not isinstance(prefixes, list):
        warnings.append(f"{name}: no addressPrefixes list")
        return
    for raw in prefixes:
        network = _ipv4_prefix(raw, name, warnings, widest=AZURE_CLOUD_WIDEST_PREFIX)
        if network is not None:
            into.append(network)


def _change_number(value: object, source: str) -> str:
    """The tag's version: an int in the file, a string in the API; a number either way,
    because the guard orders versions."""
    text = str(value).strip() if isinstance(value, (int, str)) else ""
    if not text.isdigit():
        raise RangeSourceError(f"{source}: the {TAG} tag has no numeric changeNumber ({value!r})")
    return str(int(text))


def _ipv4_prefix(
    raw: object, tag: str, warnings: list[str], *, widest: int = SOURCE_WIDEST_PREFIX
) -> IPv4Network | None:
    if not isinstance(raw, str):
        warnings.append(f"{tag}: ignored non-string prefix {raw!r}")
        return None
    try:
        if ipaddress.ip_network(raw, strict=False).version == 6:
            return None
    except ValueError:
        pass
    try:
        network = public_ipv4_network(raw, widest=min(widest, WIDEST_PREFIX))
    except RuleError as exc:
        warnings.append(f"{tag}: ignored prefix {exc}")
        return None
    if network.prefixlen < widest:
        warnings.append(f"{tag}: ignored prefix {raw!r}, wider than /{widest}")
        return None
    return network


@dataclass(frozen=True, kw_only=True)
class RangeDecision:
    """Which snapshot a run uses, and why."""

    snapshot: Snapshot
    status: str  # "fresh" | "unchanged" | "kept-last-good" | "builtin-fallback"
    save: bool  # whether `snapshot` is new and should be stored as the last good one
    added: tuple[IPv4Network, ...] = ()
    removed: tuple[IPv4Network, ...] = ()
    warnings: tuple[str, ...] = ()


def choose_snapshot(
    fresh: Snapshot | None,
    *,
    error: str | None,
    last_good: Snapshot | None,
    builtin: Snapshot,
    regions: tuple[str, ...],
    max_loss_percent: float,
    azure_cloud: bool = False,
) -> RangeDecision:
    """The guard: accept `fresh` only if it is usable; otherwise keep the last good snapshot.

    With `azure_cloud` (leases check addresses against it) the AzureCloud tag is guarded the
    same way: it must be there, and lose no more than `max_loss_percent` of its prefixes.

    `fresh` is None when fetching failed (`error` says why). With no last good snapshot yet,
    the shipped builtin snapshot stands in, so a first run with a broken source still has
    real ranges rather than none. `regions` are the configured ones: a region of those that
    vanishes from the tag is taken for a broken source, not for Azure retiring it.
    """
    fallback = last_good or builtin
    fallback_status = "kept-last-good" if last_good else "builtin-fallback"
    warnings: list[str] = []
    if fresh is not None:
        warnings.extend(fresh.warnings)
        # With nothing stored yet (first run, or a lost snapshot) the builtin snapshot is the
        # baseline: a first download is no more trusted than any other.
        problem = _unusable(fresh, fallback, regions, max_loss_percent)
        if problem is None and azure_cloud:
            problem = _cloud_unusable(fresh, fallback, max_loss_percent)
        if problem is None:
            before = last_good.prefixes if last_good else frozenset()
            after = fresh.prefixes
            changed = last_good is None or (
                last_good.version,
                dict(last_good.regions),
                last_good.azure_cloud,
            ) != (fresh.version, dict(fresh.regions), fresh.azure_cloud)
            return RangeDecision(
                snapshot=fresh,
                status="fresh" if changed else "unchanged",
                save=changed,
                added=tuple(sorted(after - before)) if last_good else (),
                removed=tuple(sorted(before - after)),
                warnings=tuple(warnings),
            )
        error = problem
    warnings.append(
        f"IP source refused ({error}); using the "
        + ("last good" if last_good else "builtin")
        + f" snapshot, version {fallback.version}"
    )
    return RangeDecision(
        snapshot=fallback, status=fallback_status, save=False, warnings=tuple(warnings)
    )


def _unusable(
    fresh: Snapshot, last: Snapshot, regions: tuple[str, ...], max_loss_percent: float
) -> str | None:
    """Why `fresh` must not replace `last`, or None. The AzureDevOps tag has only ever grown,
    so any change needs a newer changeNumber, and a loss must stay small."""
    if not fresh.prefixes:
        return f"{fresh.source} has no IPv4 prefixes for {TAG}"
    if not last.prefixes:
        return None
    if int(fresh.version) < int(last.version):
        return f"{fresh.source} version {fresh.version} is older than {last.version}"
    lost = last.prefixes - fresh.prefixes
    if fresh.version == last.version and fresh.prefixes != last.prefixes:
        return f"{fresh.source} changes prefixes without a new changeNumber (still {fresh.version})"
    vanished = [r for r in regions if last.regions.get(r) and not fresh.regions.get(r)]
    if vanished:
        return f"{fresh.source} version {fresh.version} has no prefixes for {', '.join(vanished)}"
    percent = 100.0 * len(lost) / len(last.prefixes)
    if percent > max_loss_percent:
        return (
            f"{fresh.source} version {fresh.version} drops {len(lost)} of "
            f"{len(last.prefixes)} prefixes ({percent:.0f}% > {max_loss_percent:g}%)"
        )
    return None


def _cloud_unusable(fresh: Snapshot, last: Snapshot, max_loss_percent: float) -> str | None:
    """Why `fresh`'s AzureCloud prefixes must not replace `last`'s, or None."""
    if not fresh.azure_cloud:
        return f"{fresh.source} has no IPv4 prefixes for {AZURE_CLOUD}"
    if not last.azure_cloud:
        return None
    lost = set(last.azure_cloud) - set(fresh.azure_cloud)
    percent = 100.0 * len(lost) / len(last.azure_cloud)
    if percent > max_loss_percent:
        return (
            f"{fresh.source} drops {len(lost)} of {len(last.azure_cloud)} {AZURE_CLOUD} "
            f"prefixes ({percent:.0f}% > {max_loss_percent:g}%)"
        )
    return None


@dataclass(frozen=True)
class Desired:
    """The rules kvfirewall wants on every vault, each with the reason it is wanted."""

    ip_rules: Mapping[IPv4Network, str] = field(default_factory=dict)
    subnets: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # key -> (id, why)
    warnings: tuple[str, ...] = ()
    # Configured regions the snapshot has no ranges for. While there are any (a typo, a region
    # without the tag) the set is not trustworthy, so no IP rule kvfirewall owns is removed.
    missing_regions: tuple[str, ...] = ()
    # Agent pools (or pool listings) whose networks are not known at all: no rule kvfirewall
    # owns is removed while there are any, since it may be theirs.
    unresolved_pools: tuple[str, ...] = ()
    # Active access leases: per vault (its lower-cased id), the /32s wanted on that vault only,
    # each with the lease that wants it. `for_vault` merges them in for the planner.
    leases: Mapping[str, Mapping[IPv4Network, str]] = field(default_factory=dict)

    def for_vault(self, vault_id: str) -> Desired:
        """The rules wanted on one vault: the configured set and the vault's leased /32s (an
        address the configured set already allows needs no rule of its own)."""
        extra = self.leases.get(vault_id.lower())
        if not extra:
            return self
        ip_rules = dict(self.ip_rules)
        for network, why in extra.items():
            if not any(network.subnet_of(prefix) for prefix in self.ip_rules):
                ip_rules[network] = why
        return replace(self, ip_rules=ip_rules, leases={})


def desired_rules(
    settings: Settings,
    snapshot: Snapshot,
    pools: Iterable[PoolNetworks] = (),
    *,
    unresolved_pools: tuple[str, ...] = (),
) -> Desired:
    """The configured geographies/regions resolved against a snapshot, plus the extra rules,
    the agent subnets, and the networks of the agent pools (resolved by the caller)."""
    ip_rules: dict[IPv4Network, str] = {}
    warnings: list[str] = []
    missing: list[str] = []
    geography_of = {r: g for g in settings.geographies for r in GEOGRAPHY_REGIONS[g]}
    for region in settings.all_regions:
        prefixes = snapshot.regions.get(region)
        if not prefixes:
            missing.append(region)
            warnings.append(
                f"no {TAG}.<Region> prefixes for region {region!r} in version "
                f"{snapshot.version} (known: {', '.join(sorted(snapshot.regions))}); "
                "no IP rule is removed until this is fixed"
            )
            continue
        why = f"{TAG} {region}" + (f" ({geography_of[region]})" if region in geography_of else "")
        for prefix in prefixes:
            ip_rules.setdefault(prefix, why)
    for network in settings.extra_ip_rules:
        ip_rules.setdefault(network, "KVF_EXTRA_IP_RULES")
    subnets = {subnet_key(s): (s, "KVF_AGENT_SUBNETS") for s in settings.agent_subnets}
    for pool in pools:
        why = f"agent pool {pool.pool.id}"
        for network in pool.addresses:
            ip_rules.setdefault(network, why)
        for subnet in pool.subnets:
            subnets.setdefault(subnet_key(subnet), (subnet, why))
    return Desired(
        ip_rules=ip_rules,
        subnets=subnets,
        warnings=tuple(warnings),
        missing_regions=tuple(missing),
        unresolved_pools=unresolved_pools,
    )
