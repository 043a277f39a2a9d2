"""The IP source, end to end: a bad source (older, empty, broken, too large, downgraded to
http, IPv6-only, private, host bits) never removes a rule.

Each bad source is served after runs on the real July and October 2025 files, through a whole
reconcile: the run keeps the last good snapshot, says so, and writes nothing.
"""

from __future__ import annotations

import copy
import json

import pytest
from conftest import JULY_PATH, OCTOBER, OCTOBER_PATH

from kvfirewall import sources

JULY = json.loads(JULY_PATH.read_text())


def edited(change) -> bytes:
    doc = copy.deepcopy(OCTOBER)
    for value in doc["values"]:
        change(value["name"], value["properties"])
    return json.dumps(doc).encode()


def _only(kind: str):
    def change(_name: str, properties: dict) -> None:
        prefixes = properties["addressPrefixes"]
        if kind == "ipv6":
            properties["addressPrefixes"] = [p for p in prefixes if ":" in p]
        elif kind == "private":
            properties["addressPrefixes"] = ["10.1.0.0/24", "192.168.4.0/24"]
        elif kind == "host bits":
            properties["addressPrefixes"] = [p.replace(".0/", ".1/") for p in prefixes]
        else:  # empty
            properties["addressPrefixes"] = []

    return change


def _moved(name: str, properties: dict) -> None:
    """West Europe moves to a new range, but the change number stays: not a real update."""
    if name == "AzureDevOps.WestEurope":
        properties["addressPrefixes"] = ["20.61.10.0/24"]


BAD_SOURCES = {
    "older (July again)": JULY_PATH.read_bytes(),
    "empty tag": edited(_only("empty")),
    "IPv6-only": edited(_only("ipv6")),
    "private prefixes": edited(_only("private")),
    "host bits set": edited(_only("host bits")),
    "a loss without a new change number": edited(_moved),
    "truncated JSON": OCTOBER_PATH.read_bytes()[:5000],
    "garbage": b"<html><body>Service temporarily unavailable</body></html>",
    "not an object": b'["AzureDevOps"]',
    "too large": b"",  # served with MAX_DOCUMENT_BYTES lowered below its size
    "redirect to http": b"",
    "HTTP 500": b"",
}


@pytest.fixture
def history(estate):
    """Two runs through an https URL: July 2025 (older than the shipped October snapshot, so
    refused in its favour), then October 2025."""
    emulator = estate.emulator
    emulator.add_file("/tags.json", JULY_PATH.read_bytes())
    source = {"KVF_IP_SOURCE": f"{emulator.url}/tags.json"}
    first = estate.run(settings=estate.settings(**source))
    assert (first.source["version"], first.source["status"]) == ("8", "builtin-fallback")
    emulator.add_file("/tags.json", OCTOBER_PATH.read_bytes())
    second = estate.run(settings=estate.settings(**source))
    assert second.source["version"] == "8" and not second.failed
    assert estate.converged() >= {v for v, s in estate.vaults.items() if s.managed and s.enabled}
    return source


@pytest.mark.parametrize("body", BAD_SOURCES.values(), ids=BAD_SOURCES.keys())
def test_a_bad_source_removes_nothing(estate, history, figures, monkeypatch, body, request):
    emulator = estate.emulator
    kind = request.node.callspec.id
    if kind == "too large":
        body = OCTOBER_PATH.read_bytes()
        monkeypatch.setattr(sources, "MAX_DOCUMENT_BYTES", len(body) - 1)
    if kind == "redirect to http":
        emulator.add_redirect("/tags.json", "http://127.0.0.1:9/tags.json")
    elif kind == "HTTP 500":
        emulator.fail("GET", "/tags.json", 500)
    else:
        emulator.add_file("/tags.json", body)
    before = {v: estate.nets(v) for v in estate.vaults}
    emulator.clear_log()
    report = estate.run(settings=estate.settings(**history))
    assert report.source["status"] == "kept-last-good", report.source
    assert report.source["version"] == "8"
    assert report.warnings  # the refusal is reported, not silent
    assert emulator.writes == 0
    assert {v: estate.nets(v) for v in estate.vaults} == before
    figures["malformed inputs"] += 1
    figures["rules lost"] += estate.check()
