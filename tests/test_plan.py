"""The planner's safety rules, as examples and as hypothesis properties."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Network, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from kvfirewall.ledger import LedgerEntry
from kvfirewall.plan import VaultState, plan_vault
from kvfirewall.ranges import Desired
from kvfirewall.rules import subnet_key

VAULT = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1"
SUBNET_A = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/Net/providers/Microsoft.Network/virtualNetworks/agents/subnets/Pool-A"
SUBNET_B = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/Net/providers/Microsoft.Network/virtualNetworks/agents/subnets/Pool-B"
WEU = IPv4Network("40.74.28.0/23")
NEU = IPv4Network("20.166.41.0/24")


def desired(*nets: IPv4Network, subnets: tuple[str, ...] = ()) -> Desired:
    return Desired(
        ip_rules={n: "test" for n in nets},
        subnets={subnet_key(s): (s, "test") for s in subnets},
    )


def vault(ips=(), subnets=(), *, default="Deny", bypass="AzureServices", pna="Enabled"):
    acls = {
        "defaultAction": default,
        "bypass": bypass,
        "ipRules": [{"value": v} for v in ips],
        "virtualNetworkRules": [{"id": s} for s in subnets],
    }
    return VaultState(id=VAULT, public_network_access=pna, network_acls=acls)


def ips_of(plan) -> list[str]:
    return [r["value"] for r in plan.network_acls["ipRules"]]


def test_adds_desired_and_keeps_foreign_rules_and_settings():
    plan = plan_vault(vault(["8.8.8.8/32"], bypass="None"), LedgerEntry(), desired(WEU, NEU))
    assert plan.action == "write"
    assert ips_of(plan) == ["8.8.8.8/32", str(WEU), str(NEU)]
    assert plan.network_acls["defaultAction"] == "Deny"
    assert plan.network_acls["bypass"] == "None"
    assert [c.rule for c in plan.kept] == ["8.8.8.8/32"]
    assert plan.owned.ip_rules == {WEU, NEU}


def test_bare_ip_equals_its_slash_32_so_a_compliant_vault_gets_no_write():
    entry = LedgerEntry(ip_rules=frozenset({IPv4Network("52.1.2.3/32")}))
    plan = plan_vault(vault(["52.1.2.3/32"]), entry, desired(IPv4Network("52.1.2.3")))
    assert plan.action == "none"
    assert plan.network_acls is None


def test_foreign_bare_ip_and_our_slash_32_are_one_rule_and_not_claimed():
    plan = plan_vault(
        vault(["52.1.2.3", WEU.exploded]), LedgerEntry(), desired(IPv4Network("52.1.2.3/32"), NEU)
    )
    assert ips_of(plan) == ["52.1.2.3/32", str(WEU), str(NEU)]
    assert IPv4Network("52.1.2.3/32") not in plan.owned.ip_rules
    assert {c.rule for c in plan.kept} == {"52.1.2.3", str(WEU)}


def test_subnet_ids_compare_case_insensitively():
    current = vault(subnets=[SUBNET_A.lower()])
    plan = plan_vault(
        current,
        LedgerEntry(subnets=frozenset({subnet_key(SUBNET_A)})),
        desired(subnets=(SUBNET_A,)),
    )
    assert plan.action == "none"


def test_removes_only_owned_rules_that_left_the_desired_set():
    entry = LedgerEntry(ip_rules=frozenset({WEU, NEU}))
    plan = plan_vault(vault([str(WEU), str(NEU), "8.8.8.8/32"]), entry, desired(WEU))
    assert plan.action == "write"
    assert ips_of(plan) == [str(WEU), "8.8.8.8/32"]
    assert [c.rule for c in plan.removed] == [str(NEU)]
    assert plan.owned.ip_rules == {WEU}


def test_a_rule_equal_to_a_range_but_added_by_someone_else_is_never_removed():
    plan = plan_vault(vault([str(NEU)]), LedgerEntry(), desired(WEU))
    assert str(NEU) in ips_of(plan)
    later = plan_vault(vault([str(NEU), str(WEU)]), plan.owned, desired())
    assert ips_of(later) == [str(NEU)]


def test_open_vault_and_vault_without_acls_get_the_rules_with_default_action_as_is():
    open_plan = plan_vault(vault(default="Allow"), LedgerEntry(), desired(WEU))
    assert open_plan.network_acls["defaultAction"] == "Allow"
    bare = VaultState(id=VAULT, public_network_access="Enabled", network_acls=None)
    bare_plan = plan_vault(bare, LedgerEntry(), desired(WEU, subnets=(SUBNET_A,)))
    assert bare_plan.network_acls == {
        "defaultAction": "Allow",
        "bypass": "AzureServices",
        "ipRules": [{"value": str(WEU)}],
        "virtualNetworkRules": [{"id": SUBNET_A, "ignoreMissingVnetServiceEndpoint": True}],
    }
    assert "firewall open" in bare_plan.reason


def test_public_network_access_disabled_or_perimeter_is_skipped_with_a_reason():
    plan = plan_vault(vault(pna="Disabled"), LedgerEntry(), desired(WEU))
    assert plan.action == "skip"
    assert "no effect" in plan.reason
    assert plan.network_acls is None
    perimeter = plan_vault(vault(pna="SecuredByPerimeter"), LedgerEntry(), desired(WEU))
    assert (perimeter.action, perimeter.reason) == (
        "skip",
        "secured by a network security perimeter: firewall rules have no effect",
    )


def test_plans_over_the_service_limits_are_refused_and_up_to_them_accepted():
    many = [IPv4Network(f"20.{i // 256}.{i % 256}.0/24") for i in range(1001)]
    assert plan_vault(vault(), LedgerEntry(), desired(*many)).action == "refuse"
    assert plan_vault(vault(), LedgerEntry(), desired(*many[:1000])).action == "write"
    foreign = plan_vault(vault(["8.8.8.8"]), LedgerEntry(), desired(*many[:1000]))
    assert foreign.action == "refuse" and "1001 IPv4" in foreign.reason
    subnets = tuple(SUBNET_A.replace("Pool-A", f"s{i}") for i in range(201))
    assert plan_vault(vault(), LedgerEntry(), desired(subnets=subnets)).action == "refuse"
    assert plan_vault(vault(), LedgerEntry(), desired(subnets=subnets[:200])).action == "write"


def test_pending_additions_from_a_crashed_run_are_recognised_as_ours():
    entry = LedgerEntry(pending_ip_rules=frozenset({WEU, NEU}))
    # The crashed write had landed WEU; NEU never made it. Both left the desired set.
    plan = plan_vault(vault([str(WEU), "8.8.8.8/32"]), entry, desired())
    assert ips_of(plan) == ["8.8.8.8/32"]
    assert plan.owned == LedgerEntry()


def test_unparseable_foreign_values_are_kept_verbatim():
    plan = plan_vault(vault(["'10.91.4.0/24'"]), LedgerEntry(), desired(WEU))
    assert ips_of(plan) == ["'10.91.4.0/24'", str(WEU)]


# ---- properties -------------------------------------------------------------------------

POOL = [
    *(IPv4Network(f"52.{i}.0.0/24") for i in range(6)),
    *(IPv4Network(f"40.1.2.{i}/32") for i in range(6)),
    IPv4Network("20.0.0.0/16"),
]
SUBNETS = [SUBNET_A.replace("Pool-A", f"Pool-{c}") for c in "ABCDE"]

nets = st.sets(st.sampled_from(POOL), max_size=len(POOL))
subnet_sets = st.sets(st.sampled_from(SUBNETS), max_size=len(SUBNETS))


def _render(network: IPv4Network, bare: bool) -> str:
    """How someone else may have written a rule: `x.x.x.x` or `x.x.x.x/32` or a CIDR."""
    return str(network.network_address) if bare and network.prefixlen == 32 else str(network)


@st.composite
def vault_states(draw):
    present = draw(st.lists(st.sampled_from(POOL), max_size=15))
    present_subnets = draw(st.lists(st.sampled_from(SUBNETS), max_size=6))
    values = [_render(n, draw(st.booleans())) for n in present]
    ids = [s.lower() if draw(st.booleans()) else s for s in present_subnets]
    pna = draw(st.sampled_from(["Enabled", "Enabled", "Disabled"]))
    if draw(st.integers(0, 5)) == 0:
        return VaultState(id=VAULT, public_network_access=pna, network_acls=None)
    return vault(
        values,
        ids,
        default=draw(st.sampled_from(["Allow", "Deny"])),
        bypass=draw(st.sampled_from(["AzureServices", "None"])),
        pna=pna,
    )


@st.composite
def entries(draw):
    return LedgerEntry(
        ip_rules=frozenset(draw(nets)),
        subnets=frozenset(subnet_key(s) for s in draw(subnet_sets)),
        pending_ip_rules=frozenset(draw(nets)) if draw(st.booleans()) else frozenset(),
        pending_subnets=(
            frozenset(subnet_key(s) for s in draw(subnet_sets))
            if draw(st.booleans())
            else frozenset()
        ),
    )


@st.composite
def desires(draw):
    want = desired(*draw(nets), subnets=tuple(draw(subnet_sets)))
    if draw(st.integers(0, 4)) == 0:  # a configured region without ranges: removals on hold
        want = dataclasses.replace(want, missing_regions=("westeurpoe",))
    return want


def _nets(state: VaultState) -> set:
    acls = state.network_acls or {}
    return {ip_network(r["value"], strict=False) for r in acls.get("ipRules", [])}


def _subnet_keys(state: VaultState) -> set:
    acls = state.network_acls or {}
    return {subnet_key(r["id"]) for r in acls.get("virtualNetworkRules", [])}


def serve(state: VaultState, acls: dict, public: str | None = None) -> VaultState:
    """What Key Vault returns after a PATCH: /32 appended, subnet ids lower-cased."""
    return VaultState(
        id=state.id,
        public_network_access=public or state.public_network_access,
        network_acls={
            "defaultAction": acls["defaultAction"],
            "bypass": acls["bypass"],
            "ipRules": [{"value": str(ip_network(r["value"]))} for r in acls["ipRules"]],
            "virtualNetworkRules": [{"id": r["id"].lower()} for r in acls["virtualNetworkRules"]],
        },
    )


def _open(state: VaultState) -> bool:
    return str((state.network_acls or {}).get("defaultAction") or "Allow").lower() == "allow"


def _enabled(state: VaultState) -> bool:
    return (state.public_network_access or "").lower() != "disabled"


@settings(max_examples=600, deadline=None)
@given(vault_states(), entries(), desires(), st.booleans(), st.booleans())
def test_properties_of_every_plan(state, entry, want, lock_open, enable_disabled):
    options = {"lock_open": lock_open, "enable_disabled": enable_disabled}
    plan = plan_vault(state, entry, want, **options)
    if plan.action == "write":
        after = serve(state, plan.network_acls, plan.public_network_access)
    else:
        after = state
    owned_nets = entry.ip_rules | entry.pending_ip_rules
    owned_subnets = entry.subnets | entry.pending_subnets

    # Never removes a foreign rule.
    assert _nets(state) - owned_nets <= _nets(after)
    assert _subnet_keys(state) - owned_subnets <= _subnet_keys(after)
    # Never widens: nothing outside what was there plus the desired set; an open firewall
    # only ever closes; public access is enabled only from "disabled", only when asked, and
    # then every rule it brings to life is a desired one.
    assert _nets(after) <= _nets(state) | set(want.ip_rules)
    assert _subnet_keys(after) <= _subnet_keys(state) | set(want.subnets)
    assert _open(after) <= _open(state)
    if _enabled(after) and not _enabled(state):
        assert enable_disabled
        assert _nets(after) <= set(want.ip_rules)
        assert _subnet_keys(after) <= set(want.subnets)
        assert not _open(after)
    if plan.action == "write":
        before = state.network_acls or {}
        default_action = before.get("defaultAction") or "Allow"
        if lock_open or not _enabled(state):
            default_action = "Deny" if _open(state) else default_action
        assert plan.network_acls["defaultAction"] == default_action
        assert plan.network_acls["bypass"] == (before.get("bypass") or "AzureServices")
        values = [r["value"] for r in plan.network_acls["ipRules"]]
        # One network once, always canonical.
        assert len({ip_network(v) for v in values}) == len(values)
        assert all(str(ip_network(v)) == v for v in values)
        ids = [subnet_key(r["id"]) for r in plan.network_acls["virtualNetworkRules"]]
        assert len(set(ids)) == len(ids)
    # Converges wherever rules take effect: everything desired is there afterwards, and a
    # lock-down, when asked for, is done.
    if _enabled(after):
        assert set(want.ip_rules) <= _nets(after)
        assert set(want.subnets) <= _subnet_keys(after)
        assert not (lock_open and _open(after))
    # Removes only owned rules that left the desired set, and never claims foreign ones.
    removed_nets = {ip_network(c.rule) for c in plan.removed if not c.rule.startswith("/")}
    removed_subnets = {subnet_key(c.rule) for c in plan.removed if c.rule.startswith("/")}
    assert removed_nets <= owned_nets - set(want.ip_rules)
    assert removed_subnets <= owned_subnets - set(want.subnets)
    if want.missing_regions:
        assert not removed_nets  # an incomplete desired set removes no IP rule
    if plan.action in ("skip", "refuse"):
        assert plan.owned == entry and plan.network_acls is None  # nothing touched
        return
    held = (owned_nets & _nets(state)) if want.missing_regions else set()
    assert plan.owned.ip_rules <= set(want.ip_rules) | held
    assert not (plan.owned.ip_rules & (_nets(state) - owned_nets))
    assert not (plan.owned.subnets & (_subnet_keys(state) - owned_subnets))
    # plan(apply(plan)) is a no-op.
    again = plan_vault(after, plan.owned, want, **options)
    assert again.action == "none", again
    assert again.owned == plan.owned


@settings(max_examples=100, deadline=None)
@given(entries(), desires())
def test_vaults_with_public_access_disabled_are_never_written(entry, want):
    state = vault(["52.0.0.0/24"], pna="Disabled")
    assert plan_vault(state, entry, want, lock_open=True).action == "skip"


def test_lock_open_vaults_closes_an_open_firewall_and_says_so():
    plan = plan_vault(
        vault(["8.8.8.8"], default="Allow"), LedgerEntry(), desired(WEU), lock_open=True
    )
    assert plan.network_acls["defaultAction"] == "Deny"
    assert ips_of(plan) == ["8.8.8.8/32", str(WEU)]  # someone's rule still admitted
    assert plan.public_network_access is None
    assert [c.rule for c in plan.access] == ["defaultAction: Allow -> Deny"]
    assert "defaultAction: Allow -> Deny" in plan.reason
    # An already compliant but open vault is written for the lock alone.
    compliant = vault([str(WEU)], default="Allow")
    entry = LedgerEntry(ip_rules=frozenset({WEU}))
    assert plan_vault(compliant, entry, desired(WEU)).action == "none"
    assert plan_vault(compliant, entry, desired(WEU), lock_open=True).action == "write"


def test_enable_disabled_vaults_switches_to_selected_networks_with_only_desired_rules():
    bare = VaultState(id=VAULT, public_network_access="Disabled", network_acls=None)
    plan = plan_vault(bare, LedgerEntry(), desired(WEU), enable_disabled=True)
    assert plan.action == "write"
    assert plan.public_network_access == "Enabled"
    assert plan.network_acls["defaultAction"] == "Deny"
    assert ips_of(plan) == [str(WEU)]
    assert {c.rule for c in plan.access} == {
        "publicNetworkAccess: Disabled -> Enabled",
        "defaultAction: Allow -> Deny",
    }


def test_a_disabled_vault_with_rules_outside_the_configured_set_is_not_switched():
    """Its old rules had no effect while access was disabled; switching would admit them."""
    stale = vault(["8.8.8.8", str(WEU)], pna="Disabled")
    plan = plan_vault(stale, LedgerEntry(), desired(WEU), enable_disabled=True)
    assert (plan.action, plan.network_acls, plan.public_network_access) == ("skip", None, None)
    assert "not switched" in plan.reason and "8.8.8.8" in plan.reason


def test_while_a_configured_region_has_no_ranges_no_owned_ip_rule_is_removed():
    entry = LedgerEntry(ip_rules=frozenset({WEU, NEU}))
    incomplete = Desired(ip_rules={WEU: "test"}, missing_regions=("northeurop",))
    plan = plan_vault(vault([str(WEU), str(NEU)]), entry, incomplete)
    assert plan.action == "none"
    assert plan.owned.ip_rules == {WEU, NEU}  # still ours, removed once the set is whole again
    later = plan_vault(vault([str(WEU), str(NEU)]), plan.owned, desired(WEU))
    assert [c.rule for c in later.removed] == [str(NEU)]
