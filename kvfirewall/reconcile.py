"""Reconcile: ranges -> vaults in scope -> plan -> write (or report) -> ledger.

Each vault in scope is handed to a `VaultWorker` (writer.py), whose write protocol makes
concurrent runs and crashes safe.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from queue import Empty, Full, Queue, SimpleQueue

from kvfirewall.agent_networks import AgentNetworks
from kvfirewall.agent_pools import SubnetCheck, check_subnets, pools_json, resolve_pools
from kvfirewall.errors import is_transient, one_line
from kvfirewall.leases import lease_rules
from kvfirewall.ledger import StateStore
from kvfirewall.ledger_reads import LedgerReads
from kvfirewall.management_groups import ManagementGroups
from kvfirewall.plan import VaultState
from kvfirewall.pool_snapshot import PoolDecision, PoolSnapshot
from kvfirewall.ranges import (
    Desired,
    RangeDecision,
    RangeSourceError,
    choose_snapshot,
    desired_rules,
)
from kvfirewall.report import Report, ReportSpool, VaultResult
from kvfirewall.resource_graph import GraphFailed, ResourceGraph
from kvfirewall.rules import RuleError, VaultRef, parse_vault_id
from kvfirewall.scope import Scope, resolve_scope
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
KEPT_LEDGERS = 2 * LISTERS  # subscriptions whose ledger entries a run holds at once

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
        azure_cloud=settings.leases.enabled and settings.leases.ip_scope == "azure",
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


def in_scope(
    vault: VaultState, settings: Settings, subscriptions: Collection[str] | None = None
) -> bool:
    """Whether a vault is managed: in a managed subscription (`subscriptions`: the run's,
    management groups resolved; else the configured ones) and carrying the tag, if any."""
    try:
        ref = parse_vault_id(vault.id)
    except RuleError:
        return False
    if ref.subscription not in (settings.subscriptions if subscriptions is None else subscriptions):
        return False
    if settings.vault_tag is None:
        return True
    name, value = settings.vault_tag
    return any(k.lower() == name.lower() and v == value for k, v in vault.tags.items())


def run_scope(settings: Settings, arm: Arm, vault: VaultRef | None = None) -> Scope:
    """The run's subscriptions. The management groups are read only when they matter: for a
    run over every vault, or for one vault of a subscription not named in KVF_SUBSCRIPTIONS."""
    if not settings.management_groups or (
        vault is not None and vault.subscription in settings.subscriptions
    ):
        return Scope(subscriptions=settings.subscriptions)
    scope = resolve_scope(settings, ManagementGroups(arm).subscriptions)
    if not arm.subscriptions:  # the Discovery API is asked through a managed subscription
        arm.subscriptions = scope.subscriptions
    return scope


def _not_managed(vault: VaultRef, scope: Scope) -> VaultResult:
    """A single vault outside the run's subscriptions: skipped, and never touched. If a group
    could not be read, the vault may well be managed: it is not reached, rather than out of
    scope, and an event for it is delivered again if time may fix the group's read."""
    if scope.unread_groups:
        groups = ", ".join(scope.unread_groups)
        return VaultResult(
            id=vault.id,
            outcome="skipped",
            reason=f"not reached: management group {groups} could not be read",
            retryable=scope.transient,
        )
    return VaultResult(id=vault.id, outcome="skipped", reason="not in scope")


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
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    nets: AgentNetworks | None = None,
    refresh_pools: bool | None = None,
    reserve_scale: float = 1.0,
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
    With access leases on, the active leases' addresses are wanted too (read once per run, and
    again under a vault's lease before it is written), as of `now()`: any run after a lease
    ends takes its rule away. With `nets`, the agent pools are resolved (fetched unless
    `refresh_pools`, default `refresh_ranges`, is false) and every subnet the run would add is
    checked for the Key Vault service endpoint, and fixed with KVF_FIX_SERVICE_ENDPOINTS in a
    writing run. `reserve_scale` scales the time kept for listing a page and starting a vault
    (sized for an HTTP request's budget) to a shorter budget.
    With `enqueue`, a run over every vault writes none itself: each listed vault that needs
    a write is handed to it, by id with the range version planned on (a fanned-out run, see
    `fan_out`); the rest are reported. `queued`: the vaults of one queue message instead,
    each reconciled from a fresh read under its lease (`VaultWorker.queued`).
    """
    started = time.monotonic()
    calls_before = dataclasses.replace(arm.counts)  # an Arm may serve many runs
    scope = run_scope(settings, arm, vault)
    save = write if save_snapshot is None else save_snapshot
    decision = resolve_ranges(settings, store, arm, save=save, refresh=refresh_ranges)
    pools = PoolDecision(pools=(), snapshot=PoolSnapshot())
    check = SubnetCheck()
    if nets is not None:
        nets_before = dataclasses.replace(nets.counts)
        refresh = refresh_ranges if refresh_pools is None else refresh_pools
        pools = resolve_pools(settings, store, nets, save=save, refresh=refresh)
    desired = desired_rules(
        settings, decision.snapshot, pools.pools, unresolved_pools=pools.unresolved
    )
    if nets is not None:
        fix = settings.fix_service_endpoints and write and mode == "enforce"
        check = check_subnets(nets, [s for s, _ in desired.subnets.values()], fix=fix)
    managed = frozenset(scope.subscriptions)  # asked once per vault
    reread = None
    if settings.leases.enabled:
        reread = leased(desired, store, now)
        desired = reread()
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
        warnings=[
            *scope.warnings,
            *decision.warnings,
            *desired.warnings,
            *pools.warnings,
            *check.warnings,
        ],
        spool=spool,
    )
    if pools.pools or check.endpoints:
        report.agent_networks = {
            "pools": pools_json(pools.pools, check),
            "subnets": [
                {"id": e.subnet_id, "serviceEndpoint": check.has_endpoint(e.subnet_id)}
                for e in check.endpoints
            ],
            "endpointFixes": check.fixes_json(),
        }
    worker = VaultWorker(
        settings,
        store,
        arm,
        desired,
        write,
        source_version=decision.snapshot.version,
        in_scope=lambda state: in_scope(state, settings, managed),
        now=now,
        reread=reread,
        reserve_scale=reserve_scale,
        planned_entry=None if vault or queued else LedgerReads(store, keep=KEPT_LEDGERS).entry,
    )
    if vault is not None:
        report.add(worker.one(vault) if vault.subscription in scope else _not_managed(vault, scope))
    elif queued is not None:
        with ThreadPoolExecutor(max_workers=QUEUED_WORKERS, initializer=thread_init) as pool:
            for result in pool.map(worker.queued, queued):
                report.add(result)
    else:
        listing = _reconcile_listed(
            settings,
            scope,
            managed,
            arm,
            worker,
            report,
            progress,
            thread_init,
            reserve_scale,
            enqueue,
        )
        if write:
            _sweep(store, worker, listing, reserve_seconds=VAULT_RESERVE_SECONDS * reserve_scale)
    report.arm_calls = {
        field: getattr(arm.counts, field) - getattr(calls_before, field)
        for field in ("reads", "writes", "throttled")
    }
    if nets is not None:
        for field in report.arm_calls:
            report.arm_calls[field] += getattr(nets.counts, field) - getattr(nets_before, field)
    report.duration_seconds = time.monotonic() - started
    return report


def leased(
    desired: Desired, store: StateStore, now: Callable[[], datetime]
) -> Callable[[], Desired]:
    """The desired set with the leases active at `now()`, read from the store at each call."""
    records = store.lease_records()

    def read() -> Desired:
        active = [record.lease for record in records.active(now())]
        return dataclasses.replace(desired, leases=lease_rules(active))

    return read


def _reconcile_listed(
    settings: Settings,
    scope: Scope,
    managed: frozenset[str],
    arm: Arm,
    worker: VaultWorker,
    report: Report,
    progress: Progress | None,
    thread_init: Callable[[], None] | None,
    reserve_scale: float,
    enqueue: Callable[[str, str], None] | None = None,
) -> Listing:
    """Reconcile every listed vault in scope as its page arrives.

    Each vault is planned on its listed state as it arrives (`VaultWorker.triage`): most
    vaults, most runs, need nothing more, and cost no thread hand-off. A vault that needs a
    write goes to `WORKERS` threads, each taking its lease and a fresh read
    (`VaultWorker.queued`), or with `enqueue` to the work queue. At most `2 * WORKERS` vaults
    are in the workers' hands and `LISTED_QUEUE` more wait for them, so memory stays flat
    however large the estate: the report counts each result and keeps (or spools) it; only
    the listed vaults' keys are kept, for `_sweep`. Waiting vaults are handed out round the
    subscriptions (`_Turns`): each subscription has its own write quota, and a page of one
    subscription's vaults handed out in a row would have every worker wait for that one
    quota while the others' refill unused.
    """
    listing = Listing(subscriptions=scope.subscriptions)
    in_flight: dict[Future[VaultResult], str] = {}
    turns = _Turns()

    def finish(result: VaultResult) -> None:
        report.add(result)
        if result.id.count("/") == 2:  # `/subscriptions/<id>`: not listed to its end
            listing.incomplete.add(result.id.split("/")[2].lower())
        if result.reason == NOT_REACHED:
            if result.id.count("/") == 2:  # the rest of its listing
                report.cut_short_subscriptions += 1
            else:
                report.cut_short += 1
        if progress:
            progress(report.total, result)

    def take(state: VaultState) -> None:
        result = worker.triage(state)
        if result is not None:
            finish(result)
        elif enqueue is not None:
            enqueue(state.id, worker.source_version)
        else:
            turns.add(state.id.split("/")[2].lower(), state)

    done: SimpleQueue[Future[VaultResult]] = SimpleQueue()  # in the order they end

    def write(state: VaultState) -> VaultResult:
        return worker.queued(parse_vault_id(state.id))

    def hand_out(pool: ThreadPoolExecutor) -> None:
        while turns.waiting and len(in_flight) < 2 * WORKERS:
            subscription, state = turns.next()
            future = pool.submit(write, state)
            in_flight[future] = subscription
            future.add_done_callback(done.put)

    def collect(*, block: bool) -> None:
        """Finish what is done (with `block`, after waiting for at least one)."""
        while in_flight:
            try:
                future = done.get(block=block)
            except Empty:
                return
            block = False
            turns.finished(in_flight.pop(future))
            finish(future.result())

    with ThreadPoolExecutor(max_workers=WORKERS, initializer=thread_init) as pool:
        for item in _listed(settings, scope, arm, thread_init, reserve_scale):
            if isinstance(item, str):
                report.warnings.append(item)
            elif isinstance(item, VaultResult):
                finish(item)
            else:
                listing.keys.add(item.id.lower())
                if not in_scope(item, settings, managed):
                    report.out_of_scope += 1
                else:
                    take(item)
            hand_out(pool)
            collect(block=turns.waiting >= LISTED_QUEUE)
            hand_out(pool)
        while turns.waiting or in_flight:
            hand_out(pool)
            collect(block=True)
    return listing


class _Turns:
    """Listed vaults waiting for a worker, handed out by subscription: next from the one with
    the fewest vaults in the workers' hands (the least recently served among equals)."""

    def __init__(self) -> None:
        self._waiting: dict[str, deque[VaultState]] = {}
        self._busy: dict[str, int] = {}
        self._served = 0
        self._last: dict[str, int] = {}
        self.waiting = 0

    def add(self, subscription: str, state: VaultState) -> None:
        self._waiting.setdefault(subscription, deque()).append(state)
        self.waiting += 1

    def next(self) -> tuple[str, VaultState]:
        subscription = min(
            self._waiting, key=lambda s: (self._busy.get(s, 0), self._last.get(s, -1))
        )
        self._busy[subscription] = self._busy.get(subscription, 0) + 1
        self._served += 1
        self._last[subscription] = self._served
        self.waiting -= 1
        states = self._waiting[subscription]
        state = states.popleft()
        if not states:  # only subscriptions with vaults waiting are looked at
            del self._waiting[subscription]
        return subscription, state

    def finished(self, subscription: str) -> None:
        self._busy[subscription] -= 1


@dataclasses.dataclass
class Listing:
    """What a run over every vault listed: the keys of the vaults it saw, and the
    subscriptions it could not list to the end (a failure, the budget)."""

    subscriptions: tuple[str, ...]
    keys: set[str] = dataclasses.field(default_factory=set)
    incomplete: set[str] = dataclasses.field(default_factory=set)


def _sweep(
    store: StateStore, worker: VaultWorker, listing: Listing, *, reserve_seconds: float
) -> None:
    """Ledger entries of vaults that no complete listing shows any more: deleted with no
    event seen. Each is read once (a vault deleted is kept marked until it is purged, see
    `VaultWorker.swept`); a subscription not listed to its end is left alone, and the
    sweep stops where the run's budget does (the next run goes on)."""
    swept = 0
    complete = [s for s in listing.subscriptions if s.lower() not in listing.incomplete]
    for key, entry in store.entries_not_in(complete, listing.keys):
        remaining = worker.arm.remaining()
        if remaining is not None and remaining < reserve_seconds:
            return
        result = worker.swept(key, entry)
        swept += 1
        log.info("kvfirewall ledger entry of %s, no longer listed: %s", key, result.reason)
    if swept:
        log.info("kvfirewall: %d ledger entries of vaults no longer listed were checked", swept)


def _listed(
    settings: Settings,
    scope: Scope,
    arm: Arm,
    thread_init: Callable[[], None] | None,
    reserve_scale: float,
) -> Iterator[VaultState | VaultResult | str]:
    """Every vault of the run's subscriptions: through Resource Graph (KVF_LISTING=graph),
    and per subscription for what it could not list (with a warning), or per subscription
    from the start (arm)."""
    if settings.listing != "graph" or not scope.subscriptions:
        yield from _listed_per_subscription(scope.subscriptions, arm, thread_init, reserve_scale)
        return
    graph = ResourceGraph(arm)
    seen: set[str] = set()
    current = ""  # the subscription of the last row: those before it are complete
    try:
        reserve = VAULT_RESERVE_SECONDS * reserve_scale
        for state in graph.vaults(
            scope.subscriptions, reserve_seconds=reserve, thread_init=thread_init
        ):
            seen.add(state.id.lower())
            current = state.id.split("/")[2].lower()
            yield state
    except OutOfTime:
        for subscription in sorted(scope.subscriptions):
            if subscription >= current:
                yield VaultResult(
                    id=f"/subscriptions/{subscription}", outcome="skipped", reason=NOT_REACHED
                )
        return
    except GraphFailed as exc:
        yield f"listing through Resource Graph failed ({exc}): listed per subscription instead"
        pending = tuple(s for s in scope.subscriptions if s >= current)
        for item in _listed_per_subscription(pending, arm, thread_init, reserve_scale):
            if not (isinstance(item, VaultState) and item.id.lower() in seen):
                yield item


def _listed_per_subscription(
    subscriptions: tuple[str, ...],
    arm: Arm,
    thread_init: Callable[[], None] | None,
    reserve_scale: float,
) -> Iterator[VaultState | VaultResult | str]:
    """Every vault of these subscriptions, listed `LISTERS` subscriptions at a time, as
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
            reserve = VAULT_RESERVE_SECONDS * reserve_scale
            for state in arm.list_vaults(subscription, reserve_seconds=reserve):
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
                    retryable=is_transient(exc),
                )
            )
        finally:
            put(finished)

    with ThreadPoolExecutor(max_workers=LISTERS, initializer=thread_init) as listers:
        futures = [listers.submit(list_subscription, s) for s in subscriptions]
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
