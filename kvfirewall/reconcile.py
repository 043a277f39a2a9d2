"""Reconcile: ranges -> vaults in scope -> plan -> write (or report) -> ledger.

The order of a write is what makes it safe:
1. plan on the listed state; a compliant vault costs nothing more (no GET, no write);
2. take the vault's lease (one writer per vault across threads, processes and instances);
3. GET the vault and read its ledger entry again, and plan on that fresh state;
4. record the rules about to be added as *pending* in the ledger;
5. PATCH the complete networkAcls once;
6. confirm as owned exactly the pending rules the response shows, and check it holds the plan;
7. GET once more: if a writer that read before our write wrote a stale copy after it, our
   rules are gone; plan on what is there now and write them back (theirs stay theirs).
A crash after 4 leaves pending rules that the next run recognises as its own. A write that
surely did not land (4xx, 409, 429) takes its pending rules back. A retry goes back to 3, never
re-sending the old body: a 409 means someone else was writing that vault.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Empty, Full, Queue

from kvfirewall.ledger import Lease, LeaseBusy, LedgerEntry, StateStore
from kvfirewall.plan import Plan, VaultState, ip_values, plan_vault, subnet_values
from kvfirewall.ranges import (
    Desired,
    RangeDecision,
    RangeSourceError,
    choose_snapshot,
    desired_rules,
)
from kvfirewall.report import Report, ReportSpool, VaultResult
from kvfirewall.rules import RuleError, VaultRef, current_ip_network, parse_vault_id, subnet_key
from kvfirewall.settings import Settings, redact_url
from kvfirewall.sources import builtin_snapshot, fetch_snapshot
from kvfirewall.vaults import Arm, OutOfTime, WriteFailed

log = logging.getLogger("kvfirewall")
WORKERS = 32  # vaults reconciled at once: enough for the write quota at real ARM latencies
LISTERS = 4  # subscriptions listed at once
LISTED_QUEUE = 4 * WORKERS  # listed vaults waiting for a worker
# With a time budget (an HTTP request must answer within 230 s), no vault is started with less
# than this left: enough for a read and a write; every call is also cut to the budget.
VAULT_RESERVE_SECONDS = 30.0
MIN_WRITE_SECONDS = 10.0  # no PATCH is started with less of the budget left
# Another run's write of one vault takes a few seconds; a longer wait means it is stuck or
# throttled, and this run is better spent on other vaults (the holder or the next run does it).
LEASE_WAIT_SECONDS = 30.0
READ_SECONDS = 3.0  # kept, within a budget, for the fresh read after waiting for a lease
_LOG_LEVELS = {"updated": logging.INFO, "planned": logging.INFO, "failed": logging.WARNING}
NOT_REACHED = "not reached: the run's time budget ran out; the next run covers it"

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
) -> Report:
    """Reconcile every vault in scope (or one vault) and return the report.

    `write` decides whether vaults and the ledger are written; `save_snapshot` (default:
    `write`) whether a newer range snapshot becomes the last good one; `refresh_ranges`
    whether the source is fetched or a stored snapshot may do (see `resolve_ranges`). An `arm`
    with a time budget bounds the run: vaults not reached in time are reported as skipped.
    `thread_init` runs in each worker thread first (the Functions worker forwards log records
    only from threads that carry the invocation's id). With a `spool`, every vault's result
    goes there and the report keeps only the counts and the vaults that changed or failed.
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
    worker = _VaultWorker(
        settings, store, arm, desired, write, source_version=decision.snapshot.version
    )
    if vault is not None:
        report.add(worker.one(vault))
    else:
        _reconcile_listed(settings, arm, worker, report, progress, thread_init)
    report.arm_calls = {
        field: getattr(arm.counts, field) - getattr(calls_before, field)
        for field in ("reads", "writes", "throttled")
    }
    report.duration_seconds = time.monotonic() - started
    return report


def _reconcile_listed(
    settings: Settings,
    arm: Arm,
    worker: _VaultWorker,
    report: Report,
    progress: Progress | None,
    thread_init: Callable[[], None] | None,
) -> None:
    """Reconcile every listed vault in scope as its page arrives, on `WORKERS` threads.

    At most `2 * WORKERS` vaults are in the workers' hands and `LISTED_QUEUE` listed ones wait
    for them, so memory stays flat however large the estate: the report counts each result
    and keeps (or spools) it.
    """
    in_flight: deque[Future[VaultResult]] = deque()

    def finish(result: VaultResult) -> None:
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
                in_flight.append(pool.submit(worker.in_budget, item))
            while in_flight and (len(in_flight) >= 2 * WORKERS or in_flight[0].done()):
                finish(in_flight.popleft().result())
        while in_flight:
            finish(in_flight.popleft().result())


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
            put(f"listing subscription {subscription} failed: {_safe(exc)}")
            put(
                VaultResult(
                    id=f"/subscriptions/{subscription}",
                    outcome="failed",
                    reason="could not list vaults",
                    error=_safe(exc),
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


class _VaultWorker:
    """Reconciles single vaults; shared by the threads of one run."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        arm: Arm,
        desired: Desired,
        write: bool,
        *,
        source_version: str,
    ) -> None:
        self.source_version = source_version
        self.settings = settings
        self.store = store
        self.arm = arm
        self.desired = desired
        self.write = write

    def one(self, ref: VaultRef) -> VaultResult:
        """A single vault named by id: read it fresh (callers never pass state)."""
        try:
            state = self.arm.get_vault(ref)
            if state is None:
                return self._gone(ref, "vault not found")
        except Exception as exc:
            return _failed(ref.id, exc)
        if not in_scope(state, self.settings):
            return VaultResult(id=state.id, outcome="skipped", reason="not in scope")
        return self.listed(state)

    def in_budget(self, state: VaultState) -> VaultResult:
        """A listed vault, unless the run's time budget is (nearly) spent."""
        remaining = self.arm.remaining()
        if remaining is not None and remaining < VAULT_RESERVE_SECONDS:
            return VaultResult(id=state.id, outcome="skipped", reason=NOT_REACHED)
        return self.listed(state)

    def listed(self, state: VaultState) -> VaultResult:
        try:
            result = self._reconcile(state)
        except Exception as exc:  # one vault's failure never stops the others
            result = _failed(state.id, exc)
        # Changes and failures at INFO/WARNING; the steady state (most vaults, most runs)
        # at DEBUG, so that hourly runs over thousands of vaults log only what matters.
        level = _LOG_LEVELS.get(result.outcome, logging.DEBUG)
        log.log(
            level,
            "kvfirewall vault outcome=%s id=%s source=%s: %s",
            result.outcome,
            state.id,
            self.source_version,
            result.error or result.reason,
            extra={
                "kvf_vault_id": state.id,
                "kvf_outcome": result.outcome,
                "kvf_source_version": self.source_version,
            },
        )
        return result

    def _plan(self, state: VaultState, entry: LedgerEntry) -> Plan:
        return plan_vault(
            state,
            entry,
            self.desired,
            lock_open=self.settings.lock_open_vaults,
            enable_disabled=self.settings.enable_disabled_vaults,
        )

    def _reconcile(self, state: VaultState) -> VaultResult:
        ref = parse_vault_id(state.id)
        stored = self.store.read_entry(ref.key)
        entry = _settled(stored, state)
        plan = self._plan(state, entry)
        if not (self.write and _writes(plan, entry, stored)):
            return self._settle(plan, entry, ref, stored)  # writes nothing
        try:
            with self.store.lease(ref.key, wait_seconds=self._lease_wait()) as lease:
                return self._write(ref, lease)
        except LeaseBusy as exc:
            return VaultResult(
                id=state.id,
                outcome="skipped",
                reason=f"busy: {exc}; that run or the next one reconciles it",
                retryable=True,
            )

    def _lease_wait(self) -> float:
        """Up to LEASE_WAIT_SECONDS, and within a budget only as long as still leaves time
        for the fresh read and the write (an event's 20 s budget leaves about 7 s)."""
        remaining = self.arm.remaining()
        if remaining is None:
            return LEASE_WAIT_SECONDS
        spare = remaining - MIN_WRITE_SECONDS - READ_SECONDS
        return max(0.0, min(LEASE_WAIT_SECONDS, spare))

    def _write(self, ref: VaultRef, lease: Lease) -> VaultResult:
        """Under the vault's lease: read the vault and the ledger again, plan, record the
        intent, PATCH once, confirm, then read once more to check that no concurrent writer
        (one that read the vault before this write and wrote after it) undid it."""
        stored = self.store.read_entry(ref.key)  # the previous holder may have changed it
        entry = stored
        backoff = self.arm.write_backoff()
        landed: Plan | None = None  # the last write that landed, or may have without an answer
        put_back: list[str] = []  # rules a concurrent write brought back or took away
        while True:
            # Wait for the subscription's write quota first, so that the read below is as
            # fresh as it can be when the PATCH leaves.
            self.arm.pace_write(ref.subscription)
            state = self.arm.get_vault(ref)
            if state is None:
                return self._gone(ref, "vault deleted meanwhile")
            if not in_scope(state, self.settings):
                return VaultResult(id=state.id, outcome="skipped", reason="left scope meanwhile")
            entry = _settled(entry, state)
            plan = self._plan(state, entry)
            if plan.action != "write":
                result = self._settle(plan, entry, ref, stored, lease)
                if landed is not None and result.outcome == "unchanged":
                    return _result(landed, "updated", put_back=put_back)  # it had landed
                return result
            remaining = self.arm.remaining()
            if remaining is not None and remaining < MIN_WRITE_SECONDS:
                # A PATCH that times out on our side may still land; don't start one late.
                return _result(
                    plan,
                    "failed",
                    error="time budget spent before the write; the next run or delivery does it",
                    retryable=True,
                )
            pending = dataclasses.replace(
                entry,
                pending_ip_rules=entry.pending_ip_rules | plan.owned.ip_rules,
                pending_subnets=entry.pending_subnets | plan.owned.subnets,
            )
            lease.hold()
            self.store.write_entry(ref.key, pending)
            stored = pending
            lease.hold()
            try:
                after = self.arm.update_network_acls(
                    ref, plan.network_acls, public_network_access=plan.public_network_access
                )
            except WriteFailed as exc:
                if exc.status == 404:
                    return self._gone(ref, "vault deleted meanwhile")
                if exc.maybe_applied:
                    entry, landed = pending, plan  # the next read tells what landed
                else:
                    lease.hold()
                    self.store.write_entry(ref.key, entry)  # surely not applied: claim nothing
                    stored = entry
                if exc.retryable and backoff.wait(exc.retry_after):
                    continue
                tries = f" (gave up after {backoff.attempts} attempts)" if exc.retryable else ""
                return _result(plan, "failed", error=f"{exc}{tries}", retryable=exc.retryable)
            # Rules just removed stay claimed (pending) until a read shows them gone: a stale
            # write may bring them back, and then they must still be known as ours.
            removed_nets, removed_subnets = _removed(plan)
            entry = stored = dataclasses.replace(
                _confirmed(pending, after),
                pending_ip_rules=removed_nets,
                pending_subnets=removed_subnets,
            )
            lease.hold()
            self.store.write_entry(ref.key, entry)
            landed = plan
            missing = _missing(plan, after)
            if missing:
                return _result(
                    plan, "failed", error=f"write not reflected: {missing}", retryable=True
                )
            try:
                check = self.arm.get_vault(ref)
            except OutOfTime:  # the write is done and its answer showed it: don't fail it
                return _result(plan, "updated", put_back=put_back)
            if check is None:
                return self._gone(ref, "vault deleted meanwhile")
            undone = _missing(plan, check, ours_only=True)
            undone += _held(check, removed_nets, removed_subnets)  # brought back
            if not undone:
                if removed_nets or removed_subnets:  # gone for good: claimed no more
                    lease.hold()
                    self.store.write_entry(ref.key, _settled(entry, check))
                return _result(plan, "updated", put_back=put_back)
            # Someone wrote a stale copy over ours: plan again on what is there now (their
            # changes stay theirs) and write ours again.
            put_back.extend(r for r in undone if r not in put_back)
            log.warning("kvfirewall: a concurrent write undid %s on %s", undone, ref.id)
            if not backoff.wait(None):
                return _result(
                    plan,
                    "failed",
                    error=f"a concurrent write undid {undone} again; the next run restores it",
                    retryable=True,
                )

    def _settle(
        self,
        plan: Plan,
        entry: LedgerEntry,
        ref: VaultRef,
        stored: LedgerEntry,
        lease: Lease | None = None,
    ) -> VaultResult:
        """Outcome of a plan that is not written; keeps the ledger truthful if it moved
        (`stored` is what the ledger holds now; it moves only under the vault's `lease`)."""
        if plan.action == "skip":
            return _result(plan, "skipped")
        if plan.action == "refuse":
            return _result(plan, "failed", error=f"refused: {plan.reason}")
        if plan.action == "write":
            return _result(plan, "planned")
        owned = _owned(plan, entry)
        if lease is not None and owned != stored:
            lease.hold()
            self.store.write_entry(ref.key, owned)
        return _result(plan, "unchanged")

    def _gone(self, ref: VaultRef, reason: str) -> VaultResult:
        """A vault that no longer exists: its ledger entry must not outlive it."""
        if self.write:
            self.store.write_entry(ref.key, LedgerEntry())
        return VaultResult(id=ref.id, outcome="skipped", reason=reason)


def _settled(entry: LedgerEntry, state: VaultState) -> LedgerEntry:
    """The ledger entry as it stands against a fresh read of the vault.

    An entry made for another vault that had the same id (deleted and created again) is
    forgotten. Pending rules are resolved: those present were written by kvfirewall and are
    owned; those absent never landed and are claimed no more.
    """
    if entry.generation and state.created_at and entry.generation != state.created_at:
        entry = LedgerEntry()
    nets, subnets = _present(state.network_acls)
    return LedgerEntry(
        ip_rules=entry.ip_rules | (entry.pending_ip_rules & nets),
        subnets=entry.subnets | (entry.pending_subnets & subnets),
        generation=state.created_at or entry.generation,
    )


def _present(acls: Mapping | None) -> tuple[set, set[str]]:
    """The networks and subnet keys a networkAcls holds."""
    acls = acls or {}
    return {current_ip_network(v) for v in ip_values(acls)}, set(
        map(subnet_key, subnet_values(acls))
    )


def _confirmed(pending: LedgerEntry, after: VaultState) -> LedgerEntry:
    """Ownership after a write: every rule that was or was becoming ours and is now present.

    On a complete write this is exactly the plan's ownership; on a partial one it claims
    nothing that is not there and forgets nothing that still is.
    """
    nets, subnets = _present(after.network_acls)
    return LedgerEntry(
        ip_rules=(pending.ip_rules | pending.pending_ip_rules) & nets,
        subnets=(pending.subnets | pending.pending_subnets) & subnets,
        generation=pending.generation,
    )


def _missing(plan: Plan, after: VaultState, *, ours_only: bool = False) -> list[str]:
    """What the plan sent that the vault does not hold: rules, and the access settings a
    lock-down changed. `ours_only`: only the rules kvfirewall owns once the plan is applied
    (other people's rules may have been removed by their owners since)."""
    nets, subnets = _present(after.network_acls)
    sent = plan.network_acls or {}
    ips = [v for v in ip_values(sent) if current_ip_network(v) not in nets]
    vnets = [v for v in subnet_values(sent) if subnet_key(v) not in subnets]
    if ours_only:
        ips = [v for v in ips if current_ip_network(v) in plan.owned.ip_rules]
        vnets = [v for v in vnets if subnet_key(v) in plan.owned.subnets]
    acls = after.network_acls or {}
    access = []
    if plan.access and str(acls.get("defaultAction", "Allow")).lower() != "deny":
        access.append("defaultAction: Deny")
    wanted = plan.public_network_access
    if wanted and (after.public_network_access or "").lower() != wanted.lower():
        access.append(f"publicNetworkAccess: {wanted}")
    return ips + vnets + access


def _removed(plan: Plan) -> tuple[frozenset, frozenset[str]]:
    """The networks and subnet keys a plan removes."""
    rules = [c.rule for c in plan.removed]
    return (
        frozenset(current_ip_network(r) for r in rules if not r.startswith("/")),
        frozenset(subnet_key(r) for r in rules if r.startswith("/")),
    )


def _held(state: VaultState, nets: frozenset, subnets: frozenset[str]) -> list[str]:
    """Which of these networks and subnets a vault holds, as its rule values."""
    acls = state.network_acls or {}
    held = [v for v in ip_values(acls) if current_ip_network(v) in nets]
    return held + [v for v in subnet_values(acls) if subnet_key(v) in subnets]


def _writes(plan: Plan, entry: LedgerEntry, stored: LedgerEntry) -> bool:
    """Whether reconciling this plan writes the vault or its ledger entry (then it takes
    the vault's lease and starts again from a fresh read)."""
    if plan.action == "write":
        return True
    return plan.action == "none" and _owned(plan, entry) != stored


def _owned(plan: Plan, entry: LedgerEntry) -> LedgerEntry:
    return dataclasses.replace(plan.owned, generation=entry.generation)


def _result(
    plan: Plan,
    outcome: str,
    *,
    error: str | None = None,
    retryable: bool = False,
    put_back: list[str] | tuple[str, ...] = (),
) -> VaultResult:
    reason = plan.reason
    if put_back:
        reason += f"; a concurrent write removed {len(put_back)} of its rules: written again"
    return VaultResult(
        id=plan.vault_id,
        outcome=outcome,
        reason=reason,
        added=plan.added,
        removed=plan.removed,
        kept=plan.kept,
        access=plan.access,
        put_back=tuple(put_back),
        error=error,
        retryable=retryable,
    )


def _safe(exc: Exception) -> str:
    """An error message fit for a report: first line only, bounded, no tracebacks."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]


def _failed(vault_id: str, exc: Exception) -> VaultResult:
    """An unexpected error (a read or the ledger failed): worth another try later."""
    return VaultResult(
        id=vault_id, outcome="failed", reason="error", error=_safe(exc), retryable=True
    )
