"""Hostile input: crafted events, request bodies and settings. Each gets a clear error or is
ignored, and none makes kvfirewall call Resource Manager outside the managed subscriptions.

Every case goes through the real engine (`Service`) against the emulator, so "no call" is
what the emulator saw, not what a mock was asked. The parsers' fuzzing is in test_parsers.py.
"""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import azure.functions as func
import pytest
from conftest import SUB_A, SUB_B, SUB_OUT

from kvfirewall import cli
from kvfirewall.service import Service

WRITE = "Microsoft.Resources.ResourceWriteSuccess"
OPERATION = "Microsoft.KeyVault/vaults/write"
KV = "/providers/Microsoft.KeyVault/vaults"
VAULT = f"/subscriptions/{SUB_A}/resourceGroups/rg{KV}/kv-locked-000"
OUTSIDE = f"/subscriptions/{SUB_OUT}/resourceGroups/rg{KV}/kv-elsewhere-012"

# subject, data: each must be dropped or ignored with no call at all.
HOSTILE_EVENTS = {
    "no subject": (None, {"operationName": OPERATION}),
    "subject a number": (42, {"operationName": OPERATION}),
    "100 kB subject": (VAULT + "x" * 100_000, {"operationName": OPERATION}),
    "dot-dot": (f"/subscriptions/{SUB_A}/resourceGroups/rg/../x{KV}/kv1", {}),
    "encoded slash": (f"/subscriptions/{SUB_A}/resourceGroups/rg%2Fx{KV}/kv1", {}),
    "query string": (VAULT + "?api-version=1", {}),
    "fragment": (VAULT + "#x", {}),
    "a secret, not a vault": (VAULT + "/secrets/db-password", {}),
    "another provider": (
        f"/subscriptions/{SUB_A}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/kv1",
        {},
    ),
    "unmanaged subscription": (OUTSIDE, {}),
    "Kelvin sign in the provider": (VAULT.replace("KeyVault", "\u212aeyVault"), {}),
    "long s in the type": (VAULT.replace("vaults", "vault\u017f"), {}),
    "fullwidth slash": (VAULT.replace("/kv-", "\uff0fkv-"), {}),
    "NUL in the name": (VAULT + "\x00", {}),
    "right-to-left override": (VAULT + "\u202e", {}),
    "data a list": (VAULT, ["operationName", OPERATION]),
    "data text": (VAULT, "garbage"),
    "operationName a number": (VAULT, {"operationName": 7}),
    "another operation": (VAULT, {"operationName": "Microsoft.KeyVault/vaults/delete"}),
    "resourceUri contradicts": (VAULT, {"resourceUri": OUTSIDE}),
    "subscriptionId contradicts": (VAULT, {"subscriptionId": SUB_OUT}),
}

HOSTILE_BODIES = {
    "not JSON": b"{vaultId:",
    "not UTF-8": b'{"vaultId": "\xff\xfe"}',
    "an array": b"[]",
    "a string": b'"all"',
    "vaultId a number": b'{"vaultId": 1}',
    "vaultId null": b'{"vaultId": null}',
    "dryRun a string": b'{"dryRun": "false"}',
    "a repeated field": b'{"dryRun": true, "dryRun": false}',
    "an unknown field": b'{"dryrun": false}',
    "dot-dot": json.dumps({"vaultId": f"/subscriptions/{SUB_A}/resourceGroups/../{KV}/a"}).encode(),
    "encoded slash": json.dumps({"vaultId": VAULT.replace("/kv-", "%2Fkv-")}).encode(),
    "query string": json.dumps({"vaultId": VAULT + "?x=1"}).encode(),
    "unicode look-alike": json.dumps(
        {"vaultId": VAULT.replace("KeyVault", "\u212aeyVault")}
    ).encode(),
    "unmanaged subscription": json.dumps({"vaultId": OUTSIDE}).encode(),
    "over 16 KiB": json.dumps({"vaultId": VAULT, "pad": "x" * 17_000}).encode(),
    "deep nesting": b"[" * 8000 + b"]" * 8000,
}


def outside_calls(emulator) -> list[str]:
    managed = (f"/subscriptions/{SUB_A}".lower(), f"/subscriptions/{SUB_B}".lower())
    return [r.path for r in emulator.requests if not r.path.lower().startswith(managed)]


@pytest.mark.parametrize(("subject", "data"), HOSTILE_EVENTS.values(), ids=HOSTILE_EVENTS.keys())
def test_hostile_events_are_dropped_or_ignored_without_a_call(estate, figures, subject, data):
    service = Service(estate.settings(), store=estate.store())
    estate.emulator.clear_log()
    outcome = service.handle_event(event_type=WRITE, subject=subject, data=data)
    assert outcome.action in ("malformed", "ignored"), outcome
    assert outcome.reason and len(outcome.reason) < 1000
    assert estate.emulator.requests == []
    figures["malformed inputs"] += 1


def post_reconcile(body: bytes) -> tuple[int, dict]:
    """POST /api/reconcile as the Functions worker calls it."""
    from functions.http_api import reconcile_http

    context = SimpleNamespace(invocation_id="hostile", thread_local_storage=threading.local())
    request = func.HttpRequest(method="POST", url="/api/reconcile", body=body)
    response = reconcile_http._function.get_user_function()(request, context)
    return response.status_code, json.loads(response.get_body())


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_request_bodies_are_refused_before_any_call(estate, figures, monkeypatch, body):
    """Through the HTTP trigger with valid settings: a body read too late, or leniently,
    would start a run, and the emulator would see it."""
    for name, value in estate.env().items():
        monkeypatch.setenv(name, value)
    estate.emulator.clear_log()
    status, answer = post_reconcile(body)
    assert status == 400, answer
    assert set(answer) == {"error"} and 0 < len(answer["error"]) < 300
    assert estate.emulator.requests == []
    figures["malformed inputs"] += 1


def test_a_full_run_never_calls_an_unmanaged_subscription(estate, figures):
    estate.run()
    assert outside_calls(estate.emulator) == []
    figures["rules lost"] += estate.check()


SLOPPY = {
    "KVF_SUBSCRIPTIONS": f" {SUB_A} ,{SUB_B},{SUB_A.upper()},, ",
    "KVF_ADO_GEOGRAPHIES": "europe , Europe,",
    "KVF_EXTRA_IP_RULES": "52.10.20.30, 52.10.20.30/32 ,",
}


def test_settings_with_whitespace_duplicates_and_trailing_commas_mean_the_same(estate, figures):
    assert estate.settings(**SLOPPY) == estate.settings()
    figures["malformed inputs"] += len(SLOPPY)


BAD_SETTINGS = {
    "KVF_SUBSCRIPTIONS": f"{SUB_A};{SUB_B}",
    "KVF_ADO_GEOGRAPHIES": "Europa",
    "KVF_EXTRA_IP_RULES": "10.0.0.0/8",
    "KVF_AGENT_SUBNETS": "/subscriptions/x/../subnets/a",
    "KVF_MODE": "enforced",
    "KVF_LOCK_OPEN_VAULTS": "maybe",
    "KVF_ENABLE_DISABLED_VAULTS": "tru",
    "KVF_ARM_ENDPOINT": "http://management.azure.com",
    "KVF_MAX_RANGE_LOSS_PERCENT": "120",
}


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS.items(), ids=BAD_SETTINGS.keys())
def test_a_bad_setting_stops_the_run_naming_it_before_any_call(
    estate, figures, monkeypatch, capsys, name, value
):
    """`python -m kvfirewall apply` with one bad setting among good ones: a setting checked
    only once the run is under way would let it list or write first."""
    for key, good in estate.env(**{name: value}).items():
        monkeypatch.setenv(key, good)
    estate.emulator.clear_log()
    assert cli.main(["apply"]) == 2
    assert capsys.readouterr().err.startswith(f"kvfirewall: error: {name}")
    assert estate.emulator.requests == []
    figures["malformed inputs"] += 1
