"""The write protocol of one vault: plan, lease, fresh read, pending, PATCH, confirm, check.

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
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone

from kvfirewall.errors import is_transient, one_line
from kvfirewall.ledger import Lease, LeaseBusy, LedgerEntry, StaleEntry, StateStore
from kvfirewall.plan import Plan, VaultState, ip_values, plan_vault, subnet_values
from kvfirewall.ranges import Desired
from kvfirewall.report import VaultResult
from kvfirewall.rules import VaultRef, current_ip_network, parse_vault_id, subnet_key
from kvfirewall.settings import Settings
from kvfirewall.vaults import Arm, Backoff, DeletedVault, OutOfTime, WriteFailed

log = logging.getLogger("kvfirewall")
# With a time budget (an HTTP request must answer within 230 s), no vault is started with less
# than this left: enough for a read and a write; every call is also cut to the budget.
VAULT_RESERVE_SECONDS = 30.0
MIN_WRITE_SECONDS = 10.0  # no PATCH is started with less of the budget left
# Another run's write of one vault takes a few seconds; a longer wait means it is stuck or
# throttled, and this run is better spent on other vaults (the holder or the next run does it).
LEASE_WAIT_SECONDS = 30.0
READ_SECONDS = 3.0  # kept, within a budget, for the fresh read after waiting for a lease
# Key Vault keeps a deleted vault 7 to 90 days (softDeleteRetentionInDays) before purging it.
MAX_RETENTION = timedelta(days=90)
STALE_REREADS = 3  # ledger entries found changed by another holder, within one vault's write
_LOG_LEVELS = {"updated": logging.INFO, "planned": logging.INFO, "failed": logging.WARNING}
NOT_REACHED = "not reached: the run's time budget ran out; the next run covers it"


@dataclasses.dataclass
class _Attempt:
    """What one vault's write knows across its attempts."""

    entry: LedgerEntry  # ownership as it stands against the last read
    stored: LedgerEntry  # what the ledger holds now
    landed: Plan | None = None  # the last write that landed, or may have without an answer
    put_back: list[str] = dataclasses.field(default_factory=list)  # undone by a stale write

    def reread(self, stored: LedgerEntry) -> _Attempt:
        """Start again from the entry as another holder left it, with our landed claims."""
        entry = stored
        if self.landed is not None:
            entry = dataclasses.replace(
                stored,
                pending_ip_rules=stored.pending_ip_rules | self.landed.owned.ip_rules,
                pending_subnets=stored.pending_subnets | self.landed.owned.subnets,
            )
        return _Attempt(entry=entry, stored=stored, landed=self.landed, put_back=self.put_back)


class VaultWorker:
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
        in_scope: Callable[[VaultState], bool],
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        reread: Callable[[], Desired] | None = None,
        reserve_scale: float = 1.0,
        planned_entry: Callable[[str], LedgerEntry] | None = None,
    ) -> None:
        """`reread`: the desired set read again under a vault's lease, before its write
        (active access leases change while a run goes on: a lease granted after the run read
        them must not lose its rule to the run's older view). `reserve_scale`:
        VAULT_RESERVE_SECONDS is sized for an HTTP request's budget; a run with a shorter one
        (every vault within an event) scales it down in proportion. `planned_entry`: how
        the entry a vault is first planned on is read (default: the store's `read_entry`; a
        run over every vault reads a subscription's at once, see `LedgerReads`); under the
        lease it is always read again."""
        self.reserve_scale = reserve_scale
        self._planned_entry = planned_entry or store.read_entry
        self.now = now
        self.reread = reread
        self.source_version = source_version
        self.in_scope = in_scope
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
        if not self.in_scope(state):
            return VaultResult(id=state.id, outcome="skipped", reason="not in scope")
        return self.listed(state)

    def swept(self, vault_key: str, entry: LedgerEntry) -> VaultResult:
        """A ledger entry whose vault a complete listing of its subscription did not show:
        deleted with no event seen (or not listed yet). Read it: a vault that answers 404 is
        marked, and forgotten once purged (`_gone`); one already marked costs only the
        deleted-vault read."""
        ref = parse_vault_id(vault_key)
        if entry.deleted_at:
            return self._gone(ref, "vault deleted")
        return self.one(ref)

    def listed(self, state: VaultState) -> VaultResult:
        try:
            result = self._reconcile(state)
        except Exception as exc:  # one vault's failure never stops the others
            result = _failed(state.id, exc)
        return self._logged(state.id, result)

    def triage(self, state: VaultState) -> VaultResult | None:
        """A listed vault's result if planning on its listed state writes nothing (most
        vaults, most runs); None if it needs its lease and a write (`queued`: in this run's
        workers, or in another invocation for a fanned-out run)."""
        try:
            result = self._without_write(state)[1]
        except OutOfTime:  # its ledger entry could not be read within the budget
            result = VaultResult(id=state.id, outcome="skipped", reason=NOT_REACHED)
        except Exception as exc:
            result = _failed(state.id, exc)
        return None if result is None else self._logged(state.id, result)

    def queued(self, ref: VaultRef) -> VaultResult:
        """A vault a run found drifted (`triage`), in this run or queued by another: straight
        to its lease and the fresh read under it (no read before: the listing was one). If
        another delivery or run has fixed it meanwhile, that read shows it compliant and
        nothing is written. No vault is started with less than its reserve of the budget."""
        remaining = self.arm.remaining()
        if remaining is not None and remaining < VAULT_RESERVE_SECONDS * self.reserve_scale:
            return VaultResult(id=ref.id, outcome="skipped", reason=NOT_REACHED)
        try:
            with self.store.lease(ref.key, wait_seconds=self._lease_wait()) as lease:
                result = self._write(ref, lease)
        except LeaseBusy as exc:
            result = _busy(ref.id, exc)
        except Exception as exc:
            result = _failed(ref.id, exc)
        return self._logged(ref.id, result)

    def _logged(self, vault_id: str, result: VaultResult) -> VaultResult:
        # Changes and failures at INFO/WARNING; the steady state (most vaults, most runs)
        # at DEBUG, so that hourly runs over thousands of vaults log only what matters.
        level = _LOG_LEVELS.get(result.outcome, logging.DEBUG)
        if not log.isEnabledFor(level):  # no record, nor its fields, for a line not logged
            return result
        log.log(
            level,
            "kvfirewall vault outcome=%s id=%s source=%s: %s",
            result.outcome,
            vault_id,
            self.source_version,
            result.error or result.reason,
            extra={
                "kvf_vault_id": vault_id,
                "kvf_outcome": result.outcome,
                "kvf_source_version": self.source_version,
            },
        )
        return result

    def _plan(self, state: VaultState, entry: LedgerEntry, desired: Desired | None = None) -> Plan:
        return plan_vault(
            state,
            entry,
            (desired or self.desired).for_vault(state.id),
            lock_open=self.settings.lock_open_vaults,
            enable_disabled=self.settings.enable_disabled_vaults,
        )

    def _without_write(self, state: VaultState) -> tuple[VaultRef, VaultResult | None]:
        """Plan on the listed state: the result if that writes nothing, else None."""
        ref = parse_vault_id(state.id)
        stored = self._planned_entry(ref.key)
        entry = _settled(stored, state)
        plan = self._plan(state, entry)
        if self.write and _writes(plan, entry, stored):
            return ref, None
        return ref, self._settle(plan, entry, ref, stored)  # writes nothing

    def _reconcile(self, state: VaultState) -> VaultResult:
        ref, settled = self._without_write(state)
        if settled is not None:
            return settled
        try:
            with self.store.lease(ref.key, wait_seconds=self._lease_wait()) as lease:
                return self._write(ref, lease)
        except LeaseBusy as exc:
            return _busy(state.id, exc)

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
        attempt = _Attempt(entry=stored, stored=stored)
        backoff = self.arm.write_backoff()
        rereads = STALE_REREADS
        desired = self.reread() if self.reread is not None else self.desired
        while True:
            try:
                result = self._attempt(ref, lease, attempt, backoff, desired)
            except StaleEntry:
                # Another holder wrote the entry (this lease ran out unnoticed): nothing was
                # overwritten. Read it again and plan again, still claiming what our own
                # write added (a claim holds only where the vault shows the rule).
                if not rereads:
                    raise
                rereads -= 1
                log.warning("kvfirewall: ledger entry of %s changed meanwhile: re-planned", ref.id)
                attempt = attempt.reread(self.store.read_entry(ref.key))
                continue
            if result is not None:
                return result

    def _attempt(
        self, ref: VaultRef, lease: Lease, attempt: _Attempt, backoff: Backoff, desired: Desired
    ) -> VaultResult | None:
        """One pass of the protocol from a fresh read: the result, or None to go again."""
        # Wait for the subscription's write quota first, so that the read below is as
        # fresh as it can be when the PATCH leaves.
        self.arm.pace_write(ref.subscription)
        state = self.arm.get_vault(ref)
        if state is None:
            return self._gone(ref, "vault deleted meanwhile", lease)
        if not self.in_scope(state):
            return VaultResult(id=state.id, outcome="skipped", reason="left scope meanwhile")
        attempt.entry = _settled(attempt.entry, state)
        plan = self._plan(state, attempt.entry, desired)
        if plan.action != "write":
            result = self._settle(plan, attempt.entry, ref, attempt.stored, lease)
            if attempt.landed is not None and result.outcome == "unchanged":  # it had landed
                return _result(attempt.landed, "updated", put_back=attempt.put_back)
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
        pending = self._record_pending(ref, lease, attempt, plan)
        try:
            after = self.arm.update_network_acls(
                ref, plan.network_acls, public_network_access=plan.public_network_access
            )
        except WriteFailed as exc:
            return self._write_failed(exc, ref, lease, attempt, plan, pending, backoff)
        removed = self._confirm(ref, lease, attempt, plan, pending, after)
        missing = _missing(plan, after)
        if missing:
            return _result(plan, "failed", error=f"write not reflected: {missing}", retryable=True)
        return self._verify(ref, lease, attempt, plan, removed, backoff)

    def _record_pending(
        self, ref: VaultRef, lease: Lease, attempt: _Attempt, plan: Plan
    ) -> LedgerEntry:
        """Step 4: the rules about to be added, claimed as pending before the PATCH."""
        entry = attempt.entry
        pending = dataclasses.replace(
            entry,
            pending_ip_rules=entry.pending_ip_rules | plan.owned.ip_rules,
            pending_subnets=entry.pending_subnets | plan.owned.subnets,
        )
        lease.hold()
        attempt.stored = self.store.write_entry(ref.key, pending, base=attempt.stored)
        return pending

    def _write_failed(
        self,
        exc: WriteFailed,
        ref: VaultRef,
        lease: Lease,
        attempt: _Attempt,
        plan: Plan,
        pending: LedgerEntry,
        backoff: Backoff,
    ) -> VaultResult | None:
        """A PATCH that failed: keep the pending claim if it may have landed, take it back if
        it surely did not; None to go again from a fresh read."""
        if exc.status == 404:
            return self._gone(ref, "vault deleted meanwhile", lease)
        if exc.maybe_applied:
            attempt.entry, attempt.landed = pending, plan  # the next read tells what landed
        else:
            lease.hold()  # surely not applied: claim nothing
            attempt.stored = self.store.write_entry(ref.key, attempt.entry, base=attempt.stored)
        if exc.retryable and backoff.wait(exc.retry_after):
            return None
        tries = f" (gave up after {backoff.attempts} attempts)" if exc.retryable else ""
        return _result(plan, "failed", error=f"{exc}{tries}", retryable=exc.retryable)

    def _confirm(
        self,
        ref: VaultRef,
        lease: Lease,
        attempt: _Attempt,
        plan: Plan,
        pending: LedgerEntry,
        after: VaultState,
    ) -> tuple[frozenset, frozenset[str]]:
        """Step 6: own what the answer shows; returns the networks and subnets just removed."""
        # Rules just removed stay claimed (pending) until a read shows them gone: a stale
        # write may bring them back, and then they must still be known as ours.
        removed_nets, removed_subnets = _removed(plan)
        confirmed = dataclasses.replace(
            _confirmed(pending, after),
            pending_ip_rules=removed_nets,
            pending_subnets=removed_subnets,
        )
        attempt.landed = plan
        lease.hold()
        attempt.entry = attempt.stored = self.store.write_entry(
            ref.key, confirmed, base=attempt.stored
        )
        return removed_nets, removed_subnets

    def _verify(
        self,
        ref: VaultRef,
        lease: Lease,
        attempt: _Attempt,
        plan: Plan,
        removed: tuple[frozenset, frozenset[str]],
        backoff: Backoff,
    ) -> VaultResult | None:
        """Step 7: read once more; None to write again what a stale concurrent write undid."""
        try:
            check = self.arm.get_vault(ref)
        except OutOfTime:  # the write is done and its answer showed it: don't fail it
            return _result(plan, "updated", put_back=attempt.put_back)
        if check is None:
            return self._gone(ref, "vault deleted meanwhile", lease)
        undone = _missing(plan, check, ours_only=True)
        undone += _held(check, *removed)  # brought back
        if not undone:
            if any(removed):  # gone for good: claimed no more
                lease.hold()
                settled = _settled(attempt.entry, check)
                self.store.write_entry(ref.key, settled, base=attempt.stored)
            return _result(plan, "updated", put_back=attempt.put_back)
        # Someone wrote a stale copy over ours: plan again on what is there now (their
        # changes stay theirs) and write ours again.
        attempt.put_back.extend(r for r in undone if r not in attempt.put_back)
        log.warning("kvfirewall: a concurrent write undid %s on %s", undone, ref.id)
        if backoff.wait(None):
            return None
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
            self.store.write_entry(ref.key, owned, base=stored)
        return _result(plan, "unchanged")

    def _gone(self, ref: VaultRef, reason: str, lease: Lease | None = None) -> VaultResult:
        """A vault that answers 404. Key Vault keeps a deleted vault for its retention period,
        and recovers it with its networkAcls: its entry is kept, marked, until it is purged
        (then forgotten), so that a recovered vault's rules are still known as kvfirewall's.
        The entry moves only under the vault's `lease` (taken here if not held)."""
        result = VaultResult(id=ref.id, outcome="skipped", reason=reason)
        if not self.write:
            return result
        if lease is not None:
            self._mark_deleted(ref, lease)
            return result
        if not self.store.read_entry(ref.key):
            return result  # never managed, or forgotten: no lease needed
        try:
            with self.store.lease(ref.key, wait_seconds=self._lease_wait()) as held:
                self._mark_deleted(ref, held)
        except LeaseBusy as exc:
            return _busy(ref.id, exc)
        return result

    def _mark_deleted(self, ref: VaultRef, lease: Lease) -> None:
        """Mark the entry of a deleted vault, or forget it if the vault is purged."""
        entry = self.store.read_entry(ref.key)
        if not entry:
            return
        looked, deleted = False, None
        if entry.location:
            try:
                deleted, looked = self.arm.get_deleted_vault(ref, entry.location), True
            except Exception as exc:  # no right to read deleted vaults, an outage: keep it
                log.warning("kvfirewall: reading deleted vault %s: %s", ref.id, one_line(exc))
        kept = after_deletion(entry, deleted, looked=looked, now=self.now())
        if kept != entry:
            lease.hold()
            self.store.write_entry(ref.key, kept, base=entry)


def _busy(vault_id: str, exc: LeaseBusy) -> VaultResult:
    return VaultResult(
        id=vault_id,
        outcome="skipped",
        reason=f"busy: {exc}; that run or the next one reconciles it",
        retryable=True,
    )


def after_deletion(
    entry: LedgerEntry, deleted: DeletedVault | None, *, looked: bool, now: datetime
) -> LedgerEntry:
    """The entry of a vault that answers 404: marked while the vault can be recovered, empty
    (forgotten) once it is purged. `looked`: Resource Manager was asked for the deleted
    vault, and `deleted` is its answer (None: purged). Without an answer the purge date is
    the deletion plus the longest retention Key Vault allows."""
    if looked and deleted is None:
        return LedgerEntry()
    deleted_at = entry.deleted_at or (deleted and deleted.deletion_date) or _iso(now)
    purge_at = (deleted and deleted.scheduled_purge_date) or entry.purge_at
    if not purge_at:
        purge_at = _iso(_instant(deleted_at) + MAX_RETENTION)
    if _instant(purge_at) <= now:
        return LedgerEntry()
    return dataclasses.replace(entry, deleted_at=deleted_at, purge_at=purge_at)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def _settled(entry: LedgerEntry, state: VaultState) -> LedgerEntry:
    """The ledger entry as it stands against a fresh read of the vault.

    An entry made for another vault that had the same id (deleted and created again) is
    forgotten; that of a recovered vault is unmarked. Pending rules are resolved: those
    present were written by kvfirewall and are owned; those absent never landed and are
    claimed no more.
    """
    if not same_instant(entry.generation, state.created_at):
        entry = LedgerEntry()
    nets, subnets = _present(state.network_acls)
    return LedgerEntry(  # it exists: not (or no longer) marked deleted
        ip_rules=entry.ip_rules | (entry.pending_ip_rules & nets),
        subnets=entry.subnets | (entry.pending_subnets & subnets),
        generation=state.created_at or entry.generation,
        location=state.location or entry.location,
    )


def same_instant(recorded: str, created_at: str | None) -> bool:
    """Whether a recorded `systemData.createdAt` is the vault's own (True when either is
    unknown). Compared as instants: Resource Manager writes one time with 7 fractional digits
    or none, `Z` or `+00:00`, depending on the API version and the path that answers."""
    if not recorded or not created_at:
        return True
    try:
        return _instant(recorded) == _instant(created_at)
    except ValueError:  # not ISO 8601: only the same text is the same vault
        return recorded == created_at


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


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
        location=pending.location,
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
    # The location alone is not worth a lease: it is recorded with the next write.
    unchanged = dataclasses.replace(stored, location=entry.location)
    return plan.action == "none" and _owned(plan, entry) != unchanged


def _owned(plan: Plan, entry: LedgerEntry) -> LedgerEntry:
    return dataclasses.replace(plan.owned, generation=entry.generation, location=entry.location)


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


def _failed(vault_id: str, exc: Exception) -> VaultResult:
    """An unexpected error (a read or the ledger failed): `retryable` if time may fix it."""
    return VaultResult(
        id=vault_id,
        outcome="failed",
        reason="error",
        error=one_line(exc),
        retryable=is_transient(exc),
    )
