"""The ARM adapter: token scopes per cloud, fresh reads, and bounded write retries."""

from __future__ import annotations

import pytest

from kvfirewall.rules import parse_vault_id
from kvfirewall.vaults import Arm, WriteFailed, token_scope

SUB = "11111111-1111-1111-1111-111111111111"
ACLS = {
    "defaultAction": "Deny",
    "bypass": "AzureServices",
    "ipRules": [{"value": "52.1.2.3"}],
    "virtualNetworkRules": [],
}


@pytest.mark.parametrize(
    ("endpoint", "scope"),
    [
        ("https://management.azure.com", "https://management.azure.com/.default"),
        ("https://management.azure.com/", "https://management.azure.com/.default"),
        (
            "https://management.usgovcloudapi.net",
            "https://management.core.usgovcloudapi.net/.default",
        ),
        ("https://management.chinacloudapi.cn/", "https://management.chinacloudapi.cn/.default"),
        ("https://127.0.0.1:8443", "https://127.0.0.1:8443/.default"),
    ],
)
def test_token_scope_follows_the_cloud(endpoint, scope):
    assert token_scope(endpoint) == scope


class FakeTime:
    """A clock that only moves when the adapter sleeps: retries cost no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def make_arm(emulator, budget: float) -> Arm:
    fake = FakeTime()
    arm = Arm(
        endpoint=emulator.url,
        subscriptions=(SUB,),
        write_retry_seconds=budget,
        sleep=fake.sleep,
        clock=fake.clock,
    )
    arm.sleeps = fake.sleeps
    return arm


@pytest.fixture
def arm(emulator):
    return make_arm(emulator, 30)


def test_get_reads_a_vault_and_none_when_it_is_gone(emulator, arm):
    vault_id = emulator.add_vault(SUB, "rg", "kv-one")
    state = arm.get_vault(parse_vault_id(vault_id))
    assert state.id == vault_id and state.network_acls is None
    assert state.public_network_access == "Enabled"
    assert arm.get_vault(parse_vault_id(vault_id.replace("kv-one", "kv-two"))) is None


def test_update_sends_only_network_acls_and_returns_the_normalized_vault(emulator, arm):
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    after = arm.update_network_acls(ref, ACLS)
    assert after.network_acls["ipRules"] == [{"value": "52.1.2.3/32"}]
    [patch] = [r for r in emulator.requests if r.method == "PATCH"]
    assert patch.body == {"properties": {"networkAcls": ACLS}}
    assert arm.counts.writes == 1


@pytest.mark.parametrize("status", [409, 429, 408, 502])
def test_writes_are_retried_where_azure_core_would_not(emulator, arm, status):
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    emulator.fail(
        "PATCH",
        "kv-one",
        status,
        times=2,
        headers={"Retry-After": "3"} if status == 429 else None,
        body={"error": {"code": "Conflict" if status == 409 else "Busy", "message": "x"}},
    )
    arm.update_network_acls(ref, ACLS)
    patches = [r.status for r in emulator.requests if r.method == "PATCH"]
    assert patches[-1] == 200 and patches.count(status) == 2
    assert len(arm.sleeps) == 2
    if status == 429:
        assert arm.sleeps == [3.0, 3.0]  # Retry-After honoured


def test_writes_give_up_within_the_budget_and_say_why(emulator):
    arm = make_arm(emulator, 2)
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    emulator.fail(
        "PATCH",
        "kv-one",
        409,
        times=1000,
        body={"error": {"code": "Conflict", "message": "serialize the operations"}},
    )
    with pytest.raises(WriteFailed, match="HTTP 409 Conflict: serialize the operations"):
        arm.update_network_acls(ref, ACLS)
    assert 0 < sum(arm.sleeps) <= 2


def test_a_client_error_is_not_retried(emulator, arm):
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    with pytest.raises(WriteFailed, match="HTTP 400"):
        arm.update_network_acls(ref, {**ACLS, "ipRules": [{"value": "10.0.0.0/8"}]})
    assert [r.status for r in emulator.requests if r.method == "PATCH"] == [400]
