"""The status page's model and renderers, over stored runs built as a run builds them."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from html.parser import HTMLParser
from ipaddress import IPv4Network

import pytest

from kvfirewall.api import BadRequest
from kvfirewall.ledger import LedgerEntry, LocalStore
from kvfirewall.status import (
    PAGE_SIZE,
    StatusQuery,
    build_status,
    parse_status_query,
    select_vaults,
    source_since,
    status_json,
    status_text,
)
from kvfirewall.status_page import content_security_policy, render_status_page
from kvfirewall.status_store import read_run
from tests.status_data import (
    HOSTILE_NAMES,
    NOW,
    estate,
    history,
    report,
    run_name,
    vault,
    vault_id,
)


def status_of(stored, runs=None, query=None, owned=None, **kwargs):
    query = query or StatusQuery()
    data = stored.to_json() if stored is not None else None
    page, matching, pages = select_vaults(data, query)
    return build_status(
        now=NOW,
        runs=runs if runs is not None else history(),
        report=data,
        query=query,
        page=page,
        matching=matching,
        pages=pages,
        owned=owned or {},
        **kwargs,
    )


def test_the_summary_counts_the_newest_reports_outcomes():
    vaults = estate(1000)
    stored = report(vaults, mode="audit", version="8", status="fresh")
    summary = status_of(stored).summary
    counts = stored.counts
    assert summary.in_scope == 1000
    assert summary.compliant == counts["unchanged"] + counts["updated"]
    assert summary.drifted == counts["planned"]
    assert (summary.skipped, summary.failed) == (counts["skipped"], counts["failed"])
    assert (summary.mode, summary.source_version, summary.out_of_scope) == ("audit", "8", 2)
    assert (
        json.loads(json.dumps(status_json(status_of(stored))))["summary"]["failed"]
        == (counts["failed"])
    )


def test_no_stored_run_is_a_page_that_says_so():
    status = status_of(None, runs=[])
    assert status.summary is None and status.vaults == ()
    assert "No run has stored a report yet" in render_status_page(status, nonce="n")
    assert status_text(status) == "kvfirewall status: no run stored yet"


def test_filter_sort_and_pages_of_200():
    stored = report(estate(450))
    everything = status_of(stored, query=StatusQuery(sort="vault"))
    assert everything.pages == 3 and len(everything.vaults) == PAGE_SIZE
    names = [v.name for v in everything.vaults]
    assert names == sorted(names) and names[0] == "kv-00000"
    last = status_of(stored, query=StatusQuery(sort="vault", page=3))
    assert [v.name for v in last.vaults][-1] == "kv-00449" and len(last.vaults) == 50
    beyond = status_of(stored, query=StatusQuery(sort="vault", page=9))
    assert beyond.query.page == 3 and beyond.vaults == last.vaults

    failed = status_of(stored, query=StatusQuery(outcome="failed"))
    assert failed.matching == stored.counts["failed"] > 0
    assert {v.outcome for v in failed.vaults} == {"failed"}

    by_outcome = status_of(stored).vaults
    assert by_outcome[0].outcome == "failed" and by_outcome[-1].outcome == "unchanged"
    by_changes = status_of(stored, query=StatusQuery(sort="changes")).vaults
    assert by_changes[0].changes >= by_changes[-1].changes and by_changes[0].changes > 0


@pytest.mark.parametrize(
    "params",
    [
        {"outcome": "compliant"},
        {"sort": "name; drop"},
        {"page": "0"},
        {"page": "-1"},
        {"page": "1e3"},
        {"page": "\u0661"},  # an Arabic-Indic digit: isdigit() but not a page number
        {"outcom": "failed"},
    ],
)
def test_a_bad_query_is_refused_with_a_message(params):
    with pytest.raises(BadRequest):
        parse_status_query(params)


def test_a_good_query_parses():
    query = parse_status_query({"outcome": "failed", "sort": "changes", "page": "2", "code": "k"})
    assert query == StatusQuery(outcome="failed", sort="changes", page=2)


def test_the_source_version_dates_from_its_first_run_found_in_few_reads():
    runs = history(days=40, every_hours=1)  # 960 runs
    changed = 700  # runs[:700] carry version 9, the older ones 8
    versions = {r.name: ("9" if i < changed else "8") for i, r in enumerate(runs)}
    read = []

    def version_of(name):
        read.append(name)
        return versions[name]

    assert source_since(runs, "9", version_of) == (runs[changed - 1].time, True)
    assert len(read) <= 12  # log2(960) + the oldest
    assert source_since(runs, "8", versions.get) == (runs[-1].time, False)
    assert source_since([], "8", versions.get) == (None, False)


def test_each_vaults_rules_say_whose_they_are():
    stored = report([vault("kv-a", "updated"), vault("kv-b", "unchanged")])
    owned = {
        vault_id("kv-a").lower(): LedgerEntry(ip_rules=frozenset({IPv4Network("20.166.41.0/24")})),
        vault_id("kv-b").lower(): LedgerEntry(
            ip_rules=frozenset({IPv4Network("20.166.41.0/24")}),
            subnets=frozenset({"/subscriptions/x/subnets/agents"}),
        ),
    }
    rows = {
        v.name: v for v in status_of(stored, owned=owned, query=StatusQuery(sort="vault")).vaults
    }
    a = {(r.rule, r.owner, r.change) for r in rows["kv-a"].rules}
    assert a == {
        ("20.166.41.0/24", "kvfirewall", "added"),
        ("52.174.10.20/32", "others", "kept"),
    }
    b = {(r.rule, r.owner, r.change) for r in rows["kv-b"].rules}
    assert b == {
        ("20.166.41.0/24", "kvfirewall", "kept"),
        ("/subscriptions/x/subnets/agents", "kvfirewall", "kept"),
        ("52.174.10.20/32", "others", "kept"),
    }


def test_warnings_show_refused_sources_subnets_without_endpoint_and_a_run_cut_short():
    from kvfirewall.pools import EndpointStatus, SubnetEndpoint

    refused = (
        "IP source refused (api version 7 is older than 8); using the last good snapshot, version 8"
    )
    subnet = "/subscriptions/x/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v/subnets/agents"
    endpoint = SubnetEndpoint(subnet_id=subnet, status=EndpointStatus.MISSING).warning
    stored = report(estate(10), warnings=[refused, endpoint, "listing sub-x failed"], cut_short=4)
    notices = status_of(stored).notices
    assert [(n.kind, n.text) for n in notices][1:] == [
        ("source", refused),
        ("endpoint", endpoint),
        ("other", "listing sub-x failed"),
    ]
    assert notices[0].kind == "budget" and "4 vaults not reached" in notices[0].text
    assert "warning: " + refused in status_text(status_of(stored))


def test_the_chart_holds_the_last_30_days_oldest_first():
    runs = history(days=40)
    chart = status_of(report(estate(5)), runs=runs).chart
    assert chart and all(NOW - timedelta(days=30) <= r.time <= NOW for r in chart)
    assert [r.time for r in chart] == sorted(r.time for r in chart)
    assert len(chart) == sum(r.time >= NOW - timedelta(days=30) for r in runs)


class _Dom(HTMLParser):
    """The page's elements and text as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_the_page_is_self_contained_and_escapes_every_value():
    vaults = [vault(name, "failed", reason=name, error=name) for name in HOSTILE_NAMES]
    stored = report(vaults, warnings=list(HOSTILE_NAMES))
    page = render_status_page(status_of(stored), nonce="abc123", key='k"<')
    dom = _Dom()
    dom.feed(page)
    tags = {tag for tag, _ in dom.tags}
    assert not tags & {"script", "img", "iframe", "object", "embed", "form"}
    assert [a["href"] for t, a in dom.tags if t == "link"] == ["data:,"]
    assert not any(k.startswith("on") for _, attrs in dom.tags for k in attrs)
    assert not any("style" in attrs for _, attrs in dom.tags)  # blocked by the CSP anyway
    assert [attrs.get("nonce") for tag, attrs in dom.tags if tag == "style"] == ["abc123"]
    text = "".join(dom.text)
    for name in HOSTILE_NAMES[:-1]:
        assert name in text
    assert "x" * 120 + "…" in text and "x" * 601 not in text  # cut on the page
    assert any(attrs.get("title") == "x" * 10_000 for _, attrs in dom.tags)  # whole in the title
    hrefs = [attrs["href"] for tag, attrs in dom.tags if tag == "a"]
    assert hrefs and all(h.startswith(("status", "runs/")) for h in hrefs)
    assert all("code=k%22%3C" in h for h in hrefs)
    assert "default-src 'none'" in content_security_policy("abc123")


def test_a_run_is_read_by_its_id_and_nothing_else_is(tmp_path):
    store = LocalStore(tmp_path)
    name = run_name(NOW)
    taken = store.save_report(name, [b'{"vaults": []}'], counts={"updated": 0})
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / "x.json").write_text("{}")
    assert read_run(store, taken) == b'{"vaults": []}'
    assert read_run(store, run_name(NOW - timedelta(hours=1))) is None
    for bad in (
        "../ledger/x",
        f"{name}/../../ledger/x",
        f"{name}\n",
        f"{name[:-6]}-manual",
        f"{name}.json",
        "%2e%2e%2fledger%2fx",
        "",
    ):
        assert read_run(store, bad) is None, bad


def test_json_and_text_show_the_same_numbers():
    stored = report(estate(300), mode="enforce")
    status = status_of(stored, since=(NOW - timedelta(days=3), True))
    data = status_json(status)
    s = data["summary"]
    text = status_text(status)
    assert (
        f"{s['inScope']} vaults in scope: {s['compliant']} compliant, {s['drifted']} drifted, "
        f"{s['skipped']} skipped, {s['failed']} failed" in text
    )
    assert s["source"]["since"] == (NOW - timedelta(days=3)).isoformat()
    assert f"version 8 (unchanged), since {NOW - timedelta(days=3):%Y-%m-%d %H:%M}" in text
    assert len(data["vaults"]) == PAGE_SIZE and data["pages"] == 2
    assert "leases" not in data


def test_the_cli_prints_the_stored_runs_status(tmp_path, monkeypatch, capsys):
    from kvfirewall.cli import main
    from tests.browser import store_runs
    from tests.status_data import SUB

    runs = history(days=3)
    stored = report(estate(40), mode="audit")
    store_runs(tmp_path, runs, {runs[0].name: stored})
    monkeypatch.setenv("KVF_SUBSCRIPTIONS", SUB)
    monkeypatch.setenv("KVF_ADO_GEOGRAPHIES", "Europe")
    monkeypatch.setenv("KVF_STATE", str(tmp_path))
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    c = stored.counts
    assert f"kvfirewall status: run {runs[0].name} (audit)" in text
    assert (
        f"40 vaults in scope: {c['unchanged'] + c['updated']} compliant, {c['planned']} drifted"
    ) in text
    assert main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["failed"] == c["failed"] and len(data["runs"]) == len(runs)


def test_open_access_leases_show_while_leases_are_on(tmp_path):
    """Who holds which vault open, from which address, until when: only the leases still
    open, and no section at all for a deployment without leases."""
    from ipaddress import IPv4Address

    from kvfirewall.lease_store import LeaseRecord
    from kvfirewall.leases import Lease
    from kvfirewall.rules import parse_vault_id
    from kvfirewall.status import StatusQuery
    from kvfirewall.status_store import read_status

    store = LocalStore(tmp_path)
    vault = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-a"
    principal = "3f1c2a4b-1111-4222-8333-444455556666"

    def lease(lease_id: str, minutes: int) -> LeaseRecord:
        return LeaseRecord(
            Lease(
                id=lease_id,
                ip=IPv4Address("20.50.60.70"),
                principal=principal,
                expires_at=NOW + timedelta(minutes=minutes),
                vaults=(parse_vault_id(vault),),
            )
        )

    store.lease_records().write(lease(str(uuid.uuid4()), 30))
    store.lease_records().write(lease(str(uuid.uuid4()), -1))  # ended
    status = read_status(store, StatusQuery(), now=NOW, leases=True)
    assert [(x.vault, x.holder) for x in status.leases] == [
        (vault, f"{principal} from 20.50.60.70")
    ]
    assert "20.50.60.70" in render_status_page(status, nonce="n", key=None)
    assert read_status(store, StatusQuery(), now=NOW).leases is None
