"""Agent pools in whole runs: through the real SDKs against the emulator, each kind of pool
becomes rules on the vaults, a pool's moves are followed without touching anyone else's rules,
an unreadable pool removes nothing, subnets are checked (and fixed on request) for the Key
Vault service endpoint, and pool writes arrive as events that fit Event Grid's wait."""

from __future__ import annotations

import functools
import json
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from emulator import network_settings_payload, pool_payload, scale_set_payload
from kvfirewall import service as service_module
from kvfirewall.events import WRITE_SUCCESS
from kvfirewall.ledger import LocalStore
from kvfirewall.service import Service
from kvfirewall.settings import Settings

SUB = "77777777-7777-7777-7777-777777777777"
OTHER = "88888888-8888-8888-8888-888888888888"  # not managed: agents often live elsewhere
RG = f"/subscriptions/{SUB}/resourceGroups/agents/providers"
POOL = f"{RG}/Microsoft.DevOpsInfrastructure/pools/mdp-build"
STATIC = f"{RG}/Microsoft.DevOpsInfrastructure/pools/mdp-static"
VMSS = f"/subscriptions/{OTHER}/resourceGroups/ci/providers/Microsoft.Compute/virtualMachineScaleSets/vmss"
GITHUB = f"{RG}/GitHub.Network/networkSettings/gh-runners"
NET = f"{RG}/Microsoft.Network/virtualNetworks/agents/subnets"
A, B, C, D = (f"{NET}/{name}" for name in "abcd")
ADDRESS = "20.50.1.7"


def settings(emulator, tmp_path: Path, **values: str) -> Settings:
    env = {
        "KVF_ARM_ENDPOINT": emulator.url,
        "KVF_SUBSCRIPTIONS": SUB,
        "KVF_IP_SOURCE": "builtin",
        "KVF_STATE": str(tmp_path / "state"),
        "KVF_MODE": "enforce",
    }
    return Settings.from_env({**env, **values})


def service(emulator, tmp_path: Path, **values: str) -> Service:
    config = settings(emulator, tmp_path, **values)
    return Service(config, store=LocalStore(tmp_path / "state"))


def acls(emulator, vault_id: str) -> tuple[set[str], set[IPv4Network]]:
    found = emulator.vault(vault_id)["properties"].get("networkAcls") or {}
    subnets = {r["id"].lower() for r in found.get("virtualNetworkRules", [])}
    return subnets, {IPv4Network(r["value"]) for r in found.get("ipRules", [])}


def subnets_of(emulator, vault_id: str) -> set[str]:
    return acls(emulator, vault_id)[0]


def whys(report) -> dict[str, str]:
    return {c.rule.lower(): c.why for v in report.vaults for c in v.added}


def enforce(svc: Service):
    return svc.run(write=True, mode="enforce")


@pytest.fixture
def subnets(emulator):
    for subnet in (A, B, C, D):
        emulator.agent_networks.put_subnet(subnet, service_endpoints=["Microsoft.KeyVault"])


def test_each_kind_of_pool_becomes_rules_naming_the_pool(emulator, tmp_path, subnets):
    store = emulator.agent_networks
    store.put_resource(pool_payload(POOL, subnet_id=A))
    store.put_resource(pool_payload(STATIC, static_addresses=[ADDRESS]))
    store.put_resource(scale_set_payload(VMSS, [[B], [C]]))
    store.put_resource(network_settings_payload(GITHUB, D))
    vault = emulator.add_vault(SUB, "apps", "kv-app")
    svc = service(emulator, tmp_path, KVF_AGENT_POOLS=",".join((POOL, STATIC, VMSS, GITHUB)))

    report = enforce(svc)

    assert acls(emulator, vault) == (
        {s.lower() for s in (A, B, C, D)},
        {IPv4Network(f"{ADDRESS}/32")},
    )
    assert whys(report) == {
        A.lower(): f"agent pool {POOL}",
        f"{ADDRESS}/32": f"agent pool {STATIC}",
        B.lower(): f"agent pool {VMSS}",
        C.lower(): f"agent pool {VMSS}",
        D.lower(): f"agent pool {GITHUB}",
    }
    # The cost per pool: one GET each, and one GET per subnet for its endpoint check.
    gets = [r.path.lower() for r in emulator.requests if r.method == "GET"]
    for resource in (POOL, STATIC, VMSS, GITHUB, A, B, C, D):
        assert gets.count(resource.lower()) == 1, resource
    assert report.warnings == []
    pools = {p["id"]: p for p in report.to_json()["agentNetworks"]["pools"]}
    assert pools[VMSS]["subnets"] == [
        {"id": B, "serviceEndpoint": True},
        {"id": C, "serviceEndpoint": True},
    ]
    assert pools[STATIC]["addresses"] == [f"{ADDRESS}/32"] and pools[STATIC]["status"] == "ok"


def test_a_moved_subnet_is_followed_and_only_kvfirewalls_copy_goes(emulator, tmp_path, subnets):
    emulator.agent_networks.put_resource(pool_payload(POOL, subnet_id=A))
    ours = emulator.add_vault(SUB, "apps", "kv-ours")
    theirs = emulator.add_vault(
        SUB, "apps", "kv-theirs", network_acls={"virtualNetworkRules": [{"id": A}]}
    )
    svc = service(emulator, tmp_path, KVF_AGENT_POOLS=POOL)
    enforce(svc)
    assert subnets_of(emulator, ours) == subnets_of(emulator, theirs) == {A.lower()}

    emulator.agent_networks.put_resource(pool_payload(POOL, subnet_id=B))
    report = enforce(svc)

    assert subnets_of(emulator, ours) == {B.lower()}
    assert subnets_of(emulator, theirs) == {A.lower(), B.lower()}  # their copy of A stays
    removed = {c.rule.lower() for v in report.vaults for c in v.removed}
    assert removed == {A.lower()}


@pytest.mark.parametrize("failure", ["forbidden", "deleted", "outage"])
def test_an_unreadable_pool_removes_nothing_and_says_so_every_run(
    emulator, tmp_path, subnets, failure
):
    emulator.agent_networks.put_resource(pool_payload(POOL, subnet_id=A))
    emulator.agent_networks.put_resource(pool_payload(STATIC, static_addresses=[ADDRESS]))
    vault = emulator.add_vault(SUB, "apps", "kv-app")
    svc = service(emulator, tmp_path, KVF_AGENT_POOLS=f"{POOL},{STATIC}")
    enforce(svc)
    before = acls(emulator, vault)

    if failure == "forbidden":
        emulator.agent_networks.forbid(POOL)
        emulator.agent_networks.forbid(STATIC)
    elif failure == "deleted":
        emulator.agent_networks.delete_resource(POOL)
        emulator.agent_networks.delete_resource(STATIC)
    else:
        emulator.fail("GET", "/pools/", 503, times=100)
    for _ in range(2):
        report = enforce(svc)
        assert acls(emulator, vault) == before
        assert [v.outcome for v in report.vaults] in ([], ["unchanged"])
        named = [w for w in report.warnings if POOL in w or STATIC in w]
        assert len(named) == 2 and all("nothing is removed" in w for w in named)
    # Its last resolved networks stand in for it.
    shown = {p["id"]: p for p in svc.ranges()["pools"]}
    status = {"forbidden": "forbidden", "deleted": "not-found", "outage": "unavailable"}[failure]
    assert (shown[POOL]["status"], shown[POOL]["subnets"]) == (
        status,
        [{"id": A, "serviceEndpoint": True}],
    )
    assert shown[STATIC]["addresses"] == [f"{ADDRESS}/32"]


def test_a_pool_taken_out_of_the_setting_takes_only_its_own_rules(emulator, tmp_path, subnets):
    emulator.agent_networks.put_resource(pool_payload(POOL, subnet_id=A))
    emulator.agent_networks.put_resource(network_settings_payload(GITHUB, B))
    ours = emulator.add_vault(SUB, "apps", "kv-ours")
    theirs = emulator.add_vault(
        SUB, "apps", "kv-theirs", network_acls={"virtualNetworkRules": [{"id": B}]}
    )
    enforce(service(emulator, tmp_path, KVF_AGENT_POOLS=f"{POOL},{GITHUB}"))

    enforce(service(emulator, tmp_path, KVF_AGENT_POOLS=POOL))

    assert subnets_of(emulator, ours) == {A.lower()}
    assert subnets_of(emulator, theirs) == {A.lower(), B.lower()}
    stored = LocalStore(tmp_path / "state").read_pools()
    assert [p["id"] for p in stored["pools"]] == [POOL]


def test_a_pool_unreadable_from_the_start_holds_every_removal(emulator, tmp_path, subnets):
    """Nothing is known of its networks: any rule kvfirewall owns may be the pool's."""
    vault = emulator.add_vault(SUB, "apps", "kv-app")
    enforce(service(emulator, tmp_path, KVF_AGENT_SUBNETS=A))
    emulator.agent_networks.forbid(POOL)
    report = enforce(service(emulator, tmp_path, KVF_AGENT_POOLS=POOL, KVF_EXTRA_IP_RULES=ADDRESS))
    assert subnets_of(emulator, vault) == {A.lower()}
    assert any("may not be read" in w for w in report.warnings)


def test_a_pool_without_network_adds_nothing_and_says_so(emulator, tmp_path):
    emulator.agent_networks.put_resource(pool_payload(POOL))
    vault = emulator.add_vault(SUB, "apps", "kv-app")
    report = enforce(service(emulator, tmp_path, KVF_AGENT_POOLS=POOL))
    assert acls(emulator, vault) == (set(), set())
    assert any("adds nothing" in w for w in report.warnings)


def test_discovery_lists_each_subscription_once_and_keeps_the_last_set_on_failure(
    emulator, tmp_path, subnets
):
    for name, subnet in (("mdp-1", A), ("mdp-2", B), ("mdp-3", C)):
        pool_id = f"{RG}/Microsoft.DevOpsInfrastructure/pools/{name}"
        emulator.agent_networks.put_resource(pool_payload(pool_id, subnet_id=subnet))
    emulator.page_size = 2
    vault = emulator.add_vault(SUB, "apps", "kv-app")
    svc = service(emulator, tmp_path, KVF_DISCOVER_POOLS="true")
    enforce(svc)
    assert subnets_of(emulator, vault) == {A.lower(), B.lower(), C.lower()}
    pages = [r for r in emulator.requests if r.path.lower().endswith("/pools")]
    assert len(pages) == 2  # one paged list, no GET per pool

    emulator.fail("GET", "/pools$", 503, times=100)
    report = enforce(svc)
    assert subnets_of(emulator, vault) == {A.lower(), B.lower(), C.lower()}
    assert any("3 pool(s) it last found stay" in w for w in report.warnings)

    # A pool deleted: it is no longer listed, and its rule goes.
    emulator.clear_faults()
    emulator.agent_networks.delete_resource(f"{RG}/Microsoft.DevOpsInfrastructure/pools/mdp-2")
    enforce(svc)
    assert subnets_of(emulator, vault) == {A.lower(), C.lower()}


def test_a_subnet_without_the_endpoint_is_named_with_its_fix_and_still_written(emulator, tmp_path):
    emulator.agent_networks.put_subnet(A, service_endpoints=["Microsoft.Storage"])
    emulator.agent_networks.put_resource(network_settings_payload(GITHUB, A))
    vault = emulator.add_vault(SUB, "apps", "kv-app")
    svc = service(emulator, tmp_path, KVF_AGENT_POOLS=GITHUB, KVF_AGENT_SUBNETS=A.upper())

    report = enforce(svc)

    assert subnets_of(emulator, vault) == {A.lower()}
    [warning] = [w for w in report.warnings if "service endpoint" in w]
    assert A.lower() in warning.lower()
    assert "az network vnet subnet update --ids " in warning
    assert "--service-endpoints Microsoft.Storage Microsoft.KeyVault" in warning
    checks = [r for r in emulator.requests if r.path.lower() == A.lower()]
    assert len(checks) == 1  # static and resolved, read once
    assert not any(r.method == "PUT" for r in emulator.requests)
    assert svc.ranges()["pools"] == [
        {
            "id": GITHUB,
            "kind": "GitHub.Network/networkSettings",
            "status": "ok",
            "subnets": [{"id": A, "serviceEndpoint": False}],
            "addresses": [],
        }
    ]


def test_the_fix_is_made_only_by_writing_runs_in_enforce_mode(emulator, tmp_path):
    emulator.agent_networks.put_subnet(
        A, service_endpoints=["Microsoft.Storage"], delegation="GitHub.Network/networkSettings"
    )
    emulator.agent_networks.put_resource(network_settings_payload(GITHUB, A))
    emulator.add_vault(SUB, "apps", "kv-app")
    fixing = {"KVF_AGENT_POOLS": GITHUB, "KVF_FIX_SERVICE_ENDPOINTS": "true"}

    audit = service(emulator, tmp_path, **fixing, KVF_MODE="audit")
    audit.scheduled_run()
    audit.ranges()
    svc = service(emulator, tmp_path, **fixing)
    svc.run(write=False, mode="plan")  # the CLI's plan and the HTTP dry run
    assert not [r for r in emulator.requests if r.method == "PUT"]

    report = enforce(svc)

    [put] = [r for r in emulator.requests if r.method == "PUT"]
    assert put.path.lower() == A.lower()
    assert report.to_json()["agentNetworks"]["endpointFixes"] == [
        {"subnet": A, "outcome": "added", "detail": ""}
    ]
    assert not [w for w in report.warnings if "service endpoint" in w]
    subnet = emulator.agent_networks.subnet(A)["properties"]
    assert [e["service"] for e in subnet["serviceEndpoints"]] == [
        "Microsoft.Storage",
        "Microsoft.KeyVault",
    ]
    assert subnet["delegations"][0]["properties"]["serviceName"] == "GitHub.Network/networkSettings"


def pool_event(resource_id: str) -> dict:
    kind = resource_id.split("/providers/")[1].rsplit("/", 1)[0]
    subject = resource_id.replace("/resourceGroups/", "/resourcegroups/")
    return {
        "event_type": WRITE_SUCCESS,
        "subject": subject,
        "data": {
            "operationName": f"{kind}/write",
            "resourceUri": subject,
            "subscriptionId": resource_id.split("/")[2],
            "status": "Succeeded",
        },
    }


def test_a_listed_or_discovered_pools_write_reconciles_every_vault(emulator, tmp_path, subnets):
    emulator.agent_networks.put_resource(scale_set_payload(VMSS, [[A]]))
    vaults = [emulator.add_vault(SUB, "apps", f"kv-{n}") for n in range(3)]
    svc = service(emulator, tmp_path, KVF_AGENT_POOLS=VMSS)
    enforce(svc)
    # A scale set scaling out is a write too: one read shows its network unchanged.
    emulator.clear_log()
    scaled = svc.handle_event(**pool_event(VMSS))
    assert scaled.action == "ignored" and "unchanged" in scaled.reason
    assert [(r.method, r.path) for r in emulator.requests] == [("GET", VMSS)]
    emulator.agent_networks.put_resource(scale_set_payload(VMSS, [[B]]))

    outcome = svc.handle_event(**pool_event(VMSS))

    assert outcome.action == "reconciled" and outcome.report.counts["updated"] == 3
    assert all(subnets_of(emulator, v) == {B.lower()} for v in vaults)

    discovered = f"{RG}/Microsoft.DevOpsInfrastructure/pools/mdp-new"
    emulator.agent_networks.put_resource(pool_payload(discovered, subnet_id=C))
    discovering = service(emulator, tmp_path, KVF_AGENT_POOLS=VMSS, KVF_DISCOVER_POOLS="true")
    assert discovering.handle_event(**pool_event(discovered)).action == "reconciled"
    assert all(subnets_of(emulator, v) == {B.lower(), C.lower()} for v in vaults)


@pytest.mark.parametrize(
    "pool",
    [
        f"{RG}/Microsoft.DevOpsInfrastructure/pools/someone-elses",
        f"{RG}/Microsoft.Compute/virtualMachineScaleSets/web-frontend",
        GITHUB,
    ],
)
def test_a_write_of_any_other_pool_is_ignored_without_a_call(emulator, tmp_path, pool):
    svc = service(emulator, tmp_path, KVF_AGENT_POOLS=VMSS)
    emulator.clear_log()
    outcome = svc.handle_event(**pool_event(pool))
    assert outcome.action == "ignored" and "neither listed nor discovered" in outcome.reason
    assert emulator.requests == []


class FakeClock:
    """Moves only when a request takes time or the run sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_pool_event_reaches_a_small_estate_within_event_grids_wait(
    emulator, tmp_path, subnets, monkeypatch
):
    from kvfirewall.vaults import Arm

    clock = FakeClock()
    monkeypatch.setattr(
        service_module, "Arm", functools.partial(Arm, sleep=clock.sleep, clock=clock.clock)
    )
    emulator.agent_networks.put_resource(pool_payload(POOL, subnet_id=A))
    vaults = [emulator.add_vault(SUB, "apps", f"kv-{n}") for n in range(5)]
    svc = service(emulator, tmp_path, KVF_AGENT_POOLS=POOL)
    # Every request takes 0.2 s of the event's 20: a dozen of them leave plenty, but less
    # than the 30 s an HTTP run keeps back before it starts a vault.
    emulator.intercept("*", "^/subscriptions/", before=lambda _: clock.sleep(0.2), times=1000)

    outcome = svc.handle_event(**pool_event(POOL))

    report = outcome.report
    assert (report.counts["updated"], report.cut_short, report.cut_short_subscriptions) == (5, 0, 0)
    assert all(subnets_of(emulator, v) == {A.lower()} for v in vaults)
    assert clock.now < service_module.EVENT_BUDGET_SECONDS


def test_the_cli_ranges_lists_the_pools(emulator, tmp_path, subnets, monkeypatch, capsys):
    from kvfirewall.cli import main

    emulator.agent_networks.put_resource(pool_payload(POOL, subnet_id=A))
    for name, value in {
        "KVF_SUBSCRIPTIONS": SUB,
        "KVF_IP_SOURCE": "builtin",
        "KVF_STATE": str(tmp_path / "state"),
        "KVF_AGENT_POOLS": POOL,
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["ranges", "--json"]) == 0
    [pool] = json.loads(capsys.readouterr().out)["pools"]
    assert pool["subnets"] == [{"id": A, "serviceEndpoint": True}] and pool["status"] == "ok"
    assert main(["ranges"]) == 0
    assert f"pool {POOL}: ok" in capsys.readouterr().out
