"""One report for every run: JSON for machines, a table for people.

The CLI, the HTTP trigger and the logs all show this same object, so what an operator reads
in a terminal is exactly what a pipeline parses.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:  # the store imports this module, and the planner imports the store
    from kvfirewall.plan import Change

OUTCOMES = ("updated", "unchanged", "planned", "skipped", "failed")
LOG_LINE_CHARS = 30_000  # below App Insights' 32 KiB trace message limit

Trigger = Literal["timer", "http", "cli"]
TRIGGERS: tuple[Trigger, ...] = get_args(Trigger)
_NAME_TIME = "%Y%m%dT%H%M%SZ"
_REPORT_NAME = re.compile(r"(\d{8}T\d{6}Z)-(timer|http|cli)(?:-([1-9]\d{0,5}))?")


@dataclass(frozen=True)
class ReportInfo:
    """A stored report as listed: its name, when its run started, what started it, and its
    counts (read without reading the report)."""

    name: str  # <YYYYMMDDTHHMMSSZ>-<trigger>, with -2, -3, ... when that name was taken
    time: datetime  # UTC
    trigger: Trigger
    counts: dict[str, int]


def report_name(started: datetime, trigger: Trigger) -> str:
    """The name a run's report is stored under (the store adds a suffix if it is taken)."""
    return f"{started.astimezone(UTC).strftime(_NAME_TIME)}-{trigger}"


def parse_report_name(name: str) -> tuple[datetime, Trigger, int] | None:
    """(time, trigger, n) of a report name, n being 1 without a suffix; None for any other
    name, so that nothing but a report name ever becomes a path or a blob name."""
    match = _REPORT_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        time = datetime.strptime(match[1], _NAME_TIME).replace(tzinfo=UTC)
    except ValueError:  # 20251399T...
        return None
    return time, match[2], int(match[3] or 1)  # type: ignore[return-value]


def report_info(name: str, counts: dict[str, int]) -> ReportInfo | None:
    """The listing entry of a stored report, or None if `name` is not a report name."""
    parsed = parse_report_name(name)
    if parsed is None:
        return None
    return ReportInfo(name=name, time=parsed[0], trigger=parsed[1], counts=counts)


def newest_first(reports: list[ReportInfo]) -> list[ReportInfo]:
    """By start time, and within one second by suffix: the last stored first."""

    def key(info: ReportInfo) -> tuple[datetime, int]:
        parsed = parse_report_name(info.name)
        return (info.time, parsed[2] if parsed else 0)

    return sorted(reports, key=key, reverse=True)


def name_candidates(name: str, *, limit: int = 1000) -> list[str]:
    """`name`, then `name-2`, `name-3`, ...: the names a report may take, in order."""
    return [name] + [f"{name}-{n}" for n in range(2, limit + 1)]


@dataclass(frozen=True, kw_only=True)
class VaultResult:
    """What happened to one vault and why."""

    id: str
    outcome: str  # one of OUTCOMES
    reason: str
    added: tuple[Change, ...] = ()
    removed: tuple[Change, ...] = ()
    kept: tuple[Change, ...] = ()
    access: tuple[Change, ...] = ()  # defaultAction / publicNetworkAccess a lock-down changed
    put_back: tuple[str, ...] = ()  # our rules a concurrent write removed, written again
    error: str | None = None
    # Another attempt may succeed (throttling, outage, the vault busy in another run).
    retryable: bool = False

    def to_json(self) -> dict:
        def rules(changes: tuple[Change, ...]) -> list[dict]:
            return [{"rule": c.rule, "why": c.why} for c in changes]

        return {
            "id": self.id,
            "outcome": self.outcome,
            "reason": self.reason,
            "added": rules(self.added),
            "removed": rules(self.removed),
            "kept": rules(self.kept),
            "access": rules(self.access),
            "putBack": list(self.put_back),
            "error": self.error,
            "retryable": self.retryable,
        }


@dataclass(kw_only=True)
class Report:
    """A whole run: mode, where the ranges came from, and every vault's result."""

    mode: str  # "enforce" (writes) | "audit" (never writes) | "plan" (dry run)
    source: dict
    vaults: list[VaultResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    out_of_scope: int = 0
    arm_calls: dict = field(default_factory=dict)
    duration_seconds: float = 0.0
    cut_short: int = 0  # vaults not reached because the run's time budget ran out

    @property
    def counts(self) -> dict[str, int]:
        counter = Counter(v.outcome for v in self.vaults)
        return {outcome: counter.get(outcome, 0) for outcome in OUTCOMES}

    @property
    def failed(self) -> bool:
        return any(v.outcome == "failed" for v in self.vaults)

    def summary(self) -> str:
        """One line for logs and the end of a table."""
        counts = ", ".join(f"{n} {o}" for o, n in self.counts.items() if n)
        scope = f", {self.out_of_scope} out of scope" if self.out_of_scope else ""
        if self.cut_short:
            scope += f"; CUT SHORT, {self.cut_short} not reached"
        return (
            f"kvfirewall {self.mode}: {len(self.vaults)} vaults ({counts or 'none'}){scope}; "
            f"ranges {self.source.get('version')} ({self.source.get('status')}); "
            f"ARM {self.arm_calls.get('reads', 0)} reads, {self.arm_calls.get('writes', 0)} writes"
        )

    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "source": self.source,
            "counts": {**self.counts, "outOfScope": self.out_of_scope},
            "armCalls": self.arm_calls,
            "durationSeconds": round(self.duration_seconds, 3),
            "cutShort": self.cut_short,
            "warnings": self.warnings,
            "vaults": [v.to_json() for v in self.vaults],
        }

    def to_log_lines(self, *, limit: int = LOG_LINE_CHARS) -> list[str]:
        """The JSON report as log lines of at most `limit` characters (App Insights cuts a
        trace at 32 KiB): first the run without its vaults, then the vaults in parts, each
        line a JSON object. A vault too large for one line (a thousand kept rules) is logged
        with its rule counts instead of its rules."""
        data = self.to_json()
        vaults = [_compact(v, limit - 100) for v in data.pop("vaults")]
        lines = [_compact({**data, "vaultCount": len(vaults)}, limit)]
        part: list[str] = []
        size = 0
        for vault in vaults:
            if part and size + len(vault) > limit - 100:
                lines.append(f'{{"vaults":[{",".join(part)}]}}')
                part, size = [], 0
            part.append(vault)
            size += len(vault) + 1
        if part:
            lines.append(f'{{"vaults":[{",".join(part)}]}}')
        return lines

    def to_table(self) -> str:
        """A fixed-width table, one row per vault, then each rule added (+), removed (-) or
        kept as someone else's (=) with its reason, the warnings, and the summary."""
        rows = [("VAULT", "OUTCOME", "+", "-", "KEPT", "REASON")]
        for v in sorted(self.vaults, key=lambda r: r.id.lower()):
            reason = v.error or v.reason
            rows.append(
                (
                    _short_id(v.id),
                    v.outcome,
                    str(len(v.added)),
                    str(len(v.removed)),
                    str(len(v.kept)),
                    reason,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
            for r in rows
        ]
        for v in sorted(self.vaults, key=lambda r: r.id.lower()):
            for mark, changes in (("+", v.added), ("-", v.removed), ("=", v.kept)):
                lines.extend(f"  {mark} {_short_id(v.id)}: {c.rule}  ({c.why})" for c in changes)
        lines.extend(f"warning: {w}" for w in self.warnings)
        lines.append(self.summary())
        return "\n".join(lines)


def _compact(data: dict, limit: int) -> str:
    text = json.dumps(data, separators=(",", ":"))
    if len(text) <= limit:
        return text
    counts = {k: len(v) if isinstance(v, list) else v for k, v in data.items()}
    return json.dumps({**counts, "rulesOmitted": True}, separators=(",", ":"))[:limit]


def _short_id(vault_id: str) -> str:
    """`<resource group>/<vault>`: enough for a person, the JSON keeps the full id."""
    parts = vault_id.split("/")
    return f"{parts[4]}/{parts[-1]}" if len(parts) >= 9 else vault_id
