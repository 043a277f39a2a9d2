"""A run fanned out over the work queue: the timer and POST /api/reconcile queue the drifted
vaults in Azurite, `reconcile_queue` is invoked with the messages read back from it (through
the worker's own converter, as the host delivers them), and the run's one report is assembled
from its parts. Against the ARM emulator, with the real function objects."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import pytest
from azure.functions.meta import Datum
from azure.functions.queue import QueueMessageInConverter

from kvfirewall.fan_out import MESSAGE_BUDGET_SECONDS
from kvfirewall.work_queue import (
    MAX_MESSAGE_CHARS,
    POISON_QUEUE_NAME,
    QUEUE_NAME,
    VAULTS_PER_MESSAGE,
    Batcher,
    MalformedMessage,
    WorkMessage,
)
from tests import test_functions
from tests.test_functions import (
    SUB_A,
    SUB_B,
    TAG,
    WANTED,
    Context,
    function,
    http,
    nets,
    run_timer,
    stored_report,
)

app_env = test_functions.app_env  # the app's settings, storage emptied (a fixture)
estate = test_functions.estate  # four vaults: three drifted, one untagged (a fixture)


def queue(connection: str, name: str = QUEUE_NAME):
    from azure.storage.queue import QueueClient

    return QueueClient.from_connection_string(connection, name)


@pytest.fixture
def fan_env(app_env, azurite, monkeypatch):
    """The app's settings with the work queue on, both queues empty."""
    from azure.core.exceptions import ResourceNotFoundError

    for name in (QUEUE_NAME, POISON_QUEUE_NAME):
        with contextlib.suppress(ResourceNotFoundError):
            queue(azurite, name).delete_queue()
    monkeypatch.setenv("KVF_FAN_OUT", "true")
    return app_env


def received(azurite: str, name: str = QUEUE_NAME) -> list:
    """The messages on a queue, taken (invisible for a while) as the host takes them."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return list(queue(azurite, name).receive_messages(max_messages=32, visibility_timeout=60))
    except ResourceNotFoundError:
        return []


def work(message) -> WorkMessage:
    return WorkMessage.from_text(base64.b64decode(message.content).decode())


def delivered(message, *, dequeue_count: int = 1):
    """The `func.QueueMessage` the worker builds from a delivery: the host decodes base64."""
    metadata = {
        "Id": Datum(message.id, "string"),
        "DequeueCount": Datum(dequeue_count, "int"),
        "PopReceipt": Datum(message.pop_receipt, "string"),
    }
    body = base64.b64decode(message.content).decode()
    return QueueMessageInConverter.decode(Datum(body, "string"), trigger_metadata=metadata)


def consume(azurite: str, message, **kwargs) -> None:
    function("reconcile_queue")(delivered(message, **kwargs), context=Context("reconcile_queue"))


def drain(azurite: str) -> int:
    """Deliver every message, deleting each after its function returned, as the host does."""
    done = 0
    while batch := received(azurite):
        for message in batch:
            consume(azurite, message)
            queue(azurite).delete_message(message)
            done += 1
    return done


def last_run() -> str:
    """The id of the newest stored report."""
    return json.loads(stored_report()[1])["runs"][0]["id"]


def test_the_timer_queues_only_the_drifted_vaults_grouped_by_subscription(
    emulator, estate, fan_env, azurite
):
    status, _ = http("POST", "reconcile", json.dumps({"vaultId": estate["team"]}).encode())
    assert status == 200  # one vault: synchronous, as before; kv-team is compliant now
    emulator.clear_log()
    run_timer()
    assert emulator.writes == 0  # the timer wrote nothing itself
    # The service tags, one page per subscription, and the agent subnet's Key Vault
    # endpoint check (every run reads each agent subnet once).
    assert emulator.reads == 4
    messages = [work(m) for m in received(azurite)]
    assert [(m.subscription, sorted(m.vaults)) for m in messages] == [
        (SUB_A, sorted([estate["bare"], estate["locked"]]))
    ]
    assert messages[0].ranges == "8" and messages[0].part == 1


def test_consumers_reconcile_their_messages_and_the_run_stores_one_report(
    emulator, estate, fan_env, azurite
):
    run_timer()
    emulator.clear_log()
    assert drain(azurite) == 2  # one message per subscription
    for key in ("bare", "locked", "team"):
        assert nets(emulator, estate[key]) >= WANTED
    # Per vault: under its lease a fresh read, the write and the read that checks it; per
    # message, the agent subnet's endpoint check.
    assert (emulator.reads, emulator.writes) == (3 * 2 + 2, 3)
    status, body = stored_report(last_run())
    report = json.loads(body)
    assert status == 200 and report["vaultsListed"] == "all"
    assert report["counts"] == {
        "updated": 3,
        "unchanged": 0,
        "planned": 0,
        "skipped": 0,
        "failed": 0,
        "outOfScope": 1,
    }
    assert (report["messages"], report["queued"], report["poisoned"]) == (2, 3, 0)
    assert sorted(v["id"] for v in report["vaults"]) == sorted(
        estate[k] for k in ("bare", "locked", "team")
    )
    listed = json.loads(stored_report()[1])["runs"]
    assert [(r["id"], r["counts"]["updated"]) for r in listed] == [(report["run"], 3)]


def test_a_message_delivered_twice_does_no_harm(emulator, estate, fan_env, azurite):
    run_timer()
    [first, second] = received(azurite)
    consume(azurite, first)
    emulator.clear_log()
    consume(azurite, first, dequeue_count=2)  # the host delivers it again
    assert (emulator.reads, emulator.writes) == (0, 0)  # its part is in: nothing redone
    consume(azurite, second)
    status, body = stored_report(work(first).run)
    assert status == 200 and json.loads(body)["counts"]["updated"] == 3


def test_a_message_whose_results_were_lost_finds_its_vaults_fixed_and_writes_nothing(
    emulator, estate, fan_env, azurite, monkeypatch
):
    """The consumer wrote the vaults, then could not store its part: the invocation fails,
    the host delivers the message again, and the fresh reads find the vaults compliant."""
    from azure.core.exceptions import ServiceRequestError

    from kvfirewall.run_record import RunRecord

    run_timer()
    message = next(m for m in received(azurite) if work(m).subscription == SUB_A)
    store_part = RunRecord.add_part

    def storage_down(self, part, kind, *args, **kwargs):
        if kind == "message":
            raise ServiceRequestError("storage unreachable")
        return store_part(self, part, kind, *args, **kwargs)

    monkeypatch.setattr(RunRecord, "add_part", storage_down)
    with pytest.raises(ServiceRequestError):
        consume(azurite, message)
    assert emulator.writes == 2
    monkeypatch.setattr(RunRecord, "add_part", store_part)
    emulator.clear_log()
    consume(azurite, message, dequeue_count=2)
    assert emulator.writes == 0 and emulator.reads == 2 + 1  # each lease's read, the subnet's


def test_a_poison_message_is_reported_in_the_runs_report(emulator, estate, fan_env, azurite):
    run_timer()
    messages = received(azurite)
    poisoned = next(m for m in messages if work(m).subscription == SUB_B)
    for message in messages:
        if message is not poisoned:
            consume(azurite, message)
    run = work(poisoned).run
    status, body = stored_report(run)
    assert status == 202 and json.loads(body)["status"] == "running"
    # After maxDequeueCount failed deliveries the host moves the message, as it is.
    queue(azurite, POISON_QUEUE_NAME).create_queue()
    queue(azurite, POISON_QUEUE_NAME).send_message(poisoned.content)
    [moved] = received(azurite, POISON_QUEUE_NAME)
    function("reconcile_poison")(delivered(moved, dequeue_count=1))
    status, body = stored_report(run)
    report = json.loads(body)
    assert status == 200 and report["poisoned"] == 1
    assert report["counts"]["updated"] == 2 and report["counts"]["failed"] == 1
    [failed] = [v for v in report["vaults"] if v["outcome"] == "failed"]
    assert failed["id"] == estate["team"] and failed["retryable"] is True
    assert failed["error"].startswith("poisoned")
    assert any("poison queue" in w for w in report["warnings"])
    assert nets(emulator, estate["team"]) == set()


def test_post_reconcile_answers_202_and_the_run_shows_progress_then_its_report(
    emulator, estate, fan_env, azurite
):
    request_status, answer = http("POST", "reconcile")
    assert request_status == 202
    assert (answer["queued"], answer["messages"]) == (3, 2)
    assert answer["counts"]["outOfScope"] == 1 and answer["counts"]["updated"] == 0
    run = answer["run"]
    status, body = stored_report(run)
    progress = json.loads(body)
    assert status == 202
    assert (progress["status"], progress["messages"], progress["messagesDone"]) == (
        "running",
        2,
        0,
    )
    first, second = received(azurite)
    consume(azurite, first)
    status, body = stored_report(run)
    assert status == 202 and json.loads(body)["messagesDone"] == 1
    consume(azurite, second)
    status, body = stored_report(run)
    report = json.loads(body)
    assert status == 200 and report["counts"]["updated"] == 3
    assert report["run"] == run and report["vaultsListed"] == "all"


def test_dry_runs_and_single_vaults_stay_synchronous(emulator, estate, fan_env, azurite):
    status, report = http("POST", "reconcile", b'{"dryRun": true}')
    assert status == 200 and report["counts"]["planned"] == 3
    status, report = http("GET", "plan")
    assert status == 200 and report["counts"]["planned"] == 3
    status, report = http("POST", "reconcile", json.dumps({"vaultId": estate["bare"]}).encode())
    assert status == 200 and report["vaults"][0]["outcome"] == "updated"
    assert received(azurite) == []


def test_audit_mode_queues_nothing_and_its_report_is_ready_at_once(
    emulator, estate, fan_env, azurite, monkeypatch
):
    monkeypatch.setenv("KVF_MODE", "audit")
    status, answer = http("POST", "reconcile")
    assert status == 202 and (answer["queued"], answer["messages"]) == (0, 0)
    status, body = stored_report(answer["run"])
    assert status == 200 and json.loads(body)["counts"]["planned"] == 3
    assert received(azurite) == [] and emulator.writes == 0


def test_a_local_directory_state_runs_everything_in_process(
    emulator, estate, fan_env, azurite, tmp_path, monkeypatch
):
    monkeypatch.setenv("KVF_STATE", str(tmp_path / "state"))
    status, report = http("POST", "reconcile")
    assert status == 200 and report["counts"]["updated"] == 3 and "run" not in report
    assert emulator.writes == 3
    assert received(azurite) == []


def empty_storage(azurite: str) -> None:
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient

    TableServiceClient.from_connection_string(azurite).delete_table("kvfirewallledger")
    BlobServiceClient.from_connection_string(azurite).delete_container("kvfirewall")


def varied_estate(emulator) -> None:
    """Drifted, untagged and disabled vaults over two subscriptions."""
    for n in range(12):
        emulator.add_vault(SUB_A, "many", f"kv-a-{n:03}", tags=TAG)
    for n in range(5):
        emulator.add_vault(SUB_B, "team", f"kv-b-{n}", tags=TAG)
    emulator.add_vault(SUB_B, "team", "kv-untagged")
    emulator.add_vault(SUB_B, "team", "kv-off", tags=TAG, public_network_access="Disabled")


def test_the_queued_runs_report_counts_equal_the_synchronous_runs(
    emulator, fan_env, azurite, monkeypatch
):
    from tests.test_functions import AGENTS, OCTOBER

    monkeypatch.setattr("kvfirewall.work_queue.VAULTS_PER_MESSAGE", 5)
    varied_estate(emulator)
    run_timer()
    assert drain(azurite) == 4  # 12 vaults of one subscription: three messages
    queued = json.loads(stored_report(last_run())[1])

    emulator.reset()
    emulator.set_service_tags(OCTOBER)
    emulator.add_subnet(AGENTS)
    varied_estate(emulator)
    empty_storage(azurite)
    monkeypatch.setenv("KVF_FAN_OUT", "false")
    run_timer()
    synchronous = json.loads(stored_report(last_run())[1])
    assert synchronous.get("run") is None
    assert queued["counts"] == synchronous["counts"]
    assert queued["counts"]["updated"] == 17 and queued["counts"]["skipped"] == 1
    assert sorted(v["id"] for v in queued["vaults"]) == sorted(
        v["id"] for v in synchronous["vaults"]
    )


def test_messages_are_small_grouped_by_subscription_and_parsed_strictly():
    sent: list[str] = []
    batcher = Batcher("20251130T120005Z-timer", sent.append)
    long_group = "g" * 90
    ids = [
        f"/subscriptions/{SUB_A}/resourceGroups/{long_group}/providers/Microsoft.KeyVault/"
        f"vaults/kv-{n:020d}"
        for n in range(250)
    ]
    for vault_id in ids:
        batcher.add(vault_id, "8")
    batcher.add(ids[0].replace(SUB_A, SUB_B), "8")
    batcher.close()
    parsed = [WorkMessage.from_text(text) for text in sent]
    assert [len(m.vaults) for m in parsed] == [VAULTS_PER_MESSAGE] * 2 + [50, 1]
    assert [m.part for m in parsed] == [1, 2, 3, 4]
    assert [v for m in parsed[:3] for v in m.vaults] == ids
    assert max(len(base64.b64encode(t.encode())) for t in sent) < 64 * 1024
    assert max(map(len, sent)) <= MAX_MESSAGE_CHARS
    good = json.loads(sent[3])
    for bad in (
        "not json",
        json.dumps({**good, "extra": 1}),
        json.dumps({**good, "v": 2}),
        json.dumps({**good, "run": "../../ledger"}),
        json.dumps({**good, "part": 0}),
        json.dumps({**good, "vaults": []}),
        json.dumps({**good, "vaults": [ids[0]]}),  # a vault of another subscription
        json.dumps({**good, "vaults": [ids[0].replace(SUB_A, SUB_B) + "/secrets/x"]}),
    ):
        with pytest.raises(MalformedMessage):
            WorkMessage.from_text(bad)


def test_a_malformed_queue_message_is_dropped_with_a_warning(emulator, fan_env, azurite, caplog):
    from azure.storage.queue import TextBase64EncodePolicy

    client = queue(azurite)
    client.create_queue()
    client._message_encode_policy = TextBase64EncodePolicy()
    client.send_message('{"v": 1}')
    [message] = received(azurite)
    consume(azurite, message)  # no exception: a delivery again would not help
    assert any("dropped as malformed" in r.getMessage() for r in caplog.records)
    assert emulator.reads == 0


def test_the_queue_functions_bind_the_work_queue_and_its_poison_queue():
    from tests.app_functions import FUNCTIONS

    bindings = {
        name: [json.loads(b) for b in FUNCTIONS[name].get_raw_bindings()]
        for name in ("reconcile_queue", "reconcile_poison")
    }
    assert bindings["reconcile_queue"] == [
        {
            "direction": "IN",
            "type": "queueTrigger",
            "name": "message",
            "queueName": QUEUE_NAME,
            "connection": "AzureWebJobsStorage",
        }
    ]
    assert bindings["reconcile_poison"][0]["queueName"] == POISON_QUEUE_NAME


def test_host_json_hands_each_instance_few_messages_and_poisons_after_three_deliveries():
    host = json.loads((Path(__file__).resolve().parent.parent / "host.json").read_text())
    queues = host["extensions"]["queues"]
    # Target-based scaling asks for one instance per batchSize messages waiting; an instance
    # runs batchSize + newBatchThreshold at once, each bounded by the message budget.
    assert queues["batchSize"] + queues["newBatchThreshold"] <= 4
    assert queues["maxDequeueCount"] == 3 and queues["messageEncoding"] == "base64"
    hours, minutes, seconds = map(int, host["functionTimeout"].split(":"))
    assert hours * 3600 + minutes * 60 + seconds >= MESSAGE_BUDGET_SECONDS + 120


def test_storage_and_resource_manager_calls_per_queued_vault(
    emulator, fan_env, azurite, monkeypatch
):
    """What one drifted vault costs on the queued path, counted at the shared transport."""
    from collections import Counter

    from kvfirewall.transport import shared_transport

    transport = shared_transport()
    calls: Counter = Counter()
    sent: set[str] = set()  # operations, not attempts: an SDK's retry keeps the request id
    send = transport.send

    def counted(request, **kwargs):
        request_id = request.headers.get("x-ms-client-request-id")
        if request_id in sent:
            return send(request, **kwargs)
        if request_id:
            sent.add(request_id)
        port = request.url.split("/")[2].rsplit(":", 1)[-1]
        kind = {azurite.split("BlobEndpoint=")[1].split("/")[2].split(":")[1]: "blob",
                azurite.split("TableEndpoint=")[1].split("/")[2].split(":")[1]: "table",
                azurite.split("QueueEndpoint=")[1].split("/")[2].split(":")[1]: "queue"}.get(port, "arm")  # fmt: skip
        response = send(request, **kwargs)
        # A report name already taken (this test's two runs may start within one second, and
        # the second then takes `-2`) is answered 409 and changes nothing: not a cost per vault.
        if not (kind == "blob" and request.method == "PUT" and response.status_code == 409):
            calls[(kind, request.method)] += 1
        return response

    for n in range(20):
        emulator.add_vault(SUB_A, "apps", f"kv-{n:02}", tags=TAG)
    run_timer()  # the first run creates the table, container and queue: not counted
    drain(azurite)
    for n in range(20):
        emulator.add_vault(SUB_A, "apps", f"kv-{n:02}", tags=TAG)  # drifted again
    monkeypatch.setattr(transport, "send", counted)
    run_timer()
    planner = dict(calls)
    calls.clear()
    drain(azurite)
    consumer = dict(calls)
    # The planner: the listing (one page per subscription), the Discovery API and the agent
    # subnet's endpoint check; one query of the ledger partition of the subscription whose
    # vaults it plans (no read per vault), and one of each subscription's (entries of vaults
    # no longer listed); one message sent; its run record: reserve, manifest twice, part 0.
    assert planner == {
        ("arm", "GET"): 4,
        ("table", "GET"): 1 + 2,
        ("queue", "POST"): 1,
        ("blob", "PUT"): 5,
        ("blob", "GET"): 4,
    }
    # The consumer, per vault: under the lease (taken and released) a fresh read, the
    # ledger entry read, pending and confirmed, the PATCH and the read that checks it.
    assert (consumer[("arm", "GET")], consumer[("arm", "PATCH")]) == (40 + 1, 20)  # + subnet
    assert (consumer[("table", "GET")], consumer[("table", "PUT")]) == (20, 40)
    # Per message: its part, the manifest and the parts listed, the report assembled from
    # them and written, the run's blobs deleted: 17 operations, whatever its size.
    per_message = sum(consumer.values()) - 41 - 20 - 20 - 40 - 2 * 20
    assert per_message <= 17 + 2, consumer  # a lease held over 20 s is renewed once
