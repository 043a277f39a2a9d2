"""Resource Manager faults: throttling, server errors, timeouts, resets and conflicts, on reads
and on writes. Each scenario ends converged, with nothing lost and nothing opened."""

from __future__ import annotations

import random

import pytest

from kvfirewall import vaults

VAULTS = r"/providers/Microsoft\.KeyVault/vaults/kv-"
LISTING = r"/providers/Microsoft\.KeyVault/vaults$"

WRITE_FAULTS = {
    "429 Retry-After": dict(status=429, headers={"Retry-After": "1"}),
    "409 conflict": dict(status=409),
    "408 timeout": dict(status=408),
    "500": dict(status=500),
    "502": dict(status=502),
    "503 Retry-After": dict(status=503, headers={"Retry-After": "1"}),
    "504": dict(status=504),
}


@pytest.mark.parametrize("fault", WRITE_FAULTS.values(), ids=WRITE_FAULTS.keys())
def test_write_faults_are_retried_after_a_fresh_read(estate, figures, fault):
    estate.emulator.fail("PATCH", VAULTS, fault["status"], times=6, headers=fault.get("headers"))
    report = estate.run()
    assert not report.failed, report.to_json()
    assert report.counts["updated"] == estate.effective  # every vault rules take effect on
    figures["rules lost"] += estate.check()


@pytest.mark.parametrize("kind", ["reset", "lost answer", "stall past the timeout"])
def test_transport_faults_on_writes(estate, figures, monkeypatch, kind):
    """The request never arrived, or arrived and its answer did not: the next read tells."""
    emulator = estate.emulator
    landed = None
    if kind == "reset":
        emulator.reset_connection("PATCH", VAULTS, times=3)
    elif kind == "lost answer":
        emulator.lose_response("PATCH", VAULTS, times=3)
    else:
        monkeypatch.setattr(vaults, "WRITE_TIMEOUT", 1)
        landed = emulator.stall("PATCH", VAULTS, 1.5, times=2)
    estate.converge()
    if landed is not None:  # the stalled writes land late, with the bodies they had: fine
        assert landed.wait(timeout=30)
    figures["rules lost"] += estate.check()


@pytest.mark.parametrize("status", [429, 500, 503, "reset"])
def test_read_faults_on_listing_and_gets(estate, figures, status):
    emulator = estate.emulator
    if status == "reset":
        emulator.reset_connection("GET", LISTING, times=2)
        emulator.reset_connection("GET", VAULTS, times=2)
    else:
        headers = {"Retry-After": "1"} if status == 429 else None
        emulator.fail("GET", LISTING, status, times=2, headers=headers)
        emulator.fail("GET", VAULTS, status, times=3, headers=headers)
    report = estate.run()
    assert not report.failed, report.to_json()
    figures["rules lost"] += estate.check()


def test_the_write_quota_is_waited_out(estate, figures):
    """A small write bucket: every write is answered 429 until tokens refill."""
    estate.emulator.throttle(reads=None, writes=(2, 2.0))
    report = estate.run()
    assert not report.failed and report.arm_calls["throttled"] >= 1
    figures["rules lost"] += estate.check()


def test_a_vault_that_keeps_failing_is_given_up_after_a_bounded_time(estate, figures):
    emulator = estate.emulator
    stuck = next(v for v in estate.vaults if "locked-000" in v)
    emulator.fail("PATCH", "kv-locked-000", 503, times=1000)
    report = estate.run(arm=estate.arm(write_retry_seconds=2.0))
    result = next(v for v in report.vaults if v.id == stuck)
    assert (result.outcome, result.retryable) == ("failed", True)
    assert "gave up after" in result.error
    assert report.counts["updated"] == estate.effective - 1  # the others are not held up
    figures["rules lost"] += estate.check(unconverged={stuck})
    emulator.clear_faults()
    estate.run()
    figures["rules lost"] += estate.check()


def test_a_storm_of_random_faults_converges(estate, figures):
    """A seeded mix of every fault on a third of the requests, across three runs."""
    emulator = estate.emulator
    rng = random.Random(20261127)
    for _ in range(30):
        method = rng.choice(["GET", "PATCH"])
        target = rng.choice([VAULTS, LISTING]) if method == "GET" else VAULTS
        choice = rng.choice(["fail", "reset", "lose"])
        if choice == "fail":
            status = rng.choice([408, 409, 429, 500, 502, 503, 504])
            emulator.fail(method, target, status, headers={"Retry-After": "0"})
        elif choice == "reset":
            emulator.reset_connection(method, target)
        else:
            emulator.lose_response(method, target)
    reports = estate.converge(runs=4)
    assert not reports[-1].failed, reports[-1].to_json()
    figures["rules lost"] += estate.check()
