"""Access leases end to end: the HTTP functions as the host calls them, tokens from the
emulator's Entra-like authority, role assignments and vaults in the ARM emulator (real SDKs),
the ledger and lease records in a directory."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from emulator import Emulator
from kvfirewall import lease_broker
from kvfirewall.lease_broker import LeaseBroker
from kvfirewall.ledger import LocalStore
from kvfirewall.rules import parse_vault_id
from kvfirewall.service import Service
from kvfirewall.settings import Settings
from tests.app_functions import FUNCTIONS

FIXTURES = Path(__file__).parent / "fixtures"
SUB = "44444444-4444-4444-4444-444444444444"
SUB_OTHER = "66666666-6666-6666-6666-666666666666"
AUDIENCE = "api://kvfirewall-leases"
PIPELINE = "5d1e0f3a-2b4c-4d6e-8f70-819203a4b5c6"  # the pipeline identity's object id
OTHER = "0c9a8b7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d"
APP = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
LEASABLE = {"kvfirewall-leases": "enabled"}
EXTRA = IPv4Network("52.10.20.30/32")  # the configured set: one extra rule
SOMEONE = {"value": "8.8.4.4/32"}  # someone else's rule


def _azure_cloud() -> list[IPv4Network]:
    doc = json.loads(
        (
            FIXTURES / "ServiceTags_Public_20251028.AzureDevOps-and-AzureCloud-europe.json"
        ).read_text()
    )
    return [
        IPv4Network(p)
        for v in doc["values"]
        if v["name"] == "AzureCloud.westeurope"
        for p in v["properties"]["addressPrefixes"]
        if ":" not in p
    ]


AZURE = _azure_cloud()
AGENT_IP = str(AZURE[0].network_address + 7)  # a Microsoft-hosted agent in West Europe


def agent(n: int) -> str:
    """The n-th address of a larger West Europe prefix: agents of parallel jobs."""
    prefix = next(p for p in AZURE if p.num_addresses >= 64)
    return str(prefix.network_address + 1 + n)


class Context(func.Context):
    def __init__(self, name: str) -> None:
        self._name, self._id, self._local = name, str(uuid.uuid4()), threading.local()

    invocation_id = property(lambda self: self._id)
    function_name = property(lambda self: self._name)
    function_directory = property(lambda self: str(Path(__file__).parent.parent))
    thread_local_storage = property(lambda self: self._local)
    trace_context = property(lambda self: None)
    retry_context = property(lambda self: None)


@pytest.fixture(autouse=True)
def _fresh_validators() -> None:
    """Each test's authority starts with its initial key set: no validator carries keys over."""
    lease_broker._validators.clear()


@pytest.fixture
def env(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "KVF_SUBSCRIPTIONS": SUB,
        "KVF_EXTRA_IP_RULES": str(EXTRA),
        "KVF_IP_SOURCE": "builtin",
        "KVF_MODE": "enforce",
        "KVF_STATE": str(tmp_path / "state"),
        "KVF_LEASES": "entra",
        "KVF_LEASE_TENANT": emulator.tenant_id,
        "KVF_LEASE_AUDIENCES": AUDIENCE,
        "AZURE_AUTHORITY_HOST": emulator.url,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def token(emu: Emulator, oid: str = PIPELINE, **overrides: Any) -> str:
    claims = emu.authority.claims(
        emu.url, tenant=emu.tenant_id, audience=AUDIENCE, object_id=oid, app_id=APP
    )
    claims.update(overrides)
    return emu.authority.sign({k: v for k, v in claims.items() if v is not None})


def call(name: str, method: str, url: str, *, body: Any = None, bearer: str | None = None,
         headers: dict[str, str] | None = None, route: dict[str, str] | None = None):  # fmt: skip
    all_headers = dict(headers or {})
    if bearer is not None:
        all_headers["Authorization"] = f"Bearer {bearer}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = func.HttpRequest(
        method=method, url=url, body=data or b"", headers=all_headers, route_params=route or {}
    )
    function = FUNCTIONS[name].get_user_function()
    arguments = {} if name == "leases_http" else {"context": Context(name)}
    response = function(request, **arguments)
    return response.status_code, json.loads(response.get_body()), dict(response.headers)


def grant(emu: Emulator, vaults: list[str], *, ip: str | None = AGENT_IP, bearer: str | None = None,
          **fields: Any):  # fmt: skip
    body = {"vaults": vaults, **fields}
    if ip is not None:
        body["ip"] = ip
    return call("lease_grant_http", "POST", "/api/leases", body=body,
                bearer=token(emu) if bearer is None else bearer)  # fmt: skip


def release(emu: Emulator, lease_id: str, oid: str = PIPELINE):
    return call("lease_release_http", "DELETE", f"/api/leases/{lease_id}",
                bearer=token(emu, oid), route={"id": lease_id})  # fmt: skip


def rules(emu: Emulator, vault_id: str) -> set[IPv4Network]:
    acls = emu.vault(vault_id)["properties"].get("networkAcls") or {}
    return {IPv4Network(r["value"]) for r in acls.get("ipRules", [])}


def rbac_vault(emu: Emulator, name: str = "kv-app", *, role: str | None = "Key Vault Secrets User",
               sub: str = SUB, tags: dict | None = None, acls: dict | None = None) -> str:  # fmt: skip
    vault_id = emu.add_vault(
        sub, "rg-app", name, tags=LEASABLE if tags is None else tags,
        network_acls=acls or {"defaultAction": "Deny", "bypass": "None", "ipRules": [SOMEONE]},
    )  # fmt: skip
    if role:
        emu.roles.assign(vault_id, PIPELINE, role)
    return vault_id


# ---- granted ----------------------------------------------------------------------------


def test_an_rbac_vault_is_opened_to_the_agent_and_closed_on_release(emulator, env):
    vault = rbac_vault(emulator)
    status, body, _ = grant(emulator, [vault], minutes=15, reason="https://dev.azure.com/run/1")
    assert status == 200, body
    lease = body["lease"]
    assert (lease["ip"], lease["principal"], lease["vaults"]) == (AGENT_IP, PIPELINE, [vault])
    assert IPv4Network(AGENT_IP) in rules(emulator, vault)  # usable by the next step at once
    assert [v["outcome"] for v in body["vaults"]] == ["updated"]
    expires = datetime.strptime(lease["expiresAt"], "%Y-%m-%dT%H:%M:%SZ")
    assert (
        timedelta(minutes=14)
        < expires.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
        <= timedelta(minutes=15)
    )
    status, listed, _ = call("leases_http", "GET", "/api/leases")
    assert status == 200 and listed == {"leases": [lease]}

    status, body, _ = release(emulator, lease["id"])
    assert status == 200 and body["released"] is True
    assert rules(emulator, vault) == {IPv4Network(SOMEONE["value"]), EXTRA}
    assert release(emulator, lease["id"])[1]["released"] is False  # idempotent
    assert call("leases_http", "GET", "/api/leases")[1] == {"leases": []}


def test_an_access_policy_vault_and_an_allow_listed_principal(emulator, env, monkeypatch):
    policies = rbac_vault(emulator, "kv-policies", role=None)
    emulator.set_access_policies(
        policies,
        [{"tenantId": emulator.tenant_id, "objectId": PIPELINE,
          "permissions": {"secrets": ["Get", "List"]}}],
    )  # fmt: skip
    listed = rbac_vault(emulator, "kv-listed", role=None)
    status, body, _ = grant(emulator, [policies])
    assert status == 200, body
    status, body, _ = grant(emulator, [listed])
    assert status == 403 and "kv-listed" in body["error"] and "not authorized" in body["error"]
    monkeypatch.setenv("KVF_LEASE_PRINCIPALS", PIPELINE)
    status, body, _ = grant(emulator, [listed])
    assert status == 200, body
    assert IPv4Network(AGENT_IP) in rules(emulator, listed)


def test_the_callers_address_defaults_to_the_right_most_forwarded_entry(emulator, env):
    vault = rbac_vault(emulator)
    status, body, _ = call(
        "lease_grant_http", "POST", "/api/leases", body={"vaults": [vault]},
        bearer=token(emulator), headers={"X-Forwarded-For": f"10.0.0.1, {AGENT_IP}:51234"},
    )  # fmt: skip
    assert status == 200, body
    assert body["lease"]["ip"] == AGENT_IP


def test_an_address_that_is_someone_elses_rule_stays_theirs(emulator, env):
    vault = rbac_vault(emulator, acls={"defaultAction": "Deny", "ipRules": [{"value": AGENT_IP}]})
    status, body, _ = grant(emulator, [vault])
    assert status == 200, body
    release(emulator, body["lease"]["id"])
    assert IPv4Network(AGENT_IP) in rules(emulator, vault)


# ---- refused -----------------------------------------------------------------------------


def test_refusals_name_the_vault_and_the_reason_and_write_nothing(emulator, env):
    good = rbac_vault(emulator, "kv-good")
    untagged = rbac_vault(emulator, "kv-untagged", tags={})
    unmanaged = rbac_vault(emulator, "kv-elsewhere", sub=SUB_OTHER)
    reader = rbac_vault(emulator, "kv-reader", role="Reader")
    metadata = rbac_vault(emulator, "kv-metadata", role="Key Vault Reader")
    cases = {
        untagged: (403, "has no tag kvfirewall-leases=enabled"),
        unmanaged: (403, f"subscription {SUB_OTHER} is not managed"),
        reader: (403, "not authorized"),
        metadata: (403, "not authorized"),
    }
    for vault, (status, reason) in cases.items():
        got, body, _ = grant(emulator, [good, vault])  # the good one first: still nothing
        assert got == status and reason in body["error"] and vault in body["error"], body
    got, body, _ = grant(emulator, [good], ip="20.1.2.3")
    assert got == 403 and "not in the AzureCloud service tag" in body["error"]
    assert emulator.writes == 0
    assert call("leases_http", "GET", "/api/leases")[1] == {"leases": []}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ip": "10.1.2.3"}, "ip"),
        ({"ip": "2001:db8::1"}, "ip"),
        ({"ip": f"{AGENT_IP}/32"}, "one address"),
        ({"minutes": 61}, "minutes must be between 1 and 60"),
        ({"minutes": "30"}, "minutes must be a whole number"),
        (
            {
                "vaults": [
                    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv{i}"
                    for i in range(21)
                ]
            },
            "1 to 20",
        ),
        ({"lifetime": 5}, "unknown field"),
    ],
    ids=["private", "ipv6", "cidr", "minutes-over-max", "minutes-string", "21-vaults", "unknown"],
)
def test_bad_bodies_are_400(emulator, env, fields, message):
    vault = rbac_vault(emulator)
    body = {"vaults": [vault], "ip": AGENT_IP, **fields}
    status, answer, _ = call("lease_grant_http", "POST", "/api/leases", body=body,
                             bearer=token(emulator))  # fmt: skip
    assert status == 400 and message in answer["error"], answer
    assert emulator.writes == 0


def test_no_address_at_all_is_400(emulator, env):
    vault = rbac_vault(emulator)
    status, body, _ = grant(emulator, [vault], ip=None)
    assert status == 400 and "ip is required" in body["error"]


def test_a_vault_without_room_is_409_and_nothing_is_evicted(emulator, env):
    full = [{"value": f"52.{i // 250}.{i % 250}.1"} for i in range(1000)]
    vault = rbac_vault(emulator, acls={"defaultAction": "Deny", "ipRules": full})
    status, body, _ = grant(emulator, [vault])
    assert status == 409 and "no room" in body["error"]
    assert len(rules(emulator, vault)) == 1000 and emulator.writes == 0


def test_leases_off_answer_404(emulator, env, monkeypatch):
    monkeypatch.setenv("KVF_LEASES", "off")
    vault = rbac_vault(emulator)
    assert grant(emulator, [vault])[0] == 404
    assert call("leases_http", "GET", "/api/leases")[0] == 404
    assert release(emulator, str(uuid.uuid4()))[0] == 404


def test_a_bad_lease_setting_is_a_500_naming_it(emulator, env, monkeypatch):
    monkeypatch.setenv("KVF_LEASE_MAX_MINUTES", "2000")
    status, body, _ = grant(emulator, [rbac_vault(emulator)])
    assert status == 500 and "KVF_LEASE_MAX_MINUTES" in body["error"]


# ---- tokens -----------------------------------------------------------------------------


def _forged(emu: Emulator) -> dict[str, str]:
    now = int(datetime.now(timezone.utc).timestamp())
    base = emu.authority.claims(
        emu.url, tenant=emu.tenant_id, audience=AUDIENCE, object_id=PIPELINE, app_id=APP
    )
    other_tenant = "9e8d7c6b-aaaa-4bbb-8ccc-ddddeeeeffff"
    stranger = emu.authority.claims(
        emu.url, tenant=other_tenant, audience=AUDIENCE, object_id=PIPELINE, app_id=APP
    )
    from emulator.entra import SigningKey

    unknown = SigningKey.generate()
    no_oid = {k: v for k, v in base.items() if k != "oid"}
    return {
        "expired": token(emu, exp=now - 3600, nbf=now - 7200, iat=now - 7200),
        "not yet valid": token(emu, nbf=now + 3600, iat=now + 3600, exp=now + 7200),
        "wrong audience": token(emu, aud="api://someone-else"),
        "wrong tenant": emu.authority.sign(stranger),
        "wrong issuer": token(emu, iss="https://login.example.test/evil/v2.0"),
        "alg none": emu.authority.unsigned(base),
        "HS256 with the public key": emu.authority.hs256_with_public_key(base),
        "unknown kid": emu.authority.sign(base, key=unknown),
        "tampered payload": emu.authority.tampered(token(emu), oid=OTHER),
        "no oid": emu.authority.sign(no_oid),
        "not a JWT": "not-a-token",
    }


def test_every_forged_or_invalid_token_is_401_and_never_echoed(emulator, env, caplog):
    vault = rbac_vault(emulator)
    for what, bad in _forged(emulator).items():
        status, body, headers = grant(emulator, [vault], bearer=bad)
        assert status == 401, (what, body)
        assert headers.get("WWW-Authenticate") == "Bearer", what
        assert bad not in json.dumps(body) and "Traceback" not in json.dumps(body), what
        assert bad not in caplog.text, what
    status, body, headers = call("lease_grant_http", "POST", "/api/leases",
                                 body={"vaults": [vault], "ip": AGENT_IP})  # fmt: skip
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert emulator.writes == 0


def test_an_unreachable_authority_is_503(emulator, env):
    emulator.fail("GET", r"openid-configuration", 503, times=10)
    status, body, _ = grant(emulator, [rbac_vault(emulator)])
    assert status == 503 and "retry later" in body["error"]


# ---- release ----------------------------------------------------------------------------


def test_release_by_another_principal_is_403_and_an_unknown_id_404(emulator, env):
    vault = rbac_vault(emulator)
    lease = grant(emulator, [vault])[1]["lease"]
    status, body, _ = release(emulator, lease["id"], OTHER)
    assert status == 403 and "another principal" in body["error"]
    assert IPv4Network(AGENT_IP) in rules(emulator, vault)
    assert release(emulator, str(uuid.uuid4()))[0] == 404
    assert release(emulator, "../../etc/passwd")[0] == 404


# ---- concurrency ------------------------------------------------------------------------


def test_twenty_concurrent_leases_on_one_vault_share_one_rule_per_address(emulator, env):
    vault = rbac_vault(emulator)
    addresses = [AGENT_IP] * 10 + [agent(n) for n in range(10)]  # 11 distinct addresses
    barrier = threading.Barrier(len(addresses))
    answers: list[tuple[int, dict]] = [None] * len(addresses)  # type: ignore[list-item]

    def take(index: int) -> None:
        bearer = token(emulator)
        barrier.wait()
        status, body, _ = grant(emulator, [vault], ip=addresses[index], bearer=bearer)
        answers[index] = (status, body)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(addresses))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in answers] == [200] * 20, [b for _, b in answers]
    wanted = {IPv4Network(a) for a in addresses}
    assert rules(emulator, vault) == wanted | {EXTRA, IPv4Network(SOMEONE["value"])}
    values = [r["value"] for r in emulator.vault(vault)["properties"]["networkAcls"]["ipRules"]]
    assert len(values) == len(set(values))  # one rule per address
    store = LocalStore(Path(env["KVF_STATE"]))
    assert store.read_entry(vault.lower()).ip_rules == wanted | {EXTRA}

    # The shared address stays until the last of its ten leases ends.
    shared = [
        body["lease"]["id"]
        for (_, body), a in zip(answers, addresses, strict=True)
        if a == AGENT_IP
    ]
    for lease_id in shared[:-1]:
        assert release(emulator, lease_id)[1]["released"] is True
        assert IPv4Network(AGENT_IP) in rules(emulator, vault)
    release(emulator, shared[-1])
    assert IPv4Network(AGENT_IP) not in rules(emulator, vault)
    assert IPv4Network(agent(0)) in rules(emulator, vault)


# ---- rollback, crash, expiry (an injectable clock) ---------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(env, clock: Clock) -> Service:
    settings = Settings.from_env()
    return Service(settings, store=LocalStore(Path(env["KVF_STATE"])), clock=clock)


def take(service: Service, emu: Emulator, vaults: list[str], ip: str = AGENT_IP, minutes=10):
    body = json.dumps({"vaults": vaults, "ip": ip, "minutes": minutes}).encode()
    return LeaseBroker(service).grant(
        authorization=f"Bearer {token(emu)}", body=body, forwarded_for=None
    )


def test_a_failed_write_rolls_back_the_vaults_already_opened(emulator, service):
    first, second = rbac_vault(emulator, "kv-first"), rbac_vault(emulator, "kv-second")
    emulator.fail("PATCH", "kv-second", 400, times=10)
    answer = take(service, emulator, [first, second])
    assert answer.status == 503
    outcomes = {v["id"]: v["outcome"] for v in answer.body["vaults"]}
    assert outcomes == {first: "updated", second: "failed"}
    assert IPv4Network(AGENT_IP) not in rules(emulator, first)  # taken back
    assert LeaseBroker(service).active() == {"leases": []}


def test_expiry_while_the_timer_was_down_is_undone_by_any_next_reconcile(emulator, service, clock):
    vault = rbac_vault(emulator)
    answer = take(service, emulator, [vault], minutes=10)
    assert answer.status == 200
    # Before expiry a reconcile keeps it (wanted, owned).
    assert (
        service.run(write=True, mode="enforce", vault=parse_vault_id(vault)).counts["unchanged"]
        == 1
    )
    clock.now += timedelta(minutes=10)  # the lease ends; no expiry timer ran
    report = service.run(write=True, mode="enforce", vault=parse_vault_id(vault))
    assert [c.rule for c in report.vaults[0].removed] == [f"{AGENT_IP}/32"]
    assert rules(emulator, vault) == {EXTRA, IPv4Network(SOMEONE["value"])}
    # The timer then finds it ended and clears it: no write left to do.
    emulator.clear_log()
    LeaseBroker(service).expire()
    assert emulator.writes == 0
    emulator.clear_log()
    assert LeaseBroker(service).expire() == []  # cleared: one store query, no ARM call
    assert emulator.requests == []


def test_the_expiry_timer_removes_an_ended_lease_within_its_run(emulator, service, clock):
    vault = rbac_vault(emulator)
    assert take(service, emulator, [vault], minutes=5).status == 200
    clock.now += timedelta(minutes=5, seconds=1)
    [result] = LeaseBroker(service).expire()
    assert result.outcome == "updated"
    assert IPv4Address(AGENT_IP) not in {n.network_address for n in rules(emulator, vault)}


class Crash(BaseException):
    """The process dies: nothing after this point runs."""


def test_a_crash_between_the_pending_record_and_the_write(emulator, service, clock, monkeypatch):
    from kvfirewall.vaults import Arm

    vault = rbac_vault(emulator)
    write = Arm.update_network_acls

    def die(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(Arm, "update_network_acls", die)
    with pytest.raises(Crash):
        take(service, emulator, [vault], minutes=10)
    monkeypatch.setattr(Arm, "update_network_acls", write)  # the next process
    store = LocalStore(Path(service.settings.state.value))
    assert IPv4Network(AGENT_IP) in store.read_entry(vault.lower()).pending_ip_rules
    assert IPv4Network(AGENT_IP) not in rules(emulator, vault)
    # The lease was recorded before the write: the next reconcile writes its rule, as ours.
    service.run(write=True, mode="enforce", vault=parse_vault_id(vault))
    assert IPv4Network(AGENT_IP) in rules(emulator, vault)
    assert IPv4Network(AGENT_IP) in store.read_entry(vault.lower()).ip_rules
    clock.now += timedelta(minutes=11)
    LeaseBroker(service).expire()
    assert rules(emulator, vault) == {EXTRA, IPv4Network(SOMEONE["value"])}
    assert store.read_entry(vault.lower()).ip_rules == {EXTRA}


# ---- what a lease costs -------------------------------------------------------------------


def arm_calls(emu: Emulator) -> dict[str, int]:
    """Resource Manager calls by kind (the authority's and the token endpoint's excluded)."""
    kinds: dict[str, int] = {}
    for r in emu.requests:
        if "/providers/Microsoft.KeyVault/vaults/" in r.path:
            kind = f"{r.method} vault"
        elif "roleAssignments" in r.path:
            kind = "GET roleAssignments"
        elif "roleDefinitions" in r.path:
            kind = "GET roleDefinitions"
        else:
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def test_the_arm_calls_of_a_grant_a_release_and_an_expiry(emulator, service, clock):
    """The figures the README states: per vault, a grant reads the vault to decide (and the
    principal's role assignments and their roles, once per subscription and role), then writes
    it through the protocol: read, lease, fresh read, PATCH, check read."""
    vault = rbac_vault(emulator)
    policies = rbac_vault(emulator, "kv-policies", role=None)
    emulator.set_access_policies(
        policies,
        [
            {
                "tenantId": emulator.tenant_id,
                "objectId": PIPELINE,
                "permissions": {"secrets": ["get"]},
            }
        ],
    )
    emulator.clear_log()
    assert take(service, emulator, [vault]).status == 200
    assert arm_calls(emulator) == {
        "GET vault": 4,
        "PATCH vault": 1,
        "GET roleAssignments": 1,
        "GET roleDefinitions": 1,
    }
    emulator.clear_log()
    answer = take(service, emulator, [policies])
    assert answer.status == 200
    assert arm_calls(emulator) == {"GET vault": 4, "PATCH vault": 1}
    emulator.clear_log()
    released = LeaseBroker(service).release(
        answer.body["lease"]["id"], authorization=f"Bearer {token(emulator)}"
    )
    assert released.body["released"] is True
    assert arm_calls(emulator) == {"GET vault": 3, "PATCH vault": 1}
    clock.now += timedelta(minutes=11)
    emulator.clear_log()
    LeaseBroker(service).expire()
    assert arm_calls(emulator) == {"GET vault": 3, "PATCH vault": 1}


# ---- the CLI and the Azure Table store ----------------------------------------------------


def test_the_cli_lists_what_the_get_answers(emulator, env, capsys):
    from kvfirewall import cli

    vault = rbac_vault(emulator)
    lease = grant(emulator, [vault], reason="https://dev.azure.com/run/7")[1]["lease"]
    capsys.readouterr()
    assert cli.main(["leases", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == call("leases_http", "GET", "/api/leases")[1]
    assert cli.main(["leases"]) == 0
    out = capsys.readouterr().out
    assert lease["id"] in out and AGENT_IP in out and vault in out and "run/7" in out


def test_lease_records_in_an_azure_table(azurite):
    from kvfirewall.lease_store import LeaseRecord
    from kvfirewall.leases import Lease, LeaseRequest
    from kvfirewall.ledger import AzureStore
    from kvfirewall.settings import StateLocation

    store = AzureStore(StateLocation(kind="connection-string", value=azurite),
                       lease_table=f"leases{uuid.uuid4().hex[:8]}").lease_records()  # fmt: skip
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert store.active(now) == [] and store.read(str(uuid.uuid4())) is None  # no table yet
    ref = parse_vault_id(
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-app"
    )

    def lease(minutes: int) -> LeaseRecord:
        request = LeaseRequest(vaults=(ref,), minutes=minutes, ip=IPv4Address(AGENT_IP))
        return LeaseRecord(Lease.grant(request, principal=PIPELINE, now=now))

    short, long, released = lease(5), lease(60), lease(60)
    for record in (short, long, released.released(now + timedelta(minutes=1))):
        store.write(record)
    later = now + timedelta(minutes=10)
    assert [r.lease.id for r in store.active(later)] == [long.lease.id]
    assert {r.lease.id for r in store.uncleared(later)} == {short.lease.id, released.lease.id}
    store.write(LeaseRecord(short.lease, cleared=True))
    assert {r.lease.id for r in store.uncleared(later)} == {released.lease.id}
    assert store.read(long.lease.id.upper()) == long
    assert store.read("not-an-id") is None


def test_the_expire_leases_timer_function(emulator, env):
    """The timer as the host calls it: an ended lease's rule goes, its record is cleared."""
    from azure.functions.timer import TimerRequest

    from kvfirewall.lease_store import LeaseRecord

    vault = rbac_vault(emulator)
    lease = grant(emulator, [vault])[1]["lease"]
    records = LocalStore(Path(env["KVF_STATE"])).lease_records()
    record = records.read(lease["id"])
    ended = datetime.now(timezone.utc) - timedelta(seconds=1)
    records.write(LeaseRecord(dataclasses.replace(record.lease, expires_at=ended)))
    FUNCTIONS["expire_leases"].get_user_function()(
        TimerRequest(past_due=False), context=Context("expire_leases")
    )
    assert IPv4Network(AGENT_IP) not in rules(emulator, vault)
    assert records.read(lease["id"]).cleared
