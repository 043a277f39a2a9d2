"""Reads what the status page shows from the state store, and only from it: the stored
reports, the last good range snapshot and the ledger entries of the vaults on the page. No
Resource Manager call, so the page answers even while Azure is throttling the runs.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from kvfirewall.entries import LedgerEntry
from kvfirewall.report import parse_report_name
from kvfirewall.status import (
    ActiveLease,
    Status,
    StatusQuery,
    build_status,
    select_vaults,
    source_since,
)

LEDGER_READERS = 8  # a page is at most 200 entries: a few storage round trips in parallel
VERSION_MEMO = 4096


class _Versions:
    """The source version of stored reports by name. A stored report never changes, so what
    one page load read serves the next: the bisection reads only the newest reports again."""

    def __init__(self) -> None:
        self._known: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self._lock = threading.Lock()

    def reader(self, store):
        def version_of(name: str) -> str | None:
            key = (store.describe(), name)
            with self._lock:
                if key in self._known:
                    return self._known[key]
            try:
                source = json.loads(store.read_report(name)).get("source") or {}
                version = str(source.get("version"))
            except (KeyError, ValueError, AttributeError):  # gone, or not a report of ours
                version = None
            with self._lock:
                self._known[key] = version
                while len(self._known) > VERSION_MEMO:
                    self._known.popitem(last=False)
            return version

        return version_of


_versions = _Versions()


def read_status(store, query: StatusQuery, *, now: datetime, leases: bool = False) -> Status:
    """The status model from `store` (a `StateStore` with stored reports); with `leases`
    (KVF_LEASES on), the access leases open at `now`, one row per vault."""
    runs = store.list_reports()
    report = json.loads(store.read_report(runs[0].name)) if runs else None
    snapshot = store.read_snapshot()
    page, matching, pages = select_vaults(report, query)
    keys = [str(v.get("id", "")).lower() for v in page]
    with ThreadPoolExecutor(max_workers=LEDGER_READERS) as pool:
        entries: list[LedgerEntry] = list(pool.map(store.read_entry, keys))
    since: tuple[datetime | None, bool] = (None, False)
    if report is not None:
        version = str((report.get("source") or {}).get("version"))
        since = source_since(runs, version, _versions.reader(store))
    return build_status(
        now=now,
        runs=runs,
        report=report,
        query=query,
        page=page,
        matching=matching,
        pages=pages,
        owned=dict(zip(keys, entries, strict=True)),
        snapshot_version=snapshot.version if snapshot else None,
        snapshot_prefixes=len(snapshot.prefixes) if snapshot else 0,
        since=since,
        leases=_active_leases(store, now) if leases else None,
    )


def _active_leases(store, now: datetime) -> list[ActiveLease]:
    return [
        ActiveLease(
            vault=vault.id,
            holder=f"{record.lease.principal} from {record.lease.ip}",
            expires=record.ends_at,
        )
        for record in store.lease_records().active(now)
        for vault in record.lease.vaults
    ]


def list_runs(store) -> dict:
    """The stored runs' reports, newest first: `{"runs": [{"id", "time", "trigger",
    "counts"}]}`, the id being what `read_run` takes."""
    return {
        "runs": [
            {
                "id": info.name,
                "time": info.time.isoformat(),
                "trigger": info.trigger,
                "counts": info.counts,
            }
            for info in store.list_reports()
        ]
    }


def read_run(store, run_id: str) -> bytes | None:
    """A stored report's JSON by its id, or None when the id is not one or there is none."""
    if parse_report_name(run_id) is None:
        return None
    try:
        return store.read_report(run_id)
    except KeyError:
        return None
