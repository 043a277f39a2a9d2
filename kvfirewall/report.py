"""One report for every run: JSON for machines, a table for people.

The CLI, the HTTP trigger and the logs all show this same object, so what an operator reads
in a terminal is exactly what a pipeline parses. A run over every vault streams each vault's
result to a `ReportSpool` as it finishes and keeps in memory only the counts and the vaults
that changed or failed; the full report is stored from the spool (see `StateStore`).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:  # the store imports this module, and the planner imports the store
    from kvfirewall.plan import Change

OUTCOMES = ("updated", "unchanged", "planned", "skipped", "failed")
CHANGED_OR_FAILED = frozenset({"updated", "planned", "failed"})
LOG_LINE_CHARS = 30_000  # below App Insights' 32 KiB trace message limit
# Changed or failed vaults a spooled report keeps in memory (a few MB at most): beyond them,
# a first run over a large estate, where every vault changes, would grow with the estate.
# All of them are in the stored report.
KEPT_VAULTS = 1000
SPOOL_MEMORY_BYTES = 1 << 20  # a spool moves to a temporary file beyond this

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
    return f"{started.astimezone(timezone.utc).strftime(_NAME_TIME)}-{trigger}"


def parse_report_name(name: str) -> tuple[datetime, Trigger, int] | None:
    """(time, trigger, n) of a report name, n being 1 without a suffix; None for any other
    name, so that nothing but a report name ever becomes a path or a blob name."""
    match = _REPORT_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        time = datetime.strptime(match[1], _NAME_TIME).replace(tzinfo=timezone.utc)
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


class ReportSpool:
    """Every vault's result as JSON, appended as the run goes: in memory up to
    `SPOOL_MEMORY_BYTES`, in a temporary file beyond, deleted on `close`. Appended to by the
    run's one consuming thread."""

    def __init__(self) -> None:
        # Closed by close(), which the run calls through the context manager.
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, mode="w+b")  # noqa: SIM115
        self._count = 0

    def __enter__(self) -> ReportSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, result: VaultResult) -> None:
        text = json.dumps(result.to_json(), separators=(",", ":"))
        self._file.write(f"{',' if self._count else ''}\n{text}".encode())
        self._count += 1

    def chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        """The results so far, as the items of a JSON array (without its brackets)."""
        self._file.seek(0)
        while chunk := self._file.read(size):
            yield chunk
        self._file.seek(0, 2)

    def close(self) -> None:
        self._file.close()


@dataclass(kw_only=True)
class Report:
    """A whole run: mode, where the ranges came from, and the vaults' results.

    Without a spool, `vaults` holds every result (one vault, or a report built whole). With
    one, every result goes to the spool and `vaults` keeps only those that changed or failed,
    up to `KEPT_VAULTS` (`vaults_omitted` counts the rest); the counts are always exact.
    """

    mode: str  # "enforce" (writes) | "audit" (never writes) | "plan" (dry run)
    source: dict
    vaults: list[VaultResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    out_of_scope: int = 0
    arm_calls: dict = field(default_factory=dict)
    duration_seconds: float = 0.0
    cut_short: int = 0  # vaults not reached because the run's time budget ran out
    # Subscriptions whose listing the budget cut off: their vaults not listed are not counted.
    cut_short_subscriptions: int = 0
    spool: ReportSpool | None = None
    vaults_omitted: int = 0  # changed or failed, beyond KEPT_VAULTS: in the stored report only
    stored_as: str | None = None  # the stored report's name
    # The agent pools' networks, the subnets checked for the Key Vault endpoint, the fixes.
    agent_networks: dict = field(default_factory=dict)
    # A fanned-out run (see `fan_out`): its id, and the vaults it queued for other invocations
    # in how many messages; their results are in the run's stored report, not in this one.
    run_id: str | None = None
    queued: int = 0
    messages: int = 0
    _tally: Counter = field(default_factory=Counter, init=False, repr=False)
    _listed: Literal["all", "changed or failed"] = field(default="all", init=False, repr=False)

    def __post_init__(self) -> None:
        self._tally.update(v.outcome for v in self.vaults)
        if self.spool is not None:
            self._listed = "changed or failed"

    def add(self, result: VaultResult) -> None:
        """Count a finished vault, and keep it or spool it."""
        self._tally[result.outcome] += 1
        if self.spool is None:
            self.vaults.append(result)
            return
        self.spool.append(result)
        if result.outcome in CHANGED_OR_FAILED:
            if len(self.vaults) < KEPT_VAULTS:
                self.vaults.append(result)
            else:
                self.vaults_omitted += 1

    @property
    def total(self) -> int:
        """Results so far: vaults, and subscriptions that could not be listed to the end."""
        return sum(self._tally.values())

    @property
    def counts(self) -> dict[str, int]:
        return {outcome: self._tally.get(outcome, 0) for outcome in OUTCOMES}

    @property
    def failed(self) -> bool:
        return self._tally.get("failed", 0) > 0

    def totals(self) -> dict[str, int]:
        """The counts a stored report is listed with."""
        return {
            **self.counts,
            "outOfScope": self.out_of_scope,
            "cutShort": self.cut_short,
            "cutShortSubscriptions": self.cut_short_subscriptions,
        }

    def summary(self) -> str:
        """One line for logs and the end of a table."""
        counts = ", ".join(f"{n} {o}" for o, n in self.counts.items() if n)
        scope = f", {self.out_of_scope} out of scope" if self.out_of_scope else ""
        if self.cut_short or self.cut_short_subscriptions:
            scope += f"; CUT SHORT, {self.cut_short} not reached"
        if self.cut_short_subscriptions:
            scope += f", {self.cut_short_subscriptions} subscriptions not listed to the end"
        if self.run_id:
            scope += f"; {self.queued} queued in {self.messages} messages (run {self.run_id})"
        return (
            f"kvfirewall {self.mode}: {self.total} vaults ({counts or 'none'}){scope}; "
            f"ranges {self.source.get('version')} ({self.source.get('status')}); "
            f"ARM {self.arm_calls.get('reads', 0)} reads, {self.arm_calls.get('writes', 0)} writes"
        )

    def _head(self) -> dict:
        return {
            "mode": self.mode,
            "source": self.source,
            "counts": {**self.counts, "outOfScope": self.out_of_scope},
            "armCalls": self.arm_calls,
            "durationSeconds": round(self.duration_seconds, 3),
            "cutShort": self.cut_short,
            "cutShortSubscriptions": self.cut_short_subscriptions,
            "warnings": self.warnings,
            **({"agentNetworks": self.agent_networks} if self.agent_networks else {}),
        }

    def to_json(self) -> dict:
        """The report as held: `vaultsListed` says whether `vaults` is every vault or only
        those that changed or failed (then `report` names the stored full report, if any)."""
        queued = {"run": self.run_id, "queued": self.queued, "messages": self.messages}
        return {
            **self._head(),
            **(queued if self.run_id else {}),
            "report": self.stored_as,
            "vaultsListed": self._listed,
            "vaultsOmitted": self.vaults_omitted,
            "vaults": [v.to_json() for v in self.vaults],
        }

    def full_json(self) -> Iterator[bytes]:
        """The whole report, every vault, as JSON in chunks: from the spool, if there is one,
        so that it is never whole in memory."""
        head = {**self._head(), "vaultsListed": "all"}
        if self.spool is None:
            yield json.dumps({**head, "vaults": [v.to_json() for v in self.vaults]}).encode()
            return
        yield json.dumps(head)[:-1].encode() + b', "vaults": ['
        yield from self.spool.chunks()
        yield b"\n]}\n"

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
        if self._listed != "all":
            more = f", and {self.vaults_omitted} more of them" if self.vaults_omitted else ""
            if not self.vaults:  # a header without rows
                lines = []
            none = "" if self.vaults else ": none"
            lines.append(f"(listed: the vaults that changed or failed{none}{more})")
        lines.extend(f"warning: {w}" for w in self.warnings)
        if self.stored_as:
            lines.append(f"report stored as {self.stored_as} (python -m kvfirewall reports NAME)")
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
