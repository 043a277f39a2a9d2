"""Fetching the ranges: https only, bounded, and every failure a clear RangeSourceError."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kvfirewall import sources
from kvfirewall.ranges import RangeSourceError
from kvfirewall.settings import Settings
from kvfirewall.sources import fetch_snapshot
from kvfirewall.vaults import Arm

FIXTURES = Path(__file__).parent / "fixtures"
OCTOBER_PATH = FIXTURES / "ServiceTags_Public_20251028.AzureDevOps-only.json"
OCTOBER = OCTOBER_PATH.read_bytes()
SUB = "11111111-1111-1111-1111-111111111111"


def fetch(source: str, api=None):
    return fetch_snapshot(source, location="westus", api=api)


def test_a_file_source(tmp_path):
    assert fetch(str(OCTOBER_PATH)).version == "8"
    truncated = tmp_path / "cut.json"
    truncated.write_bytes(OCTOBER[: len(OCTOBER) // 2])
    with pytest.raises(RangeSourceError, match="not valid JSON"):
        fetch(str(truncated))
    with pytest.raises(RangeSourceError, match="No such file"):
        fetch(str(tmp_path / "gone.json"))


def test_an_https_url_source_follows_https_redirects(emulator):
    emulator.add_file("/download/ServiceTags_Public_20251028.json", OCTOBER)
    emulator.add_redirect("/latest", f"{emulator.url}/download/ServiceTags_Public_20251028.json")
    assert fetch(f"{emulator.url}/latest").version == "8"


def test_a_redirect_to_http_is_refused(emulator):
    emulator.add_redirect("/latest", "http://127.0.0.1:9/ServiceTags.json")
    with pytest.raises(RangeSourceError, match="refusing a non-https URL"):
        fetch(f"{emulator.url}/latest")


def test_http_errors_garbage_and_oversized_documents_are_refused(emulator, monkeypatch):
    with pytest.raises(RangeSourceError, match="HTTP 404"):
        fetch(f"{emulator.url}/missing.json")
    emulator.add_file("/garbage.json", b"<html>maintenance</html>", content_type="text/html")
    with pytest.raises(RangeSourceError, match="not valid JSON"):
        fetch(f"{emulator.url}/garbage.json")
    emulator.add_file("/tags.json", OCTOBER)
    monkeypatch.setattr(sources, "MAX_DOCUMENT_BYTES", len(OCTOBER) - 1)
    with pytest.raises(RangeSourceError, match="larger than"):
        fetch(f"{emulator.url}/tags.json")


def test_an_unreachable_url_is_a_source_error():
    with pytest.raises(RangeSourceError, match="ConnectionError"):
        fetch("https://127.0.0.1:9/tags.json")


def test_the_discovery_api_goes_through_arm_with_the_same_credential(emulator):
    emulator.set_service_tags(json.loads(OCTOBER))
    settings = Settings.from_env(
        {"KVF_SUBSCRIPTIONS": SUB, "KVF_ADO_GEOGRAPHIES": "Europe", **emulator.env()}
    )
    arm = Arm(endpoint=settings.arm_endpoint, subscriptions=settings.subscriptions)
    snap = fetch("api", api=arm)
    assert (snap.version, snap.source) == ("8", "api (westus)")
    [request] = emulator.requests
    assert (
        request.path
        == f"/subscriptions/{SUB}/providers/Microsoft.Network/locations/westus/serviceTags"
    )


def test_a_failing_discovery_api_is_a_source_error(emulator):
    arm = Arm(endpoint=emulator.url, subscriptions=(SUB,))
    emulator.fail(
        "GET",
        "serviceTags",
        403,
        times=5,
        body={"error": {"code": "AuthorizationFailed", "message": "no"}},
    )
    with pytest.raises(RangeSourceError, match="api: HttpResponseError"):
        fetch("api", api=arm)


def test_a_signed_url_never_shows_its_token(emulator):
    emulator.add_file("/tags.json", OCTOBER)
    signed = f"{emulator.url}/tags.json?sv=2024-01-01&sig=TOPSECRET"
    assert fetch(signed).source == f"{emulator.url}/tags.json?…"
    with pytest.raises(RangeSourceError) as caught:
        fetch("https://127.0.0.1:9/tags.json?sv=2024-01-01&sig=TOPSECRET")
    assert "TOPSECRET" not in str(caught.value)


def test_a_server_that_trickles_is_cut_off_at_the_deadline(emulator):
    emulator.add_file("/slow/ServiceTags.json", b'{"values": []}' + b" " * 1000, drip_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(RangeSourceError, match="took longer than 2 s"):
        fetch_snapshot(
            f"{emulator.url}/slow/ServiceTags.json", location="westus", api=None, budget_seconds=2
        )
    assert time.monotonic() - started < 4


def test_the_discovery_api_is_read_page_by_page(emulator):
    """Resource Manager may split the answer with nextLink: every page's prefixes count."""
    doc = json.loads(OCTOBER)
    emulator.set_service_tags(doc)
    whole = fetch("api", api=Arm(endpoint=emulator.url, subscriptions=(SUB,)))
    emulator.clear_log()
    emulator.tags_page_size = 7
    paged = fetch("api", api=Arm(endpoint=emulator.url, subscriptions=(SUB,)))
    pages = len(emulator.requests)
    assert pages == -(-len(doc["values"]) // 7) > 2
    assert paged.regions == whole.regions and paged.version == whole.version
    last_page = doc["values"][-1]["properties"]
    assert {str(p) for p in paged.regions[last_page["region"]]} >= {
        p for p in last_page["addressPrefixes"] if ":" not in p
    }


def test_a_failing_later_page_fails_the_source_and_the_last_good_ranges_stay(emulator, tmp_path):
    from kvfirewall.ledger import LocalStore
    from kvfirewall.reconcile import resolve_ranges

    emulator.set_service_tags(json.loads(OCTOBER))
    emulator.tags_page_size = 7
    settings = Settings.from_env(
        {"KVF_SUBSCRIPTIONS": SUB, "KVF_ADO_GEOGRAPHIES": "Europe", **emulator.env()}
    )
    store = LocalStore(tmp_path)
    arm = Arm(endpoint=emulator.url, subscriptions=(SUB,), budget_seconds=5.0)
    good = resolve_ranges(settings, store, arm, save=True)
    assert good.status != "kept-last-good"
    # The first page answers; every later one fails (404 is not retried).
    emulator.intercept(
        "GET", "serviceTags", after=lambda emu: emu.fail("GET", "serviceTags", 404, times=99)
    )
    with pytest.raises(RangeSourceError, match="api: "):
        fetch("api", api=Arm(endpoint=emulator.url, subscriptions=(SUB,)))
    emulator.clear_faults()
    emulator.intercept(
        "GET", "serviceTags", after=lambda emu: emu.fail("GET", "serviceTags", 404, times=99)
    )
    arm = Arm(endpoint=emulator.url, subscriptions=(SUB,), budget_seconds=5.0)
    kept = resolve_ranges(settings, store, arm, save=True)
    assert kept.status == "kept-last-good"
    assert kept.snapshot.regions == good.snapshot.regions
