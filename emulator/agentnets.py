"""Where self-hosted agents' networks live: Managed DevOps Pools, scale sets, GitHub network
settings, and the subnets they use.

Payload shapes follow the REST specs' examples and the services' documentation:
- Pools_Get, Pools_ListBySubscription: Azure/azure-rest-api-specs
  `specification/devopsinfrastructure/resource-manager/Microsoft.DevOpsInfrastructure/
  DevOpsInfrastructure/stable/2025-09-20/examples/GetPool.json` (and the same folder's
  `devopsinfrastructure.json`: pageable with `nextLink`); `networkProfile.staticIpAddressCount`
  and the read-only `ipAddresses` exist from 2025-09-20 on, as the Managed DevOps Pools
  networking guide (MicrosoftDocs, `managed-devops-pools/configure-networking.md`) shows, so
  a request for an older API version gets the pool without them.
- VirtualMachineScaleSets_Get: Azure/azure-rest-api-specs `specification/compute/
  resource-manager/Microsoft.Compute/ComputeRP/stable/2024-07-01/examples/
  virtualMachineScaleSetExamples/VirtualMachineScaleSet_Get_WithUserData.json`.
- GitHub.Network/networkSettings (no REST spec is published): the ARM template reference
  (`learn.microsoft.com/azure/templates/github.network/networksettings`, API 2024-04-02:
  `properties.businessId`, `properties.subnetId`) and GitHub's private-networking guide,
  whose created resource carries the `GitHubId` tag.
- Subnets_Get / Subnets_CreateOrUpdate: Azure/azure-rest-api-specs `specification/network/
  resource-manager/Microsoft.Network/stable/2024-05-01/examples/SubnetGet.json` and
  `SubnetCreateServiceEndpoint.json`. A PUT replaces the whole subnet (what it omits is gone),
  honours `If-Match` (412 on a stale etag) and gives a new weak etag per write, which the
  delegations share; the service owns the read-only parts (ipConfigurations, links,
  provisioning states, delegation actions). Simplified: the PUT completes at once (the
  service answers `Updating` with an Azure-AsyncOperation header and finishes later).

A subnet's `Microsoft.KeyVault` endpoint is also what Key Vault's own validation of virtual
network rules sees, so writing it here changes how the vaults accept rules for that subnet.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import threading
import uuid
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any
from urllib.parse import quote

from .errors import ArmError, bad_request

POOL_TYPE = "Microsoft.DevOpsInfrastructure/pools"
SCALE_SET_TYPE = "Microsoft.Compute/virtualMachineScaleSets"
NETWORK_SETTINGS_TYPE = "GitHub.Network/networkSettings"
SUBNET_TYPE = "Microsoft.Network/virtualNetworks/subnets"
DELEGATION_TYPE = "Microsoft.Network/virtualNetworks/subnets/delegations"
KEY_VAULT_SERVICE = "Microsoft.KeyVault"
# The first Managed DevOps Pools API version with static outbound addresses.
STATIC_ADDRESSES_SINCE = "2025-09-20"

_ID = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers"
_RESOURCE_RE = re.compile(
    rf"^{_ID}/(?P<type>Microsoft\.DevOpsInfrastructure/pools|Microsoft\.Compute"
    r"/virtualMachineScaleSets|GitHub\.Network/networkSettings)/(?P<name>[^/]+)/?$",
    re.IGNORECASE,
)
_POOL_LIST_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.DevOpsInfrastructure/pools/?$",
    re.IGNORECASE,
)
_SUBNET_RE = re.compile(
    rf"^{_ID}/Microsoft\.Network/virtualNetworks/(?P<vnet>[^/]+)/subnets/(?P<name>[^/]+)/?$",
    re.IGNORECASE,
)
_READ_ONLY_SUBNET_PROPERTIES = (
    "ipConfigurations",
    "ipConfigurationProfiles",
    "privateEndpoints",
    "resourceNavigationLinks",
    "serviceAssociationLinks",
    "purpose",
)
_ACTIONS = {
    "microsoft.devopsinfrastructure/pools": [
        "Microsoft.Network/virtualNetworks/subnets/join/action"
    ],
    "github.network/networksettings": ["Microsoft.Network/virtualNetworks/subnets/join/action"],
}


def pool_payload(
    pool_id: str,
    *,
    subnet_id: str | None = None,
    static_addresses: Sequence[str] | None = None,
    location: str = "eastus",
) -> dict[str, Any]:
    """A Managed DevOps Pool as Pools_Get returns it at 2025-09-20; `static_addresses` sets
    `staticIpAddressCount` and `ipAddresses` (None: no static addresses)."""
    network: dict[str, Any] = {}
    if subnet_id is not None:
        network["subnetId"] = subnet_id
    if static_addresses is not None:
        network["staticIpAddressCount"] = len(static_addresses)
        network["ipAddresses"] = list(static_addresses)
    fabric: dict[str, Any] = {
        "kind": "Vmss",
        "sku": {"name": "Standard_D4ads_v5"},
        "images": [
            {
                "resourceId": "/MicrosoftWindowsServer/WindowsServer/2019-Datacenter/latest",
                "ephemeralType": "Automatic",
                "isEphemeral": True,
            }
        ],
    }
    if network:
        fabric["networkProfile"] = network
    return {
        "properties": {
            "provisioningState": "Succeeded",
            "maximumConcurrency": 10,
            "devCenterProjectResourceId": (
                "/subscriptions/222e81d0-cf38-4dab-baa5-289bf16baaa4/resourceGroups/"
                "rg-1es-devcenter/providers/Microsoft.DevCenter/projects/1ES"
            ),
            "organizationProfile": {
                "kind": "AzureDevOps",
                "organizations": [{"url": "https://dev.azure.com/contoso"}],
            },
            "agentProfile": {"kind": "Stateless"},
            "fabricProfile": fabric,
        },
        "id": pool_id,
        "name": pool_id.rsplit("/", 1)[-1],
        "type": POOL_TYPE,
        "location": location,
    }


def scale_set_payload(
    scale_set_id: str, nic_subnets: Sequence[Sequence[str]], *, location: str = "westus"
) -> dict[str, Any]:
    """A scale set as VirtualMachineScaleSets_Get returns it: one NIC configuration per item
    of `nic_subnets`, with one ipConfiguration per subnet id in it."""
    sub = scale_set_id.split("/")[2]
    nics = []
    for n, subnets in enumerate(nic_subnets):
        ip_configs = [
            {
                "name": f"ipconfig{i}",
                "properties": {"primary": i == 0, "subnet": {"id": subnet}},
            }
            for i, subnet in enumerate(subnets)
        ]
        nics.append(
            {
                "name": f"nic{n}",
                "properties": {
                    "primary": n == 0,
                    "ipConfigurations": ip_configs,
                    "networkSecurityGroup": {
                        "id": f"/subscriptions/{sub}/resourceGroups/agents/providers/"
                        "Microsoft.Network/networkSecurityGroups/agents-nsg"
                    },
                },
            }
        )
    return {
        "name": scale_set_id.rsplit("/", 1)[-1],
        "id": scale_set_id,
        "type": SCALE_SET_TYPE,
        "location": location,
        "tags": {"__AzureDevOpsElasticPool": "agents"},
        "sku": {"name": "Standard_D2s_v3", "tier": "Standard", "capacity": 2},
        "properties": {
            "singlePlacementGroup": False,
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": {
                "storageProfile": {
                    "osDisk": {
                        "createOption": "FromImage",
                        "caching": "ReadOnly",
                        "managedDisk": {"storageAccountType": "Standard_LRS"},
                    },
                    "imageReference": {
                        "publisher": "Canonical",
                        "offer": "ubuntu-24_04-lts",
                        "sku": "server",
                        "version": "latest",
                    },
                },
                "osProfile": {
                    "computerNamePrefix": "agent",
                    "adminUsername": "azureuser",
                    "linuxConfiguration": {"disablePasswordAuthentication": True},
                },
                "networkProfile": {"networkInterfaceConfigurations": nics},
            },
            "provisioningState": "Succeeded",
            "overprovision": False,
            "platformFaultDomainCount": 1,
        },
    }


def network_settings_payload(
    settings_id: str, subnet_id: str, *, business_id: str = "12345678", location: str = "eastus"
) -> dict[str, Any]:
    """A GitHub.Network/networkSettings resource as the generic resource GET returns it."""
    return {
        "id": settings_id,
        "name": settings_id.rsplit("/", 1)[-1],
        "type": NETWORK_SETTINGS_TYPE,
        "location": location,
        "tags": {"GitHubId": uuid.uuid5(uuid.NAMESPACE_URL, settings_id.lower()).hex.upper()},
        "properties": {"businessId": business_id, "subnetId": subnet_id},
    }


def _etag() -> str:
    return f'W/"{uuid.uuid4()}"'


def _not_found(resource_type: str, name: str, rg: str) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{resource_type}/{name}' under resource group '{rg}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad_request(f"The skip token '{token}' is invalid.", "InvalidSkipToken") from None


class AgentNetworks:
    """The emulator's pools, scale sets, network settings and subnets; thread-safe.

    `key_vault_subnets` is the emulator's map of subnets Key Vault validates rules against
    (lower-cased id -> has the Microsoft.KeyVault endpoint); subnets set here keep it current.
    """

    def __init__(self, key_vault_subnets: MutableMapping[str, bool]) -> None:
        self._lock = threading.Lock()
        self._key_vault_subnets = key_vault_subnets
        self._resources: dict[str, dict[str, Any]] = {}
        self._subnets: dict[str, dict[str, Any]] = {}
        self._forbidden: list[str] = []

    # ---- test setters and inspection

    def put_resource(self, payload: Mapping[str, Any]) -> str:
        """Make a pool, scale set or network settings resource exist (its `id` says which)."""
        resource_id = payload["id"]
        if not _RESOURCE_RE.match(resource_id):
            raise ValueError(f"not a pool, scale set or network settings id: {resource_id!r}")
        with self._lock:
            self._resources[resource_id.lower()] = copy.deepcopy(dict(payload))
        return resource_id

    def delete_resource(self, resource_id: str) -> None:
        with self._lock:
            del self._resources[resource_id.lower()]

    def put_subnet(
        self,
        subnet_id: str,
        *,
        address_prefix: str = "10.0.0.0/24",
        service_endpoints: Iterable[str] = (),
        delegation: str | None = None,
        network_security_group: str | None = None,
        route_table: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create or replace a subnet as its owner would (a new etag); `extra` adds further
        properties verbatim (NAT gateway, policies, links...)."""
        properties: dict[str, Any] = {"addressPrefix": address_prefix}
        if network_security_group:
            properties["networkSecurityGroup"] = {"id": network_security_group}
        if route_table:
            properties["routeTable"] = {"id": route_table}
        properties["serviceEndpoints"] = [{"service": s} for s in service_endpoints]
        properties["delegations"] = (
            [{"name": "delegation", "properties": {"serviceName": delegation}}]
            if delegation
            else []
        )
        properties.update(copy.deepcopy(dict(extra or {})))
        m = _SUBNET_RE.match(subnet_id)
        if not m:
            raise ValueError(f"not a subnet resource id: {subnet_id!r}")
        with self._lock:
            return copy.deepcopy(self._store_subnet(subnet_id, m["name"], properties))

    def subnet(self, subnet_id: str) -> dict[str, Any]:
        """The JSON a GET of this subnet returns; KeyError when absent."""
        with self._lock:
            return copy.deepcopy(self._subnets[subnet_id.lower()])

    def forbid(self, scope: str) -> None:
        """Answer 403 AuthorizationFailed to every read or write of these resources at or
        under `scope` (a subscription, resource group or resource the identity cannot read)."""
        with self._lock:
            self._forbidden.append(scope.rstrip("/").lower())

    # ---- REST

    def route(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: Any,
        *,
        caller: str,
        base_url: str,
        page_size: int,
    ) -> tuple[int, Any] | None:
        """Answer a request for one of these resources, or None when it is not one."""
        m = _RESOURCE_RE.match(path)
        if m:
            self._check_access(path, m["type"], caller, method)
            if method != "GET":
                raise _method_not_allowed(method)
            return 200, self._get_resource(m, query.get("api-version", ""))
        m = _POOL_LIST_RE.match(path)
        if m:
            if method != "GET":
                raise _method_not_allowed(method)
            self._check_access(path, POOL_TYPE, caller, method)
            return 200, self._list_pools(m["sub"], query, base_url, page_size)
        m = _SUBNET_RE.match(path)
        if m:
            self._check_access(path, SUBNET_TYPE, caller, method)
            if method == "GET":
                return 200, self._get_subnet(path)
            if method == "PUT":
                return self._put_subnet(path, m["name"], body, headers.get("if-match"))
            raise _method_not_allowed(method)
        return None

    def _check_access(self, path: str, resource_type: str, caller: str, method: str) -> None:
        target = path.rstrip("/").lower()
        with self._lock:
            denied = any(target == s or target.startswith(s + "/") for s in self._forbidden)
        if denied:
            action = "read" if method == "GET" else "write"
            raise ArmError(
                403,
                "AuthorizationFailed",
                f"The client '{caller}' with object id '{caller}' does not have authorization "
                f"to perform action '{resource_type}/{action}' over scope '{path}' or the scope "
                "is invalid. If access was recently granted, please refresh your credentials.",
            )

    def _get_resource(self, m: re.Match[str], api_version: str) -> dict[str, Any]:
        with self._lock:
            doc = self._resources.get(m.group(0).rstrip("/").lower())
            if doc is None:
                raise _not_found(m["type"], m["name"], m["rg"])
            doc = copy.deepcopy(doc)
        if doc.get("type", "").lower() == POOL_TYPE.lower():
            _pool_at_version(doc, api_version)
        return doc

    def _list_pools(
        self, sub: str, query: Mapping[str, str], base_url: str, page_size: int
    ) -> dict[str, Any]:
        token = query.get("$skipToken") or query.get("$skiptoken")
        after = _decode_token(token) if token else ""
        prefix = f"/subscriptions/{sub.lower()}/"
        with self._lock:
            matching = sorted(
                (key, copy.deepcopy(doc))
                for key, doc in self._resources.items()
                if key.startswith(prefix) and doc.get("type", "").lower() == POOL_TYPE.lower()
            )
        matching = [item for item in matching if item[0] > after]
        page = [doc for _, doc in matching[:page_size]]
        for doc in page:
            _pool_at_version(doc, query.get("api-version", ""))
        result: dict[str, Any] = {"value": page}
        if len(matching) > page_size:
            result["nextLink"] = (
                f"{base_url}/subscriptions/{quote(sub)}/providers/{POOL_TYPE}"
                f"?api-version={quote(query.get('api-version', ''))}"
                f"&$skipToken={_encode_token(matching[page_size - 1][0])}"
            )
        return result

    def _get_subnet(self, path: str) -> dict[str, Any]:
        with self._lock:
            doc = self._subnets.get(path.rstrip("/").lower())
            if doc is None:
                raise ArmError(404, "NotFound", f"Resource {path.rstrip('/')} not found.")
            return copy.deepcopy(doc)

    def _put_subnet(
        self, path: str, name: str, body: Any, if_match: str | None
    ) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, Mapping) or not isinstance(body.get("properties"), Mapping):
            raise bad_request("The request body must hold the subnet's properties.")
        properties = body["properties"]
        if not properties.get("addressPrefix") and not properties.get("addressPrefixes"):
            raise bad_request(
                f"Subnet {name} must have an address prefix or address prefixes.",
                "InvalidRequestFormat",
            )
        subnet_id = path.rstrip("/")
        with self._lock:
            previous = self._subnets.get(subnet_id.lower())
            if if_match is not None and if_match != "*":
                current = previous["etag"] if previous else None
                if if_match != current:
                    raise ArmError(
                        412,
                        "PreconditionFailed",
                        f"Precondition failed for {subnet_id}: the If-Match etag {if_match} "
                        "does not match the subnet's current etag.",
                    )
            doc = self._store_subnet(subnet_id, name, dict(properties))
        return (200 if previous else 201), copy.deepcopy(doc)

    def _store_subnet(
        self, subnet_id: str, name: str, properties: dict[str, Any]
    ) -> dict[str, Any]:
        """Normalize and store a subnet as the service would; the caller holds the lock."""
        key = subnet_id.lower()
        previous = self._subnets.get(key)
        old = previous["properties"] if previous else {}
        etag = _etag()
        new = copy.deepcopy(properties)
        for read_only in _READ_ONLY_SUBNET_PROPERTIES:
            new.pop(read_only, None)
            if read_only in old:
                new[read_only] = copy.deepcopy(old[read_only])
        new["provisioningState"] = "Succeeded"
        new["serviceEndpoints"] = [
            {
                "service": e.get("service"),
                "locations": list(e.get("locations") or ["*"]),
                "provisioningState": "Succeeded",
            }
            for e in new.get("serviceEndpoints") or []
            if isinstance(e, Mapping)
        ]
        new["delegations"] = [
            _delegation(subnet_id, d, etag) for d in new.get("delegations") or [] if d
        ]
        doc = {
            "name": name,
            "id": subnet_id,
            "etag": etag,
            "properties": new,
            "type": SUBNET_TYPE,
        }
        self._subnets[key] = doc
        self._key_vault_subnets[key] = any(
            str(e["service"]).lower() == KEY_VAULT_SERVICE.lower() for e in new["serviceEndpoints"]
        )
        return doc


def _delegation(subnet_id: str, given: Mapping[str, Any], etag: str) -> dict[str, Any]:
    """A delegation as the service shows it: its own id, the subnet's etag, the service's
    actions and a provisioning state, whatever the request carried of those."""
    name = given.get("name") or "delegation"
    service = str(_props(given).get("serviceName") or "")
    return {
        "name": name,
        "id": f"{subnet_id}/delegations/{name}",
        "etag": etag,
        "properties": {
            "serviceName": service,
            "actions": list(_ACTIONS.get(service.lower(), [])),
            "provisioningState": "Succeeded",
        },
        "type": DELEGATION_TYPE,
    }


def _props(value: Mapping[str, Any]) -> Mapping[str, Any]:
    props = value.get("properties")
    return props if isinstance(props, Mapping) else {}


def _pool_at_version(doc: dict[str, Any], api_version: str) -> None:
    """Drop what API versions before 2025-09-20 do not have: static outbound addresses."""
    if api_version >= STATIC_ADDRESSES_SINCE:
        return
    network = doc.get("properties", {}).get("fabricProfile", {}).get("networkProfile")
    if isinstance(network, dict):
        network.pop("staticIpAddressCount", None)
        network.pop("ipAddresses", None)
        if not network:
            del doc["properties"]["fabricProfile"]["networkProfile"]


def _method_not_allowed(method: str) -> ArmError:
    return ArmError(
        405,
        "MethodNotAllowed",
        f"The HTTP method '{method}' is not supported by the emulator for this resource.",
    )
