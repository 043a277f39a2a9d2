"""The benchmark runs end to end on a tiny estate (its figures are not checked, only its counts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("state", ["local", "azurite"])
def test_the_benchmark_runs_every_phase_and_the_rerun_writes_nothing(state):
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--graph", "--state", state],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {
        row["phase"]: row
        for row in map(json.loads, (x for x in result.stdout.splitlines() if x.startswith("{")))
    }
    assert list(rows) == ["full", "rerun", "graph-rerun", "event", "event-drift"]
    assert {row["state"] for row in rows.values()} == {state}
    stores = {"local": "LocalStore", "azurite": "AzureStore"}
    assert {row["store"] for row in rows.values()} == {stores[state]}  # the ledger it used
    for row in rows.values():
        for field in ("seconds", "reads", "writes", "throttledClient", "throttledEmulator"):
            assert isinstance(row[field], (int, float)), field
        assert row["peakRssMb"] > 0
        assert row["cpuMsPerVault"] > 0  # the run's own CPU, per vault it reconciled
    full, rerun = rows["full"], rows["rerun"]
    assert full["counts"] == {"updated": 20} and full["writesApplied"] == 20
    assert 0 < full["quotaUse"] <= 1 and full["writesPerSecond"] > 0
    assert rerun["counts"] == {"unchanged": 20}
    assert rerun["writes"] == rerun["emulatorWrites"] == 0
    assert rerun["reads"] <= rerun["listPages"] + rerun["subscriptions"]
    # Listed through Resource Graph: one query and the Discovery API, no vault read.
    graph = rows["graph-rerun"]
    assert graph["counts"] == {"unchanged": 20} and graph["writes"] == 0
    assert graph["reads"] == 2 and graph["emulatorReads"] == 1
    assert (rows["event"]["reads"], rows["event"]["writes"]) == (1, 0)
    # The event's read; under the vault's lease a fresh read, the write and its check.
    assert (rows["event-drift"]["reads"], rows["event-drift"]["writes"]) == (3, 1)
