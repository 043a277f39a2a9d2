"""Crashes: a reconcile killed with SIGKILL at an exact point, then run again.

The kill comes from the emulator, right after it has processed the chosen request and before
it answers: for a PATCH that is the worst moment, the write has landed and the ledger has not
been told. The rerun must own every rule the dead run added and remove none of anyone else's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VAULT_CALLS = r"/providers/Microsoft\.KeyVault/vaults"


def apply_killed_at(estate, method: str, path_regex: str, *, nth: int) -> int:
    """Run `python -m kvfirewall apply` and SIGKILL it once the emulator has processed the
    `nth` request matching; returns the exit status (negative: killed)."""
    proc: list[subprocess.Popen] = []
    for _ in range(nth - 1):
        estate.emulator.intercept(method, path_regex)  # let the earlier ones pass
    estate.emulator.intercept(
        method, path_regex, after=lambda _emulator: os.kill(proc[0].pid, signal.SIGKILL)
    )
    proc.append(
        subprocess.Popen(
            [sys.executable, "-m", "kvfirewall", "apply"],
            cwd=ROOT,
            env={**os.environ, **estate.env()},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    return proc[0].wait(timeout=120)


@pytest.mark.parametrize("nth_write", [1, 2, 5])
def test_killed_between_the_write_and_the_ledger_update(estate, figures, nth_write):
    status = apply_killed_at(estate, "PATCH", VAULT_CALLS, nth=nth_write)
    assert status == -signal.SIGKILL
    landed = estate.converged()  # the writes that landed before the process died
    assert len(landed) >= nth_write
    report = estate.run()
    assert not report.failed
    # Those writes were complete: the rerun confirms them (no write) and does the rest.
    assert {v.id for v in report.vaults if v.outcome == "unchanged"} == landed
    assert report.counts["updated"] == estate.effective - len(landed)
    figures["rules lost"] += estate.check()


@pytest.mark.parametrize(
    ("method", "nth"),
    [("GET", 1), ("GET", 2), ("GET", 4), ("GET", 9), ("PATCH", 3)],
    ids=["listing", "first read", "after a write", "late read", "third write"],
)
def test_killed_anywhere_the_rerun_converges(estate, figures, method, nth):
    assert apply_killed_at(estate, method, VAULT_CALLS, nth=nth) == -signal.SIGKILL
    report = estate.run()
    assert not report.failed
    again = estate.run()
    assert again.arm_calls["writes"] == 0  # settled: the third run has nothing to do
    figures["rules lost"] += estate.check()
