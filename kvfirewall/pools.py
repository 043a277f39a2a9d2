"""Agent pools as firewall rules: which resource ids name a pool, and what a pool's resource
payload contributes to a vault's firewall.

Pure on purpose: the adapter (`agent_networks`) reads the payloads, this module decides what
they mean, so every trigger (timer, event, HTTP, CLI) draws the same rules from the same pool.
Three kinds of resources host self-hosted agents, and each knows its own network:
- Managed DevOps Pools: `properties.fabricProfile` (kind `Vmss`) `.networkProfile`, with
  `subnetId` when injected into a VNet and, from API 2025-09-20, the read-only `ipAddresses`
  of its static outbound addresses;
- scale-set agent pools: every NIC configuration's ipConfigurations' subnets;
- GitHub-hosted runners with Azure private networking: `properties.subnetId` (GitHub gives
  them no static address, so a VNet rule is the only way).
A subnet rule only admits traffic once the subnet has the `Microsoft.KeyVault` service
endpoint, hence the endpoint helpers at the end.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from kvfirewall.rules import (
    _GUID,
    _NAME,
    _RG,
    RuleError,
    _ascii_outside_rg,
    canonical_subnet_id,
    public_ipv4_network,
    subnet_key,
)

KEY_VAULT_SERVICE = "Microsoft.KeyVault"


class PoolKind(Enum):
    """The resource types that host agents; the value is the ARM resource type."""

    MANAGED_DEVOPS_POOL = "Microsoft.DevOpsInfrastructure/pools"
    SCALE_SET = "Microsoft.Compute/virtualMachineScaleSets"
    GITHUB_NETWORK_SETTINGS = "GitHub.Network/networkSettings"


_KINDS = {kind.value.lower(): kind for kind in PoolKind}
_RESOURCE_ID_RE = re.compile(
    rf"^/subscriptions/(?P<sub>{_GUID})/resourceGroups/(?P<rg>{_RG})"
    rf"/providers/(?P<type>[A-Za-z][A-Za-z0-9.]*/[A-Za-z]+)/(?P<name>{_NAME})\Z",
    re.IGNORECASE,
)


class PoolStatus(Enum):
    """How a pool's resolution went. The value is what reports and `GET /api/ranges` show."""

    OK = "ok"
    NO_NETWORK = "no-network"  # read, but it names no subnet and no static address
    NOT_FOUND = "not-found"  # 404
    FORBIDDEN = "forbidden"  # 401/403: the identity may not read it
    REJECTED = "rejected"  # any other client error: permanent until someone fixes it
    UNAVAILABLE = "unavailable"  # 5xx, throttling, timeouts: transient


UNREADABLE = frozenset(
    {PoolStatus.NOT_FOUND, PoolStatus.FORBIDDEN, PoolStatus.REJECTED, PoolStatus.UNAVAILABLE}
)


@dataclass(frozen=True)
class PoolRef:
    """A parsed agent-pool resource id."""

    kind: PoolKind
    subscription: str
    resource_group: str
    name: str

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/{self.kind.value}/{self.name}"
        )

    @property
    def key(self) -> str:
        """ARM ids are case-insensitive: the key that ledgers and comparisons use."""
        return self.id.lower()


@dataclass(frozen=True)
class PoolNetworks:
    """What one pool contributes: subnets (virtual network rules) and static outbound
    addresses (IP rules). An unreadable pool contributes nothing *known*: the caller keeps
    its last resolved networks instead, and never removes a rule because of it."""

    pool: PoolRef
    status: PoolStatus
    subnets: tuple[str, ...] = ()
    addresses: tuple[ipaddress.IPv4Network, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def readable(self) -> bool:
        return self.status not in UNREADABLE


def parse_pool_id(value: str) -> PoolRef:
    """Parse one agent-pool resource id; any other resource type or a malformed id is a
    `RuleError` naming the value, so settings validation can refuse it before any request."""
    if not isinstance(value, str):
        raise RuleError("an agent pool id must be a string")
    text = value.strip()
    shown = text if len(text) <= 300 else text[:300] + "…"
    match = _RESOURCE_ID_RE.match(text)
    if not _ascii_outside_rg(match, text):
        raise RuleError(
            f"{shown!r} is not an agent pool resource id (expected /subscriptions/<guid>/"
            "resourceGroups/<rg>/providers/<type>/<name>, <type> one of "
            f"{', '.join(k.value for k in PoolKind)})"
        )
    kind = _KINDS.get(match["type"].lower())
    if kind is None:
        raise RuleError(
            f"{shown!r} is a {match['type']}, not an agent pool (expected one of "
            f"{', '.join(k.value for k in PoolKind)})"
        )
    return PoolRef(kind, match["sub"].lower(), match["rg"], match["name"])


def parse_pool_ids(text: str) -> tuple[PoolRef, ...]:
    """A comma-separated list of pool ids, in order, each once (ids compare case-insensitively)."""
    refs: dict[str, PoolRef] = {}
    for part in text.split(","):
        if part.strip():
            ref = parse_pool_id(part)
            refs.setdefault(ref.key, ref)
    return tuple(refs.values())


def networks_of(ref: PoolRef, payload: Mapping[str, Any]) -> PoolNetworks:
    """What a pool's resource payload (its ARM JSON, as `as_dict()` gives it) contributes.

    Values that cannot become rules (a malformed subnet id, a private address) are left out
    with a warning rather than passed on: a rule is added only when it is what it says."""
    properties = _mapping(payload.get("properties"))
    warnings: list[str] = []
    if ref.kind is PoolKind.MANAGED_DEVOPS_POOL:
        raw_subnets, raw_addresses = _managed_pool(ref, properties, warnings)
    elif ref.kind is PoolKind.SCALE_SET:
        raw_subnets, raw_addresses = _scale_set(properties), []
    else:
        raw_subnets, raw_addresses = [properties.get("subnetId")], []
    subnets = _subnets(ref, raw_subnets, warnings)
    addresses = _addresses(ref, raw_addresses, warnings)
    if subnets or addresses:
        return PoolNetworks(ref, PoolStatus.OK, subnets, addresses, tuple(warnings))
    warnings.append(_nothing_to_add(ref))
    return PoolNetworks(ref, PoolStatus.NO_NETWORK, warnings=tuple(warnings))


def unreadable(ref: PoolRef, status: PoolStatus, detail: str) -> PoolNetworks:
    """A pool that could not be read this time, with the warning reports repeat until it can."""
    if status not in UNREADABLE:
        raise ValueError(f"{status} is not a failure")
    what = {
        PoolStatus.NOT_FOUND: "was not found",
        PoolStatus.FORBIDDEN: "may not be read by kvfirewall's identity",
        PoolStatus.REJECTED: "could not be read",
        PoolStatus.UNAVAILABLE: "could not be read for now",
    }[status]
    return PoolNetworks(
        ref,
        status,
        warnings=(
            f"agent pool {ref.id} {what} ({detail}); its last resolved networks stay "
            "and nothing is removed on its account",
        ),
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _managed_pool(
    ref: PoolRef, properties: Mapping[str, Any], warnings: list[str]
) -> tuple[list[Any], list[Any]]:
    fabric = _mapping(properties.get("fabricProfile"))
    kind = fabric.get("kind")
    if kind != "Vmss":
        warnings.append(
            f"agent pool {ref.id} has fabric kind {kind!r}; kvfirewall reads networks of Vmss only"
        )
        return [], []
    network = _mapping(fabric.get("networkProfile"))
    addresses = _list(network.get("ipAddresses"))
    count = network.get("staticIpAddressCount")
    if isinstance(count, int) and count > 0 and not addresses:
        # A known service behaviour: with a managed identity on the pool, the addresses are
        # only returned once the DevOpsInfrastructure principal may operate that identity.
        warnings.append(
            f"agent pool {ref.id} has {count} static outbound address(es) but its payload "
            "lists none: grant the DevOpsInfrastructure service principal Managed Identity "
            "Operator on the pool's managed identity, or list the addresses in KVF_EXTRA_IP_RULES"
        )
    return [network.get("subnetId")], addresses


def _scale_set(properties: Mapping[str, Any]) -> list[Any]:
    profile = _mapping(_mapping(properties.get("virtualMachineProfile")).get("networkProfile"))
    return [
        _mapping(_mapping(ip.get("properties")).get("subnet")).get("id")
        for nic in _list(profile.get("networkInterfaceConfigurations"))
        for ip in _list(_mapping(_mapping(nic).get("properties")).get("ipConfigurations"))
        if isinstance(ip, Mapping)
    ]


def _subnets(ref: PoolRef, values: Iterable[Any], warnings: list[str]) -> tuple[str, ...]:
    found: dict[str, str] = {}
    for value in values:
        if value is None:
            continue
        try:
            subnet = canonical_subnet_id(value) if isinstance(value, str) else None
        except RuleError:
            subnet = None
        if subnet is None:
            warnings.append(f"agent pool {ref.id} names a subnet that is not one: {value!r}")
            continue
        found.setdefault(subnet_key(subnet), subnet)
    return tuple(found.values())


def _addresses(
    ref: PoolRef, values: Iterable[Any], warnings: list[str]
) -> tuple[ipaddress.IPv4Network, ...]:
    found: dict[ipaddress.IPv4Network, None] = {}
    for value in values:
        try:
            if not isinstance(value, str):
                raise RuleError(f"{value!r} is not an address")
            found.setdefault(public_ipv4_network(value), None)
        except RuleError as exc:
            warnings.append(f"agent pool {ref.id}: static address left out: {exc}")
    return tuple(found)


def _nothing_to_add(ref: PoolRef) -> str:
    if ref.kind is PoolKind.MANAGED_DEVOPS_POOL:
        how = (
            "it is neither injected into a virtual network nor given static outbound "
            "addresses (fabricProfile.networkProfile.subnetId or staticIpAddressCount, "
            "API 2025-09-20), so its agents' address is unknown"
        )
    elif ref.kind is PoolKind.SCALE_SET:
        how = "none of its network interface configurations names a subnet"
    else:
        how = "it names no subnet (properties.subnetId)"
    return f"agent pool {ref.id} adds nothing: {how}"


# ---- the Microsoft.KeyVault service endpoint of a subnet ----------------------------------

# In the warning about a subnet without the endpoint (the status page picks those out).
LACKS_ENDPOINT = f"lacks the {KEY_VAULT_SERVICE} service endpoint"


class EndpointStatus(Enum):
    """Whether a subnet rule can take effect: the subnet's `Microsoft.KeyVault` endpoint."""

    PRESENT = "present"
    MISSING = "missing"
    UNREADABLE = "unreadable"  # the subnet could not be read: nothing is known


@dataclass(frozen=True)
class SubnetEndpoint:
    """One subnet's service-endpoint check; `services` are its endpoints as read."""

    subnet_id: str
    status: EndpointStatus
    services: tuple[str, ...] = ()
    detail: str = ""

    @property
    def warning(self) -> str | None:
        """What reports and the log say, with the fix, or None when all is well."""
        if self.status is EndpointStatus.PRESENT:
            return None
        if self.status is EndpointStatus.UNREADABLE:
            return (
                f"subnet {self.subnet_id} could not be checked for the {KEY_VAULT_SERVICE} "
                f"service endpoint ({self.detail})"
            )
        # `--service-endpoints` replaces the subnet's list, so the fix names the ones it has.
        wanted = " ".join((*self.services, KEY_VAULT_SERVICE))
        return (
            f"subnet {self.subnet_id} {LACKS_ENDPOINT}: its "
            "virtual network rule is written but admits nothing until the endpoint exists. "
            f"Fix: az network vnet subnet update --ids {self.subnet_id} "
            f"--service-endpoints {wanted}"
        )


def service_endpoints(subnet: Mapping[str, Any]) -> tuple[str, ...]:
    """The services of a subnet payload's service endpoints, in order."""
    endpoints = _list(_mapping(subnet.get("properties")).get("serviceEndpoints"))
    return tuple(
        e["service"]
        for e in endpoints
        if isinstance(e, Mapping) and isinstance(e.get("service"), str)
    )


def endpoint_check(subnet_id: str, subnet: Mapping[str, Any]) -> SubnetEndpoint:
    """Check a subnet payload for the Key Vault service endpoint (names compare as ARM's do)."""
    services = service_endpoints(subnet)
    present = any(s.lower() == KEY_VAULT_SERVICE.lower() for s in services)
    status = EndpointStatus.PRESENT if present else EndpointStatus.MISSING
    return SubnetEndpoint(subnet_id, status, services)


def with_key_vault_endpoint(subnet: Mapping[str, Any]) -> dict[str, Any]:
    """The subnet payload to PUT back: the same in every property, plus the Key Vault
    endpoint. A subnet has no PATCH and a PUT that omits a property removes it, so nothing
    is rebuilt from parts: delegations, NSG, route table and other endpoints ride along."""
    new = copy.deepcopy(dict(subnet))
    properties = new.setdefault("properties", {})
    endpoints = properties.get("serviceEndpoints")
    endpoints = list(endpoints) if isinstance(endpoints, list) else []
    if endpoint_check("", new).status is EndpointStatus.MISSING:
        endpoints.append({"service": KEY_VAULT_SERVICE})
    properties["serviceEndpoints"] = endpoints
    return new
