"""Races: several reconcilers at once (threads, processes, instances sharing Azure Storage),
and other people writing the same vaults in the middle of a reconcile."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from kvfirewall import writer
from kvfirewall.ledger import AzureStore
from kvfirewall.rules import parse_vault_id
from kvfirewall.service import RetryLater, Service
from kvfirewall.settings import StateLocation

ROOT = Path(__file__).resolve().parents[2]
VAULTS = r"/providers/Microsoft\.KeyVault/vaults/kv-"


def successful_writes(emulator) -> int:
    """PATCHes that landed; asserts that none collided with another (409)."""
    statuses = [r.status for r in emulator.requests if r.method == "PATCH"]
    assert 409 not in statuses, "two runs wrote one vault at once"
    return statuses.count(200)


def stale_write_after_our_next_one(estate, target: str, rule: str) -> None:
    """Someone reads the vault right before our next PATCH and writes that copy, plus `rule`,
    right after it."""
    seen: dict = {}
    estate.emulator.intercept(
        "PATCH",
        parse_vault_id(target).name,
        before=lambda emu: seen.update(acls=estate.acls(target)),
        after=lambda emu: estate.someone_adds(target, rule, stale=seen["acls"]),
    )


def run_together(runs) -> list:
    """Start every run at once (a barrier), wait for all; their reports in order."""
    barrier = threading.Barrier(len(runs))
    reports: list = [None] * len(runs)

    def go(index: int, run) -> None:
        barrier.wait()
        reports[index] = run()

    threads = [threading.Thread(target=go, args=(i, r)) for i, r in enumerate(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return reports


def test_concurrent_runs_in_threads_write_each_vault_once(estate, figures):
    """Four reconciles of one estate at once: the lease lets one write each vault, and the
    others find it compliant on their fresh read. Overlapping PATCHes would get 409s."""
    estate.emulator.write_latency = 0.05
    reports = run_together([estate.run] * 4)
    assert not any(r.failed for r in reports), [r.to_json() for r in reports]
    assert successful_writes(estate.emulator) == estate.effective
    assert sum(r.counts["updated"] for r in reports) == estate.effective
    figures["rules lost"] += estate.check()


def test_concurrent_runs_in_processes_write_each_vault_once(estate, figures):
    """Three CLI processes sharing one local ledger: file locks serialize them. Slow writes
    make their runs overlap even though processes start at different speeds."""
    estate.emulator.write_latency = 1.0
    env = {**os.environ, **estate.env()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kvfirewall", "apply"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    assert successful_writes(estate.emulator) == estate.effective
    figures["rules lost"] += estate.check()


def test_instances_sharing_azure_storage_write_each_vault_once(estate, figures, azurite):
    """Function App instances: each its own store client, serialized by Blob leases."""
    location = StateLocation(kind="connection-string", value=azurite)
    suffix = os.urandom(4).hex()

    def store() -> AzureStore:
        return AzureStore(location, table=f"ledger{suffix}", container=f"kvf-{suffix}")

    estate.emulator.write_latency = 0.05
    reports = run_together([lambda: estate.run(store=store()) for _ in range(3)])
    assert not any(r.failed for r in reports), [r.to_json() for r in reports]
    assert successful_writes(estate.emulator) == estate.effective
    figures["rules lost"] += estate.check(store=store())


def test_a_rule_someone_adds_after_the_listing_is_kept(estate, figures):
    """Their write lands between our listing and our write: the fresh read sees it."""
    target = next(v for v in estate.vaults if "locked-003" in v)
    subscription = parse_vault_id(target).subscription
    estate.emulator.intercept(
        "GET",
        rf"/subscriptions/{subscription}/providers/Microsoft\.KeyVault/vaults$",
        after=lambda emu: estate.someone_adds(target, "203.0.113.7"),
    )
    estate.run()
    assert "203.0.113.7/32" in {str(n) for n in estate.nets(target)}
    figures["rules lost"] += estate.check()


def test_a_stale_write_over_ours_is_detected_and_our_rules_are_put_back(estate, figures):
    """Someone read the vault before our write and wrote their copy (plus a rule) after it,
    as `az keyvault network-rule add` does: our rules vanish, theirs must stay."""
    target = next(v for v in estate.vaults if "locked-003" in v)
    stale_write_after_our_next_one(estate, target, "203.0.113.9")
    report = estate.run()
    result = next(v for v in report.vaults if v.id == target)
    assert result.outcome == "updated" and result.put_back
    assert "written again" in result.reason
    assert "203.0.113.9/32" in {str(n) for n in estate.nets(target)}
    figures["rules lost"] += estate.check()


def test_a_vault_busy_in_another_run_is_left_to_it_and_an_event_is_redelivered(
    estate, figures, monkeypatch
):
    monkeypatch.setattr(writer, "LEASE_WAIT_SECONDS", 0.5)
    target = next(v for v in estate.vaults if "bare-002" in v)
    service = Service(estate.settings(), store=estate.store())
    with estate.store().lease(target.lower(), wait_seconds=0):
        report = service.run(write=True, mode="enforce")
        result = next(v for v in report.vaults if v.id == target)
        assert (result.outcome, result.retryable) == ("skipped", True)
        assert "busy" in result.reason
        event = {"operationName": "Microsoft.KeyVault/vaults/write"}
        with pytest.raises(RetryLater):
            service.handle_event(
                event_type="Microsoft.Resources.ResourceWriteSuccess", subject=target, data=event
            )
    assert not estate.nets(target)  # untouched while another run held it
    service.run(write=True, mode="enforce")  # the lease is free again
    figures["rules lost"] += estate.check()


def test_a_stale_write_that_brings_back_a_rule_we_removed_is_undone(estate, figures):
    """We remove a rule that is no longer wanted; someone who read the vault before our
    write writes their copy after it, and the rule is back. It must still be known as ours,
    and removed again: never left behind as nobody's."""
    old = IPv4Network("52.10.20.31/32")
    estate.run(settings=estate.settings(KVF_EXTRA_IP_RULES="52.10.20.30,52.10.20.31"))
    target = next(v for v in estate.vaults if "locked-003" in v)
    assert old in estate.nets(target)
    stale_write_after_our_next_one(estate, target, "203.0.113.9")
    report = estate.run()  # 52.10.20.31 is not wanted any more
    result = next(v for v in report.vaults if v.id == target)
    assert result.outcome == "updated" and str(old) in result.put_back
    assert old not in estate.nets(target)
    assert IPv4Network("203.0.113.9/32") in estate.nets(target)
    entry = estate.store().read_entry(target.lower())
    assert old not in entry.ip_rules | entry.pending_ip_rules  # gone, and claimed no more
    figures["rules lost"] += estate.check()


def test_no_quota_wait_falls_between_the_fresh_read_and_the_write(estate, figures):
    """Another worker's 429 asks every writer of the subscription to wait: that wait comes
    before the fresh read, so a rule someone adds meanwhile is in the read, and kept."""
    target = next(v for v in estate.vaults if "locked-003" in v)
    ref = parse_vault_id(target)
    added: list[str] = []

    def sleep(seconds: float) -> None:
        if seconds >= 1 and not added:  # the quota wait: someone adds a rule meanwhile
            added.append("203.0.113.50")
            estate.someone_adds(target, "203.0.113.50")
        time.sleep(min(seconds, 0.05))

    arm = estate.arm(sleep=sleep)
    arm._pacer(ref.subscription, "writes").observe(None, 2.0)  # as after a 429 Retry-After: 2
    estate.run(arm=arm, vault=target)
    assert added, "the run waited for the write quota"
    assert IPv4Network("203.0.113.50/32") in estate.nets(target)
    figures["rules lost"] += estate.check(unconverged=set(estate.vaults) - {target})
