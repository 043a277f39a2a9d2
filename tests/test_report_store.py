"""Stored run reports: streamed in, listed newest first with their counts, never overwritten,
pruned after the retention; in a local directory and in Azure Storage (against Azurite)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from kvfirewall.ledger import AzureStore, LocalStore
from kvfirewall.report import ReportInfo, report_name
from kvfirewall.settings import StateLocation

NOW = datetime(2025, 11, 30, 12, 0, 5, tzinfo=timezone.utc)
COUNTS = {"updated": 2, "unchanged": 9998, "failed": 1, "outOfScope": 3}


class Clock:
    """The store's idea of now, moved by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["local", "azure"])
def store(request, tmp_path, clock):
    if request.param == "local":
        return LocalStore(tmp_path / "state", report_days=30, clock=clock)
    connection = request.getfixturevalue("azurite")
    name = "kvf" + uuid.uuid4().hex[:12]  # a container of its own: Azurite is shared
    return AzureStore(
        StateLocation(kind="connection-string", value=connection),
        table=name,
        container=name,
        report_days=30,
        clock=clock,
    )


def streamed(document: dict, consumed: list[int]):
    """The report as the service streams it: chunk by chunk, noting how far it was read."""
    text = json.dumps(document).encode()
    for start in range(0, len(text), 7):
        consumed.append(start)
        yield text[start : start + 7]


def test_a_saved_report_is_listed_with_its_counts_and_read_back_whole(store):
    document = {"mode": "enforce", "counts": COUNTS, "vaults": [{"id": f"v{n}"} for n in range(50)]}
    consumed: list[int] = []
    assert store.list_reports() == []

    name = store.save_report(report_name(NOW, "timer"), streamed(document, consumed), counts=COUNTS)

    assert name == "20251130T120005Z-timer" and len(consumed) > 10
    assert store.list_reports() == [
        ReportInfo(name=name, time=NOW.replace(microsecond=0), trigger="timer", counts=COUNTS)
    ]
    assert json.loads(store.read_report(name)) == document


def test_reports_of_one_second_never_overwrite_each_other_and_list_newest_first(store):
    first = store.save_report("20251130T120005Z-http", [b'{"n": 1}'], counts={"updated": 1})
    second = store.save_report("20251130T120005Z-http", [b'{"n": 2}'], counts={"updated": 2})
    third = store.save_report("20251130T120005Z-http", [b'{"n": 3}'], counts={"updated": 3})
    earlier = store.save_report("20251130T110000Z-cli", [b"{}"], counts={})
    later = store.save_report("20251130T120006Z-timer", [b"{}"], counts={})

    assert (first, second, third) == (
        "20251130T120005Z-http",
        "20251130T120005Z-http-2",
        "20251130T120005Z-http-3",
    )
    assert [r.name for r in store.list_reports()] == [later, third, second, first, earlier]
    assert [json.loads(store.read_report(n))["n"] for n in (first, second, third)] == [1, 2, 3]
    assert [r.trigger for r in store.list_reports()] == ["timer", "http", "http", "http", "cli"]


def test_reports_older_than_the_retention_are_deleted_when_one_is_written(store, clock):
    old = store.save_report("20251031T130000Z-timer", [b"{}"], counts={"updated": 1})
    kept = store.save_report("20251101T130000Z-timer", [b"{}"], counts={"updated": 1})
    assert {r.name for r in store.list_reports()} == {old, kept}  # pruned on save, not list

    clock.now = NOW + timedelta(days=1)
    new = store.save_report(report_name(clock.now, "cli"), [b"{}"], counts={})

    assert [r.name for r in store.list_reports()] == [new, kept]
    with pytest.raises(KeyError):
        store.read_report(old)


@pytest.mark.parametrize(
    "name",
    ["20251130T120005Z-nope", "../ledger/x", "20251130T120005Z-timer/../../x", "", "ranges"],
)
def test_reading_a_report_that_is_not_there_is_a_key_error(store, name):
    store.save_report("20251130T120005Z-timer", [b"{}"], counts={})
    with pytest.raises(KeyError):
        store.read_report(name or "20251130T120006Z-timer")


def test_local_counts_are_read_without_reading_the_report(tmp_path, clock):
    store = LocalStore(tmp_path, clock=clock)
    name = store.save_report("20251130T120005Z-cli", [b'{"vaults": ['], counts=COUNTS)
    (tmp_path / "reports" / f"{name}.json").write_bytes(b"\x00 not JSON at all")
    assert [r.counts for r in store.list_reports()] == [COUNTS]
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        f"{name}.counts",
        f"{name}.json",
    ]


def test_an_azure_report_still_being_written_is_not_listed(azurite, clock):
    name = "kvf" + uuid.uuid4().hex[:12]
    store = AzureStore(
        StateLocation(kind="connection-string", value=azurite),
        table=name,
        container=name,
        clock=clock,
    )
    store.save_report("20251130T120000Z-timer", [b"{}"], counts={"failed": 1})
    # Another run has taken the next name and is uploading its report.
    store._container.upload_blob("reports/20251130T120005Z-timer.json", b"")
    assert [r.name for r in store.list_reports()] == ["20251130T120000Z-timer"]
    with pytest.raises(KeyError):
        store.read_report("20251130T120005Z-timer")
    taken = store.save_report("20251130T120005Z-timer", [b"{}"], counts={})
    assert taken == "20251130T120005Z-timer-2"
