"""Agent networks through the real SDKs against the emulator: each kind resolves in one read,
unreadable pools are classified rather than raised, discovery pages, and the service-endpoint
fix rewrites a subnet without losing anything someone else set."""

from __future__ import annotations

import ipaddress
import json

import pytest

from emulator import network_settings_payload, pool_payload, scale_set_payload
from kvfirewall.agent_networks import (
    POOLS_API_VERSION,
    AgentNetworks,
    DiscoveryFailed,
    FixOutcome,
)
from kvfirewall.pools import EndpointStatus, PoolStatus, parse_pool_id

SUB = "11111111-1111-1111-1111-111111111111"
OTHER = "22222222-2222-2222-2222-222222222222"
RG = f"/subscriptions/{SUB}/resourceGroups/agents"
POOL_VNET = f"{RG}/providers/Microsoft.DevOpsInfrastructure/pools/mdp-vnet"
POOL_STATIC = f"{RG}/providers/Microsoft.DevOpsInfrastructure/pools/mdp-static"
VMSS = f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-agents"
GITHUB = f"{RG}/providers/GitHub.Network/networkSettings/gh-runners"
SUBNET_A = f"{RG}/providers/Microsoft.Network/virtualNetworks/agents/subnets/a"
SUBNET_B = f"{RG}/providers/Microsoft.Network/virtualNetworks/agents/subnets/b"
NSG = f"{RG}/providers/Microsoft.Network/networkSecurityGroups/agents-nsg"
ROUTES = f"{RG}/providers/Microsoft.Network/routeTables/egress"
VAULT = f"/subscriptions/{SUB}/resourceGroups/kv/providers/Microsoft.KeyVault/vaults/kv-app"


@pytest.fixture
def nets(emulator) -> AgentNetworks:
    return AgentNetworks(endpoint=emulator.url)


def _requests_for(emulator, resource_id: str):
    return [r for r in emulator.requests if r.path.lower() == resource_id.lower()]


def test_each_kind_resolves_in_one_read(emulator, nets):
    store = emulator.agent_networks
    store.put_resource(pool_payload(POOL_VNET, subnet_id=SUBNET_A))
    store.put_resource(pool_payload(POOL_STATIC, static_addresses=["20.50.1.7"]))
    store.put_resource(scale_set_payload(VMSS, [[SUBNET_A], [SUBNET_B]]))
    store.put_resource(network_settings_payload(GITHUB, SUBNET_B))

    vnet = nets.resolve(parse_pool_id(POOL_VNET))
    static = nets.resolve(parse_pool_id(POOL_STATIC))
    vmss = nets.resolve(parse_pool_id(VMSS))
    github = nets.resolve(parse_pool_id(GITHUB))

    assert (vnet.status, vnet.subnets, vnet.addresses) == (PoolStatus.OK, (SUBNET_A,), ())
    assert (static.subnets, static.addresses) == ((), (ipaddress.IPv4Network("20.50.1.7/32"),))
    assert vmss.subnets == (SUBNET_A, SUBNET_B)
    assert github.subnets == (SUBNET_B,)
    for resource_id in (POOL_VNET, POOL_STATIC, VMSS, GITHUB):
        assert len(_requests_for(emulator, resource_id)) == 1
    assert nets.counts.reads == 4 and nets.counts.writes == 0
    # The SDK's default (2024-10-19) has no static addresses; the pool read asks for more.
    assert _requests_for(emulator, POOL_STATIC)[0].query["api-version"] == POOLS_API_VERSION
    assert _requests_for(emulator, GITHUB)[0].query["api-version"] == "2024-04-02"


def test_a_pool_without_vnet_or_addresses_warns(emulator, nets):
    emulator.agent_networks.put_resource(pool_payload(POOL_VNET))
    result = nets.resolve(parse_pool_id(POOL_VNET))
    assert result.status is PoolStatus.NO_NETWORK
    assert "adds nothing" in result.warnings[0]


def test_unreadable_pools_are_classified_not_raised(emulator, nets):
    emulator.agent_networks.put_resource(scale_set_payload(VMSS, [[SUBNET_A]]))
    emulator.agent_networks.put_resource(network_settings_payload(GITHUB, SUBNET_B))
    emulator.agent_networks.forbid(f"/subscriptions/{OTHER}")
    emulator.fail("GET", "virtualMachineScaleSets/vmss-agents$", 503)
    emulator.reset_connection("GET", "networkSettings/gh-runners$")
    elsewhere = POOL_VNET.replace(SUB, OTHER)

    missing = nets.resolve(parse_pool_id(POOL_VNET))
    forbidden = nets.resolve(parse_pool_id(elsewhere))
    outage = nets.resolve(parse_pool_id(VMSS))
    reset = nets.resolve(parse_pool_id(GITHUB))

    assert missing.status is PoolStatus.NOT_FOUND
    assert forbidden.status is PoolStatus.FORBIDDEN
    assert "AuthorizationFailed" in forbidden.warnings[0]
    assert outage.status is PoolStatus.UNAVAILABLE
    assert reset.status is PoolStatus.UNAVAILABLE
    for result in (missing, forbidden, outage, reset):
        assert not result.readable and result.subnets == () and result.addresses == ()
    # No retries within the run: one request each.
    assert len(_requests_for(emulator, VMSS)) == 1


def test_discovery_lists_every_managed_pool_page_by_page(emulator, nets):
    names = [f"mdp-{n}" for n in range(5)]
    for name in names:
        pool_id = f"{RG}/providers/Microsoft.DevOpsInfrastructure/pools/{name}"
        emulator.agent_networks.put_resource(pool_payload(pool_id, static_addresses=["20.50.1.9"]))
    emulator.agent_networks.put_resource(scale_set_payload(VMSS, [[SUBNET_A]]))
    emulator.agent_networks.put_resource(
        pool_payload(POOL_VNET.replace(SUB, OTHER), subnet_id=SUBNET_A)
    )
    emulator.page_size = 2

    found = nets.discover_pools(SUB)

    assert sorted(p.pool.name for p in found) == names
    # Every page, the follow-ups included, asked for the version with static addresses.
    assert all(p.addresses == (ipaddress.IPv4Network("20.50.1.9/32"),) for p in found)
    pages = [r for r in emulator.requests if r.path.endswith("/pools")]
    assert len(pages) == 3 and nets.counts.reads == 3


def test_a_failed_page_fails_the_whole_discovery(emulator, nets):
    for n in range(3):
        pool_id = f"{RG}/providers/Microsoft.DevOpsInfrastructure/pools/mdp-{n}"
        emulator.agent_networks.put_resource(pool_payload(pool_id, subnet_id=SUBNET_A))
    emulator.page_size = 2
    # The first page is served; the second is throttled.
    emulator.intercept(
        "GET",
        "/pools$",
        after=lambda e: e.fail("GET", "/pools$", 429, headers={"Retry-After": "1"}),
    )
    with pytest.raises(DiscoveryFailed) as info:
        nets.discover_pools(SUB)
    assert info.value.status is PoolStatus.UNAVAILABLE
    assert [r.status for r in emulator.requests] == [200, 429]
    emulator.agent_networks.forbid(f"/subscriptions/{SUB}")
    with pytest.raises(DiscoveryFailed) as info:
        nets.discover_pools(SUB)
    assert info.value.status is PoolStatus.FORBIDDEN


def test_the_endpoint_check_reads_each_subnet_once(emulator, nets):
    emulator.agent_networks.put_subnet(SUBNET_A, service_endpoints=["Microsoft.Storage"])
    emulator.agent_networks.put_subnet(SUBNET_B, service_endpoints=["Microsoft.KeyVault"])

    lacking = nets.check_subnet(SUBNET_A)
    ready = nets.check_subnet(SUBNET_B)
    gone = nets.check_subnet(SUBNET_A.replace("/a", "/gone"))

    assert lacking.status is EndpointStatus.MISSING
    assert "az network vnet subnet update" in (lacking.warning or "")
    assert ready.status is EndpointStatus.PRESENT and ready.warning is None
    assert gone.status is EndpointStatus.UNREADABLE and "404" in (gone.warning or "")
    assert nets.counts.reads == 3


def _without_server_owned(subnet: dict) -> str:
    """The subnet with what the service owns or the fix changes taken out, as canonical JSON."""

    def strip(value):
        if isinstance(value, dict):
            return {
                k: strip(v)
                for k, v in value.items()
                if k not in ("etag", "provisioningState", "serviceEndpoints")
            }
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(subnet), sort_keys=True)


def _busy_subnet(emulator, **overrides) -> dict:
    options = {
        "address_prefix": "10.20.0.0/24",
        "service_endpoints": ["Microsoft.Storage", "Microsoft.Sql"],
        "delegation": "Microsoft.DevOpsInfrastructure/pools",
        "network_security_group": NSG,
        "route_table": ROUTES,
        "extra": {
            "natGateway": {"id": f"{RG}/providers/Microsoft.Network/natGateways/egress"},
            "privateEndpointNetworkPolicies": "Disabled",
            "privateLinkServiceNetworkPolicies": "Enabled",
            "defaultOutboundAccess": False,
            "ipConfigurations": [{"id": f"{RG}/providers/Microsoft.Network/nic/agent-0/ip"}],
            "serviceAssociationLinks": [{"name": "legionservicelink", "id": f"{SUBNET_A}/sal"}],
        },
    }
    options.update(overrides)
    return emulator.agent_networks.put_subnet(SUBNET_A, **options)


def test_the_fix_adds_the_endpoint_and_keeps_every_other_property(emulator, nets):
    before = _busy_subnet(emulator)
    with pytest.raises(ValueError, match="SubnetsHaveNoServiceEndpointsConfigured"):
        emulator.add_vault(
            SUB, "kv", "kv-app", network_acls={"virtualNetworkRules": [{"id": SUBNET_A}]}
        )

    fix = nets.add_key_vault_endpoint(SUBNET_A)

    after = emulator.agent_networks.subnet(SUBNET_A)
    assert fix.outcome is FixOutcome.ADDED
    assert _without_server_owned(after) == _without_server_owned(before)
    assert [e["service"] for e in after["properties"]["serviceEndpoints"]] == [
        "Microsoft.Storage",
        "Microsoft.Sql",
        "Microsoft.KeyVault",
    ]
    assert after["etag"] != before["etag"]
    put = [r for r in emulator.requests if r.method == "PUT"]
    assert len(put) == 1 and put[0].headers["if-match"] == before["etag"]
    assert (nets.counts.reads, nets.counts.writes) == (1, 1)
    # Key Vault now accepts a rule for the subnet without ignoreMissingVnetServiceEndpoint.
    emulator.add_vault(
        SUB, "kv", "kv-app", network_acls={"virtualNetworkRules": [{"id": SUBNET_A}]}
    )
    assert nets.check_subnet(SUBNET_A).status is EndpointStatus.PRESENT


def test_a_stale_etag_is_refused_and_the_fix_starts_again_from_a_fresh_read(emulator, nets):
    _busy_subnet(emulator)
    # Someone re-points the subnet's NSG between kvfirewall's read and its write.
    other_nsg = NSG.replace("agents-nsg", "locked-down")
    emulator.intercept(
        "PUT", "/subnets/a$", before=lambda e: _busy_subnet(e, network_security_group=other_nsg)
    )

    fix = nets.add_key_vault_endpoint(SUBNET_A)

    assert fix.outcome is FixOutcome.ADDED
    statuses = [(r.method, r.status) for r in emulator.requests]
    assert statuses == [("GET", 200), ("PUT", 412), ("GET", 200), ("PUT", 200)]
    after = emulator.agent_networks.subnet(SUBNET_A)
    assert after["properties"]["networkSecurityGroup"] == {"id": other_nsg}
    assert "Microsoft.KeyVault" in [e["service"] for e in after["properties"]["serviceEndpoints"]]


def test_a_subnet_that_has_the_endpoint_is_not_written(emulator, nets):
    _busy_subnet(emulator, service_endpoints=["Microsoft.KeyVault"])
    assert nets.add_key_vault_endpoint(SUBNET_A).outcome is FixOutcome.ALREADY_PRESENT
    assert nets.counts.writes == 0


def test_a_subnet_that_keeps_changing_is_given_up_on(emulator, nets):
    _busy_subnet(emulator)
    emulator.intercept("PUT", "/subnets/a$", before=_busy_subnet, times=3)
    fix = nets.add_key_vault_endpoint(SUBNET_A)
    assert fix.outcome is FixOutcome.FAILED and "412" in fix.detail
    assert nets.counts.writes == 3
