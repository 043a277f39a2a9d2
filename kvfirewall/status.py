"""The status page's model: every vault's state, the last runs and the source, at a glance.

Pure code over what runs stored: the list of stored reports (newest first), the newest full
report, the last good range snapshot and the ledger entries of the vaults shown. Reading them
lives in `status_store.py`; the HTML in `status_page.py`; this module also gives the JSON and
the terminal text, so the page, `?format=json` and `python -m kvfirewall status` show the
same numbers. Nothing here calls Resource Manager.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from kvfirewall.api import BadRequest
from kvfirewall.entries import LedgerEntry
from kvfirewall.pools import LACKS_ENDPOINT
from kvfirewall.report import ReportInfo

Outcome = Literal["updated", "unchanged", "planned", "skipped", "failed"]
SortKey = Literal["outcome", "vault", "changes"]
NoticeKind = Literal["source", "budget", "endpoint", "other"]
Owner = Literal["kvfirewall", "others"]

OUTCOME_NAMES: tuple[Outcome, ...] = get_args(Outcome)
SORT_KEYS: tuple[SortKey, ...] = get_args(SortKey)
# Most urgent first: what needs a person's attention sorts to the top of the table.
SEVERITY: dict[str, int] = {"failed": 0, "planned": 1, "skipped": 2, "updated": 3, "unchanged": 4}
PAGE_SIZE = 200
CHART_DAYS = 30
RECENT_RUNS = 20
REFUSED_SOURCE = "IP source refused"
VAULTS = "/providers/Microsoft.KeyVault/vaults/"


@dataclass(frozen=True, kw_only=True)
class StatusQuery:
    """Which vaults the table shows: an outcome filter, a sort key and a page (from 1)."""

    outcome: Outcome | None = None
    sort: SortKey = "outcome"
    page: int = 1


def parse_status_query(params: Mapping[str, str]) -> StatusQuery:
    """The table's query parameters, validated; anything else is refused with a message
    (`code`, the function key, and `format` belong to the endpoint and are ignored here)."""
    unknown = sorted(set(params) - {"outcome", "sort", "page", "format", "code"})
    if unknown:
        raise BadRequest(f"unknown parameter(s) {', '.join(repr(k[:40]) for k in unknown[:5])}")
    outcome = params.get("outcome") or None
    if outcome is not None and outcome not in OUTCOME_NAMES:
        raise BadRequest(f"outcome must be one of {', '.join(OUTCOME_NAMES)}")
    sort = params.get("sort") or "outcome"
    if sort not in SORT_KEYS:
        raise BadRequest(f"sort must be one of {', '.join(SORT_KEYS)}")
    page = params.get("page") or "1"
    if not (page.isascii() and page.isdigit() and 0 < len(page) <= 6 and int(page) >= 1):
        raise BadRequest("page must be a whole number from 1")
    return StatusQuery(outcome=outcome, sort=sort, page=int(page))  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class RuleView:
    """One rule on a vault after the run, and whose it is."""

    rule: str
    owner: Owner
    change: Literal["added", "removed", "kept", "access"]
    why: str


@dataclass(frozen=True, kw_only=True)
class VaultRow:
    id: str
    name: str
    resource_group: str
    subscription: str
    outcome: str
    reason: str
    error: str | None
    retryable: bool
    rules: tuple[RuleView, ...]

    @property
    def changes(self) -> int:
        return sum(r.change in ("added", "removed", "access") for r in self.rules)


@dataclass(frozen=True, kw_only=True)
class RunRow:
    """One stored run: when, by what, and its counts (changes include audit's `planned`)."""

    name: str
    time: datetime
    trigger: str
    counts: Mapping[str, int]

    @property
    def changes(self) -> int:
        return self.counts.get("updated", 0) + self.counts.get("planned", 0)

    @property
    def failures(self) -> int:
        return self.counts.get("failed", 0)


@dataclass(frozen=True, kw_only=True)
class Notice:
    kind: NoticeKind
    text: str


@dataclass(frozen=True, kw_only=True)
class ActiveLease:
    """An open access lease. Shown when leases are on: a list, possibly empty; `None` in
    `Status.leases` means the deployment has no leases and the section is left out."""

    vault: str
    holder: str
    expires: datetime


@dataclass(frozen=True, kw_only=True)
class Summary:
    """The newest run's numbers: compliant = unchanged or updated, drifted = planned."""

    run: str
    time: datetime
    mode: str
    in_scope: int
    compliant: int
    drifted: int
    skipped: int
    failed: int
    out_of_scope: int
    source: str
    source_version: str
    source_status: str
    # When a run first used this version, and whether that is exact or only the oldest
    # stored run (the change is older than every report kept).
    source_since: datetime | None
    source_since_exact: bool
    snapshot_version: str | None
    snapshot_prefixes: int


@dataclass(frozen=True, kw_only=True)
class Status:
    now: datetime
    summary: Summary | None  # None: no run stored yet
    query: StatusQuery
    outcome_counts: Mapping[str, int]
    vaults: tuple[VaultRow, ...]  # this page's
    matching: int  # vaults the filter keeps, on every page
    pages: int
    chart: tuple[RunRow, ...]  # oldest first, within CHART_DAYS
    runs: tuple[RunRow, ...]  # newest first, at most RECENT_RUNS
    notices: tuple[Notice, ...]
    leases: tuple[ActiveLease, ...] | None = None


def source_since(
    runs: Sequence[ReportInfo], version: str, version_of: Callable[[str], str | None]
) -> tuple[datetime | None, bool]:
    """When the stored runs first used `version`: the oldest run of the newest streak that
    carries it, found by bisection (versions only grow, so the streak is one block), reading
    about log2(n) reports. Returns (time, exact): exact is False when even the oldest stored
    run carries it."""
    if not runs:
        return None, False
    if version_of(runs[-1].name) == version:
        return runs[-1].time, False
    newest, older = 0, len(runs) - 1  # runs[newest] carries it, runs[older] does not
    while older - newest > 1:
        middle = (newest + older) // 2
        if version_of(runs[middle].name) == version:
            newest = middle
        else:
            older = middle
    return runs[newest].time, True


def select_vaults(report: Mapping | None, query: StatusQuery) -> tuple[list[dict], int, int]:
    """The page of the report's vaults the query asks for: (vaults, matching, pages). The page
    is clamped to the last one, so a link kept from a bigger run still shows something."""
    vaults = [v for v in _vaults(report) if query.outcome in (None, v.get("outcome"))]
    if query.sort == "vault":
        vaults.sort(key=_vault_key)
    elif query.sort == "changes":
        vaults.sort(key=lambda v: (-_change_count(v), _vault_key(v)))
    else:
        vaults.sort(key=lambda v: (SEVERITY.get(str(v.get("outcome")), 9), _vault_key(v)))
    pages = max(1, -(-len(vaults) // PAGE_SIZE))
    start = (min(query.page, pages) - 1) * PAGE_SIZE
    return vaults[start : start + PAGE_SIZE], len(vaults), pages


def build_status(
    *,
    now: datetime,
    runs: Sequence[ReportInfo],
    report: Mapping | None,
    query: StatusQuery,
    page: Sequence[Mapping],
    matching: int,
    pages: int,
    owned: Mapping[str, LedgerEntry],
    snapshot_version: str | None = None,
    snapshot_prefixes: int = 0,
    since: tuple[datetime | None, bool] = (None, False),
    leases: Sequence[ActiveLease] | None = None,
) -> Status:
    """The page's model. `runs` newest first; `report` the parsed newest report (`runs[0]`);
    `page` from `select_vaults`; `owned` the ledger entries of the page's vaults (by
    lower-cased id)."""
    rows = [_run_row(r) for r in runs]
    summary = None
    notices: list[Notice] = []
    if report is not None and rows:
        summary = _summary(rows[0], report, since, snapshot_version, snapshot_prefixes)
        notices = _notices(report)
    outcome_counts = {o: 0 for o in OUTCOME_NAMES}
    for vault in _vaults(report):
        outcome = str(vault.get("outcome"))
        outcome_counts[outcome] = outcome_counts.get(outcome, 0) + 1
    start = now - timedelta(days=CHART_DAYS)
    return Status(
        now=now,
        summary=summary,
        query=StatusQuery(outcome=query.outcome, sort=query.sort, page=min(query.page, pages)),
        outcome_counts=outcome_counts,
        vaults=tuple(_vault_row(v, owned.get(str(v.get("id", "")).lower())) for v in page),
        matching=matching,
        pages=pages,
        chart=tuple(r for r in reversed(rows) if start <= r.time <= now),
        runs=tuple(rows[:RECENT_RUNS]),
        notices=tuple(notices),
        leases=None if leases is None else tuple(leases),
    )


def _vaults(report: Mapping | None) -> list[dict]:
    vaults = (report or {}).get("vaults")
    return [v for v in vaults if isinstance(v, dict)] if isinstance(vaults, list) else []


def _vault_key(vault: Mapping) -> tuple[str, str]:
    vault_id = str(vault.get("id", ""))
    return _id_parts(vault_id)[2].lower(), vault_id.lower()


def _id_parts(vault_id: str) -> tuple[str, str, str]:
    """(subscription, resource group, name) of a vault id; the name is all that follows
    `/vaults/`, so a name holding a `/` (a tampered report) is shown whole."""
    head, marker, name = vault_id.partition(VAULTS)
    if not marker:
        head, marker, name = vault_id.lower().partition(VAULTS.lower())
        name = vault_id[len(head) + len(marker) :]
    parts = head.split("/")
    if not marker or len(parts) < 5:
        return "", "", vault_id
    return parts[2], vault_id[len("/".join(parts[:4])) + 1 : len(head)], name


def _change_count(vault: Mapping) -> int:
    return sum(len(vault.get(k) or ()) for k in ("added", "removed", "access"))


def _run_row(run: ReportInfo) -> RunRow:
    return RunRow(name=run.name, time=run.time, trigger=run.trigger, counts=dict(run.counts))


def _summary(
    run: RunRow,
    report: Mapping,
    since: tuple[datetime | None, bool],
    snapshot_version: str | None,
    snapshot_prefixes: int,
) -> Summary:
    vaults = _vaults(report)
    counts = {o: sum(v.get("outcome") == o for v in vaults) for o in OUTCOME_NAMES}
    source = report.get("source") if isinstance(report.get("source"), dict) else {}
    report_counts = report.get("counts") if isinstance(report.get("counts"), dict) else {}
    return Summary(
        run=run.name,
        time=run.time,
        mode=str(report.get("mode", "")),
        in_scope=len(vaults),
        compliant=counts["unchanged"] + counts["updated"],
        drifted=counts["planned"],
        skipped=counts["skipped"],
        failed=counts["failed"],
        out_of_scope=int(report_counts.get("outOfScope", 0) or 0),
        source=str(source.get("source", "")),
        source_version=str(source.get("version", "")),
        source_status=str(source.get("status", "")),
        source_since=since[0],
        source_since_exact=since[1],
        snapshot_version=snapshot_version,
        snapshot_prefixes=snapshot_prefixes,
    )


def _notices(report: Mapping) -> list[Notice]:
    notices = []
    cut_short = int(report.get("cutShort", 0) or 0)
    if cut_short:
        notices.append(
            Notice(
                kind="budget",
                text=f"the run's time budget ran out: {cut_short} vaults not reached "
                "(the next run covers them)",
            )
        )
    warnings = report.get("warnings") if isinstance(report.get("warnings"), list) else []
    for warning in map(str, warnings):
        kind: NoticeKind = "other"
        if warning.startswith(REFUSED_SOURCE):
            kind = "source"
        elif warning.startswith("subnet ") and LACKS_ENDPOINT in warning:
            kind = "endpoint"
        notices.append(Notice(kind=kind, text=warning))
    return notices


def _vault_row(vault: Mapping, entry: LedgerEntry | None) -> VaultRow:
    vault_id = str(vault.get("id", ""))
    subscription, group, name = _id_parts(vault_id)
    rules: list[RuleView] = []
    seen: set[str] = set()
    for change, owner in (
        ("added", "kvfirewall"),
        ("removed", "kvfirewall"),
        ("access", "kvfirewall"),
        ("kept", "others"),
    ):
        for item in vault.get(change) or ():
            if isinstance(item, dict):
                rule = str(item.get("rule", ""))
                seen.add(rule.lower())
                rules.append(
                    RuleView(rule=rule, owner=owner, change=change, why=str(item.get("why", "")))
                )
    if entry is not None:  # kvfirewall's rules already in place: in the ledger only
        for rule in sorted(map(str, entry.ip_rules)) + sorted(entry.subnets):
            if rule.lower() not in seen:
                rules.append(
                    RuleView(rule=rule, owner="kvfirewall", change="kept", why="added earlier")
                )
    error = vault.get("error")
    return VaultRow(
        id=vault_id,
        name=name,
        resource_group=group,
        subscription=subscription,
        outcome=str(vault.get("outcome", "")),
        reason=str(vault.get("reason", "")),
        error=None if error is None else str(error),
        retryable=vault.get("retryable") is True,
        rules=tuple(rules),
    )


def status_json(status: Status) -> dict:
    """`GET /api/status?format=json` and `python -m kvfirewall status --json`."""

    def run(r: RunRow) -> dict:
        return {
            "id": r.name,
            "time": r.time.isoformat(),
            "trigger": r.trigger,
            "counts": dict(r.counts),
        }

    s = status.summary
    return {
        "time": status.now.isoformat(),
        "summary": None
        if s is None
        else {
            "run": s.run,
            "time": s.time.isoformat(),
            "mode": s.mode,
            "inScope": s.in_scope,
            "compliant": s.compliant,
            "drifted": s.drifted,
            "skipped": s.skipped,
            "failed": s.failed,
            "outOfScope": s.out_of_scope,
            "source": {
                "source": s.source,
                "version": s.source_version,
                "status": s.source_status,
                "since": s.source_since.isoformat() if s.source_since else None,
                "sinceExact": s.source_since_exact,
                "snapshotVersion": s.snapshot_version,
                "snapshotPrefixes": s.snapshot_prefixes,
            },
        },
        "outcomes": dict(status.outcome_counts),
        "query": {"outcome": status.query.outcome, "sort": status.query.sort},
        "page": status.query.page,
        "pages": status.pages,
        "matching": status.matching,
        "vaults": [
            {
                "id": v.id,
                "outcome": v.outcome,
                "reason": v.reason,
                "error": v.error,
                "retryable": v.retryable,
                "rules": [
                    {"rule": r.rule, "owner": r.owner, "change": r.change, "why": r.why}
                    for r in v.rules
                ],
            }
            for v in status.vaults
        ],
        "chart": [run(r) for r in status.chart],
        "runs": [run(r) for r in status.runs],
        "warnings": [{"kind": n.kind, "text": n.text} for n in status.notices],
        **(
            {}
            if status.leases is None
            else {
                "leases": [
                    {"vault": x.vault, "holder": x.holder, "expires": x.expires.isoformat()}
                    for x in status.leases
                ]
            }
        ),
    }


def status_text(status: Status, *, vault_lines: int = 30) -> str:
    """The terminal summary: the numbers, the warnings, the vaults that need attention and
    the last runs."""
    s = status.summary
    if s is None:
        return "kvfirewall status: no run stored yet"
    since = ""
    if s.source_since is not None:
        since = f", since {'' if s.source_since_exact else 'at least '}{_when(s.source_since)}"
    lines = [
        f"kvfirewall status: run {s.run} ({s.mode})",
        f"  {s.in_scope} vaults in scope: {s.compliant} compliant, {s.drifted} drifted, "
        f"{s.skipped} skipped, {s.failed} failed; {s.out_of_scope} out of scope",
        f"  AzureDevOps service tag version {s.source_version} ({s.source_status}){since}",
    ]
    lines.extend(f"warning: {n.text}" for n in status.notices)
    attention = [v for v in status.vaults if v.outcome in ("failed", "planned", "skipped")]
    for v in attention[:vault_lines]:
        lines.append(f"  {v.outcome:<8} {v.resource_group}/{v.name}: {v.error or v.reason}")
    if len(attention) > vault_lines:
        lines.append(f"  ... {len(attention) - vault_lines} more on the page (--json)")
    lines.append("last runs:")
    for r in status.runs[:10]:
        counts = ", ".join(f"{n} {o}" for o, n in r.counts.items() if n and o in SEVERITY)
        lines.append(f"  {r.name:<24} {counts or 'no vaults'}")
    return "\n".join(lines)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
