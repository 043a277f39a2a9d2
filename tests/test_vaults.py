"""The ARM adapter: token scopes per cloud, fresh reads, and bounded write retries."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError

from kvfirewall.rules import parse_vault_id
from kvfirewall.vaults import Arm, OutOfTime, WriteFailed, token_scope

SUB = "11111111-1111-1111-1111-111111111111"
ACLS = {
    "defaultAction": "Deny",
    "bypass": "AzureServices",
    "ipRules": [{"value": "52.1.2.3"}],
    "virtualNetworkRules": [],
}


def sdk_clouds() -> dict[str, tuple[str, str]]:
    """Each cloud's Resource Manager endpoint and token scope, as azure-core and
    azure-mgmt-core know them: a source independent of kvfirewall's own table."""
    from azure.core import AzureClouds
    from azure.mgmt.core.tools import get_arm_endpoints

    clouds = {}
    for cloud in AzureClouds:
        endpoints = get_arm_endpoints(cloud)
        clouds[cloud.name] = (endpoints["resource_manager"], endpoints["credential_scopes"][0])
    return clouds


@pytest.mark.parametrize(("endpoint", "scope"), sdk_clouds().values(), ids=sdk_clouds().keys())
def test_token_scope_follows_the_cloud(endpoint, scope):
    assert token_scope(endpoint) == scope
    assert token_scope(endpoint.rstrip("/")) == scope
    assert token_scope(endpoint.upper()) == scope


def test_an_unknown_endpoint_asks_for_its_own_scope():
    assert token_scope("https://127.0.0.1:8443/") == "https://127.0.0.1:8443/.default"


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


@pytest.mark.parametrize(
    ("status", "retryable", "maybe_applied"),
    [
        (409, True, False),
        (429, True, False),
        (408, True, False),
        (403, False, False),
        (404, False, False),
        (500, True, True),
        (501, True, True),
        (502, True, True),
        (503, True, True),
        (504, True, True),
    ],
)
def test_a_write_is_one_attempt_that_says_whether_to_retry(
    emulator, arm, status, retryable, maybe_applied
):
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    emulator.fail(
        "PATCH",
        "kv-one",
        status,
        times=5,
        headers={"Retry-After": "3"} if status == 429 else None,
        body={"error": {"code": "Conflict" if status == 409 else "Busy", "message": "x"}},
    )
    with pytest.raises(WriteFailed) as caught:
        arm.update_network_acls(ref, ACLS)
    failure = caught.value
    assert (failure.retryable, failure.maybe_applied, failure.status) == (
        retryable,
        maybe_applied,
        status,
    )
    assert failure.retry_after == (3.0 if status == 429 else None)
    # azure-core did not re-send the body on its own.
    assert [r.status for r in emulator.requests if r.method == "PATCH"] == [status]


def test_a_lost_response_may_have_been_applied(emulator, arm):
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    emulator.lose_response("PATCH", "kv-one")
    with pytest.raises(WriteFailed) as caught:
        arm.update_network_acls(ref, ACLS)
    assert caught.value.retryable and caught.value.maybe_applied
    assert emulator.vault(ref.id)["properties"]["networkAcls"]["ipRules"] == [
        {"value": "52.1.2.3/32"}
    ]


def test_a_client_error_is_final(emulator, arm):
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    with pytest.raises(WriteFailed, match="HTTP 400 BadRequest: Invalid value") as caught:
        arm.update_network_acls(ref, {**ACLS, "ipRules": [{"value": "10.0.0.0/8"}]})
    assert not caught.value.retryable
    assert [r.status for r in emulator.requests if r.method == "PATCH"] == [400]


def test_backoff_honours_retry_after_and_never_passes_its_budget():
    fake = FakeTime()
    backoff = Arm(
        endpoint="https://127.0.0.1:1",
        subscriptions=(SUB,),
        credential=object(),
        write_retry_seconds=10,
        sleep=fake.sleep,
        clock=fake.clock,
    ).write_backoff()
    assert backoff.wait(4.0) and fake.sleeps == [4.0]
    while backoff.wait(None):
        pass
    assert 0 < fake.now <= 10
    assert not backoff.wait(0.5 + 10 - fake.now)
    assert backoff.attempts == len(fake.sleeps) + 1


def test_a_quota_wait_never_eats_the_time_its_request_needs(emulator):
    """After a 429 with Retry-After 12 s, a run with 15 s left does not sleep 12 s and then
    have no time for its request: it stops at once, and takes no slot of the quota."""
    now = [0.0]
    slept: list[float] = []
    arm = Arm(
        endpoint=emulator.url,
        subscriptions=(SUB,),
        budget_seconds=15.0,
        clock=lambda: now[0],
        sleep=slept.append,
    )
    pacer = arm._pacer(SUB, "writes")
    pacer.observe(5, 12.0)  # a 429: wait 12 s; and the bucket is low
    with pytest.raises(OutOfTime):
        arm.pace_write(SUB)
    assert slept == []
    now[0] = 12.0  # the Retry-After has passed; 3 s of budget left, and no wait now
    arm.pace_write(SUB)
    assert slept == []


@pytest.mark.parametrize("retry_after", ["0", "0.2"])
def test_a_sub_second_retry_after_does_not_spin(emulator, retry_after):
    """A 429 that says to retry at once is backed off from 0.5 s, growing: a vault sees a
    handful of attempts in 3 s, not a storm."""
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    emulator.fail("GET", "kv-one", 429, times=200, headers={"Retry-After": retry_after})
    fake = FakeTime()
    arm = Arm(
        endpoint=emulator.url,
        subscriptions=(SUB,),
        budget_seconds=3.0,
        sleep=fake.sleep,
        clock=fake.clock,
    )
    with pytest.raises(HttpResponseError):
        arm.get_vault(ref)
    attempts = sum(r.method == "GET" for r in emulator.requests)
    assert 3 <= attempts <= 6
    assert fake.now <= 3.0
    backoff = Arm(
        endpoint=emulator.url,
        subscriptions=(SUB,),
        write_retry_seconds=3.0,
        sleep=fake.sleep,
        clock=fake.clock,
    ).write_backoff()
    waits = 0
    while backoff.wait(0.0):
        waits += 1
    assert 2 <= waits <= 5


def test_the_shared_bucket_other_principals_drained_paces_the_writes(emulator):
    """The shared (global) write bucket is down to 30 tokens, refilled at 10/s, while this
    principal's own bucket is full: the writes follow the shared header and none is refused."""
    fake = FakeTime()
    emulator.clock = fake.clock  # the emulator's buckets refill on the same simulated clock
    emulator.throttle(reads=None, writes=(200, 10.0), shared_writes=(30, 10.0))
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    arm = Arm(endpoint=emulator.url, subscriptions=(SUB,), sleep=fake.sleep, clock=fake.clock)
    for index in range(60):
        arm.pace_write(SUB)
        arm.update_network_acls(ref, {**ACLS, "ipRules": [{"value": f"52.1.2.{index}"}]})
    assert arm.counts.throttled == 0 and emulator.writes == 60
    assert fake.now >= (60 - 30) / 10.0  # paced at the shared refill, not the own one


def test_vault_requests_carry_the_token_a_request_id_and_the_user_agent(emulator, arm):
    """The Key Vault client's lean pipeline keeps what Resource Manager and its support
    need: the bearer token, a request id per request, and who is calling."""
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    arm.get_vault(ref)
    arm.update_network_acls(ref, ACLS)
    list(arm.list_vaults(SUB))
    sent = [r for r in emulator.requests if "/providers/Microsoft.KeyVault/" in r.path]
    assert [r.method for r in sent] == ["GET", "PATCH", "GET"]
    for request in sent:
        assert request.headers["authorization"].startswith("Bearer ")
        assert request.headers["user-agent"].startswith(
            "kvfirewall/0.1 azsdk-python-mgmt-keyvault/"
        )
    assert len({r.headers["x-ms-client-request-id"] for r in sent}) == 3


def test_only_kvfirewall_retries_a_read_within_its_budget(emulator, arm):
    """No retry policy of the SDK's own runs beside kvfirewall's: a 503 is retried once, after
    the adapter's own backoff (on its clock), and nothing else re-sends the request."""
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    emulator.fail("GET", "kv-one", 503)
    assert arm.get_vault(ref).id == ref.id
    assert [r.status for r in emulator.requests if r.path.endswith("kv-one")] == [503, 200]
    assert len(arm.sleeps) == 1


def test_single_vault_answers_are_the_json_resource_manager_sent(emulator, arm, monkeypatch):
    """A read, a write and a deleted vault's read build no SDK model (their CPU is most of a
    drifted vault's): the adapter gets the answer's JSON as it was written."""
    from azure.mgmt.keyvault._utils import model_base

    built: list[str] = []
    model_init = model_base.Model.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        model_init(self, *args, **kwargs)

    monkeypatch.setattr(model_base.Model, "__init__", counting_init)
    vault_id = emulator.add_vault(SUB, "rg", "kv-one")
    ref = parse_vault_id(vault_id)
    document = arm.get_vault_document(ref)
    assert type(document) is dict and document == emulator.vault(vault_id)
    after = arm.update_network_acls(ref, ACLS)
    assert after.network_acls == emulator.vault(vault_id)["properties"]["networkAcls"]
    emulator.delete_vault(vault_id)
    deleted = arm.get_deleted_vault(ref, document["location"])
    assert deleted is not None and deleted.scheduled_purge_date
    assert built == []


LIST_PATH = f"/subscriptions/{SUB}/providers/Microsoft.KeyVault/vaults$"


def test_a_vault_list_page_that_points_off_resource_manager_is_not_followed(emulator, arm):
    """A list page's nextLink gets the bearer token: one that leaves Resource Manager's host
    fails the listing instead (the vaults of the page before are still listed)."""
    ref = parse_vault_id(emulator.add_vault(SUB, "rg", "kv-one"))
    document = arm.get_vault_document(ref)
    emulator.fail(
        "GET",
        LIST_PATH,
        200,
        body={"value": [document], "nextLink": "https://collector.example/vaults?page=2"},
    )
    listed = []
    with pytest.raises(ValueError, match="leaves"):
        listed.extend(arm.list_vaults(SUB))
    assert [state.id for state in listed] == [document["id"]]


def test_a_vault_list_that_is_refused_says_resource_managers_code_and_message(emulator, arm):
    """The report shows why a subscription could not be listed, as Resource Manager said it."""
    emulator.fail(
        "GET",
        LIST_PATH,
        403,
        body={"error": {"code": "AuthorizationFailed", "message": "no vaults/read at /x"}},
    )
    with pytest.raises(HttpResponseError) as refused:
        list(arm.list_vaults(SUB))
    assert refused.value.status_code == 403
    assert (refused.value.error.code, refused.value.error.message) == (
        "AuthorizationFailed",
        "no vaults/read at /x",
    )
