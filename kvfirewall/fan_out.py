"""A run over every vault, fanned out over the Function App's instances by the work queue.

The planner (the timer, or `POST /api/reconcile`) lists the estate once, settles every vault
that needs no write, and queues the drifted ones (`work_queue`): its own results are part 0
of the run's record (`run_record`). `reconcile_queue` reconciles one message on whichever
instance the host gives it, with the same write protocol as any run (`VaultWorker.queued`),
and stores its results as the message's part; `reconcile_poison` stores a message the host
gave up on as its vaults failed. The last part in assembles the run's one report.

Only with Azure Storage state (the queue lives in its account) and `KVF_FAN_OUT`; a local
directory runs everything in process, as the CLI does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvfirewall.reconcile import reconcile
from kvfirewall.report import (
    Report,
    ReportSpool,
    Trigger,
    VaultResult,
    parse_report_name,
    report_name,
)
from kvfirewall.rules import parse_vault_id
from kvfirewall.run_record import RunRecord
from kvfirewall.work_queue import Batcher, WorkMessage, sender

if TYPE_CHECKING:
    from kvfirewall.service import Service

log = logging.getLogger("kvfirewall")
# One message's time: 100 vaults of one subscription take 10 s at its write refill rate, and
# much longer only when other runs or instances share that quota. host.json's functionTimeout
# (30 min) leaves room for what is in flight when it runs out; vaults not reached are
# reported skipped, and the next run covers them.
MESSAGE_BUDGET_SECONDS = 10 * 60.0
POISONED = (
    "poisoned: the host gave up on its message after repeated failed deliveries; "
    "the next run covers it"
)


def planned_run(
    service: Service,
    queue,
    *,
    trigger: Trigger,
    write: bool,
    mode: str,
    budget_seconds: float,
    thread_init: Callable[[], None] | None,
) -> Report:
    """List every vault, settle those that need no write, queue the rest; the report of what
    was settled, with the run's id (its stored report once every message has reported)."""
    started = service.now()
    arm = service.arm(budget_seconds=budget_seconds)
    store = service.store.within(arm.remaining)
    run_id = store.reserve_report(report_name(started, trigger))
    record = RunRecord(store, run_id)
    record.start(trigger=trigger, mode=mode, started=started)
    batcher = Batcher(run_id, sender(queue))
    with ReportSpool() as spool:
        report = reconcile(
            service.settings,
            store=store,
            arm=arm,
            write=write,
            mode=mode,
            save_snapshot=True,
            thread_init=thread_init,
            spool=spool,
            enqueue=batcher.add,
            now=service.now,
            nets=service.agent_networks(arm),
        )
        batcher.close()
        record.add_part(0, "listing", report.full_json(), counts=report.totals())
        report.spool = None  # closed with the run
    record.listed(messages=batcher.messages, queued=batcher.vaults)
    report.run_id, report.queued, report.messages = run_id, batcher.vaults, batcher.messages
    _complete(service, record)
    return report


def consume(
    service: Service, message: WorkMessage, *, thread_init: Callable[[], None] | None = None
) -> Report | None:
    """Reconcile one message's vaults and store their results as its part; None when it
    was done already (a repeated delivery) or its run is not in progress."""
    record = RunRecord(service.store, message.run)
    if record.has_part(message.part) or service.store.report_reservation(message.run) is None:
        _complete(service, record)
        return None
    arm = service.arm(budget_seconds=MESSAGE_BUDGET_SECONDS)
    store = service.store.within(arm.remaining)
    report = reconcile(
        service.settings,
        store=store,
        arm=arm,
        write=service.writes,
        mode=service.settings.mode,
        refresh_ranges=False,  # the snapshot the planner stored
        save_snapshot=False,
        thread_init=thread_init,
        queued=[parse_vault_id(v) for v in message.vaults],
        now=service.now,
        nets=service.agent_networks(arm),
        refresh_pools=False,  # the networks the planner stored
    )
    RunRecord(store, message.run).add_part(
        message.part, "message", report.full_json(), counts=report.totals()
    )
    _complete(service, record)
    return report


def poisoned(service: Service, message: WorkMessage) -> Report:
    """A message the host gave up on: its vaults are reported failed (retryable: the next
    run lists them again), so that the run still completes."""
    report = Report(
        mode=service.settings.mode,
        source={"version": message.ranges},
        vaults=[
            VaultResult(id=v, outcome="failed", reason="poisoned", error=POISONED, retryable=True)
            for v in message.vaults
        ],
        warnings=[
            f"message {message.part} of run {message.run} ({len(message.vaults)} vaults of "
            f"subscription {message.subscription}) went to the poison queue"
        ],
    )
    record = RunRecord(service.store, message.run)
    if service.store.report_reservation(message.run) is not None:
        record.add_part(message.part, "poison", report.full_json(), counts=report.totals())
        _complete(service, record)
    return report


def progress(service: Service, run_id: str) -> tuple[int, dict] | None:
    """A run still in progress: (202, where it stands); None when there is none by that id
    (or it is done: its stored report answers). A run found complete is assembled here, if
    its last consumer could not."""
    if not hasattr(service.store, "report_reservation") or parse_report_name(run_id) is None:
        return None
    record = RunRecord(service.store, run_id)
    state = record.progress()
    if state is None:
        return None
    if state["status"] == "done":
        _complete(service, record)
        return None
    return 202, state


def _complete(service: Service, record: RunRecord) -> None:
    head = record.complete(service.now())
    if head is None:
        return
    counts = ", ".join(f"{n} {o}" for o, n in head["counts"].items() if n)
    log.log(
        logging.WARNING if head["counts"].get("failed") or head["poisoned"] else logging.INFO,
        "kvfirewall %s: run %s done: %s messages (%s poisoned), %s; ARM %s reads, %s writes",
        head["mode"],
        record.run_id,
        head["messages"],
        head["poisoned"],
        counts or "no vaults",
        head["armCalls"].get("reads", 0),
        head["armCalls"].get("writes", 0),
        extra={"kvf_counts": head["counts"], "kvf_run": record.run_id},
    )
