"""Agent pools as rules, without Azure: which ids are pools, and what each payload adds."""

from __future__ import annotations

import ipaddress

import pytest

from emulator import network_settings_payload, pool_payload, scale_set_payload
from kvfirewall.pools import (
    EndpointStatus,
    PoolKind,
    PoolStatus,
    endpoint_check,
    networks_of,
    parse_pool_id,
    parse_pool_ids,
    unreadable,
    with_key_vault_endpoint,
)
from kvfirewall.rules import RuleError

SUB = "11111111-1111-1111-1111-111111111111"
RG = f"/subscriptions/{SUB}/resourceGroups/agents"
POOL = f"{RG}/providers/Microsoft.DevOpsInfrastructure/pools/mdp-build"
VMSS = f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-agents"
GITHUB = f"{RG}/providers/GitHub.Network/networkSettings/gh-runners"
SUBNET_A = f"{RG}/providers/Microsoft.Network/virtualNetworks/agents/subnets/a"
SUBNET_B = f"{RG}/providers/Microsoft.Network/virtualNetworks/agents/subnets/b"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (POOL, PoolKind.MANAGED_DEVOPS_POOL),
        (POOL.replace("/pools/", "/Pools/"), PoolKind.MANAGED_DEVOPS_POOL),
        (VMSS, PoolKind.SCALE_SET),
        (GITHUB.lower(), PoolKind.GITHUB_NETWORK_SETTINGS),
    ],
)
def test_each_kind_of_pool_id_parses(value, kind):
    ref = parse_pool_id(value)
    assert ref.kind is kind
    assert ref.key == value.lower()


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (f"{RG}/providers/Microsoft.KeyVault/vaults/kv1", "is a Microsoft.KeyVault/vaults"),
        (SUBNET_A, "not an agent pool resource id"),
        ("mdp-build", "not an agent pool resource id"),
        (f"/subscriptions/not-a-guid/resourceGroups/rg/providers/{PoolKind.SCALE_SET.value}/x", ""),
        (POOL + "?api-version=2025-09-20", ""),
        (POOL.replace("mdp-build", "mdp-\u212abuild"), ""),  # Kelvin sign folds to k
    ],
)
def test_anything_else_is_refused_naming_the_value(value, named):
    with pytest.raises(RuleError) as info:
        parse_pool_id(value)
    assert repr(value.strip())[:60] in str(info.value)
    assert named in str(info.value)


def test_a_list_keeps_each_pool_once_in_order():
    refs = parse_pool_ids(
        f" {VMSS} ,{POOL},{POOL.upper().replace('/SUBSCRIPTIONS/', '/subscriptions/')},"
    )
    assert [r.kind for r in refs] == [PoolKind.SCALE_SET, PoolKind.MANAGED_DEVOPS_POOL]


def test_a_managed_pool_in_a_vnet_adds_its_subnet():
    result = networks_of(parse_pool_id(POOL), pool_payload(POOL, subnet_id=SUBNET_A))
    assert (result.status, result.subnets, result.addresses) == (PoolStatus.OK, (SUBNET_A,), ())


def test_a_managed_pool_with_static_addresses_adds_them_without_a_vnet():
    payload = pool_payload(POOL, static_addresses=["20.50.1.7", "20.50.1.8"])
    result = networks_of(parse_pool_id(POOL), payload)
    assert result.status is PoolStatus.OK
    assert result.subnets == ()
    assert result.addresses == (
        ipaddress.IPv4Network("20.50.1.7/32"),
        ipaddress.IPv4Network("20.50.1.8/32"),
    )


def test_a_managed_pool_with_neither_adds_nothing_and_says_so():
    result = networks_of(parse_pool_id(POOL), pool_payload(POOL))
    assert result.status is PoolStatus.NO_NETWORK
    assert result.readable
    assert (result.subnets, result.addresses) == ((), ())
    assert "adds nothing" in result.warnings[0] and POOL in result.warnings[0]


def test_static_addresses_the_payload_hides_are_a_warning():
    payload = pool_payload(POOL, subnet_id=SUBNET_A)
    payload["properties"]["fabricProfile"]["networkProfile"]["staticIpAddressCount"] = 2
    result = networks_of(parse_pool_id(POOL), payload)
    assert result.subnets == (SUBNET_A,)
    assert "Managed Identity Operator" in " ".join(result.warnings)


def test_an_address_that_is_not_public_is_left_out_with_a_warning():
    payload = pool_payload(POOL, static_addresses=["10.1.2.3", "20.50.1.7"])
    result = networks_of(parse_pool_id(POOL), payload)
    assert result.addresses == (ipaddress.IPv4Network("20.50.1.7/32"),)
    assert "10.1.2.3" in " ".join(result.warnings)


def test_a_scale_set_adds_every_subnet_of_every_nic_once():
    payload = scale_set_payload(VMSS, [[SUBNET_A], [SUBNET_B, SUBNET_A.upper()]])
    result = networks_of(parse_pool_id(VMSS), payload)
    assert result.status is PoolStatus.OK
    assert result.subnets == (SUBNET_A, SUBNET_B)


def test_a_scale_set_without_subnets_adds_nothing():
    result = networks_of(parse_pool_id(VMSS), scale_set_payload(VMSS, []))
    assert result.status is PoolStatus.NO_NETWORK


def test_github_network_settings_add_their_subnet():
    result = networks_of(parse_pool_id(GITHUB), network_settings_payload(GITHUB, SUBNET_B))
    assert (result.status, result.subnets) == (PoolStatus.OK, (SUBNET_B,))


def test_a_malformed_subnet_is_left_out_with_a_warning():
    result = networks_of(parse_pool_id(GITHUB), network_settings_payload(GITHUB, "subnet-b"))
    assert result.status is PoolStatus.NO_NETWORK
    assert "'subnet-b'" in result.warnings[0]


def test_an_unreadable_pool_is_not_readable_and_warns():
    result = unreadable(parse_pool_id(POOL), PoolStatus.FORBIDDEN, "HTTP 403 AuthorizationFailed")
    assert not result.readable
    assert "403" in result.warnings[0] and "nothing is removed" in result.warnings[0]
    with pytest.raises(ValueError, match="is not a failure"):
        unreadable(parse_pool_id(POOL), PoolStatus.OK, "")


def test_the_endpoint_warning_names_the_fix_keeping_other_endpoints():
    subnet = {"properties": {"serviceEndpoints": [{"service": "Microsoft.Storage"}]}}
    check = endpoint_check(SUBNET_A, subnet)
    assert check.status is EndpointStatus.MISSING
    assert check.warning is not None and SUBNET_A in check.warning
    assert "--service-endpoints Microsoft.Storage Microsoft.KeyVault" in check.warning
    present = {"properties": {"serviceEndpoints": [{"service": "microsoft.keyvault"}]}}
    assert endpoint_check(SUBNET_A, present).warning is None


def test_the_endpoint_is_added_to_an_otherwise_identical_subnet():
    subnet = {
        "id": SUBNET_A,
        "properties": {
            "addressPrefix": "10.0.0.0/24",
            "serviceEndpoints": [{"service": "Microsoft.Storage", "locations": ["westeurope"]}],
            "delegations": [
                {"name": "d", "properties": {"serviceName": "GitHub.Network/networkSettings"}}
            ],
        },
    }
    new = with_key_vault_endpoint(subnet)
    assert new["properties"]["serviceEndpoints"] == [
        {"service": "Microsoft.Storage", "locations": ["westeurope"]},
        {"service": "Microsoft.KeyVault"},
    ]
    new["properties"].pop("serviceEndpoints")
    original = dict(subnet["properties"])
    original.pop("serviceEndpoints")
    assert new["properties"] == original
    assert len(subnet["properties"]["serviceEndpoints"]) == 1  # the input is not changed
    assert with_key_vault_endpoint(with_key_vault_endpoint(subnet)) == with_key_vault_endpoint(
        subnet
    )
