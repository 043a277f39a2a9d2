"""The report reads the same for people (table) and machines (JSON)."""

from __future__ import annotations

import json
import tracemalloc

from kvfirewall.plan import Change
from kvfirewall.report import Report, ReportSpool, VaultResult

VAULT = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-app/providers/Microsoft.KeyVault/vaults/kv-app"


def sample() -> Report:
    return Report(
        mode="enforce",
        source={"version": "8", "status": "fresh"},
        vaults=[
            VaultResult(
                id=VAULT,
                outcome="updated",
                reason="adds 1, removes 1",
                added=(Change("40.74.28.0/23", "AzureDevOps westeurope (Europe)"),),
                removed=(Change("20.91.148.128/25", "added by kvfirewall, no longer wanted"),),
                kept=(Change("52.174.10.20/32", "not added by kvfirewall"),),
            ),
            VaultResult(
                id=VAULT.replace("kv-app", "kv-x"),
                outcome="failed",
                reason="error",
                error="HTTP 403 AuthorizationFailed: no",
            ),
        ],
        out_of_scope=2,
        arm_calls={"reads": 3, "writes": 1, "throttled": 0},
    )


def test_table_lists_each_rule_with_its_reason_and_ends_with_the_summary():
    table = sample().to_table().splitlines()
    assert table[0].split()[:5] == ["VAULT", "OUTCOME", "+", "-", "KEPT"]
    assert "  + rg-app/kv-app: 40.74.28.0/23  (AzureDevOps westeurope (Europe))" in table
    assert "  - rg-app/kv-app: 20.91.148.128/25  (added by kvfirewall, no longer wanted)" in table
    assert "  = rg-app/kv-app: 52.174.10.20/32  (not added by kvfirewall)" in table
    assert any("failed" in line and "HTTP 403 AuthorizationFailed" in line for line in table)
    assert table[-1] == (
        "kvfirewall enforce: 2 vaults (1 updated, 1 failed), 2 out of scope; "
        "ranges 8 (fresh); ARM 3 reads, 1 writes"
    )


def test_json_has_counts_and_every_vault_in_full():
    data = json.loads(json.dumps(sample().to_json()))
    assert data["counts"] == {
        "updated": 1,
        "unchanged": 0,
        "planned": 0,
        "skipped": 0,
        "failed": 1,
        "outOfScope": 2,
    }
    assert data["vaults"][0]["kept"] == [
        {"rule": "52.174.10.20/32", "why": "not added by kvfirewall"}
    ]
    assert data["vaults"][1]["error"].startswith("HTTP 403")
    assert sample().failed


def test_the_logged_report_fits_app_insights_trace_lines_and_loses_no_vault():
    rules = tuple(
        Change(f"20.{i // 256}.{i % 256}.0/24", "AzureDevOps westeurope") for i in range(40)
    )
    many = [
        VaultResult(
            id=VAULT.replace("kv-app", f"kv-{n:03}"),
            outcome="updated",
            reason="adds 40",
            added=rules,
        )
        for n in range(60)
    ]
    huge = VaultResult(
        id=VAULT.replace("kv-app", "kv-huge"),
        outcome="unchanged",
        reason="compliant",
        kept=tuple(
            Change(f"52.{i // 256}.{i % 256}.1/32", "not added by kvfirewall") for i in range(1000)
        ),
    )
    report = Report(mode="enforce", source={"version": "8"}, vaults=[*many, huge])
    lines = report.to_log_lines()
    assert all(len(line) <= 30_000 for line in lines) and len(lines) > 2
    head, *parts = (json.loads(line) for line in lines)
    assert head["vaultCount"] == 61 and head["counts"]["updated"] == 60
    logged = [v for part in parts for v in part["vaults"]]
    assert [v["id"] for v in logged] == [v.id for v in report.vaults]
    assert logged[0]["added"] == [{"rule": c.rule, "why": c.why} for c in rules]
    assert logged[-1]["kept"] == 1000 and logged[-1]["rulesOmitted"] is True


def spooled_run(report: Report, n: int) -> None:
    """`n` vaults as a large run finishes them: every 100th updated, every 1000th failed,
    each with the foreign rules a locked vault keeps."""
    kept = tuple(Change(f"52.1.{i}.0/24", "not added by kvfirewall") for i in range(30))
    for i in range(n):
        outcome = "failed" if i % 1000 == 999 else "updated" if i % 100 == 0 else "unchanged"
        report.add(
            VaultResult(
                id=VAULT.replace("kv-app", f"kv-{i:05}"), outcome=outcome, reason="r", kept=kept
            )
        )


def test_a_spooled_report_keeps_counts_and_what_changed_and_stores_every_vault(monkeypatch):
    monkeypatch.setattr("kvfirewall.report.KEPT_VAULTS", 25)
    with ReportSpool() as spool:
        report = Report(mode="enforce", source={"version": "8"}, spool=spool)
        spooled_run(report, 3000)
        assert report.counts == {
            "updated": 30,
            "unchanged": 2967,
            "planned": 0,
            "skipped": 0,
            "failed": 3,
        }
        assert report.total == 3000 and report.failed
        data = report.to_json()
        assert data["vaultsListed"] == "changed or failed" and data["vaultsOmitted"] == 8
        assert [v["outcome"] for v in data["vaults"]] == ["updated"] * 10 + ["failed"] + [
            "updated"
        ] * 10 + ["failed"] + ["updated"] * 3
        full = json.loads(b"".join(report.full_json()))
    assert full["vaultsListed"] == "all" and full["counts"] == data["counts"]
    assert [v["id"][-5:] for v in full["vaults"]] == [f"{i:05}" for i in range(3000)]
    assert "2967 unchanged" in report.summary() and "3000 vaults" in report.summary()
    assert "and 8 more of them" in report.to_table()


def test_a_spooled_report_does_not_grow_with_the_vaults():
    """What a run over 20,000 compliant vaults leaves in memory: the counts, and a spool that
    has moved to a temporary file. Holding the results would take tens of MB."""
    with ReportSpool() as spool:
        report = Report(mode="enforce", source={"version": "8"}, spool=spool)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            spooled_run(report, 20_000)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert report.total == 20_000
    assert grown < 2_500_000  # the spool's memory part (1 MiB) and the 200 kept
