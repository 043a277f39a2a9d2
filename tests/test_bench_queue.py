"""The queue benchmark runs end to end on a tiny estate (its figures are not checked, only its
counts): the planner queues every drifted vault, the consumer processes take every message
between them, and the run's report is assembled with every vault written once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_queue_benchmark_consumes_every_message_with_one_and_two_consumers():
    result = subprocess.run(
        [sys.executable, "-m", "bench.queue", "--quick", "--parts", "--simulate", "1000x10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    measured = [r for r in rows if "consumers" in r]
    assert [r["consumers"] for r in measured] == [1, 2]
    for row in measured:
        assert row["counts"] == {"updated": 20} and row["poisoned"] == 0
        assert (row["queued"], row["messages"]) == (20, 2)
        assert sum(row["messagesPerConsumer"]) == 2
        # Per vault: under its lease a fresh read, the write and the read that checks it.
        assert (row["writes"], row["writesApplied"], row["throttledEmulator"]) == (20, 20, 0)
        assert row["reads"] >= 40
        assert row["cpuSeconds"] > 0 and row["cpuSecondsAll"] >= row["cpuSeconds"]
        assert len(row["processCpuSeconds"]) == row["consumers"]
        # Requests counted at the transport: 3 to Resource Manager per vault; per vault its
        # lease (taken, released; its blob created first, the first attempt answered 404),
        # a ledger read and two writes, plus each message's part and the run's record.
        assert row["requests"]["arm"] == 60 and row["armPerVault"] == 3.0
        assert row["requests"]["table"] == 60 and row["requests"]["blob"] >= 80
        assert row["storagePerVault"] == pytest.approx((row["requests"]["blob"] + 60) / 20)
        parts = row["partsMsPerVault"]
        assert parts["the vault's lease (Blob): taken, released"] > 0
        http = parts["of which the HTTP stack: requests, urllib3, sockets"]
        assert 0 < http < row["cpuMsPerVault"]
    simulated = [r for r in rows if "instances" in r]
    assert [(r["vaults"], r["instances"]) for r in simulated] == [
        (20, 1),
        (20, 10),
        (20, 50),
        (1000, 1),
        (1000, 10),
        (1000, 50),
    ]
    # 100 vaults a subscription fit the 200-write burst: no quota floor; 10 messages at most
    # keep 10 instances busy, so 50 are no faster.
    big = [r for r in simulated if r["vaults"] == 1000]
    assert all(r["quotaMinSeconds"] == 0 and r["messages"] == 10 for r in big)
    assert big[1]["seconds"] == big[2]["seconds"] < big[0]["seconds"]
