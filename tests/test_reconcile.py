"""End to end through the real SDK and DefaultAzureCredential against the ARM emulator."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from datetime import datetime, timezone
from ipaddress import IPv4Network, ip_network
from pathlib import Path

import pytest

from emulator import server as emulator_server
from kvfirewall import reconcile as engine
from kvfirewall import writer
from kvfirewall.ledger import LedgerEntry, LocalStore, open_store
from kvfirewall.plan import VaultState
from kvfirewall.reconcile import reconcile
from kvfirewall.rules import parse_vault_id
from kvfirewall.settings import Settings
from kvfirewall.vaults import Arm, DeletedVault, WriteFailed
from kvfirewall.writer import same_instant
from tests.test_vaults import FakeTime

FIXTURES = Path(__file__).parent / "fixtures"
OCTOBER = json.loads((FIXTURES / "ServiceTags_Public_20251028.AzureDevOps-only.json").read_text())
SUB_A = "11111111-1111-1111-1111-111111111111"
SUB_B = "22222222-2222-2222-2222-222222222222"
SUB_OTHER = "33333333-3333-3333-3333-333333333333"
AGENTS = (
    f"/subscriptions/{SUB_A}/resourceGroups/Network-RG/providers/Microsoft.Network"
    "/virtualNetworks/agents-vnet/subnets/Agents"
)
FOREIGN_SUBNET = (
    f"/subscriptions/{SUB_B}/resourceGroups/app/providers/Microsoft.Network"
    "/virtualNetworks/app-vnet/subnets/web"
)
WEU = IPv4Network("40.74.28.0/23")
NEW_WEU = IPv4Network("20.61.10.0/24")
TAG = {"kvfirewall": "managed"}


def ado(document: dict, *regions: str) -> set[IPv4Network]:
    """The regional IPv4 prefixes, read straight from the service-tag document."""
    found = set()
    for value in document["values"]:
        if value["properties"]["region"] in regions:
            found |= {
                IPv4Network(p) for p in value["properties"]["addressPrefixes"] if ":" not in p
            }
    return found


def weu_moved() -> dict:
    """The next version of the tag, in which Azure moved West Europe to a new range."""
    doc = copy.deepcopy(OCTOBER)
    for value in doc["values"]:
        if value["name"] == "AzureDevOps":
            value["properties"]["changeNumber"] = 9
        if value["name"] == "AzureDevOps.WestEurope":
            value["properties"]["addressPrefixes"] = [str(NEW_WEU)]
    return doc


def crash_after_writes(monkeypatch):
    """Make every write land and then the process die before the ledger update."""
    original = Arm.update_network_acls

    def write_then_crash(self, ref, network_acls, **options):
        original(self, ref, network_acls, **options)
        raise RuntimeError("process died before the ledger update")

    monkeypatch.setattr(Arm, "update_network_acls", write_then_crash)
    return original


def after_listing(monkeypatch, change) -> None:
    """Let `change` happen between the listing of SUB_A and the writes (a race)."""
    original = Arm.list_vaults

    def list_then_change(self, subscription, **options):
        listed = list(original(self, subscription, **options))
        if subscription == SUB_A:
            change()
        yield from listed

    monkeypatch.setattr(Arm, "list_vaults", list_then_change)


def team_adds_west_europe(emulator) -> None:
    """The vault's team sets its own firewall, holding the West Europe range themselves."""
    emulator.add_vault(
        SUB_A,
        "apps",
        "kv-bare",
        tags=TAG,
        network_acls={
            "defaultAction": "Deny",
            "bypass": "AzureServices",
            "ipRules": [{"value": str(WEU)}],
            "virtualNetworkRules": [],
        },
    )


def ledger_of(tmp_path, vault_id: str) -> LedgerEntry:
    """What the run's local ledger holds for a vault."""
    return LocalStore(tmp_path / "state").read_entry(vault_id.lower())


def refuse_next_write(emulator, vault_name: str) -> None:
    """The next PATCH of the vault is refused for good (403): it surely did not land."""
    emulator.fail(
        "PATCH",
        vault_name,
        403,
        times=1,
        body={"error": {"code": "AuthorizationFailed", "message": "no"}},
    )


def budgeted_arm(emulator, monkeypatch, *, slow: str, seconds: float) -> Arm:
    """An Arm with a 45 s budget on a fake clock, on which each call of `Arm.<slow>` takes
    `seconds`."""
    now = [0.0]
    original = getattr(Arm, slow)

    def slowed(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        now[0] += seconds
        return result

    monkeypatch.setattr(Arm, slow, slowed)
    return Arm(
        endpoint=emulator.url,
        subscriptions=(SUB_A, SUB_B),
        budget_seconds=45.0,
        clock=lambda: now[0],
    )


def plan_with_progress(emulator, progress):
    """A dry run with the environment's settings, reporting each vault to `progress`."""
    settings = Settings.from_env()
    return reconcile(
        settings,
        store=open_store(settings.state),
        arm=Arm(endpoint=emulator.url, subscriptions=settings.subscriptions),
        write=False,
        mode="plan",
        progress=progress,
    )


@pytest.fixture
def estate(emulator):
    """A mixed estate: every kind of vault the product meets."""
    emulator.set_service_tags(OCTOBER)
    emulator.add_subnet(AGENTS)
    emulator.add_subnet(FOREIGN_SUBNET)
    return {
        "bare": emulator.add_vault(SUB_A, "apps", "kv-bare", tags=TAG),
        "locked": emulator.add_vault(
            SUB_A,
            "apps",
            "kv-locked",
            tags=TAG,
            network_acls={
                "defaultAction": "Deny",
                "bypass": "None",
                "ipRules": [{"value": "8.8.4.4"}, {"value": str(WEU)}],
                "virtualNetworkRules": [{"id": FOREIGN_SUBNET}],
            },
        ),
        "open": emulator.add_vault(
            SUB_B,
            "team",
            "kv-open",
            tags=TAG,
            network_acls={
                "defaultAction": "Allow",
                "bypass": "AzureServices",
                "ipRules": [{"value": "51.5.5.0/24"}],
            },
        ),
        "private": emulator.add_vault(
            SUB_B, "team", "kv-private", tags=TAG, public_network_access="Disabled"
        ),
        "untagged": emulator.add_vault(SUB_A, "apps", "kv-untagged"),
        "unlisted": emulator.add_vault(SUB_OTHER, "x", "kv-elsewhere", tags=TAG),
    }


@pytest.fixture
def run(emulator, tmp_path, monkeypatch):
    """Run a reconcile with the product's own wiring (settings from the environment)."""
    monkeypatch.setenv("KVF_SUBSCRIPTIONS", f"{SUB_A},{SUB_B}")
    monkeypatch.setenv("KVF_ADO_GEOGRAPHIES", "Europe")
    monkeypatch.setenv("KVF_ADO_REGIONS", "swedencentral")
    monkeypatch.setenv("KVF_AGENT_SUBNETS", AGENTS)
    monkeypatch.setenv("KVF_EXTRA_IP_RULES", "52.10.20.30")
    monkeypatch.setenv("KVF_VAULT_TAG", "kvfirewall=managed")
    monkeypatch.setenv("KVF_STATE", str(tmp_path / "state"))

    def _run(*, write: bool = True, vault: str | None = None, arm: Arm | None = None):
        settings = Settings.from_env()
        arm = arm or Arm(endpoint=settings.arm_endpoint, subscriptions=settings.subscriptions)
        return reconcile(
            settings,
            store=open_store(settings.state),
            arm=arm,
            write=write,
            mode="enforce" if write else "plan",
            vault=parse_vault_id(vault) if vault else None,
        )

    return _run


def acls(emulator, vault_id: str) -> dict:
    return emulator.vault(vault_id)["properties"].get("networkAcls") or {}


def nets(emulator, vault_id: str) -> set:
    return {ip_network(r["value"]) for r in acls(emulator, vault_id).get("ipRules", [])}


def subnets(emulator, vault_id: str) -> set:
    return {r["id"].lower() for r in acls(emulator, vault_id).get("virtualNetworkRules", [])}


def test_mixed_estate_converges_in_one_apply_and_the_second_writes_nothing(emulator, estate, run):
    before = {k: emulator.vault(v) for k, v in estate.items()}
    wanted = ado(OCTOBER, "westeurope", "northeurope", "swedencentral") | {
        IPv4Network("52.10.20.30/32")
    }

    first = run()

    outcomes = {v.id.rsplit("/", 1)[-1]: v.outcome for v in first.vaults}
    assert outcomes == {
        "kv-bare": "updated",
        "kv-locked": "updated",
        "kv-open": "updated",
        "kv-private": "skipped",
    }
    for name in ("bare", "locked", "open"):
        assert wanted <= nets(emulator, estate[name]), name
        assert AGENTS.lower() in subnets(emulator, estate[name])
    # Foreign rules, defaultAction and bypass untouched.
    locked = acls(emulator, estate["locked"])
    assert (locked["defaultAction"], locked["bypass"]) == ("Deny", "None")
    assert {IPv4Network("8.8.4.4/32"), WEU} <= nets(emulator, estate["locked"])
    assert FOREIGN_SUBNET.lower() in subnets(emulator, estate["locked"])
    assert acls(emulator, estate["open"])["defaultAction"] == "Allow"
    assert IPv4Network("51.5.5.0/24") in nets(emulator, estate["open"])
    assert acls(emulator, estate["bare"])["defaultAction"] == "Allow"
    # Out of scope and public-access-disabled vaults are exactly as they were.
    for name in ("private", "untagged", "unlisted"):
        assert emulator.vault(estate[name]) == before[name], name
    # One complete PATCH per changed vault; never PUT, accessPolicies, IPv6 or another sub.
    writes = [r for r in emulator.requests if r.method != "GET"]
    assert [r.method for r in writes] == ["PATCH"] * 3
    for request in writes:
        assert set(request.body) == {"properties"}
        assert set(request.body["properties"]) == {"networkAcls"}
        sent = request.body["properties"]["networkAcls"]
        assert set(sent) == {"defaultAction", "bypass", "ipRules", "virtualNetworkRules"}
        assert all(":" not in r["value"] for r in sent["ipRules"])
    assert not any(SUB_OTHER in r.path for r in emulator.requests)
    # The rule equal to an ADO range that someone else added is reported as theirs.
    locked_result = next(v for v in first.vaults if v.id.endswith("kv-locked"))
    assert any(c.rule == str(WEU) and "someone else" in c.why for c in locked_result.kept)

    emulator.clear_log()
    second = run()

    assert emulator.writes == 0
    assert {v.outcome for v in second.vaults} == {"unchanged", "skipped"}
    # One list page per subscription plus the Discovery API: no per-vault reads.
    assert emulator.reads == 3
    assert second.arm_calls == {"reads": 3, "writes": 0, "throttled": 0}


def test_a_range_azure_removes_is_removed_only_where_kvfirewall_added_it(emulator, estate, run):
    run()
    emulator.set_service_tags(weu_moved())

    report = run()

    assert (report.source["removed"], report.source["added"]) == ([str(WEU)], [str(NEW_WEU)])
    for name in ("bare", "open", "locked"):
        assert NEW_WEU in nets(emulator, estate[name])
        assert IPv4Network("20.166.41.0/24") in nets(emulator, estate[name])
    assert WEU not in nets(emulator, estate["bare"])
    assert WEU not in nets(emulator, estate["open"])
    assert WEU in nets(emulator, estate["locked"])  # someone else's rule


def test_a_broken_source_never_removes_rules(emulator, estate, run):
    run()
    emulator.set_service_tags(
        {
            "changeNumber": 1,
            "cloud": "Public",
            "values": [
                {
                    "name": "AzureDevOps",
                    "id": "AzureDevOps",
                    "properties": {"changeNumber": 9, "region": "", "addressPrefixes": []},
                }
            ],
        }
    )
    emulator.clear_log()

    report = run()

    assert report.source["status"] == "kept-last-good"
    assert emulator.writes == 0
    assert WEU in nets(emulator, estate["bare"])


def test_plan_and_audit_never_write(emulator, estate, run):
    report = run(write=False)
    assert emulator.writes == 0
    assert {v.outcome for v in report.vaults} == {"planned", "skipped"}
    assert report.vaults and all(v.added for v in report.vaults if v.outcome == "planned")


def test_one_vault_by_id_reads_it_fresh_and_fixes_only_it(emulator, estate, run):
    report = run(vault=estate["bare"])
    assert [v.outcome for v in report.vaults] == ["updated"]
    assert emulator.writes == 1
    assert not nets(emulator, estate["open"]) - {IPv4Network("51.5.5.0/24")}
    assert [v.outcome for v in run(vault=estate["untagged"]).vaults] == ["skipped"]


def test_a_vault_that_fails_does_not_stop_the_others(emulator, estate, run):
    emulator.fail(
        "PATCH", "kv-bare", 400, times=10, body={"error": {"code": "BadRequest", "message": "nope"}}
    )
    report = run()
    by_name = {v.id.rsplit("/", 1)[-1]: v for v in report.vaults}
    assert by_name["kv-bare"].outcome == "failed"
    assert "BadRequest" in by_name["kv-bare"].error
    assert by_name["kv-locked"].outcome == by_name["kv-open"].outcome == "updated"
    assert report.failed


@pytest.mark.parametrize("status", [409, 429, 503])
def test_a_retryable_write_failure_is_retried_from_a_fresh_read(emulator, estate, run, status):
    emulator.fail("PATCH", "kv-bare", status, times=2, headers={"Retry-After": "1"})
    report = run(vault=estate["bare"])
    assert [v.outcome for v in report.vaults] == ["updated"]
    calls = [(r.method, r.status) for r in emulator.requests if "kv-bare" in r.path]
    # The request's own read, then under the lease: a fresh read before every attempt, and
    # one after the write that lands, to check that no concurrent writer undid it.
    retries = [("GET", 200), ("PATCH", status)] * 2
    assert calls == [("GET", 200), *retries, ("GET", 200), ("PATCH", 200), ("GET", 200)]


def test_a_rule_added_after_the_listing_survives_because_writes_reread(
    emulator, estate, run, monkeypatch
):
    """Someone edits a vault between our list and our write: their rule must not be lost."""

    def someone_edits():
        current = acls(emulator, estate["locked"])
        current["ipRules"].append({"value": "203.0.113.77"})
        emulator.add_vault(SUB_A, "apps", "kv-locked", tags=TAG, network_acls=current)

    after_listing(monkeypatch, someone_edits)
    run()
    assert IPv4Network("203.0.113.77/32") in nets(emulator, estate["locked"])
    assert WEU in nets(emulator, estate["locked"])


def test_a_crash_between_the_write_and_the_ledger_update_strands_no_rule(
    emulator, estate, run, monkeypatch
):
    original = crash_after_writes(monkeypatch)
    crashed = run(vault=estate["bare"])
    assert crashed.vaults[0].outcome == "failed"
    assert WEU in nets(emulator, estate["bare"])  # the write landed
    monkeypatch.setattr(Arm, "update_network_acls", original)

    # Azure drops West Europe: the next run must know the rule is its own and remove it.
    emulator.set_service_tags(weu_moved())
    assert [v.outcome for v in run(vault=estate["bare"]).vaults] == ["updated"]
    assert WEU not in nets(emulator, estate["bare"])


def test_subnets_only_never_calls_the_ip_source(emulator, estate, run, monkeypatch):
    monkeypatch.setenv("KVF_ADO_GEOGRAPHIES", "")
    monkeypatch.setenv("KVF_ADO_REGIONS", "")
    monkeypatch.setenv("KVF_EXTRA_IP_RULES", "")
    report = run(vault=estate["bare"])
    assert report.source["status"] == "not-needed"
    assert not any("serviceTags" in r.path for r in emulator.requests)
    assert subnets(emulator, estate["bare"]) == {AGENTS.lower()}
    assert nets(emulator, estate["bare"]) == set()


def test_a_conflicting_write_in_progress_is_waited_out_and_its_rule_kept(
    emulator, estate, run, monkeypatch
):
    """409 means someone else is writing: retry from a fresh read, never the stale body."""
    from azure.identity import DefaultAzureCredential
    from azure.mgmt.keyvault import KeyVaultManagementClient

    other = KeyVaultManagementClient(
        DefaultAzureCredential(),
        SUB_A,
        base_url=emulator.url,
        credential_scopes=[emulator.url + "/.default"],
    )
    theirs = copy.deepcopy(acls(emulator, estate["locked"]))
    theirs["ipRules"].append({"value": "198.51.100.9"})
    original = Arm.get_vault
    started: list[threading.Thread] = []
    gate = emulator.hold_writes()

    def get_then_someone_starts_writing(self, ref):
        state = original(self, ref)
        if ref.name == "kv-locked" and not started:
            writer = threading.Thread(
                target=other.vaults.update,
                args=("apps", "kv-locked", {"properties": {"networkAcls": theirs}}),
            )
            writer.start()
            started.append(writer)
            assert gate.held.wait(timeout=30)  # their write is now in progress
            # It lands once ours has been refused, before we hear of the refusal.
            emulator.intercept("PATCH", "kv-locked", after=lambda _: (gate.open(), writer.join()))
        return state

    monkeypatch.setattr(Arm, "get_vault", get_then_someone_starts_writing)
    report = run(vault=estate["locked"])
    started[0].join()

    assert [v.outcome for v in report.vaults] == ["updated"]
    assert 409 in [r.status for r in emulator.requests if r.method == "PATCH"]
    assert IPv4Network("198.51.100.9/32") in nets(emulator, estate["locked"])
    assert IPv4Network("20.166.41.0/24") in nets(emulator, estate["locked"])


def test_a_rejected_write_claims_nothing(emulator, estate, run, tmp_path):
    refuse_next_write(emulator, "kv-bare")
    assert [v.outcome for v in run(vault=estate["bare"]).vaults] == ["failed"]
    ledger = ledger_of(tmp_path, estate["bare"])
    assert ledger == LedgerEntry()
    # The team then adds the ranges themselves: they stay theirs when Azure drops one.
    team_adds_west_europe(emulator)
    run(vault=estate["bare"])
    emulator.set_service_tags(weu_moved())
    run(vault=estate["bare"])
    assert WEU in nets(emulator, estate["bare"])


def test_a_write_the_service_did_not_reflect_fails_and_claims_only_what_is_there(
    emulator, estate, run, tmp_path
):
    unchanged = emulator.vault(estate["bare"])
    emulator.fail("PATCH", "kv-bare", 200, times=1, body=unchanged)
    report = run(vault=estate["bare"])
    assert report.vaults[0].outcome == "failed"
    assert "write not reflected" in report.vaults[0].error
    assert ledger_of(tmp_path, estate["bare"]) == LedgerEntry()


def test_after_a_crash_the_next_run_confirms_ownership_without_writing(
    emulator, estate, run, monkeypatch, tmp_path
):
    original = crash_after_writes(monkeypatch)
    run(vault=estate["bare"])
    monkeypatch.setattr(Arm, "update_network_acls", original)
    emulator.clear_log()

    assert [v.outcome for v in run(vault=estate["bare"]).vaults] == ["unchanged"]
    assert emulator.writes == 0
    entry = ledger_of(tmp_path, estate["bare"])
    assert WEU in entry.ip_rules and not entry.pending_ip_rules


def test_only_the_configured_tag_value_is_in_scope(emulator, estate, run):
    other = emulator.add_vault(SUB_A, "apps", "kv-other-team", tags={"KVFirewall": "manual"})
    run()
    assert "networkAcls" not in emulator.vault(other)["properties"]


def test_a_vault_untagged_between_list_and_write_is_left_alone(emulator, estate, run, monkeypatch):
    after_listing(monkeypatch, lambda: emulator.add_vault(SUB_A, "apps", "kv-bare", tags={}))
    report = run()
    bare = next(v for v in report.vaults if v.id.endswith("kv-bare"))
    assert (bare.outcome, bare.reason) == ("skipped", "left scope meanwhile")
    assert "networkAcls" not in emulator.vault(estate["bare"])["properties"]


def test_loss_guard_and_discovery_location_come_from_the_settings(
    emulator, estate, run, monkeypatch
):
    monkeypatch.setenv("KVF_SERVICE_TAG_LOCATION", "westeurope")
    monkeypatch.setenv("KVF_MAX_RANGE_LOSS_PERCENT", "0")
    run()
    assert any("/locations/westeurope/serviceTags" in r.path for r in emulator.requests)
    emulator.set_service_tags(weu_moved())  # a real change, but 1 of 24 prefixes lost > 0 %
    assert run().source["status"] == "kept-last-good"


def test_a_reused_client_reports_each_runs_own_arm_calls(emulator, estate, run):
    arm = Arm(endpoint=emulator.url, subscriptions=(SUB_A, SUB_B))
    assert run(arm=arm).arm_calls["writes"] == 3
    assert run(arm=arm).arm_calls == {"reads": 3, "writes": 0, "throttled": 0}


def test_a_write_that_landed_without_an_answer_is_confirmed_by_the_next_read(
    emulator, estate, run, monkeypatch, tmp_path
):
    original = Arm.update_network_acls
    calls: list[int] = []

    def write_then_lose_the_answer(self, ref, network_acls, **options):
        calls.append(1)
        original(self, ref, network_acls, **options)
        raise WriteFailed(
            "ServiceResponseError: connection reset", retryable=True, maybe_applied=True
        )

    monkeypatch.setattr(Arm, "update_network_acls", write_then_lose_the_answer)
    report = run(vault=estate["bare"])
    assert [v.outcome for v in report.vaults] == ["updated"]
    assert report.vaults[0].added and len(calls) == 1
    entry = ledger_of(tmp_path, estate["bare"])
    assert WEU in entry.ip_rules and not entry.pending_ip_rules


def test_a_lost_response_is_settled_by_the_next_read(emulator, estate, run, tmp_path):
    emulator.lose_response("PATCH", "kv-bare")
    report = run(vault=estate["bare"])
    assert [v.outcome for v in report.vaults] == ["updated"]
    assert [r.method for r in emulator.requests if r.method != "GET"] == ["PATCH"]
    entry = ledger_of(tmp_path, estate["bare"])
    assert WEU in entry.ip_rules and not entry.pending_ip_rules


def test_a_server_error_then_a_refusal_claims_nothing(emulator, estate, run, tmp_path):
    emulator.fail("PATCH", "kv-bare", 503, times=1)
    refuse_next_write(emulator, "kv-bare")
    assert [v.outcome for v in run(vault=estate["bare"]).vaults] == ["failed"]
    entry = ledger_of(tmp_path, estate["bare"])
    assert not (entry.ip_rules | entry.pending_ip_rules | entry.subnets | entry.pending_subnets)


def test_a_vault_created_again_under_the_same_id_inherits_no_ownership(
    emulator, estate, run, monkeypatch
):
    run(vault=estate["bare"])
    emulator.delete_vault(estate["bare"])
    # Created again a second later, whatever the clock's resolution.
    monkeypatch.setattr(emulator_server, "_iso_now", lambda: "2099-01-01T00:00:01.0000000Z")
    team_adds_west_europe(emulator)
    run(vault=estate["bare"])
    emulator.set_service_tags(weu_moved())
    run(vault=estate["bare"])
    assert WEU in nets(emulator, estate["bare"])  # the new owners' rule


def test_a_deleted_vault_keeps_its_ledger_entry_marked(
    emulator, estate, run, tmp_path, monkeypatch
):
    """Key Vault can recover a deleted vault with its rules: its entry must outlive it."""
    run(vault=estate["bare"])
    entry = ledger_of(tmp_path, estate["bare"])
    assert WEU in entry.ip_rules and entry.location == "westeurope" and not entry.deleted_at
    emulator.set_service_tags(weu_moved())
    after_listing(monkeypatch, lambda: emulator.delete_vault(estate["bare"]))
    bare = next(v for v in run().vaults if v.id.endswith("kv-bare"))
    assert (bare.outcome, bare.reason) == ("skipped", "vault deleted meanwhile")
    marked = ledger_of(tmp_path, estate["bare"])
    assert marked.ip_rules == entry.ip_rules and marked.deleted_at and marked.purge_at
    assert any(
        r.path.endswith("/locations/westeurope/deletedVaults/kv-bare") for r in emulator.requests
    )


def test_a_recovered_vault_s_rules_are_kvfirewall_s_again(emulator, estate, run, tmp_path):
    run(vault=estate["bare"])
    emulator.delete_vault(estate["bare"])
    assert [v.reason for v in run(vault=estate["bare"]).vaults] == ["vault not found"]
    emulator.recover_vault(estate["bare"])
    emulator.set_service_tags(weu_moved())

    assert [v.outcome for v in run(vault=estate["bare"]).vaults] == ["updated"]

    assert WEU not in nets(emulator, estate["bare"])  # removed: it was ours
    values = [r["value"] for r in acls(emulator, estate["bare"])["ipRules"]]
    assert len(values) == len(set(values)) and f"{NEW_WEU}" in values
    assert not ledger_of(tmp_path, estate["bare"]).deleted_at


def test_a_purged_vault_s_entry_is_forgotten(emulator, estate, run, tmp_path):
    run(vault=estate["bare"])
    emulator.delete_vault(estate["bare"])
    run(vault=estate["bare"])
    assert ledger_of(tmp_path, estate["bare"]).deleted_at
    emulator.purge_vault(estate["bare"])
    run(vault=estate["bare"])
    assert ledger_of(tmp_path, estate["bare"]) == LedgerEntry()


def test_an_entry_is_forgotten_once_the_scheduled_purge_date_has_passed(
    emulator, estate, run, tmp_path
):
    run(vault=estate["bare"])
    emulator.delete_vault(estate["bare"], retention_days=0)  # purged from now on
    run(vault=estate["bare"])
    assert ledger_of(tmp_path, estate["bare"]) == LedgerEntry()


def test_marking_a_deleted_vault_waits_for_its_lease(emulator, estate, run, tmp_path, monkeypatch):
    run(vault=estate["bare"])
    monkeypatch.setattr(writer, "LEASE_WAIT_SECONDS", 0.0)
    emulator.delete_vault(estate["bare"])
    entry = ledger_of(tmp_path, estate["bare"])
    with LocalStore(tmp_path / "state").lease(estate["bare"].lower(), wait_seconds=0):
        report = run(vault=estate["bare"])
        assert (report.vaults[0].outcome, report.vaults[0].retryable) == ("skipped", True)
        assert ledger_of(tmp_path, estate["bare"]) == entry


def test_a_vault_deleted_between_read_and_write_is_skipped(emulator, estate, run):
    emulator.fail(
        "PATCH",
        "kv-bare",
        404,
        times=1,
        body={"error": {"code": "ResourceNotFound", "message": "gone"}},
    )
    report = run(vault=estate["bare"])
    assert [(v.outcome, v.reason) for v in report.vaults] == [
        ("skipped", "vault deleted meanwhile")
    ]
    assert not report.failed


def test_a_dry_run_after_a_crash_leaves_the_ledger_as_it_was(
    emulator, estate, run, monkeypatch, tmp_path
):
    crash_after_writes(monkeypatch)
    run(vault=estate["bare"])
    path = next((tmp_path / "state" / "ledger").iterdir())
    before = path.read_text()
    run(write=False, vault=estate["bare"])
    assert path.read_text() == before


def test_a_signed_source_url_is_reported_without_its_token(emulator, estate, run, monkeypatch):
    emulator.add_file("/tags.json", json.dumps(OCTOBER).encode())
    monkeypatch.setenv("KVF_IP_SOURCE", f"{emulator.url}/tags.json?sv=1&sig=S3CRET")
    report = run(write=False)
    assert "S3CRET" not in json.dumps(report.to_json())
    assert report.source["setting"] == f"{emulator.url}/tags.json?…"


def test_a_typo_in_the_regions_removes_nothing(emulator, estate, run, monkeypatch):
    run()
    sweden = IPv4Network("20.91.148.128/25")
    assert sweden in nets(emulator, estate["bare"])
    monkeypatch.setenv("KVF_ADO_REGIONS", "swedencentrl")
    report = run()
    assert sweden in nets(emulator, estate["bare"])
    assert any("swedencentrl" in w and "no IP rule is removed" in w for w in report.warnings)


def test_a_tampered_stored_snapshot_is_ignored(emulator, estate, run, tmp_path):
    run()
    snapshot = tmp_path / "state" / "ranges" / "last-good.json"
    snapshot.write_text(
        json.dumps({"version": "99", "source": "x", "regions": {"westeurope": ["0.0.0.0/0"]}})
    )
    emulator.set_service_tags({"changeNumber": 1, "cloud": "Public", "values": []})  # broken
    report = run()
    assert report.source["status"] == "builtin-fallback"
    assert any("stored range snapshot ignored" in w for w in report.warnings)
    assert IPv4Network("0.0.0.0/0") not in nets(emulator, estate["bare"])


def test_a_run_with_a_time_budget_stops_starting_vaults_and_reports_those_not_reached(
    emulator, run, monkeypatch
):
    emulator.set_service_tags(OCTOBER)
    emulator.add_subnet(AGENTS)
    for n in range(12):
        emulator.add_vault(SUB_A, "apps", f"kv-{n:02}", tags=TAG)
    monkeypatch.setattr(engine, "WORKERS", 8)  # fewer workers than vaults: some must wait
    arm = budgeted_arm(emulator, monkeypatch, slow="update_network_acls", seconds=20.0)
    report = run(arm=arm)
    counts = report.counts
    assert counts["updated"] >= 1 and report.cut_short >= 1
    # Eight workers share the clock: a vault started in time may find the budget spent
    # before its write; it then fails, retryable, and sends nothing.
    late = [v for v in report.vaults if v.outcome == "failed"]
    assert all(v.retryable and "budget" in v.error for v in late)
    assert counts["updated"] + len(late) + report.cut_short == 12
    assert emulator.writes == counts["updated"]
    assert "CUT SHORT" in report.summary()


def test_no_write_is_started_when_too_little_of_the_budget_is_left(
    emulator, run, monkeypatch, tmp_path
):
    emulator.set_service_tags(OCTOBER)
    emulator.add_subnet(AGENTS)
    vault = emulator.add_vault(SUB_A, "apps", "kv-late", tags=TAG)
    # The fresh read before the write leaves 5 s of the 45 s budget.
    arm = budgeted_arm(emulator, monkeypatch, slow="get_vault", seconds=40.0)
    report = run(arm=arm, vault=vault)
    result = report.vaults[0]
    assert (result.outcome, result.retryable) == ("failed", True)
    assert emulator.writes == 0
    assert not ledger_of(tmp_path, vault)  # nothing pending: nothing was sent


def test_subscriptions_are_listed_in_parallel(emulator, estate, run):
    """Both list requests must be in the emulator at once, or the barrier breaks the run."""
    barrier = threading.Barrier(2, timeout=10)
    emulator.intercept(
        "GET", r"/providers/Microsoft\.KeyVault/vaults$", before=lambda _: barrier.wait(), times=2
    )
    report = run(write=False)
    assert not report.failed and not report.warnings
    assert not barrier.broken


def test_a_large_estate_is_streamed_page_by_page_not_held_in_memory(emulator, tmp_path, run):
    """Vaults are reconciled while later pages are still unread: the listing runs only a
    bounded distance ahead of the workers, whatever the estate's size."""
    emulator.set_service_tags(OCTOBER)
    emulator.page_size = 10
    for n in range(300):
        emulator.add_vault(SUB_A, "apps", f"kv-{n:03}", tags=TAG)
    run(write=False)  # settings, ranges and a warm credential
    emulator.clear_log()
    pages_read: list[int] = []

    def first_result(done, _result) -> None:
        if done == 1:
            pages_read.append(sum(r.path.endswith("/vaults") for r in emulator.requests))

    report = plan_with_progress(emulator, first_result)
    assert len(report.vaults) == 300
    ahead = engine.LISTED_QUEUE + 2 * engine.WORKERS + engine.LISTERS * emulator.page_size
    assert pages_read[0] <= ahead // emulator.page_size + 2 < 30


@pytest.mark.slow  # the emulator's bucket refills in real time: about 4 s of writes
def test_writes_are_paced_to_the_quota_without_a_storm_of_429s(emulator, run):
    """A write bucket that refills at Resource Manager's rate but holds only 20 tokens: the
    run spends it no faster than it refills, and every vault is written."""
    emulator.set_service_tags(OCTOBER)
    emulator.add_subnet(AGENTS)
    for n in range(60):
        emulator.add_vault(SUB_A, "apps", f"kv-{n:02}", tags=TAG)
    emulator.throttle(reads=None, writes=(20, 10.0))
    report = run()
    assert report.counts["updated"] == 60
    assert report.arm_calls["throttled"] <= 1  # at most 1 % of the writes; the emulator agrees
    assert sum(r.status == 429 for r in emulator.requests) == report.arm_calls["throttled"]


def test_a_worker_thread_that_cannot_start_fails_the_run_instead_of_hanging(emulator, estate):
    """The Functions trigger gives each thread the invocation id; if that fails, the run
    must end with the error, not wait for listings that never started."""

    def broken_thread_init() -> None:
        raise RuntimeError("no invocation context")

    settings = Settings.from_env(
        {
            **emulator.env(),
            "KVF_SUBSCRIPTIONS": f"{SUB_A},{SUB_B}",
            "KVF_ADO_REGIONS": "westeurope",
            "KVF_STATE": "/nonexistent/unused",
        }
    )
    outcome: list = []

    def go() -> None:
        try:
            reconcile(
                settings,
                store=LocalStore(Path("/nonexistent/unused")),
                arm=Arm(endpoint=emulator.url, subscriptions=settings.subscriptions),
                write=False,
                mode="plan",
                thread_init=broken_thread_init,
            )
        except Exception as exc:
            outcome.append(exc)

    runner = threading.Thread(target=go, daemon=True)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive(), "the run hangs"
    assert outcome and "thread" in type(outcome[0]).__name__.lower() + str(outcome[0]).lower()


def test_listing_stops_when_the_run_stops(emulator, run, tmp_path):
    """A run that ends early (its progress output closed) reads no further list pages than
    its bounded look-ahead had, however many there are."""
    emulator.set_service_tags(OCTOBER)
    emulator.page_size = 4
    ahead = engine.LISTED_QUEUE + 2 * engine.WORKERS + engine.LISTERS * emulator.page_size
    for n in range(2 * ahead):
        emulator.add_vault(SUB_A, "apps", f"kv-{n:03}", tags=TAG)
    run(write=False)
    emulator.clear_log()

    def closed_output(_done, _result) -> None:
        raise BrokenPipeError("stdout closed")

    def pools() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")}

    before = pools()
    with pytest.raises(BrokenPipeError):
        plan_with_progress(emulator, closed_output)
    assert pools() <= before, "a lister goes on paging in the background"
    pages = sum(r.path.endswith("/vaults") for r in emulator.requests)
    assert pages <= ahead // emulator.page_size + engine.LISTERS + 2 < 2 * ahead // 4


def test_creation_times_are_compared_as_instants():
    assert same_instant("2025-01-01T00:00:00Z", "2025-01-01T00:00:00.0000000+00:00")
    assert same_instant("2025-01-01T01:00:00+01:00", "2025-01-01T00:00:00Z")
    assert not same_instant("2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z")
    assert not same_instant("yesterday", "today") and same_instant("today", "today")


def test_a_creation_time_written_with_another_precision_is_still_the_same_vault(
    emulator, estate, run, tmp_path
):
    """Ownership survives Resource Manager writing the vault's createdAt another way."""
    run(vault=estate["bare"])
    store = LocalStore(tmp_path / "state")
    key = estate["bare"].lower()
    created = emulator.vault(estate["bare"])["systemData"]["createdAt"]  # 7 digits and Z
    same = datetime.fromisoformat(created).isoformat()  # 6 digits and +00:00
    assert same != created
    stored = store.read_entry(key)
    store.write_entry(key, dataclasses.replace(stored, generation=same), base=stored)
    emulator.set_service_tags(weu_moved())
    run(vault=estate["bare"])
    assert WEU not in nets(emulator, estate["bare"])  # still known as kvfirewall's


def test_a_ledger_entry_written_by_another_holder_is_not_overwritten_and_the_run_converges(
    emulator, estate, run, tmp_path
):
    """Another holder (this run's lease ran out unnoticed) writes the vault and its entry
    after this run read the entry: this run's next ledger write finds it changed, reads it
    again and plans again, so the other holder's claim survives."""
    store = LocalStore(tmp_path / "state")
    key = estate["bare"].lower()
    reads = []

    def another_holder_writes(_emulator) -> None:
        reads.append(1)
        if len(reads) == 2:  # just before this run's fresh read under its lease
            emulator.write_as(estate["bare"], network_acls={"ipRules": [{"value": str(WEU)}]})
            claim = LedgerEntry(pending_ip_rules=frozenset({WEU}))
            store.write_entry(key, claim, base=store.read_entry(key))

    emulator.intercept("GET", "kv-bare$", before=another_holder_writes, times=2)
    report = run(vault=estate["bare"])

    assert [v.outcome for v in report.vaults] == ["updated"]
    assert WEU in ledger_of(tmp_path, estate["bare"]).ip_rules  # their claim survived
    emulator.set_service_tags(weu_moved())
    run(vault=estate["bare"])
    assert WEU not in nets(emulator, estate["bare"])  # and so it is removed when Azure drops it


@pytest.mark.parametrize(("status", "retryable"), [(403, False), (503, True)])
def test_a_subscription_that_cannot_be_listed_is_retryable_only_for_a_transient_reason(
    emulator, estate, run, status, retryable
):
    """403 (the role is not assigned there) fails the same way next time; 503 may not."""
    emulator.fail(
        "GET", f"/subscriptions/{SUB_B}/providers/Microsoft.KeyVault/vaults$", status, times=1000
    )
    fake = FakeTime()  # the 503s are retried for a minute of the adapter's own clock
    arm = Arm(
        endpoint=emulator.url, subscriptions=(SUB_A, SUB_B), sleep=fake.sleep, clock=fake.clock
    )
    report = run(write=False, arm=arm)
    listing = next(v for v in report.vaults if v.id == f"/subscriptions/{SUB_B}")
    assert (listing.outcome, listing.retryable) == ("failed", retryable)
    assert any(v.outcome == "planned" for v in report.vaults)  # the other subscription's


@pytest.mark.parametrize(
    ("deleted", "looked", "kept"),
    [
        (DeletedVault("2025-01-01T00:00:00Z", "2025-03-01T00:00:00Z"), True, True),
        (DeletedVault("2025-01-01T00:00:00Z", "2025-01-31T00:00:00Z"), True, False),  # passed
        (None, True, False),  # Resource Manager no longer knows it: purged
        (None, False, True),  # not asked (no right, an outage): within the longest retention
    ],
    ids=["recoverable", "purge-date-passed", "purged", "unknown"],
)
def test_a_deleted_vault_s_entry_is_kept_exactly_while_it_can_be_recovered(deleted, looked, kept):
    entry = LedgerEntry(ip_rules=frozenset({WEU}), deleted_at="2025-01-01T00:00:00+00:00")
    now = datetime(2025, 2, 1, tzinfo=timezone.utc)
    after = writer.after_deletion(entry, deleted, looked=looked, now=now)
    assert (after.ip_rules == entry.ip_rules) is kept
    assert (after == LedgerEntry()) is not kept


def test_a_vault_deleted_unseen_is_marked_by_the_next_full_run_and_forgotten_once_purged(
    emulator, estate, run, tmp_path
):
    """No event told kvfirewall (the app was down, or only writes are subscribed): the next
    run over every vault misses the vault in a complete listing and keeps its entry, marked,
    for as long as Key Vault could recover it."""
    run()
    entry = ledger_of(tmp_path, estate["bare"])
    assert WEU in entry.ip_rules
    emulator.delete_vault(estate["bare"])
    run(write=False)  # a dry run touches no entry
    assert not ledger_of(tmp_path, estate["bare"]).deleted_at
    run()
    marked = ledger_of(tmp_path, estate["bare"])
    assert marked.deleted_at and marked.ip_rules == entry.ip_rules
    emulator.purge_vault(estate["bare"])
    emulator.clear_log()
    run()
    assert ledger_of(tmp_path, estate["bare"]) == LedgerEntry()
    deleted_reads = [r for r in emulator.requests if "/deletedVaults/" in r.path]
    assert len(deleted_reads) == 1  # a marked entry costs one read, and no vault GET
    assert not [r for r in emulator.requests if r.path.lower().endswith("/vaults/kv-bare")]


def test_no_entry_is_swept_in_a_subscription_that_could_not_be_listed(
    emulator, estate, run, tmp_path
):
    run()
    emulator.delete_vault(estate["bare"])
    emulator.fail(
        "GET", f"/subscriptions/{SUB_A}/providers/Microsoft.KeyVault/vaults$", 403, times=100
    )
    emulator.clear_log()
    run()
    assert not ledger_of(tmp_path, estate["bare"]).deleted_at
    assert not [r for r in emulator.requests if "kv-bare" in r.path]


def test_waiting_vaults_are_handed_out_round_the_subscriptions():
    """A page of one subscription's vaults must not fill every worker: each subscription has
    its own write quota, and the others' would refill unused while all wait for one."""
    turns = engine._Turns()
    for sub, count in (("a", 4), ("b", 2), ("c", 1)):
        for n in range(count):
            turns.add(sub, VaultState(id=f"/subscriptions/{sub}/vault-{n}", tags={}))
    handed = [turns.next()[0] for _ in range(4)]
    assert handed == ["a", "b", "c", "a"]  # the first of each before a second of any
    turns.finished("c")  # c's vault is done: but c has none waiting, b is served
    turns.finished("a")
    turns.finished("a")  # a now has none in the workers' hands, b has one
    assert [turns.next()[0] for _ in range(3)] == ["a", "b", "a"]
    assert turns.waiting == 0


def test_a_listed_vault_whose_ledger_cannot_be_read_in_time_is_not_reached(
    emulator, estate, run, azurite
):
    """A run over every vault reads a subscription's entries when it plans the first of its
    vaults; with the budget spent by then (no storage call starts), the vault is reported
    not reached (the next run covers it), not failed."""
    import uuid

    from kvfirewall.ledger import AzureStore
    from kvfirewall.ledger_reads import LedgerReads
    from kvfirewall.ranges import Desired
    from kvfirewall.settings import StateLocation

    name = "kvf" + uuid.uuid4().hex[:12]
    store = AzureStore(
        StateLocation(kind="connection-string", value=azurite), table=name, container=name
    ).within(lambda: 0.0)
    arm = Arm(endpoint=emulator.url, subscriptions=(SUB_A,))
    worker = writer.VaultWorker(
        Settings.from_env(),
        store,
        arm,
        Desired(ip_rules={WEU: "test"}),
        True,
        source_version="1",
        in_scope=lambda state: True,
        planned_entry=LedgerReads(store, keep=1).entry,
    )
    result = worker.triage(arm.get_vault(parse_vault_id(estate["bare"])))
    assert (result.outcome, result.reason) == ("skipped", writer.NOT_REACHED)
