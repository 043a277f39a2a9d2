"""Scope by management group, and listing through Resource Graph, against the emulator.

The graph is a lagging copy of Resource Manager: these tests freeze it (`lag = inf`) and
take a snapshot at a chosen point (`catch_up`), then change vaults behind its back, to show
that a stale row never makes a wrong write.
"""

from __future__ import annotations

import math
import threading
from ipaddress import ip_network

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from kvfirewall.ledger import open_store
from kvfirewall.management_groups import ManagementGroups
from kvfirewall.reconcile import reconcile
from kvfirewall.resource_graph import GraphFailed, ResourceGraph
from kvfirewall.rules import parse_vault_id
from kvfirewall.settings import Settings, SettingsError, StateLocation
from kvfirewall.vaults import Arm, OutOfTime
from tests.test_vaults import FakeTime  # one simulated clock for the quota and the waits

SUB_A = "11111111-1111-1111-1111-111111111111"
SUB_B = "22222222-2222-2222-2222-222222222222"
SUB_C = "33333333-3333-3333-3333-333333333333"
SUB_D = "44444444-4444-4444-4444-444444444444"
SUB_OTHER = "55555555-5555-5555-5555-555555555555"
GROUP = "/providers/Microsoft.Management/managementGroups/mg-platform"
OURS = "52.10.20.30"  # the one rule these tests allow (no ranges: no source is asked)
DENY = {"defaultAction": "Deny", "bypass": "AzureServices"}


@pytest.fixture
def groups(emulator):
    """mg-platform holds SUB_B directly and SUB_C through a child group."""
    hierarchy = emulator.management_groups
    hierarchy.add_group("mg-platform")
    hierarchy.add_group("mg-child", parent="mg-platform")
    hierarchy.add_subscription(SUB_B, "mg-platform")
    hierarchy.add_subscription(SUB_C, "mg-child")
    hierarchy.add_subscription(SUB_OTHER, "mg-elsewhere")
    return hierarchy


@pytest.fixture
def run(emulator, tmp_path, monkeypatch):
    """A reconcile with the product's wiring; settings from the environment."""
    monkeypatch.setenv("KVF_SUBSCRIPTIONS", f"{SUB_A},{GROUP}")
    monkeypatch.setenv("KVF_EXTRA_IP_RULES", OURS)
    monkeypatch.setenv("KVF_STATE", str(tmp_path / "state"))
    clock = FakeTime()

    def _run(*, vault: str | None = None, write: bool = True):
        settings = Settings.from_env()
        arm = Arm(
            endpoint=settings.arm_endpoint,
            subscriptions=settings.subscriptions,
            sleep=clock.sleep,
            clock=clock.clock,
        )
        return reconcile(
            settings,
            store=open_store(settings.state),
            arm=arm,
            write=write,
            mode="enforce" if write else "plan",
            vault=parse_vault_id(vault) if vault else None,
        )

    _run.clock = clock
    return _run


def rules(emulator, vault_id: str) -> set:
    acls = emulator.vault(vault_id)["properties"].get("networkAcls") or {}
    return {ip_network(r["value"]) for r in acls.get("ipRules", [])}


def requests_for(emulator, vault_id: str, method: str) -> int:
    return sum(
        1
        for r in emulator.requests
        if r.method == method and r.path.lower() == vault_id.lower() and r.status < 400
    )


# ---- settings ------------------------------------------------------------------------------


def test_management_groups_mix_with_subscriptions_and_choose_the_listing():
    env = {"KVF_EXTRA_IP_RULES": OURS}
    mixed = Settings.from_env({**env, "KVF_SUBSCRIPTIONS": f"{SUB_A.upper()}, {GROUP}/,"})
    assert mixed.subscriptions == (SUB_A,)
    assert mixed.management_groups == ("mg-platform",)
    assert mixed.listing == "graph"  # the default with a management group
    assert Settings.from_env({**env, "KVF_SUBSCRIPTIONS": SUB_A}).listing == "arm"
    chosen = Settings.from_env({**env, "KVF_SUBSCRIPTIONS": GROUP, "KVF_LISTING": "ARM"})
    assert (chosen.subscriptions, chosen.listing) == ((), "arm")


@pytest.mark.parametrize(
    "entry",
    [
        "/providers/Microsoft.Management/managementGroups/",
        "/providers/Microsoft.Management/managementGroups/mg/subscriptions/x",
        "/providers/Microsoft.Management/managementGroups/ends-with-a-dot.",
        "/subscriptions/11111111-1111-1111-1111-111111111111",
        "mg-platform",
    ],
)
def test_a_malformed_scope_entry_is_a_settings_error_naming_it(emulator, entry):
    with pytest.raises(SettingsError, match="KVF_SUBSCRIPTIONS") as error:
        Settings.from_env({"KVF_SUBSCRIPTIONS": f"{SUB_A},{entry}", "KVF_EXTRA_IP_RULES": OURS})
    assert repr(entry) in str(error.value)
    assert emulator.requests == []  # refused before any Azure request


def test_an_unknown_listing_is_a_settings_error():
    with pytest.raises(SettingsError, match="KVF_LISTING: 'resourcegraph' is not one of"):
        Settings.from_env(
            {"KVF_SUBSCRIPTIONS": SUB_A, "KVF_EXTRA_IP_RULES": OURS, "KVF_LISTING": "resourcegraph"}
        )


# ---- scope by management group -------------------------------------------------------------


def test_mixed_group_and_subscription_scope_manages_exactly_their_vaults(emulator, groups, run):
    vaults = {
        sub: emulator.add_vault(sub, "rg", f"kv-{sub[:4]}", network_acls=DENY)
        for sub in (SUB_A, SUB_B, SUB_C, SUB_OTHER)
    }

    report = run()

    assert report.counts["updated"] == 3
    for sub in (SUB_A, SUB_B, SUB_C):  # named, in the group, in its child group
        assert rules(emulator, vaults[sub]) == {ip_network(OURS)}
    assert rules(emulator, vaults[SUB_OTHER]) == set()  # under another group
    assert requests_for(emulator, vaults[SUB_OTHER], "GET") == 0
    assert report.warnings == []


def test_a_subscription_moved_into_the_group_is_managed_from_the_next_run(emulator, groups, run):
    run()
    vault = emulator.add_vault(SUB_D, "rg", "kv-new", network_acls=DENY)
    assert run().counts["updated"] == 0  # not in the group yet
    groups.add_subscription(SUB_D, "mg-child")

    report = run()

    assert report.counts["updated"] == 1
    assert rules(emulator, vault) == {ip_network(OURS)}


@pytest.mark.parametrize("status", [403, 404])
def test_an_unreadable_group_gives_one_warning_and_removes_nothing(
    emulator, groups, run, monkeypatch, status
):
    named = emulator.add_vault(SUB_A, "rg", "kv-named", network_acls=DENY)
    grouped = emulator.add_vault(SUB_B, "rg", "kv-grouped", network_acls=DENY)
    run()
    assert rules(emulator, grouped) == {ip_network(OURS)}
    # Our rule is now unwanted (another one replaces it), and the group cannot be read.
    monkeypatch.setenv("KVF_EXTRA_IP_RULES", "52.10.20.31")
    groups.refuse("mg-platform", status)
    before = emulator.vault(grouped)
    emulator.clear_log()

    report = run()
    single = run(vault=grouped)

    [warning] = report.warnings
    assert "management group mg-platform could not be read" in warning
    assert ("AuthorizationFailed" if status == 403 else "NotFound") in warning
    assert "nothing is removed" in warning
    assert emulator.vault(grouped) == before  # not reached: kept as it was
    assert rules(emulator, named) == {ip_network("52.10.20.31")}  # named: reconciled
    [result] = single.vaults
    assert result.outcome == "skipped" and result.reason.startswith("not reached")
    assert requests_for(emulator, grouped, "GET") == 0


# ---- listing through Resource Graph --------------------------------------------------------


def test_graph_pages_hold_1000_rows_in_id_order(emulator):
    ids = [emulator.add_vault(SUB_A, "rg", f"kv-{i:05d}") for i in range(2100)]
    arm = Arm(endpoint=emulator.url, subscriptions=(SUB_A,))

    listed = [state.id for state in ResourceGraph(arm).vaults([SUB_A])]

    assert listed == sorted(ids, key=str.lower)
    queries = [r for r in emulator.requests if r.path.endswith("Microsoft.ResourceGraph/resources")]
    assert [q.body["options"]["$top"] for q in queries] == [1000, 1000, 1000]
    assert [bool(q.body["options"].get("$skipToken")) for q in queries] == [False, True, True]
    assert arm.counts.reads == 3 and arm.counts.writes == 0  # a query is a read


def graph_queries(emulator) -> list:
    return [r for r in emulator.requests if r.path.endswith("Microsoft.ResourceGraph/resources")]


def test_the_next_graph_page_is_fetched_while_the_caller_works_and_no_further(emulator):
    """While the caller holds a page's rows, the next page is asked for; a caller that stops
    early leaves at most that one page read beyond its own, and rows come in id order."""
    emulator.graph.page_size = 2
    ids = sorted((emulator.add_vault(SUB_A, "rg", f"kv-{i:02d}") for i in range(10)), key=str.lower)
    second_asked = threading.Event()
    asked: list[int] = []

    def count(_emulator) -> None:
        asked.append(len(asked))
        if len(asked) == 2:
            second_asked.set()

    emulator.intercept("POST", "Microsoft.ResourceGraph/resources", before=count, times=5)
    arm = Arm(endpoint=emulator.url, subscriptions=(SUB_A,))
    listing = ResourceGraph(arm).vaults([SUB_A])

    taken = [next(listing).id]
    assert second_asked.wait(timeout=30)  # page 2 asked for while page 1 is in the caller's hands
    taken += [next(listing).id, next(listing).id]  # the rest of page 1, the first row of page 2
    listing.close()

    assert taken == ids[:3]
    # Page 3 may have been asked for ahead (or cancelled before it was); pages 4 and 5 never.
    assert len(graph_queries(emulator)) <= 3
    emulator.clear_log()
    assert [state.id for state in ResourceGraph(arm).vaults([SUB_A])] == ids
    assert len(graph_queries(emulator)) == 5


def test_no_graph_page_is_asked_for_ahead_once_the_budget_is_spent(emulator):
    """The page fetched ahead is still yielded; the one after it, which the budget no longer
    allows, is never asked for."""
    emulator.graph.page_size = 2
    ids = sorted((emulator.add_vault(SUB_A, "rg", f"kv-{i}") for i in range(6)), key=str.lower)
    fake = FakeTime()
    arm = Arm(
        endpoint=emulator.url,
        subscriptions=(SUB_A,),
        sleep=fake.sleep,
        clock=fake.clock,
        budget_seconds=10,
    )
    listing = ResourceGraph(arm).vaults([SUB_A], reserve_seconds=5)

    taken = [next(listing).id, next(listing).id]  # page 1; page 2 asked for meanwhile
    fake.now = 6.0  # 4 s left, less than the 5 s a page needs in reserve
    taken += [next(listing).id, next(listing).id]
    with pytest.raises(OutOfTime):
        next(listing)

    assert taken == ids[:4]
    assert len(graph_queries(emulator)) == 2


def test_the_graph_quota_is_waited_for_rather_than_spent(emulator):
    """20 pages against 15 queries a 5-second window: the client waits for the window to
    reset, as the quota headers tell, and gets no 429."""
    fake = FakeTime()
    emulator.clock = fake.clock
    emulator.graph.page_size = 1
    ids = [emulator.add_vault(SUB_A, "rg", f"kv-{i:02d}") for i in range(20)]
    arm = Arm(endpoint=emulator.url, subscriptions=(SUB_A,), sleep=fake.sleep, clock=fake.clock)

    listed = [state.id for state in ResourceGraph(arm).vaults([SUB_A])]

    assert len(listed) == len(ids)
    assert [r.status for r in emulator.requests] == [200] * 20
    assert fake.sleeps == [5.0]  # once, for the window to reset


def test_a_throttled_graph_falls_back_to_listing_per_subscription(emulator, groups, run):
    emulator.clock = run.clock.clock
    emulator.graph.quota = (0, 5.0)  # another instance of the identity spends every window
    vaults = [emulator.add_vault(s, "rg", f"kv-{s[:4]}", network_acls=DENY) for s in (SUB_A, SUB_B)]

    report = run()

    [warning] = report.warnings
    assert warning.startswith("listing through Resource Graph failed (HttpResponseError")
    assert "listed per subscription instead" in warning
    assert report.counts["updated"] == 2
    assert all(rules(emulator, v) == {ip_network(OURS)} for v in vaults)
    throttled = [r for r in emulator.requests if r.status == 429]
    assert len(throttled) == 3  # every attempt of the first page, each after the window
    assert run.clock.sleeps.count(5.0) == 2


def test_a_stale_graph_row_never_makes_a_wrong_write(emulator, run, monkeypatch):
    monkeypatch.setenv("KVF_SUBSCRIPTIONS", SUB_A)
    monkeypatch.setenv("KVF_LISTING", "graph")
    compliant = emulator.add_vault(SUB_A, "rg", "kv-compliant", network_acls=DENY)
    run()  # now compliant, its rule ours
    fixed = emulator.add_vault(SUB_A, "rg", "kv-fixed", network_acls=DENY)
    changed = emulator.add_vault(SUB_A, "rg", "kv-changed", network_acls=DENY)
    emulator.graph.lag = math.inf  # the graph shows only what it had at catch_up()
    emulator.graph.catch_up()
    # After the graph's snapshot: the compliant vault drifts, another is fixed by its team,
    # and the third gains a rule of its team's.
    emulator.write_as(compliant, network_acls=DENY)
    emulator.write_as(fixed, network_acls={**DENY, "ipRules": [{"value": OURS}]})
    emulator.write_as(changed, network_acls={**DENY, "ipRules": [{"value": "8.8.8.8"}]})
    emulator.clear_log()

    report = run()

    # Shown compliant: not read at all, left to its event or the next run.
    assert requests_for(emulator, compliant, "GET") == 0
    assert requests_for(emulator, compliant, "PATCH") == 0
    # Shown drifted, fixed meanwhile: the fresh read decides, and nothing is written.
    assert requests_for(emulator, fixed, "GET") >= 1
    assert requests_for(emulator, fixed, "PATCH") == 0
    # Shown drifted, changed meanwhile: the write is planned on the fresh read, so the
    # team's new rule stays.
    [patch] = [r for r in emulator.requests if r.method == "PATCH"]
    assert patch.path.lower() == changed.lower()
    assert rules(emulator, changed) == {ip_network("8.8.8.8/32"), ip_network(OURS)}
    assert report.counts["updated"] == 1


def test_an_in_sync_graph_run_reads_one_page_and_no_vault(emulator, run, monkeypatch):
    monkeypatch.setenv("KVF_SUBSCRIPTIONS", f"{SUB_A},{SUB_B}")
    monkeypatch.setenv("KVF_LISTING", "graph")
    for index in range(30):
        emulator.add_vault((SUB_A, SUB_B)[index % 2], "rg", f"kv-{index:02d}", network_acls=DENY)
    assert run().counts["updated"] == 30
    emulator.clear_log()

    report = run()

    assert report.counts["unchanged"] == 30
    assert report.arm_calls == {"reads": 1, "writes": 0, "throttled": 0}
    assert [r.method for r in emulator.requests] == ["POST"]


# ---- the emulator's tenant-level APIs --------------------------------------------------------


def test_descendants_of_a_group_at_any_depth_and_its_refusals(emulator, groups):
    groups.page_size = 1  # a page per descendant: nextLink is followed
    arm = Arm(endpoint=emulator.url, subscriptions=())
    reader = ManagementGroups(arm)
    assert sorted(reader.subscriptions("mg-platform")) == [SUB_B, SUB_C]
    assert reader.subscriptions("mg-child") == [SUB_C]
    with pytest.raises(ResourceNotFoundError):
        reader.subscriptions("mg-unknown")
    groups.refuse("mg-child", 403)
    with pytest.raises(HttpResponseError) as denied:
        reader.subscriptions("mg-child")
    assert denied.value.status_code == 403


def test_the_graph_refuses_a_query_it_does_not_model(emulator):
    from azure.mgmt.resourcegraph import ResourceGraphClient
    from azure.mgmt.resourcegraph.models import QueryRequest

    client = Arm(endpoint=emulator.url, subscriptions=()).tenant_client(ResourceGraphClient)
    with pytest.raises(HttpResponseError) as refused:
        client.resources(QueryRequest(subscriptions=[SUB_A], query="resources | take 5"))
    assert refused.value.status_code == 400
    assert "Query is invalid" in str(refused.value)


def test_graph_failure_is_reported_as_one_line(emulator):
    emulator.fail("POST", "Microsoft.ResourceGraph/resources", 500)
    with pytest.raises(GraphFailed) as failed:
        list(ResourceGraph(Arm(endpoint=emulator.url, subscriptions=())).vaults([SUB_A]))
    assert "\n" not in str(failed.value)


def test_an_event_in_a_groups_subscription_is_reconciled_and_one_elsewhere_is_not(
    emulator, groups, tmp_path
):
    from kvfirewall.service import Service

    settings = Settings.from_env(
        {
            "KVF_SUBSCRIPTIONS": GROUP,
            "KVF_EXTRA_IP_RULES": OURS,
            "KVF_MODE": "enforce",
            "KVF_ARM_ENDPOINT": emulator.url,
        }
    )
    service = Service(settings, store=open_store(StateLocation(kind="local", value=str(tmp_path))))
    outcomes = {}
    for sub in (SUB_C, SUB_OTHER):
        vault = emulator.add_vault(sub, "rg", f"kv-{sub[:4]}")
        emulator.write_as(vault, network_acls=DENY)  # the team's write raises the event
        event = emulator.events[-1]
        outcome = service.handle_event(
            event_type=event["eventType"], subject=event["subject"], data=event["data"]
        )
        outcomes[sub] = (outcome.action, outcome.report.vaults[0].outcome, vault)

    assert outcomes[SUB_C][:2] == ("reconciled", "updated")
    assert rules(emulator, outcomes[SUB_C][2]) == {ip_network(OURS)}
    assert outcomes[SUB_OTHER][:2] == ("reconciled", "skipped")
    assert requests_for(emulator, outcomes[SUB_OTHER][2], "GET") == 0
