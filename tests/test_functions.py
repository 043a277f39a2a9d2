"""The Function App: bindings as the host indexes them, and every trigger invoked with real
`azure.functions` objects against the ARM emulator, with the ledger in Azurite."""

from __future__ import annotations

import base64
import copy
import functools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from ipaddress import IPv4Network, ip_network
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum
from azure.functions.timer import TimerRequest

from kvfirewall import service as service_module
from kvfirewall.service import RetryLater
from kvfirewall.settings import DEFAULT_SCHEDULE
from tests.app_functions import FUNCTIONS  # as the host indexes the app, once per process

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
OCTOBER = json.loads((FIXTURES / "ServiceTags_Public_20251028.AzureDevOps-only.json").read_text())
EVENT_GRID_SAMPLE = json.loads((FIXTURES / "event-grid-resource-write-success.json").read_text())
CLOUD_EVENT_SAMPLE = json.loads((FIXTURES / "cloudevent-resource-write-success.json").read_text())
SUB_A = "44444444-4444-4444-4444-444444444444"
SUB_B = "55555555-5555-5555-5555-555555555555"
SUB_OTHER = "66666666-6666-6666-6666-666666666666"
AGENTS = (
    f"/subscriptions/{SUB_A}/resourceGroups/Network-RG/providers/Microsoft.Network"
    "/virtualNetworks/agents-vnet/subnets/Agents"
)
TAG = {"kvfirewall": "managed"}
FOREIGN_RULE = IPv4Network("8.8.4.4/32")


def europe() -> set[IPv4Network]:
    """The Europe geography's IPv4 prefixes, read straight from the service-tag document."""
    found = set()
    for value in OCTOBER["values"]:
        if value["properties"]["region"] in ("westeurope", "northeurope"):
            found |= {
                IPv4Network(p) for p in value["properties"]["addressPrefixes"] if ":" not in p
            }
    return found


WANTED = europe() | {IPv4Network("52.10.20.30/32")}


def function(name: str):
    """A function of the app, callable the way the worker calls it."""
    return FUNCTIONS[name].get_user_function()


class Context(func.Context):
    """The invocation context the worker passes (its own class there; abstract here)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._id = str(uuid.uuid4())
        self._local = threading.local()

    invocation_id = property(lambda self: self._id)
    function_name = property(lambda self: self._name)
    function_directory = property(lambda self: str(ROOT))
    thread_local_storage = property(lambda self: self._local)
    trace_context = property(lambda self: None)
    retry_context = property(lambda self: None)


def run_timer(*, past_due: bool = False, context: Context | None = None) -> None:
    context = context or Context("reconcile_timer")
    function("reconcile_timer")(TimerRequest(past_due=past_due), context=context)


def deliver(payload: dict) -> None:
    """One event as Event Grid posts it: the JSON through the worker's own converter, which
    yields a `func.EventGridEvent` or, for the CloudEvents schema, a `func.CloudEvent`."""
    event = EventGridEventInConverter.decode(
        Datum(json.dumps(payload), "json"), trigger_metadata=None
    )
    function("reconcile_event")(event)


def write_event(vault_id: str, *, cloud: bool = False) -> dict:
    """The documented ResourceWriteSuccess sample, filled in for a vault write, with the
    subject's `resourcegroups` lower-cased as real events have it."""
    sample = (CLOUD_EVENT_SAMPLE if cloud else EVENT_GRID_SAMPLE)[0]
    sub, rg = vault_id.split("/")[2], vault_id.split("/")[4]
    event = json.loads(
        json.dumps(sample).replace("{subscription-id}", sub).replace("{resource-group}", rg)
    )
    subject = vault_id.replace("/resourceGroups/", "/resourcegroups/")
    event["subject"] = subject
    data = event["data"]
    data["resourceUri"] = data["authorization"]["scope"] = subject
    data["operationName"] = data["authorization"]["action"] = "Microsoft.KeyVault/vaults/write"
    data["resourceProvider"] = "Microsoft.KeyVault"
    return event


def http(method: str, route: str, body: bytes | None = None) -> tuple[int, dict]:
    names = {"reconcile": "reconcile_http", "plan": "plan_http", "ranges": "ranges_http"}
    request = func.HttpRequest(method=method, url=f"/api/{route}", body=body)
    arguments = {} if route == "ranges" else {"context": Context(names[route])}
    response = function(names[route])(request, **arguments)
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body())


class RunClock:
    """The clock of the runs' Resource Manager access: it moves when a run sleeps (backoff,
    Retry-After, pacing) and when a test says a request took time, never on its own."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def pass_(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.pass_(seconds)


@pytest.fixture
def run_clock(monkeypatch) -> RunClock:
    """Every `Arm` the service builds runs on a `RunClock`: budgets are checked without
    spending them."""
    from kvfirewall.vaults import Arm

    clock = RunClock()
    monkeypatch.setattr(
        service_module, "Arm", functools.partial(Arm, sleep=clock.sleep, clock=clock.clock)
    )
    return clock


def nets(emulator, vault_id: str) -> set:
    acls = emulator.vault(vault_id)["properties"].get("networkAcls") or {}
    return {ip_network(r["value"]) for r in acls.get("ipRules", [])}


def account_key(connection_string: str) -> str:
    return connection_string.split("AccountKey=")[1].split(";")[0]


def storage_down(app_env, monkeypatch) -> str:
    """Point the host storage at a closed port; returns the account key it carries."""
    key = account_key(app_env["AzureWebJobsStorage"])
    monkeypatch.setenv(
        "AzureWebJobsStorage",
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
    )
    return key


def arm_calls(emulator) -> int:
    return emulator.reads + emulator.writes


def vault_reads(emulator) -> int:
    """Reads other than the agent subnet's endpoint check (one per run)."""
    subnet = [r for r in emulator.requests if r.method == "GET" and "/subnets/" in r.path]
    return emulator.reads - len(subnet)


@pytest.fixture
def app_env(emulator, azurite, monkeypatch):
    """App settings as in Azure: host storage in Azurite (emptied), enforce mode."""
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient

    TableServiceClient.from_connection_string(azurite).delete_table("kvfirewallledger")
    blobs = BlobServiceClient.from_connection_string(azurite)
    if blobs.get_container_client("kvfirewall").exists():
        blobs.delete_container("kvfirewall")
    for name in list(os.environ):
        if name.startswith("KVF_") and name not in emulator.env():
            monkeypatch.delenv(name)
    settings = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": azurite,
        "KVF_SUBSCRIPTIONS": f"{SUB_A},{SUB_B}",
        "KVF_ADO_GEOGRAPHIES": "Europe",
        "KVF_AGENT_SUBNETS": AGENTS,
        "KVF_EXTRA_IP_RULES": "52.10.20.30",
        "KVF_VAULT_TAG": "kvfirewall=managed",
        "KVF_MODE": "enforce",
        "KVF_SCHEDULE": DEFAULT_SCHEDULE,
        "KVF_FAN_OUT": "false",  # runs in process; tests/test_fan_out.py covers the queue
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    emulator.set_service_tags(OCTOBER)
    emulator.add_subnet(AGENTS)
    return settings


@pytest.fixture
def estate(emulator, app_env):
    return {
        "bare": emulator.add_vault(SUB_A, "apps", "kv-bare", tags=TAG),
        "locked": emulator.add_vault(
            SUB_A,
            "apps",
            "kv-locked",
            tags=TAG,
            network_acls={
                "defaultAction": "Deny",
                "bypass": "None",
                "ipRules": [{"value": str(FOREIGN_RULE)}],
                "virtualNetworkRules": [],
            },
        ),
        "team": emulator.add_vault(SUB_B, "team", "kv-team", tags=TAG),
        "untagged": emulator.add_vault(SUB_A, "apps", "kv-untagged"),
    }


# ---- bindings ---------------------------------------------------------------------------


def test_the_app_has_exactly_the_documented_triggers():
    bindings = {
        name: [json.loads(b) for b in f.get_raw_bindings()] for name, f in FUNCTIONS.items()
    }
    assert set(bindings) == {
        "reconcile_timer",
        "reconcile_event",
        "reconcile_http",
        "plan_http",
        "ranges_http",
        "status_http",
        "runs_http",
        "lease_grant_http",
        "lease_release_http",
        "leases_http",
        "expire_leases",
        "reconcile_queue",
        "reconcile_poison",
    }
    assert bindings["reconcile_timer"] == [
        {
            "direction": "IN",
            "type": "timerTrigger",
            "name": "timer",
            "schedule": "%KVF_SCHEDULE%",
            "runOnStartup": False,
            "useMonitor": True,
        }
    ]
    assert bindings["reconcile_event"] == [
        {"direction": "IN", "type": "eventGridTrigger", "name": "event"}
    ]
    routes = {}
    for name in (
        "reconcile_http",
        "plan_http",
        "ranges_http",
        "status_http",
        "runs_http",
    ):
        trigger, output = bindings[name]
        assert trigger["type"] == "httpTrigger" and trigger["authLevel"] == "FUNCTION"
        assert output == {"direction": "OUT", "type": "http", "name": "$return"}
        routes[trigger["route"]] = trigger["methods"]
    assert routes == {
        "reconcile": ["POST"],
        "plan": ["GET"],
        "ranges": ["GET"],
        "status": ["GET"],
        "runs/{id?}": ["GET"],
    }
    # Leases: a pipeline authenticates with its Entra token, checked by kvfirewall, not a key.
    leases = {name: bindings[name][0] for name in ("lease_grant_http", "lease_release_http")}
    assert {(t["route"], tuple(t["methods"]), t["authLevel"]) for t in leases.values()} == {
        ("leases", ("POST",), "ANONYMOUS"),
        ("leases/{id}", ("DELETE",), "ANONYMOUS"),
    }
    listing = bindings["leases_http"][0]
    assert (listing["route"], listing["methods"], listing["authLevel"]) == (
        "leases",
        ["GET"],
        "FUNCTION",
    )
    assert bindings["expire_leases"][0]["schedule"] == "%KVF_LEASE_SCHEDULE%"


def test_bad_settings_do_not_stop_indexing_and_each_invocation_names_the_setting(tmp_path):
    script = """
import json, sys
import azure.functions as func
from azure.functions.timer import TimerRequest
import function_app
functions = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
response = functions["plan_http"](func.HttpRequest(method="GET", url="/api/plan", body=None), context=None)
try:
    functions["reconcile_timer"](TimerRequest(past_due=False), context=None)
    timer = "no error"
except Exception as exc:
    timer = f"{type(exc).__name__}: {exc}"
print(json.dumps({"functions": sorted(functions), "status": response.status_code,
                  "body": json.loads(response.get_body()), "timer": timer}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVF_")}
    env["FUNCTIONS_WORKER_RUNTIME"] = "python"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(out["functions"]) == 13
    assert out["status"] == 500 and "KVF_SUBSCRIPTIONS is required" in out["body"]["error"]
    assert out["timer"].startswith("SettingsError: KVF_SUBSCRIPTIONS is required")


def test_host_json_and_local_settings_sample_fit_the_app():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }
    hours, minutes, seconds = map(int, host["functionTimeout"].split(":"))
    timeout = hours * 3600 + minutes * 60 + seconds
    # A timer run must end, with its report logged, before the host kills it.
    assert service_module.TIMER_BUDGET_SECONDS + 120 <= timeout <= 4 * 3600
    sampling = host["logging"]["applicationInsights"]["samplingSettings"]
    assert "Trace" in sampling["excludedTypes"].split(";")  # warnings and summaries never dropped
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert sample["KVF_SCHEDULE"] == DEFAULT_SCHEDULE and len(DEFAULT_SCHEDULE.split()) == 6


# ---- timer -------------------------------------------------------------------------------


def test_timer_converges_the_estate_and_its_next_run_writes_nothing(emulator, estate, caplog):
    caplog.set_level(logging.INFO, logger="kvfirewall")
    run_timer()
    for key in ("bare", "locked", "team"):
        assert nets(emulator, estate[key]) >= WANTED
    assert FOREIGN_RULE in nets(emulator, estate["locked"])
    assert nets(emulator, estate["untagged"]) == set()
    assert emulator.writes == 3
    summaries = [r.getMessage() for r in caplog.records if "vaults (" in r.getMessage()]
    assert len(summaries) == 1
    assert summaries[0].startswith("kvfirewall enforce: 3 vaults (3 updated), 1 out of scope;")
    assert summaries[0].endswith(", 3 writes")

    emulator.clear_log()
    caplog.clear()
    run_timer(past_due=True)
    assert emulator.writes == 0
    assert any("past due" in r.getMessage() for r in caplog.records)
    report = next(
        r.getMessage() for r in caplog.records if r.getMessage().startswith("kvfirewall report ")
    )
    assert json.loads(report.removeprefix("kvfirewall report "))["counts"]["unchanged"] == 3


def test_timer_logs_a_new_change_number_with_the_prefixes_added_and_removed(
    emulator, estate, caplog
):
    run_timer()
    moved = copy.deepcopy(OCTOBER)
    for value in moved["values"]:
        if value["name"] == "AzureDevOps":
            value["properties"]["changeNumber"] = 9
        if value["name"] == "AzureDevOps.WestEurope":
            old = value["properties"]["addressPrefixes"][0]
            value["properties"]["addressPrefixes"][0] = "20.61.10.0/24"
    emulator.set_service_tags(moved)
    caplog.set_level(logging.INFO, logger="kvfirewall")
    run_timer()
    changes = [r for r in caplog.records if "service tag changed" in r.getMessage()]
    assert len(changes) == 1
    message = changes[0].getMessage()
    assert "from version 8 to 9" in message
    assert "added ['20.61.10.0/24']" in message and f"removed ['{old}']" in message
    assert IPv4Network("20.61.10.0/24") in nets(emulator, estate["bare"])
    assert IPv4Network(old) not in nets(emulator, estate["bare"])


def test_timer_fails_the_invocation_when_a_vault_fails(emulator, estate):
    emulator.fail(
        "PATCH", "kv-team", 400, times=1, body={"error": {"code": "BadRequest", "message": "no"}}
    )
    with pytest.raises(Exception, match="1 vaults failed"):
        run_timer()
    assert nets(emulator, estate["bare"]) >= WANTED  # the others were still reconciled


def test_log_lines_carry_structured_context_and_no_secrets(emulator, estate, app_env, caplog):
    caplog.set_level(logging.DEBUG)
    context = Context("reconcile_timer")
    carried = []

    class InvocationOfThread(logging.Handler):
        """What the worker checks before it forwards a record: the thread's invocation id."""

        def emit(self, record):
            carried.append(getattr(context.thread_local_storage, "invocation_id", None))

    handler = InvocationOfThread()
    logging.getLogger("kvfirewall").addHandler(handler)
    context.thread_local_storage.invocation_id = context.invocation_id  # the worker's thread
    try:
        run_timer(context=context)
    finally:
        logging.getLogger("kvfirewall").removeHandler(handler)
    assert len(carried) > 3 and set(carried) == {context.invocation_id}
    vault_lines = [r for r in caplog.records if hasattr(r, "kvf_vault_id")]
    assert {r.kvf_vault_id for r in vault_lines} == {estate[k] for k in ("bare", "locked", "team")}
    assert {r.kvf_outcome for r in vault_lines} == {"updated"}
    assert {r.kvf_source_version for r in vault_lines} == {"8"}
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert account_key(app_env["AzureWebJobsStorage"]) not in text and "Bearer" not in text


# ---- Event Grid --------------------------------------------------------------------------


@pytest.mark.parametrize("cloud", [False, True], ids=["event-grid-schema", "cloudevents"])
def test_a_vault_created_event_fixes_that_vault_with_one_write(emulator, estate, cloud):
    run_timer()  # the timer has stored the ranges an event uses
    created = emulator.add_vault(SUB_B, "team", "kv-new", tags=TAG)
    emulator.clear_log()
    deliver(write_event(created, cloud=cloud))
    assert nets(emulator, created) >= WANTED
    # The event's GET; under the lease a fresh GET, one PATCH and a GET that checks it held.
    assert (vault_reads(emulator), emulator.writes) == (3, 1)
    assert emulator.reads == 4  # and the agent subnet's endpoint check


def test_an_event_before_any_timer_run_fetches_the_ranges_itself(emulator, estate):
    deliver(write_event(estate["bare"]))
    assert nets(emulator, estate["bare"]) >= WANTED
    assert emulator.writes == 1


def test_events_of_the_apps_own_writes_make_no_write_in_any_order_or_number(emulator, estate):
    run_timer()
    own = emulator.events
    assert len(own) == 3
    emulator.clear_log()
    for event in [*reversed(own), *own]:  # out of order, and each twice
        deliver(event)
    assert emulator.writes == 0
    # One fresh GET per event, and its check of the agent subnet's endpoint; nothing else.
    assert emulator.reads == 6 * 2


def test_an_event_directly_built_as_func_event_grid_event_works(emulator, estate):
    payload = write_event(estate["team"])
    event = func.EventGridEvent(
        id=payload["id"],
        data=payload["data"],
        topic=payload["topic"],
        subject=payload["subject"],
        event_type=payload["eventType"],
        event_time=None,
        data_version=payload["dataVersion"],
    )
    function("reconcile_event")(event)
    assert nets(emulator, estate["team"]) >= WANTED


def _with(path: str, value):
    def change(event: dict) -> dict:
        target = event
        *parents, last = path.split(".")
        for key in parents:
            target = target[key]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
        return event

    return change


DELETE = object()
VAULT_PATH = "/providers/Microsoft.KeyVault/vaults/kv-bare"
MALFORMED = {
    "no subject": _with("subject", DELETE),
    "subject null": _with("subject", None),
    "subject not a vault id": _with(
        "subject",
        f"/subscriptions/{SUB_A}/resourcegroups/apps/providers/Microsoft.Storage/storageAccounts/st1",
    ),
    "subject with ..": _with(
        "subject", f"/subscriptions/{SUB_A}/resourcegroups/apps/../other{VAULT_PATH}"
    ),
    "subject with %2F": _with(
        "subject", f"/subscriptions/{SUB_A}/resourcegroups/apps%2F..%2Fx{VAULT_PATH}"
    ),
    "subject with a query string": _with(
        "subject", f"/subscriptions/{SUB_A}/resourcegroups/apps{VAULT_PATH}?api-version=1"
    ),
    "subject a vault secret": _with(
        "subject", f"/subscriptions/{SUB_A}/resourcegroups/apps{VAULT_PATH}/secrets/s1"
    ),
    "subject 100 kB": _with("subject", "/subscriptions/" + "a" * 100_000),
    "data garbage text": _with("data", "garbage{"),
    "data a list": _with("data", [1, 2, 3]),
    "data null": _with("data", None),
    "operationName missing": _with("data.operationName", DELETE),
    "operationName a number": _with("data.operationName", 42),
    "resourceUri names another vault": _with(
        "data.resourceUri", f"/subscriptions/{SUB_A}/resourcegroups/apps{VAULT_PATH}-other"
    ),
    "subscriptionId differs": _with("data.subscriptionId", SUB_B),
    "eventType a number": _with("eventType", 7),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_events_are_dropped_with_a_warning_and_no_arm_call(
    emulator, estate, caplog, case
):
    event = MALFORMED[case](write_event(estate["bare"]))
    caplog.set_level(logging.INFO, logger="kvfirewall")
    deliver(event)  # no exception: a redelivery would not help
    assert arm_calls(emulator) == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped as malformed" in warnings[0].getMessage()
    assert len(warnings[0].getMessage()) < 1000  # a 100 kB subject is not echoed


IGNORED = {
    "another event type": (_with("eventType", "Microsoft.Resources.ResourceDeleteSuccess"), 0),
    "another operation": (
        _with("data.operationName", "Microsoft.Storage/storageAccounts/write"),
        0,
    ),
    "a vault in an unmanaged subscription": (
        lambda e: write_event(e["subject"].replace(SUB_A, SUB_OTHER)),
        0,
    ),
}


@pytest.mark.parametrize("case", IGNORED, ids=list(IGNORED))
def test_unrelated_events_are_ignored_without_arm_calls(emulator, estate, caplog, case):
    change, calls = IGNORED[case]
    caplog.set_level(logging.INFO, logger="kvfirewall")
    deliver(change(write_event(estate["bare"])))
    assert arm_calls(emulator) == calls
    assert any("ignored" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_operation_names_are_compared_case_insensitively(emulator, estate):
    event = write_event(estate["bare"])
    event["data"]["operationName"] = "MICROSOFT.KEYVAULT/VAULTS/WRITE"
    deliver(event)
    assert nets(emulator, estate["bare"]) >= WANTED


def test_events_for_vaults_out_of_scope_or_deleted_since_write_nothing(emulator, estate):
    deliver(write_event(estate["untagged"]))
    gone = emulator.add_vault(SUB_A, "apps", "kv-gone", tags=TAG)
    emulator.delete_vault(gone)
    deliver(write_event(gone))
    assert emulator.writes == 0
    assert nets(emulator, estate["untagged"]) == set()


@pytest.mark.parametrize(
    ("status", "headers"),
    [(503, {}), (429, {"Retry-After": "60"})],
    ids=["503-backoff", "429-retry-after-beyond-the-budget"],
)
def test_transient_failures_raise_within_the_budget_so_event_grid_redelivers(
    emulator, estate, monkeypatch, status, headers, run_clock
):
    run_timer()
    created = emulator.add_vault(SUB_A, "apps", "kv-busy", tags=TAG)
    emulator.fail("*", "kv-busy", status, times=1000, headers=headers)
    monkeypatch.setattr(service_module, "EVENT_BUDGET_SECONDS", 3.0)
    emulator.clear_log()
    started = run_clock.now
    with pytest.raises(RetryLater):
        deliver(write_event(created))
    assert run_clock.now - started <= 3.0, run_clock.sleeps  # every wait fits in the budget
    assert emulator.writes == 0
    # Retried with backoff inside the budget; a Retry-After beyond it is not waited for.
    assert vault_reads(emulator) > 1 if not headers else vault_reads(emulator) == 1


def logged_vaults(caplog) -> list[dict]:
    """The vaults of the reports the functions logged."""
    found = []
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith('kvfirewall report {"vaults"'):
            found += json.loads(message.removeprefix("kvfirewall report "))["vaults"]
    return found


def corrupt_ledger_entry(connection: str, vault_id: str) -> None:
    """Overwrite a vault's ledger entity with text that is not an entry."""
    from azure.data.tables import TableServiceClient, UpdateMode

    table = TableServiceClient.from_connection_string(connection).get_table_client(
        "kvfirewallledger"
    )
    [entity] = [e for e in table.list_entities() if e["VaultId"] == vault_id.lower()]
    fields = {k: "{not json" for k in entity if k not in ("PartitionKey", "RowKey", "VaultId")}
    table.update_entity({**entity, **fields}, mode=UpdateMode.MERGE)


@pytest.mark.parametrize(
    ("status", "code"), [(403, "AuthorizationFailed"), (400, "BadRequest")], ids=["403", "400"]
)
def test_a_permanent_failure_is_logged_and_the_event_not_delivered_again(
    emulator, estate, caplog, status, code
):
    run_timer()
    emulator.fail(
        "GET", "kv-bare$", status, times=1000, body={"error": {"code": code, "message": "no"}}
    )
    emulator.clear_log()
    caplog.set_level(logging.INFO, logger="kvfirewall")
    deliver(write_event(estate["bare"]))  # returns normally: Event Grid is done with it
    [vault] = logged_vaults(caplog)
    assert (vault["outcome"], vault["retryable"]) == ("failed", False)
    assert code in vault["error"]
    assert vault_reads(emulator) == 1  # the vault's GET was not retried either


def test_a_corrupt_ledger_entry_fails_the_vault_for_good_and_writes_nothing(
    emulator, estate, app_env, caplog
):
    run_timer()
    corrupt_ledger_entry(app_env["AzureWebJobsStorage"], estate["bare"])
    emulator.set_service_tags({**OCTOBER, "changeNumber": 99})
    emulator.clear_log()
    caplog.set_level(logging.INFO, logger="kvfirewall")
    deliver(write_event(estate["bare"]))
    [vault] = logged_vaults(caplog)
    assert (vault["outcome"], vault["retryable"]) == ("failed", False)
    assert emulator.writes == 0


def test_storage_that_refuses_kvfirewall_fails_the_event_for_good(
    emulator, estate, app_env, monkeypatch, caplog
):
    """Storage answering 403 (the identity lacks its data role, a wrong key): a redelivery
    would be refused the same way, so the event is logged as failed and not delivered again;
    a storage that cannot be reached at all is retried (see the tests around this one)."""
    run_timer()
    refused = app_env["AzureWebJobsStorage"].replace(
        account_key(app_env["AzureWebJobsStorage"]), base64.b64encode(b"not the key").decode()
    )
    monkeypatch.setenv("AzureWebJobsStorage", refused)
    emulator.clear_log()
    caplog.set_level(logging.INFO, logger="kvfirewall")
    deliver(write_event(estate["bare"]))  # returns normally: Event Grid is done with it
    [failed] = [r for r in caplog.records if "failed, not retried" in r.getMessage()]
    assert failed.levelname == "ERROR" and "failed to authenticate" in failed.getMessage()
    assert emulator.writes == 0


@pytest.fixture
def hung_storage(app_env, monkeypatch):
    """Host storage that accepts connections and never answers (an overloaded account, a
    firewall dropping packets): the failure that timeouts, not refusals, must end."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    port = server.getsockname()[1]
    key = account_key(app_env["AzureWebJobsStorage"])
    monkeypatch.setenv(
        "AzureWebJobsStorage",
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;",
    )
    yield key
    server.close()


@pytest.mark.slow  # the storage clients' real timeouts run out: about 20 s
def test_hung_storage_fails_the_event_inside_event_grids_wait_so_it_redelivers(
    emulator, estate, hung_storage
):
    started = time.monotonic()
    with pytest.raises(RetryLater):
        deliver(write_event(estate["bare"]))
    assert time.monotonic() - started < 30
    assert emulator.writes == 0


# ---- HTTP --------------------------------------------------------------------------------


def test_post_reconcile_one_vault_writes_only_that_vault(emulator, estate):
    status, report = http("POST", "reconcile", json.dumps({"vaultId": estate["bare"]}).encode())
    assert status == 200
    assert [(v["id"], v["outcome"]) for v in report["vaults"]] == [(estate["bare"], "updated")]
    assert nets(emulator, estate["bare"]) >= WANTED
    assert nets(emulator, estate["team"]) == set()
    assert emulator.writes == 1


def test_post_reconcile_without_body_reconciles_every_vault(emulator, estate):
    status, report = http("POST", "reconcile")
    assert status == 200 and report["counts"]["updated"] == 3 and report["cutShort"] == 0
    assert emulator.writes == 3


def test_dry_runs_write_nothing_anywhere(emulator, estate, azurite):
    from azure.data.tables import TableServiceClient

    status, report = http("POST", "reconcile", b'{"dryRun": true}')
    assert status == 200 and report["mode"] == "plan" and report["counts"]["planned"] == 3
    status, report = http("GET", "plan")
    assert status == 200 and report["counts"]["planned"] == 3
    added = {a["rule"] for v in report["vaults"] for a in v["added"]}
    assert {str(n) for n in WANTED} <= added
    assert emulator.writes == 0
    tables = TableServiceClient.from_connection_string(azurite)
    assert "kvfirewallledger" not in {t.name for t in tables.list_tables()}


def test_get_ranges_lists_prefixes_per_geography_and_region_with_the_version(
    emulator, app_env, monkeypatch
):
    monkeypatch.setenv("KVF_ADO_REGIONS", "swedencentral")
    status, ranges = http("GET", "ranges")
    assert status == 200
    assert ranges["version"] == "8" and ranges["status"] == "fresh"
    europe_regions = ranges["geographies"]["Europe"]
    assert set(europe_regions) == {"westeurope", "northeurope"}
    assert {IPv4Network(p) for r in europe_regions.values() for p in r} == europe()
    assert ranges["regions"]["swedencentral"]
    assert ranges["extraIpRules"] == ["52.10.20.30/32"]
    assert [r["rule"] for r in ranges["virtualNetworkRules"]] == [AGENTS]
    assert emulator.writes == 0


BAD_BODIES = {
    "not JSON": b"vaultId=/subscriptions/x",
    "a JSON array": b"[]",
    "a JSON string": b'"reconcile"',
    "vaultId a number": b'{"vaultId": 5}',
    "dryRun a string": b'{"dryRun": "yes"}',
    "dryRun null": b'{"dryRun": null}',
    "unknown field": b'{"vaultid": "x", "dryrun": true}',
    "not a vault id": json.dumps(
        {
            "vaultId": f"/subscriptions/{SUB_A}/resourceGroups/apps/providers/Microsoft.Storage/storageAccounts/st1"
        }
    ).encode(),
    "vault id with ..": json.dumps(
        {"vaultId": f"/subscriptions/{SUB_A}/resourceGroups/apps/../x{VAULT_PATH}"}
    ).encode(),
    "unmanaged subscription": json.dumps(
        {"vaultId": f"/subscriptions/{SUB_OTHER}/resourceGroups/apps{VAULT_PATH}"}
    ).encode(),
    "not UTF-8": b'{"vaultId": "\xff\xfe"}',
    "oversized": json.dumps({"vaultId": "x" * 100_000}).encode(),
    "deeply nested": b"[" * 8000 + b"]" * 8000,
    "vaultId null": b'{"vaultId": null}',
    "a field given twice": b'{"dryRun": true, "dryRun": false}',
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_bad_request_bodies_get_400_and_no_arm_call(emulator, estate, case):
    status, body = http("POST", "reconcile", BAD_BODIES[case])
    assert status == 400
    assert set(body) == {"error"} and 0 < len(body["error"]) < 600
    assert arm_calls(emulator) == 0


def test_arm_failures_are_reported_per_vault_as_retryable(emulator, estate):
    emulator.fail("*", "kv-bare", 503, times=1000, headers={"Retry-After": "600"})
    status, report = http("POST", "reconcile", json.dumps({"vaultId": estate["bare"]}).encode())
    assert status == 200 and report["vaults"][0]["outcome"] == "failed"
    assert report["vaults"][0]["retryable"] is True
    assert "Traceback" not in json.dumps(report)


def test_storage_down_answers_503_without_internals(emulator, estate, app_env, monkeypatch):
    key = storage_down(app_env, monkeypatch)
    status, body = http("GET", "plan")
    assert status == 503
    assert set(body) == {"error"}
    assert key not in body["error"] and "Traceback" not in body["error"]
    assert "127.0.0.1" not in body["error"]


def test_throttled_listing_does_not_outlast_the_http_budget(
    emulator, estate, monkeypatch, run_clock
):
    monkeypatch.setattr(service_module, "HTTP_BUDGET_SECONDS", 35.0)
    emulator.fail(
        "GET",
        f"/subscriptions/{SUB_A}/providers/Microsoft.KeyVault/vaults$",
        429,
        times=1000,
        headers={"Retry-After": "300"},
    )
    started = run_clock.now
    status, report = http("GET", "plan")
    assert run_clock.now - started < 35  # no Retry-After of 300 s waited
    assert status == 200
    listing = next(v for v in report["vaults"] if v["id"] == f"/subscriptions/{SUB_A}")
    assert listing["outcome"] == "failed" and listing["retryable"] is True
    assert report["counts"]["planned"] == 1  # the other subscription's vault


def test_listing_stops_when_the_http_budget_runs_out(emulator, estate, monkeypatch, run_clock):
    for n in range(20):
        emulator.add_vault(SUB_A, "many", f"kv-many-{n:02}", tags=TAG)
    emulator.page_size = 1
    emulator.intercept("GET", "^/subscriptions/", before=lambda _: run_clock.pass_(0.3), times=99)
    monkeypatch.setattr("kvfirewall.reconcile.VAULT_RESERVE_SECONDS", 2.0)  # listing
    monkeypatch.setattr("kvfirewall.writer.VAULT_RESERVE_SECONDS", 2.0)  # starting a vault
    monkeypatch.setattr(service_module, "HTTP_BUDGET_SECONDS", 4.0)
    started = run_clock.now
    status, report = http("GET", "plan")
    assert run_clock.now - started <= 4.0 + 0.3  # nothing started after the budget ran out
    # The vaults listed in time are planned (that costs no request); the listing is cut.
    assert status == 200 and report["cutShortSubscriptions"] >= 1
    assert emulator.reads < 24  # 23 pages and service tags would be all of them


def test_a_run_that_would_outlast_the_http_limit_is_cut_short_and_says_so(
    emulator, estate, monkeypatch
):
    monkeypatch.setattr(service_module, "HTTP_BUDGET_SECONDS", 1.0)
    status, report = http("POST", "reconcile")
    assert status == 200
    # Neither subscription could be listed in time: no vault was reached, and the
    # subscriptions cut off are counted as such, not as vaults.
    assert (report["cutShort"], report["cutShortSubscriptions"]) == (0, 2)
    assert report["counts"]["updated"] == 0 and report["vaults"] == []
    stored = json.loads(stored_report(report["report"])[1])
    assert {v["id"] for v in stored["vaults"]} == {
        f"/subscriptions/{SUB_A}",
        f"/subscriptions/{SUB_B}",
    }
    assert all(v["reason"].startswith("not reached") for v in stored["vaults"])
    assert emulator.writes == 0


# ---- audit mode --------------------------------------------------------------------------


def test_audit_mode_makes_no_write_from_any_trigger(emulator, estate, monkeypatch):
    monkeypatch.setenv("KVF_MODE", "audit")
    run_timer()
    deliver(write_event(estate["bare"]))
    status, report = http("POST", "reconcile")
    assert status == 200 and report["mode"] == "audit" and report["counts"]["planned"] == 3
    assert emulator.writes == 0


def test_a_warm_instance_reuses_its_connections_across_200_events(emulator, estate):
    """200 deliveries in one process open a handful of Resource Manager connections, not one
    (TLS handshake and all) per event."""
    deliver(write_event(estate["bare"]))  # the first fixes the vault; the rest find it so
    emulator.clear_log()
    for _ in range(200):
        deliver(write_event(estate["bare"]))
    assert emulator.reads == 200 * 2 and emulator.writes == 0  # the vault and the subnet
    assert emulator.connections <= 4


def test_a_run_with_all_its_workers_busy_keeps_to_one_connection_each(emulator, app_env):
    """32 workers at once need up to 32 connections (and the listers theirs); a pool smaller
    than that would open and discard a new one for request after request."""
    from kvfirewall.reconcile import LISTERS, WORKERS

    for index in range(150):
        emulator.add_vault(SUB_A, "apps", f"kv-{index:03}", tags=TAG)
    emulator.latency = 0.01  # requests overlap, as at Resource Manager's latency
    emulator.clear_log()
    run_timer()
    assert emulator.writes == 150
    assert emulator.connections <= WORKERS + LISTERS + 4


# ---- stored reports ----------------------------------------------------------------------


def stored_report(name: str | None = None) -> tuple[int, bytes]:
    """GET /api/runs or /api/runs/{id}: the status and the raw body."""
    request = func.HttpRequest(
        method="GET",
        url=f"/api/runs/{name or ''}",
        body=None,
        route_params={"id": name} if name else {},
    )
    response = function("runs_http")(request)
    assert response.mimetype == "application/json"
    return response.status_code, response.get_body()


def test_runs_over_every_vault_store_their_full_report_and_answer_only_what_matters(
    emulator, estate, caplog
):
    caplog.set_level(logging.INFO, logger="kvfirewall")
    run_timer()
    status, answer = http("POST", "reconcile")  # every vault compliant now
    assert status == 200 and answer["counts"]["unchanged"] == 3
    assert answer["vaults"] == [] and answer["vaultsListed"] == "changed or failed"
    # The timer logged the vaults it changed, the HTTP run none: compliant ones stay out.
    logged = [
        json.loads(r.getMessage().removeprefix("kvfirewall report "))
        for r in caplog.records
        if r.getMessage().startswith('kvfirewall report {"vaults"')
    ]
    assert sorted(v["outcome"] for line in logged for v in line["vaults"]) == ["updated"] * 3
    http("POST", "reconcile", b'{"dryRun": true}')  # a dry run stores nothing
    http("POST", "reconcile", json.dumps({"vaultId": estate["bare"]}).encode())  # nor one vault

    status, body = stored_report()
    listed = json.loads(body)["runs"]
    assert status == 200 and [r["trigger"] for r in listed] == ["http", "timer"]
    assert listed[0]["id"] == answer["report"] and listed[0]["counts"]["unchanged"] == 3
    assert listed[1]["counts"]["updated"] == 3
    status, body = stored_report(answer["report"])
    full = json.loads(body)
    assert status == 200 and full["vaultsListed"] == "all"
    assert sorted(v["outcome"] for v in full["vaults"]) == ["unchanged"] * 3


def test_an_unknown_report_is_404(emulator, app_env):
    for name in ("20250101T000000Z-timer", "../../ledger"):
        status, body = stored_report(name)
        assert status == 404 and set(json.loads(body)) == {"error"}


def test_a_fault_of_kvfirewalls_own_answers_500_not_503(emulator, estate, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(service_module, "reconcile", broken)
    status, body = http("POST", "reconcile")
    assert status == 500
    assert body == {"error": "kvfirewall failed (TypeError); see the log"}
