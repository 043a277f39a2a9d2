"""The engine wired for its callers: the Function App's triggers and the CLI.

A `Service` holds one deployment's validated settings, its state store and its Azure
credential, built once per process (the credential caches tokens), and offers one call per
kind of trigger. The triggers in `functions/` only translate Functions objects into these
calls and the results back; every decision is made here or deeper in the package.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from kvfirewall.agent_networks import AgentNetworks
from kvfirewall.agent_pools import check_subnets, pools_json, resolve_pools
from kvfirewall.api import ReconcileRequest
from kvfirewall.clouds import default_credential
from kvfirewall.errors import is_transient, one_line
from kvfirewall.events import EventTarget, MalformedEvent, event_target
from kvfirewall.geographies import GEOGRAPHY_REGIONS
from kvfirewall.ledger import StateStore, open_store
from kvfirewall.pool_snapshot import PoolSnapshot
from kvfirewall.pools import PoolKind, PoolRef
from kvfirewall.ranges import desired_rules
from kvfirewall.reconcile import Progress, reconcile, resolve_ranges, run_scope
from kvfirewall.report import Report, ReportSpool, Trigger, report_name
from kvfirewall.rules import VaultRef
from kvfirewall.settings import Settings, SettingsError, redact_url
from kvfirewall.vaults import Arm

log = logging.getLogger("kvfirewall")

# Event Grid waits 30 s for an answer before it counts a delivery as failed and retries; the
# whole event (read, write and retries) must end well inside that.
EVENT_BUDGET_SECONDS = 20.0
# An HTTP-triggered function must answer within 230 s (the front end's idle timeout).
HTTP_BUDGET_SECONDS = 180.0
# host.json's functionTimeout is 30 min: a timer run ends with its report logged before that,
# rather than being killed without one. Vaults not reached are left to the next run.
TIMER_BUDGET_SECONDS = 25 * 60.0


class RetryLater(Exception):
    """A transient failure (Resource Manager throttling or outage, storage down): the caller
    should fail the invocation so that Event Grid delivers the event again."""


EventAction = Literal["reconciled", "ignored", "malformed", "failed"]


@dataclass(frozen=True, kw_only=True)
class EventOutcome:
    """What one event led to."""

    action: EventAction
    reason: str
    report: Report | None = None


class Service:
    """One deployment's engine: settings, state and Azure access."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: StateStore,
        credential=None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.settings = settings
        self.store = store
        self._credential = credential
        self._lock = threading.Lock()
        self._clock = clock
        self._queue: object = None  # the work queue, once asked for (False: none)

    @classmethod
    def from_settings(cls, settings: Settings) -> Service:
        """Open the configured store; a store the SDKs refuse is a settings error."""

        try:
            store = open_store(
                settings.state,
                arm_endpoint=settings.arm_endpoint,
                report_days=settings.report_days,
            )
        except Exception as exc:  # the SDKs reject some connection strings only here
            raise SettingsError(
                f"KVF_STATE: cannot use {settings.state.describe()}: {type(exc).__name__}"
            ) from None
        return cls(settings, store=store)

    def arm(self, *, budget_seconds: float | None = None) -> Arm:
        """Resource Manager access for one run, sharing the process's credential."""
        return Arm(
            endpoint=self.settings.arm_endpoint,
            subscriptions=self.settings.subscriptions,
            credential=self.credential(),
            budget_seconds=budget_seconds,
        )

    def credential(self):
        """The process's Azure credential (it caches tokens), made on first use."""
        with self._lock:
            if self._credential is None:
                self._credential = default_credential(self.settings.arm_endpoint)
            return self._credential

    def now(self) -> datetime:
        """The service's clock (injectable: leases end by it)."""
        return self._clock()

    def agent_networks(self, arm: Arm) -> AgentNetworks:
        """Agent-network reads for one run, within the budget of its `arm`."""
        return AgentNetworks(
            endpoint=self.settings.arm_endpoint,
            credential=self.credential(),
            remaining=arm.remaining,
        )

    def work_queue(self):
        """The queue runs over every vault fan out over, or None: KVF_FAN_OUT off, or a
        state without one (a local directory; see `work_queue.queue_client`)."""
        from kvfirewall.work_queue import queue_client

        with self._lock:
            if self._queue is None:
                client = None
                if self.settings.fan_out and hasattr(self.store, "reserve_report"):
                    client = queue_client(
                        self.settings.state, arm_endpoint=self.settings.arm_endpoint
                    )
                self._queue = client or False
            return self._queue or None

    def _fanned_out(
        self, *, trigger: Trigger, write: bool, mode: str, budget_seconds: float, thread_init
    ) -> Report | None:
        """A run over every vault through the work queue (see `fan_out`), if there is one."""
        from kvfirewall.fan_out import planned_run

        queue = self.work_queue()
        if queue is None:
            return None
        return planned_run(
            self,
            queue,
            trigger=trigger,
            write=write,
            mode=mode,
            budget_seconds=budget_seconds,
            thread_init=thread_init,
        )

    @property
    def writes(self) -> bool:
        """Whether unattended runs write (KVF_MODE=enforce) or only report (audit)."""
        return self.settings.mode == "enforce"

    def run(
        self,
        *,
        write: bool,
        mode: str,
        vault: VaultRef | None = None,
        refresh_ranges: bool = True,
        save_snapshot: bool | None = None,
        budget_seconds: float | None = None,
        progress: Progress | None = None,
        thread_init: Callable[[], None] | None = None,
        trigger: Trigger | None = None,
        refresh_pools: bool | None = None,
        reserve_scale: float = 1.0,
    ) -> Report:
        """One run. A run over every vault spools each vault's result, so that memory holds
        only the counts and the vaults that changed or failed, however large the estate; with
        a `trigger`, the full report is stored as `reports/<start time>-<trigger>.json`."""
        started = self._clock()
        arm = self.arm(budget_seconds=budget_seconds)
        with ReportSpool() if vault is None else contextlib.nullcontext() as spool:
            report = reconcile(
                self.settings,
                store=self.store.within(arm.remaining),
                arm=arm,
                write=write,
                mode=mode,
                vault=vault,
                progress=progress,
                refresh_ranges=refresh_ranges,
                save_snapshot=save_snapshot,
                thread_init=thread_init,
                spool=spool,
                now=self._clock,
                nets=self.agent_networks(arm),
                refresh_pools=refresh_pools,
                reserve_scale=reserve_scale,
            )
            if trigger is not None:
                self._store_report(report, report_name(started, trigger))
            report.spool = None  # closed with the run
        return report

    def _store_report(self, report: Report, name: str) -> None:
        """Store the full report; a store that fails loses the stored copy, not the run (its
        result is still answered and logged, with a warning)."""
        try:
            report.stored_as = self.store.save_report(
                name, report.full_json(), counts=report.totals()
            )
        except Exception as exc:
            warning = f"the report could not be stored: {one_line(exc)}"
            report.warnings.append(warning)
            log.warning("kvfirewall: %s", warning)

    def scheduled_run(self, *, thread_init: Callable[[], None] | None = None) -> Report:
        """The timer: refresh the ranges and reconcile every vault in scope, per KVF_MODE.

        A new snapshot is stored in audit mode too: the guard accepted it, and the next run
        should compare against it rather than report the same change every hour.
        With a work queue, the drifted vaults are queued (the report says how many).
        """
        queued = self._fanned_out(
            trigger="timer",
            write=self.writes,
            mode=self.settings.mode,
            budget_seconds=TIMER_BUDGET_SECONDS,
            thread_init=thread_init,
        )
        if queued is not None:
            return queued
        return self.run(
            write=self.writes,
            mode=self.settings.mode,
            save_snapshot=True,
            budget_seconds=TIMER_BUDGET_SECONDS,
            thread_init=thread_init,
            trigger="timer",
        )

    def requested_run(
        self, request: ReconcileRequest, *, thread_init: Callable[[], None] | None = None
    ) -> Report:
        """The HTTP trigger: one vault or all, per KVF_MODE unless it is a dry run (which
        writes nothing at all), within the HTTP time limit. The report of a run over every
        vault that is not a dry run is stored; with a work queue, such a run queues its
        drifted vaults and its report carries the run's id (`Report.run_id`)."""
        write = self.writes and not request.dry_run
        if request.vault is None and not request.dry_run:
            queued = self._fanned_out(
                trigger="http",
                write=write,
                mode=self.settings.mode,
                budget_seconds=HTTP_BUDGET_SECONDS,
                thread_init=thread_init,
            )
            if queued is not None:
                return queued
        return self.run(
            write=write,
            mode="plan" if request.dry_run else self.settings.mode,
            vault=request.vault,
            save_snapshot=not request.dry_run,
            budget_seconds=HTTP_BUDGET_SECONDS,
            thread_init=thread_init,
            trigger="http" if request.vault is None and not request.dry_run else None,
        )

    def handle_event(self, *, event_type: object, subject: object, data: object) -> EventOutcome:
        """An Event Grid event: reconcile the vault it names from a fresh read, or drop it.

        Raises `RetryLater` when the vault could not be reconciled for a transient reason;
        a permanent failure (bad stored data, a refused request) is an outcome, since Event
        Grid's redelivery would only repeat it.
        """

        try:
            target: EventTarget = event_target(event_type=event_type, subject=subject, data=data)
        except MalformedEvent as exc:
            return EventOutcome(action="malformed", reason=str(exc))
        if target.pool is not None:
            return self._pool_event(target.pool)
        if target.vault is None:
            return EventOutcome(action="ignored", reason=target.reason)
        managed = self.settings.subscriptions
        if target.vault.subscription not in managed and not self.settings.management_groups:
            return EventOutcome(
                action="ignored",
                reason=f"subscription {target.vault.subscription} is not managed",
            )
        try:
            report = self.run(
                write=self.writes,
                mode=self.settings.mode,
                vault=target.vault,
                refresh_ranges=False,
                budget_seconds=EVENT_BUDGET_SECONDS,
            )
        except Exception as exc:  # outside the vault's own steps: the state store, the ranges
            if is_transient(exc):
                raise RetryLater(f"{target.vault.id}: {one_line(exc)}") from exc
            return EventOutcome(action="failed", reason=f"{target.vault.id}: {one_line(exc)}")
        result = report.vaults[0]
        if result.retryable:  # failed for a transient reason, or busy in another run
            log_report(report)
            raise RetryLater(f"{result.id}: {result.error}")
        return EventOutcome(action="reconciled", reason=result.reason, report=report)

    def _pool_event(self, pool: PoolRef) -> EventOutcome:
        """A write of a listed or discovered pool may have moved its network: every vault in
        scope is reconciled with the pools read afresh, within the event's budget (the
        reserves scaled to it); what is not reached is reported and left to the timer."""
        listed = any(p.key == pool.key for p in self.settings.agent_pools)
        discovered = (
            self.settings.discover_pools
            and pool.kind is PoolKind.MANAGED_DEVOPS_POOL
            and pool.subscription in self.settings.subscriptions
        )
        if not (listed or discovered):
            return EventOutcome(
                action="ignored", reason=f"agent pool {pool.id} is neither listed nor discovered"
            )
        if self._networks_unchanged(pool):
            return EventOutcome(
                action="ignored", reason=f"agent pool {pool.id} written, its networks unchanged"
            )
        report = self.run(
            write=self.writes,
            mode=self.settings.mode,
            refresh_ranges=False,
            refresh_pools=True,
            budget_seconds=EVENT_BUDGET_SECONDS,
            reserve_scale=EVENT_BUDGET_SECONDS / HTTP_BUDGET_SECONDS,
        )
        return EventOutcome(
            action="reconciled", reason=f"agent pool {pool.id} written", report=report
        )

    def _networks_unchanged(self, pool: PoolRef) -> bool:
        """Whether a pool reads as its stored networks: one GET. A scale set's write is most
        often its agents scaling, which moves no network and is worth no run over every
        vault. Unknown (not stored, unreadable): False, and the run decides."""
        try:
            stored = PoolSnapshot.from_json(
                self.store.read_pools() or {"pools": [], "discovered": {}}
            )
        except (ValueError, KeyError, TypeError):
            return False
        known = stored.pools.get(pool.key)
        if known is None:
            return False
        arm = self.arm(budget_seconds=EVENT_BUDGET_SECONDS)
        now = self.agent_networks(arm).resolve(pool)
        return now.readable and (now.subnets, now.addresses) == (known.subnets, known.addresses)

    def ranges(self) -> dict:
        """What would be allowed, by geography and region, and from which source version.
        Read-only: nothing is stored, not even a newer snapshot."""

        arm = self.arm(budget_seconds=HTTP_BUDGET_SECONDS)
        if not self.settings.subscriptions:  # the Discovery API is asked through one of them
            run_scope(self.settings, arm)
        store = self.store.within(arm.remaining)
        decision = resolve_ranges(self.settings, store, arm, save=False)
        nets = self.agent_networks(arm)
        pools = resolve_pools(self.settings, store, nets, save=False)
        desired = desired_rules(
            self.settings, decision.snapshot, pools.pools, unresolved_pools=pools.unresolved
        )
        check = check_subnets(nets, [s for s, _ in desired.subnets.values()], fix=False)
        for warning in (*pools.warnings, *check.warnings):
            log.warning("kvfirewall warning: %s", warning)

        def prefixes(region: str) -> list[str]:
            return [str(p) for p in decision.snapshot.regions.get(region, ())]

        listed_regions = {r for g in self.settings.geographies for r in GEOGRAPHY_REGIONS[g]}
        return {
            "setting": redact_url(self.settings.ip_source),
            "source": decision.snapshot.source,
            "version": decision.snapshot.version,
            "status": decision.status,
            "geographies": {
                g: {r: prefixes(r) for r in GEOGRAPHY_REGIONS[g]} for g in self.settings.geographies
            },
            "regions": {r: prefixes(r) for r in self.settings.regions if r not in listed_regions},
            "extraIpRules": [str(n) for n in self.settings.extra_ip_rules],
            "ipRules": [
                {"rule": str(n), "why": why} for n, why in sorted(desired.ip_rules.items())
            ],
            "virtualNetworkRules": [{"rule": i, "why": why} for i, why in desired.subnets.values()],
            "pools": pools_json(pools.pools, check),
            "warnings": [*decision.warnings, *desired.warnings, *pools.warnings, *check.warnings],
        }


_services: dict[Settings, Service] = {}
_services_lock = threading.Lock()


def service_from_env(env: Mapping[str, str] | None = None) -> Service:
    """The process's service for the current settings (validated on every call, so a fixed
    app setting takes effect without a restart; raises `SettingsError` naming the bad one)."""
    settings = Settings.from_env(env)
    with _services_lock:
        service = _services.get(settings)
        if service is None:
            service = _services[settings] = Service.from_settings(settings)
        return service


def log_report(report: Report) -> None:
    """One summary line, then the report as JSON lines: the counts, the stored report's name
    and the vaults that changed or failed (each vault also logged its own line as it
    finished: compliant and skipped ones at debug level). All searchable in App Insights;
    the summary is a warning when a vault failed, so alerts can key on it."""
    cut_short = report.cut_short or report.cut_short_subscriptions
    level = logging.WARNING if report.failed or cut_short else logging.INFO
    context = {
        "kvf_mode": report.mode,
        "kvf_source_version": report.source.get("version"),
        "kvf_counts": report.counts,
    }
    for warning in report.warnings:
        log.warning("kvfirewall warning: %s", warning, extra=context)
    log.log(level, "%s", report.summary(), extra=context)
    for line in report.to_log_lines():
        log.log(level, "kvfirewall report %s", line, extra=context)
