"""Key Vault resource model: validation and normalization as the real service does them.

Kept free of HTTP so that `Emulator.add_vault` and the REST handlers share one code path:
a seeded vault looks exactly like one written through the API.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from .errors import ArmError, bad_request

MAX_IP_RULES = 1000
MAX_VNET_RULES = 200

VAULT_TYPE = "Microsoft.KeyVault/vaults"

_VAULT_NAME_RE = re.compile(r"^[a-zA-Z0-9-]{3,24}$")
_VAULT_ID_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.KeyVault/vaults/(?P<name>[^/]+)/?$",
    re.IGNORECASE,
)
_SUBNET_ID_RE = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network"
    r"/virtualNetworks/(?P<vnet>[^/]+)/subnets/(?P<subnet>[^/]+)$",
    re.IGNORECASE,
)
_IPV4_TEXT_RE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?$")

# RFC 1918: the service refuses these with a message naming the range.
_FORBIDDEN = [
    (ipaddress.IPv4Network("10.0.0.0/8"), "10.0.0.0\u201310.255.255.255"),
    (ipaddress.IPv4Network("172.16.0.0/12"), "172.16.0.0\u2013172.31.255.255"),
    (ipaddress.IPv4Network("192.168.0.0/16"), "192.168.0.0\u2013192.168.255.255"),
]

_READ_ONLY_PROPERTIES = {"vaultUri", "provisioningState", "hsmPoolResourceId"}


def vault_key(sub: str, rg: str, name: str) -> tuple[str, str, str]:
    """ARM names are case-insensitive, so state is keyed by the lower-cased triple."""
    return (sub.lower(), rg.lower(), name.lower())


def parse_vault_id(vault_id: str) -> tuple[str, str, str]:
    """Split a vault resource id into (subscription, resource group, name)."""
    m = _VAULT_ID_RE.match(vault_id)
    if not m:
        raise KeyError(f"not a Key Vault resource id: {vault_id!r}")
    return m["sub"], m["rg"], m["name"]


def make_vault_id(sub: str, rg: str, name: str) -> str:
    """The id keeps the casing the vault was created with."""
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}"


def check_vault_name(name: str) -> None:
    """Vault names become DNS labels, so the service restricts them."""
    if not _VAULT_NAME_RE.match(name):
        raise bad_request(
            f"The vault name '{name}' is invalid. A vault's name must be between 3-24 alphanumeric "
            "characters. The name must begin with a letter, end with a letter or digit, and not "
            "contain consecutive hyphens.",
            code="VaultNameNotValid",
        )


def normalize_subnet_id(subnet_id: str) -> str:
    """The service stores and returns subnet ids lower-cased."""
    return subnet_id.lower()


def is_subnet_id(subnet_id: str) -> bool:
    """True for a well-formed full subnet resource id."""
    return bool(_SUBNET_ID_RE.match(subnet_id))


def _ip_rule_value(index: int, rule: Any) -> str:
    where = f"properties.networkAcls.ipRules[{index}].value"
    value = rule.get("value") if isinstance(rule, Mapping) else None
    if not isinstance(value, str) or not _IPV4_TEXT_RE.match(value):
        raise bad_request(
            f"Invalid value found at {where}: {value} is not a valid IPv4 address or CIDR range. "
            "Only IPv4 addresses are supported."
        )
    try:
        network = ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise bad_request(
            f"Invalid value found at {where}: {value} is not a valid IPv4 address or CIDR range. "
            "Only IPv4 addresses are supported."
        ) from None
    for forbidden, label in _FORBIDDEN:
        if network.overlaps(forbidden):
            raise bad_request(
                f"Invalid value found at {where}: {value} belongs to forbidden range {label} "
                "(private IP addresses)"
            )
    return value if "/" in value else f"{value}/32"


def _vnet_rule(index: int, rule: Any, subnets: Mapping[str, bool]) -> dict[str, Any]:
    where = f"properties.networkAcls.virtualNetworkRules[{index}].id"
    subnet_id = rule.get("id") if isinstance(rule, Mapping) else None
    if not isinstance(subnet_id, str) or not is_subnet_id(subnet_id):
        raise bad_request(
            f"Invalid value found at {where}: '{subnet_id}'. Virtual Network could not be "
            "validated. code: LinkedInvalidPropertyId. The value must be a full subnet resource id."
        )
    key = normalize_subnet_id(subnet_id)
    if key not in subnets:
        raise bad_request(
            f"Virtual Network could not be validated. code: ResourceNotFound. The subnet "
            f"'{subnet_id}' referenced at {where} was not found."
        )
    ignore = rule.get("ignoreMissingVnetServiceEndpoint")
    if ignore is not None and not isinstance(ignore, bool):
        raise bad_request(
            f"Invalid value found at properties.networkAcls.virtualNetworkRules[{index}]"
            f".ignoreMissingVnetServiceEndpoint: {ignore}"
        )
    if not subnets[key] and not ignore:
        m = _SUBNET_ID_RE.match(subnet_id)
        assert m is not None
        vnet_id = subnet_id[: subnet_id.lower().rfind("/subnets/")]
        raise ArmError(
            400,
            "SubnetsHaveNoServiceEndpointsConfigured",
            f"Subnets {m['subnet']} of virtual network {vnet_id} do not have ServiceEndpoints for "
            "Microsoft.KeyVault resources configured. Add Microsoft.KeyVault to subnet's "
            "ServiceEndpoints collection before trying to ACL Microsoft.KeyVault resources to "
            "these subnets..",
        )
    # ignoreMissingVnetServiceEndpoint is accepted but never echoed back on GET.
    return {"id": key}


def _enum(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if isinstance(value, str):
        for choice in allowed:
            if value.lower() == choice.lower():
                return choice
    raise bad_request(
        f"Invalid value found at {where}: '{value}'. Allowed values are {', '.join(allowed)}."
    )


def normalize_network_acls(acls: Any, subnets: Mapping[str, bool]) -> dict[str, Any]:
    """Validate a NetworkRuleSet and return it the way a GET would show it.

    Missing fields get the service defaults, because the whole set is replaced on every write.
    """
    if not isinstance(acls, Mapping):
        raise bad_request("Invalid value found at properties.networkAcls: expected an object.")
    bypass = acls.get("bypass")
    default_action = acls.get("defaultAction")
    ip_rules = acls.get("ipRules")
    vnet_rules = acls.get("virtualNetworkRules")
    ip_rules = [] if ip_rules is None else ip_rules
    vnet_rules = [] if vnet_rules is None else vnet_rules
    if not isinstance(ip_rules, list):
        raise bad_request("Invalid value found at properties.networkAcls.ipRules: expected a list.")
    if not isinstance(vnet_rules, list):
        raise bad_request(
            "Invalid value found at properties.networkAcls.virtualNetworkRules: expected a list."
        )
    if len(ip_rules) > MAX_IP_RULES:
        raise bad_request(
            f"The number of IP rules ({len(ip_rules)}) exceeds the maximum allowed "
            f"({MAX_IP_RULES}). A maximum of {MAX_VNET_RULES} virtual network rules and "
            f"{MAX_IP_RULES} IPv4 rules are allowed."
        )
    if len(vnet_rules) > MAX_VNET_RULES:
        raise bad_request(
            f"The number of virtual network rules ({len(vnet_rules)}) exceeds the maximum allowed "
            f"({MAX_VNET_RULES}). A maximum of {MAX_VNET_RULES} virtual network rules and "
            f"{MAX_IP_RULES} IPv4 rules are allowed."
        )
    return {
        "bypass": "AzureServices"
        if bypass is None
        else _enum(bypass, ("AzureServices", "None"), "properties.networkAcls.bypass"),
        "defaultAction": "Allow"
        if default_action is None
        else _enum(default_action, ("Allow", "Deny"), "properties.networkAcls.defaultAction"),
        "ipRules": [{"value": _ip_rule_value(i, r)} for i, r in enumerate(ip_rules)],
        "virtualNetworkRules": [_vnet_rule(i, r, subnets) for i, r in enumerate(vnet_rules)],
    }


def normalize_public_network_access(value: Any) -> str:
    """Only Enabled/Disabled are accepted (case-insensitive) and stored capitalized."""
    return _enum(value, ("Enabled", "Disabled"), "properties.publicNetworkAccess")


def _apply_properties(
    props: dict[str, Any], given: Mapping[str, Any], subnets: Mapping[str, bool]
) -> None:
    """Merge given property keys into props, validating the ones the emulator understands."""
    for key, value in given.items():
        if key in _READ_ONLY_PROPERTIES or key == "accessPolicies":
            # accessPolicies are recorded in the request log but deliberately not modelled.
            continue
        if key == "networkAcls":
            if value is None:
                continue
            props["networkAcls"] = normalize_network_acls(value, subnets)
        elif key == "publicNetworkAccess":
            if value is None:
                continue
            props["publicNetworkAccess"] = normalize_public_network_access(value)
        else:
            props[key] = copy.deepcopy(value)


def _system_data(actor: str, now: str, previous: Mapping[str, Any] | None) -> dict[str, str]:
    created = previous or {}
    return {
        "createdBy": created.get("createdBy", actor),
        "createdByType": created.get("createdByType", "Application"),
        "createdAt": created.get("createdAt", now),
        "lastModifiedBy": actor,
        "lastModifiedByType": "Application",
        "lastModifiedAt": now,
    }


def build_vault(
    vault_id: str,
    body: Any,
    *,
    subnets: Mapping[str, bool],
    tenant_id: str,
    actor: str,
    now: str,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Vaults_CreateOrUpdate: the full vault a PUT of `body` produces."""
    if not isinstance(body, Mapping):
        raise bad_request("The request body must be a JSON object.", code="InvalidRequestContent")
    location = body.get("location")
    properties = body.get("properties")
    if not isinstance(location, str) or not location:
        raise bad_request(
            "The request content was invalid: the required property 'location' is missing.",
            code="LocationRequired",
        )
    if not isinstance(properties, Mapping):
        raise bad_request(
            "The request content was invalid: the required property 'properties' is missing.",
            code="InvalidRequestContent",
        )
    tags = body.get("tags")
    if tags is not None and not isinstance(tags, Mapping):
        raise bad_request("Invalid value found at tags: expected an object.")
    _sub, _rg, name = parse_vault_id(vault_id)
    check_vault_name(name)
    props: dict[str, Any] = {
        "tenantId": tenant_id,
        "sku": {"family": "A", "name": "standard"},
        "accessPolicies": [],
        "enableRbacAuthorization": True,
        "vaultUri": f"https://{name.lower()}.vault.azure.net/",
        "provisioningState": "Succeeded",
        "publicNetworkAccess": "Enabled",
    }
    if previous is not None:
        props["accessPolicies"] = copy.deepcopy(previous["properties"].get("accessPolicies", []))
    _apply_properties(props, properties, subnets)
    vault: dict[str, Any] = {
        "id": vault_id,
        "name": name,
        "type": VAULT_TYPE,
        "location": location.replace(" ", "").lower(),
        "tags": dict(tags or {}),
        "properties": props,
        "systemData": _system_data(actor, now, previous and previous.get("systemData")),
    }
    return vault


def patch_vault(
    vault: Mapping[str, Any],
    body: Any,
    *,
    subnets: Mapping[str, bool],
    actor: str,
    now: str,
) -> dict[str, Any]:
    """Vaults_Update: merge top-level property keys; networkAcls, when given, replaces all."""
    if not isinstance(body, Mapping):
        raise bad_request("The request body must be a JSON object.", code="InvalidRequestContent")
    properties = body.get("properties")
    tags = body.get("tags")
    if properties is not None and not isinstance(properties, Mapping):
        raise bad_request("Invalid value found at properties: expected an object.")
    if tags is not None and not isinstance(tags, Mapping):
        raise bad_request("Invalid value found at tags: expected an object.")
    new = copy.deepcopy(dict(vault))
    if properties:
        _apply_properties(new["properties"], properties, subnets)
    if tags is not None:
        new["tags"] = dict(tags)
    new["systemData"] = _system_data(actor, now, vault.get("systemData"))
    return new
