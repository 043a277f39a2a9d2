"""The CLI as a user runs it: a separate process, settings from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
SUB = "11111111-1111-1111-1111-111111111111"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvfirewall", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def env(emulator, tmp_path):
    emulator.set_service_tags(
        json.loads((FIXTURES / "ServiceTags_Public_20251028.AzureDevOps-only.json").read_text())
    )
    return {
        **os.environ,
        "KVF_SUBSCRIPTIONS": SUB,
        "KVF_ADO_GEOGRAPHIES": "United Kingdom",
        "KVF_STATE": str(tmp_path / "state"),
    }


def test_bad_settings_exit_2_with_one_line_and_no_traceback(env):
    result = cli("plan", env={**env, "KVF_EXTRA_IP_RULES": "10.0.0.0/8"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "kvfirewall: error: KVF_EXTRA_IP_RULES: '10.0.0.0/8' is not a public address range "
        "(it lies in the reserved 10.0.0.0/8); Key Vault firewalls accept public IPv4 only"
    ]
    assert result.stdout == ""


def test_a_vault_outside_the_managed_subscriptions_is_refused(env, emulator):
    other = "/subscriptions/99999999-9999-9999-9999-999999999999/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1"
    result = cli("apply", "--vault", other, env=env)
    assert result.returncode == 2
    assert "not in KVF_SUBSCRIPTIONS" in result.stderr
    assert emulator.reads == emulator.writes == 0


def test_apply_then_apply_again_changes_nothing(env, emulator):
    vault = emulator.add_vault(SUB, "rg", "kv-one")
    first = cli("apply", "--json", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["counts"]["updated"] == 1
    assert report["vaults"][0]["added"] == [
        {"rule": "51.104.26.0/24", "why": "AzureDevOps uksouth (United Kingdom)"}
    ]
    assert report["source"]["version"] == "8"
    rules = emulator.vault(vault)["properties"]["networkAcls"]["ipRules"]
    assert rules == [{"value": "51.104.26.0/24"}]

    second = cli("apply", env=env)
    assert second.returncode == 0
    assert "kv-one" not in second.stdout  # the table lists what changed or failed
    assert "(listed: the vaults that changed or failed: none)" in second.stdout
    assert "1 vaults (1 unchanged)" in second.stdout.splitlines()[-1]
    assert "0 writes" in second.stdout.splitlines()[-1]


def test_every_apply_stores_its_full_report_and_reports_lists_them_newest_first(env, emulator):
    emulator.add_vault(SUB, "rg", "kv-one")
    first = json.loads(cli("apply", "--json", env=env).stdout)
    second = json.loads(cli("apply", "--json", env=env).stdout)
    assert second["vaults"] == [] and second["vaultsListed"] == "changed or failed"

    listed = cli("reports", env=env)
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[2:] == ["cli", second["report"], "1", "unchanged"]
    assert lines[1].split()[2:] == ["cli", first["report"], "1", "updated"]
    stored = json.loads(cli("reports", second["report"], env=env).stdout)
    assert stored["vaultsListed"] == "all"
    assert [(v["id"].rsplit("/", 1)[-1], v["outcome"]) for v in stored["vaults"]] == [
        ("kv-one", "unchanged")
    ]
    assert stored["counts"] == second["counts"]
    missing = cli("reports", "20000101T000000Z-cli", env=env)
    assert missing.returncode == 2 and "no stored report" in missing.stderr


def test_plan_prints_a_table_and_never_writes(env, emulator):
    emulator.add_vault(SUB, "rg", "kv-one")
    result = cli("plan", env=env)
    assert result.returncode == 0
    assert "rg/kv-one" in result.stdout and "planned" in result.stdout
    assert "+ rg/kv-one: 51.104.26.0/24" in result.stdout
    assert emulator.writes == 0


def test_a_failed_vault_exits_1(env, emulator):
    emulator.add_vault(SUB, "rg", "kv-one")
    emulator.fail(
        "PATCH",
        "kv-one",
        403,
        times=5,
        body={"error": {"code": "AuthorizationFailed", "message": "no"}},
    )
    result = cli("apply", "--json", env=env)
    assert result.returncode == 1
    assert json.loads(result.stdout)["vaults"][0]["error"].startswith(
        "HTTP 403 AuthorizationFailed"
    )


def test_ranges_shows_rules_and_source_version(env):
    result = cli("ranges", "--json", env={**env, "KVF_IP_SOURCE": "builtin"})
    data = json.loads(result.stdout)
    assert data["version"] == "8"
    assert [r["rule"] for r in data["ipRules"]] == ["51.104.26.0/24"]


@pytest.mark.slow  # the storage SDK's own retry backoff runs in real time
def test_an_unreachable_state_store_is_one_error_line(env):
    broken = "DefaultEndpointsProtocol=http;AccountName=x;AccountKey=eA==;BlobEndpoint=http://127.0.0.1:9/x;TableEndpoint=http://127.0.0.1:9/x;"
    result = cli("plan", env={**env, "KVF_STATE": broken})
    assert result.returncode == 1
    assert result.stderr.startswith("kvfirewall: error: ")
    assert "Traceback" not in result.stderr
    assert "eA==" not in result.stderr


def test_a_connection_string_the_sdk_rejects_is_a_settings_error(env):
    broken = "BlobEndpoint=https://;TableEndpoint=https://;SharedAccessSignature=sv=1&sig=S3CRET"
    result = cli("plan", env={**env, "KVF_STATE": broken})
    assert result.returncode == 2
    assert result.stderr.startswith("kvfirewall: error: KVF_STATE: cannot use storage account")
    assert "S3CRET" not in result.stderr and "Traceback" not in result.stderr


def test_dry_runs_leave_the_state_store_alone(env, emulator, tmp_path):
    emulator.add_vault(SUB, "rg", "kv-one")
    assert cli("ranges", env=env).returncode == 0
    assert cli("plan", env=env).returncode == 0
    assert not (tmp_path / "state").exists()
    assert cli("apply", env=env).returncode == 0
    assert (tmp_path / "state" / "ranges" / "last-good.json").exists()


def test_verbose_logs_one_line_per_vault_without_http_noise(env, emulator):
    emulator.add_vault(SUB, "rg", "kv-one")
    emulator.add_vault(SUB, "rg", "kv-two")
    result = cli("plan", "-v", env=env)
    assert result.returncode == 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(
        line.startswith("INFO kvfirewall vault outcome=planned id=/subscriptions/")
        for line in lines
    )
