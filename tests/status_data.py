"""Stored runs for the status page's tests, the browser test and the benchmark: real
`Report` objects as a run builds them, and their listing as a store gives it."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from kvfirewall.plan import Change
from kvfirewall.report import Report, ReportInfo, VaultResult

# Relative to the real time: the page's chart and the stores' retention read the clock.
NOW = datetime.now(timezone.utc).replace(second=0, microsecond=0)
SUB = "6f1c2a8e-4b7d-4c1e-9a53-2d8e0f4b7a10"
HOSTILE_NAMES = (
    "<script>document.title='owned'</script>",
    "kv-\"quoted\"-'single'-&amp;",
    "kv-\u202eevil\u202c-rtl",  # right-to-left override
    "kv-zero\u200b\u200dwidth\ufeff",
    "<img src=x onerror=alert(1)>",
    "x" * 10_000,
)


def run_name(moment: datetime, trigger: str = "timer") -> str:
    return f"{moment:%Y%m%dT%H%M%SZ}-{trigger}"


def vault_id(name: str, group: str = "rg-apps", sub: str = SUB) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.KeyVault/vaults/{name}"


def vault(name: str, outcome: str, **kwargs) -> VaultResult:
    reasons = {
        "updated": "adds 1, removes 0",
        "unchanged": "compliant",
        "planned": "would add 1",
        "skipped": "public network access is disabled: firewall rules have no effect",
        "failed": "write failed",
    }
    changes = {}
    if outcome in ("updated", "planned"):
        changes["added"] = (Change("20.166.41.0/24", "AzureDevOps northeurope (Europe)"),)
    if outcome == "failed":
        changes["error"] = "HttpResponseError: (Conflict) the vault is being updated"
        changes["retryable"] = True
    return VaultResult(
        id=kwargs.pop("id", vault_id(name)),
        outcome=outcome,
        reason=kwargs.pop("reason", reasons[outcome]),
        kept=(Change("52.174.10.20/32", "not added by kvfirewall"),),
        **{**changes, **kwargs},
    )


def report(
    vaults: list[VaultResult],
    *,
    version: str = "8",
    status: str = "unchanged",
    mode: str = "enforce",
    warnings: list[str] | None = None,
    cut_short: int = 0,
) -> Report:
    return Report(
        mode=mode,
        source={
            "setting": "api",
            "source": "api (westeurope)",
            "version": version,
            "status": status,
            "added": [],
            "removed": [],
        },
        vaults=vaults,
        warnings=warnings or [],
        out_of_scope=2,
        arm_calls={"reads": 3, "writes": 1, "throttled": 0},
        cut_short=cut_short,
    )


def estate(count: int, *, seed: int = 15) -> list[VaultResult]:
    """`count` vaults with a realistic spread of outcomes."""
    rng = random.Random(seed)
    weights = {"unchanged": 80, "updated": 8, "planned": 4, "skipped": 6, "failed": 2}
    outcomes = rng.choices(list(weights), weights=list(weights.values()), k=count)
    return [
        vault(f"kv-{i:05d}", outcome, id=vault_id(f"kv-{i:05d}", f"rg-team-{i % 37:02d}"))
        for i, outcome in enumerate(outcomes)
    ]


def history(days: int = 40, *, every_hours: int = 6, seed: int = 15) -> list[ReportInfo]:
    """Timer runs over the last `days`, newest first, with changes and some failures."""
    rng = random.Random(seed)
    runs = []
    moment = NOW - timedelta(minutes=30)
    while moment > NOW - timedelta(days=days):
        counts = {
            "updated": rng.choice((0, 0, 0, 1, 2, 5, 12)),
            "unchanged": 180,
            "planned": 0,
            "skipped": 6,
            "failed": rng.choice((0, 0, 0, 0, 1, 3)),
        }
        runs.append(ReportInfo(run_name(moment), moment, "timer", counts))
        moment -= timedelta(hours=every_hours)
    return runs
