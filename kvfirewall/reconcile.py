"""Reconcile: ranges -> vaults in scope -> plan -> write (or report) -> ledger.

Each vault in scope is handed to a `VaultWorker` (writer.py), whose write protocol makes
concurrent runs and crashes safe.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Empty, Full, Queue

from kvfirewall.errors import one_line
from kvfirewall.ledger import StateStore
from kvfirewall.plan import VaultState
from kvfirewall.ranges import (
    RangeDecision,
    RangeSourceError,
    choose_snapshot,
    desired_rules,
)
from kvfirewall.report import Report, ReportSpool, VaultResult
from kvfirewall.rules import RuleError, VaultRef, parse_vault_id
from kvfirewall.settings import Settings, redact_url
from kvfirewall.sources import builtin_snapshot, fetch_snapshot
from kvfirewall.vaults import Arm, OutOfTime
from kvfirewall.writer import NOT_REACHED, VAULT_RESERVE_SECONDS, VaultWorker

log = logging.getLogger("kvfirewall")
WORKERS = 32  # vaults reconciled at once: enough for the write quota at real ARM latencies
LISTERS = 4  # subscriptions listed at once
# The vaults of one queue message reconciled at once: a message is one subscription's, whose
# write quota (10/s refilled) a few workers at Resource Manager's latency already fill.
QUEUED_WORKERS = 8
LISTED_QUEUE = 4 * WORKERS  # listed vaults waiting for a worker

Progress = Callable[[int, VaultResult], None]


def resolve_ranges(
    settings: Settings, store: StateStore, arm: Arm | None, *, save: bool, refresh: bool = True
) -> RangeDecision:
    """Fetch the configured source and apply the guard; with `save`, store a new last good
    snapshot (dry runs don't: a preview must not move the guard's baseline).

    Without `refresh` the stored last good snapshot is used as it is, if there is one: an
    event for one vault should cost one read, and the timer keeps that snapshot current.
    """
    builtin = builtin_snapshot()
    notes: list[str] = []
    try:
        last_good = store.read_snapshot()
    except (ValueError, KeyError, TypeError) as exc:  # unreadable or tampered: not a baseline
        last_good = None
        notes.append(f"stored range snapshot ignored: {exc}")
    if not refresh and last_good is not None:
        return RangeDecision(snapshot=last_good, status="stored", save=False)
    if not settings.all_regions:
        # Only subnets / extra rules configured: no reason to call (or need rights on) a source.
        return RangeDecision(snapshot=last_good or builtin, status="not-needed", save=False)
    try:
        fresh = fetch_snapshot(
            settings.ip_source,
            location=settings.service_tag_location,
            api=arm,
            budget_seconds=arm.remaining() if arm is not None else None,
        )
        error = None
    except RangeSourceError as exc:
        fresh, error = None, str(exc)
    decision = choose_snapshot(
        fresh,
        error=error,
        last_good=last_good,
        builtin=builtin,
        regions=settings.all_regions,
        max_loss_percent=settings.max_range_loss_percent,
    )
    if notes:
        decision = dataclasses.replace(decision, warnings=(*notes, *decision.warnings))
    if save and decision.save:
        store.write_snapshot(decision.snapshot)
    # Logged once, by the run that stores the new version (previews would repeat it hourly).
    if save and last_good is not None and decision.snapshot.version != last_good.version:
        log.info(
            "AzureDevOps service tag changed from version %s to %s: added %s, removed %s",
            last_good.version,
            decision.snapshot.version,
            [str(p) for p in decision.added],
            [str(p) for p in decision.removed],
            extra={"kvf_source_version": decision.snapshot.version},
        )
    return decision


def in_scope(vault: VaultState, settings: Settings) -> bool:
    """Whether a vault is managed: in a managed subscription and carrying the tag, if any."""
    try:
        ref = parse_vault_id(vault.id)
    except RuleError:
        return False
    if ref.subscription not in settings.subscriptions:
        return False
    if settings.vault_tag is None:
        return True
    name, value = settings.vault_tag
    return any(k.lower() == name.lower() and v == value for k, v in vault.tags.items())


def reconcile(
    settings: Settings,
    *,
    store: StateStore,
    arm: Arm,
    write: bool,
    mode: str,
    vault: VaultRef | None = None,
    progress: Progress | None = None,
    save_snapshot: bool | None = None,
    refresh_ranges: bool = True,
    thread_init: Callable[[], None] | None = None,
    spool: ReportSpool | None = None,
    enqueue: Callable[[str, str], None] | None = None,
    queued: Sequence[VaultRef] | None = None,
) -> Report:
    """Reconcile every vault in scope (or one vault) and return the report.

    `write` decides whether vaults and the ledger are written; `save_snapshot` (default:
    `write`) whether a newer range snapshot becomes the last good one; `refresh_ranges`
    whether the source is fetched or a stored snapshot may do (see `resolve_ranges`). An `arm`
    with a time budget bounds the run: vaults not reached in time are reported as skipped.
    `thread_init` runs in each worker thread first (the Functions worker forwards log records
    only from threads that carry the invocation's id). With a `spool`, every vault's result
    goes there and the report keeps only the counts and the vaults that changed or failed.
    With `enqueue`, a run over every vault writes none itself: each listed vault that needs
    a write is handed to it, by id with the range version planned on (a fanned-out run, see
    `fan_out`); the rest are reported. `queued`: the vaults of one queue message instead,
    each reconciled from a fresh read under its lease (`VaultWorker.queued`).
    """
    started = time.monotonic()
    calls_before = dataclasses.replace(arm.counts)  # an Arm may serve many runs
    decision = resolve_ranges(
        settings,
        store,
        arm,
        save=write if save_snapshot is None else save_snapshot,
        refresh=refresh_ranges,
    )
    desired = desired_rules(settings, decision.snapshot)
    report = Report(
        mode=mode,
        source={
            "setting": redact_url(settings.ip_source),
            "source": decision.snapshot.source,
            "version": decision.snapshot.version,
            "status": decision.status,
            "added": [str(p) for p in decision.added],
            "removed": [str(p) for p in decision.removed],
        },
        warnings=[*decision.warnings, *desired.warnings],
        spool=spool,
    )
    worker = VaultWorker(
        settings,
        store,
        arm,
        desired,
        write,
        source_version=decision.snapshot.version,
        in_scope=lambda state: in_scope(state, settings),
    )
    if vault is not None:
        report.add(worker.one(vault))
    elif queued is not None:
        with ThreadPoolExecutor(max_workers=QUEUED_WORKERS, initializer=thread_init) as pool:
            for result in pool.map(worker.queued, queued):
                report.add(result)
    else:
        _reconcile_listed(settings, arm, worker, report, progress, thread_init, enqueue)
    report.arm_calls = {
        field: getattr(arm.counts, field) - getattr(calls_before, field)
        for field in ("reads", "writes", "throttled")
    }
    report.duration_seconds = time.monotonic() - started
    return report


def _reconcile_listed(
    settings: Settings,
    arm: Arm,
    worker: VaultWorker,
    report: Report,
    progress: Progress | None,
    thread_init: Callable[[], None] | None,
    enqueue: Callable[[str, str], None] | None = None,
) -> None:
    """Reconcile every listed vault in scope as its page arrives, on `WORKERS` threads.

    At most `2 * WORKERS` vaults are in the workers' hands and `LISTED_QUEUE` listed ones wait
    for them, so memory stays flat however large the estate: the report counts each result
    and keeps (or spools) it.
    """
    in_flight: deque[Future[VaultResult | str]] = deque()
    work = worker.in_budget if enqueue is None else functools.partial(_triaged, worker)

    def finish(result: VaultResult | str) -> None:
        if isinstance(result, str):  # a drifted vault's id: queued
            enqueue(result, worker.source_version)  # type: ignore[misc]
            return
        report.add(result)
        if result.reason == NOT_REACHED:
            if result.id.count("/") == 2:  # `/subscriptions/<id>`: the rest of its listing
                report.cut_short_subscriptions += 1
            else:
                report.cut_short += 1
        if progress:
            progress(report.total, result)

    with ThreadPoolExecutor(max_workers=WORKERS, initializer=thread_init) as pool:
        for item in _listed(settings, arm, thread_init):
            if isinstance(item, str):
                report.warnings.append(item)
            elif isinstance(item, VaultResult):
                finish(item)
            elif not in_scope(item, settings):
                report.out_of_scope += 1
            else:
                in_flight.append(pool.submit(work, item))
            while in_flight and (len(in_flight) >= 2 * WORKERS or in_flight[0].done()):
                finish(in_flight.popleft().result())
        while in_flight:
            finish(in_flight.popleft().result())


def _triaged(worker: VaultWorker, state: VaultState) -> VaultResult | str:
    """The result of a vault that needs no write, or its id if it does."""
    result = worker.triage(state)
    return state.id if result is None else result


def _listed(
    settings: Settings, arm: Arm, thread_init: Callable[[], None] | None
) -> Iterator[VaultState | VaultResult | str]:
    """Every vault of every managed subscription, listed `LISTERS` subscriptions at a time, as
    pages arrive; a subscription that cannot be listed yields a result (and a warning)."""
    queue: Queue = Queue(maxsize=LISTED_QUEUE)
    stop = threading.Event()
    finished = object()

    def put(item: object) -> None:
        while not stop.is_set():  # the consumer may have stopped: don't block for ever
            try:
                queue.put(item, timeout=0.5)
                return
            except Full:
                continue

    def list_subscription(subscription: str) -> None:
        try:
            for state in arm.list_vaults(subscription, reserve_seconds=VAULT_RESERVE_SECONDS):
                if stop.is_set():  # the consumer is gone: read no further page
                    return
                put(state)
        except OutOfTime:  # the subscription, or the rest of it
            put(
                VaultResult(
                    id=f"/subscriptions/{subscription}", outcome="skipped", reason=NOT_REACHED
                )
            )
        except Exception as exc:  # one subscription's failure must not stop the others
            put(f"listing subscription {subscription} failed: {one_line(exc)}")
            put(
                VaultResult(
                    id=f"/subscriptions/{subscription}",
                    outcome="failed",
                    reason="could not list vaults",
                    error=one_line(exc),
                    retryable=True,
                )
            )
        finally:
            put(finished)

    with ThreadPoolExecutor(max_workers=LISTERS, initializer=thread_init) as listers:
        futures = [listers.submit(list_subscription, s) for s in settings.subscriptions]
        try:
            remaining = len(futures)
            while remaining:
                try:
                    item = queue.get(timeout=1.0)
                except Empty:
                    # A lister that never ran (its thread failed to start) posts nothing.
                    if all(f.done() for f in futures) and queue.empty():
                        for future in futures:
                            future.result()  # raises what stopped it
                        return
                    continue
                if item is finished:
                    remaining -= 1
                else:
                    yield item
        finally:
            stop.set()
