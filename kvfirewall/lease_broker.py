"""Access leases granted, released and expired: the broker behind `/api/leases` and the timer.

A lease opens vaults to one address for minutes, for a principal that could already read
their secrets. Its rule is kvfirewall's like any other: the lease is recorded first, then each
vault goes through the one write protocol (`writer.VaultWorker`: vault lease, fresh read,
pending, PATCH, confirm, check), whose desired set is the configured one plus the leases
active at that moment, read under the vault's lease. Nothing here writes a vault another way.

Grant, in order: the token (401, or 503 when the authority cannot be reached), the body (400),
the address (403 outside `KVF_LEASE_IP_SCOPE`), then for every vault a fresh read that decides
whether it is leasable (403: not managed, no lease tag, public access off), whether the
principal may read its secrets (403, from that read), and whether a rule fits (409). One vault
refused grants nothing. A write that fails ends the lease at once and takes its rule back from
the vaults already opened (the expiry timer is the backstop): 503 with every vault's result.
Every grant, release and expiry is logged with principal, address, vaults and reason; tokens
never are.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from kvfirewall.access_tokens import AccessTokenValidator, Principal, TokenRejected
from kvfirewall.authorization import VaultAccess
from kvfirewall.lease_store import LeaseRecord, LeaseStore
from kvfirewall.leases import Lease, parse_lease_request
from kvfirewall.ledger import StateStore
from kvfirewall.plan import INEFFECTIVE, ip_values
from kvfirewall.ranges import Desired, desired_rules
from kvfirewall.reconcile import in_scope, leased, resolve_ranges
from kvfirewall.report import VaultResult
from kvfirewall.role_assignments import RoleReader, RoleReadFailed
from kvfirewall.rules import IPV4_RULE_LIMIT, VaultRef, current_ip_network, parse_vault_id
from kvfirewall.service import HTTP_BUDGET_SECONDS, TIMER_BUDGET_SECONDS, Service
from kvfirewall.settings import LeaseSettings
from kvfirewall.vaults import Arm, state_of
from kvfirewall.writer import VaultWorker

__all__ = ["Answer", "LeaseBroker", "validator_for"]

log = logging.getLogger("kvfirewall")
OPENED = frozenset({"updated", "unchanged"})  # the vault holds the desired set, lease included
WORKERS = 8  # vaults of one lease written at once


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, as the functions layer sends it."""

    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


def _refused(status: int, error: str, **extra: object) -> Answer:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return Answer(status, {"error": error, **extra}, headers)


_validators: dict[tuple[str, tuple[str, ...], str], AccessTokenValidator] = {}
_validators_lock = threading.Lock()


def validator_for(leases: LeaseSettings) -> AccessTokenValidator:
    """The process's validator for these settings: its cache of the tenant's signing keys
    outlives a request (a fetch per request would also let callers drive the authority)."""
    key = (leases.tenant, leases.audiences, leases.authority)
    with _validators_lock:
        validator = _validators.get(key)
        if validator is None:
            validator = _validators[key] = AccessTokenValidator(
                tenant=leases.tenant, audiences=leases.audiences, authority=leases.authority
            )
        return validator


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class LeaseBroker:
    """Leases of one deployment (`service`): grant, release, expire and list."""

    def __init__(self, service: Service, *, thread_init: Callable[[], None] | None = None):
        self.service = service
        self.settings = service.settings
        self.thread_init = thread_init

    @property
    def enabled(self) -> bool:
        return self.settings.leases.enabled

    def _authenticate(self, authorization: str | None) -> Principal | Answer:
        token = bearer_token(authorization)
        if token is None:
            return _refused(401, "a bearer token is required (Authorization: Bearer <token>)")
        try:
            return validator_for(self.settings.leases).validate(token)
        except TokenRejected as exc:
            if exc.transient:
                return _refused(503, f"the token could not be checked: {exc}; retry later")
            return _refused(401, str(exc))

    def _run(self, budget_seconds: float) -> tuple[Arm, StateStore, LeaseStore]:
        arm = self.service.arm(budget_seconds=budget_seconds)
        store = self.service.store.within(arm.remaining)
        return arm, store, store.lease_records()

    # ---------------------------------------------------------------- grant

    def grant(self, *, authorization: str | None, body: bytes, forwarded_for: str | None) -> Answer:
        """`POST /api/leases`. A bad body raises `api.BadRequest` (400)."""
        principal = self._authenticate(authorization)
        if isinstance(principal, Answer):
            return principal
        leases = self.settings.leases
        request = parse_lease_request(
            body, max_minutes=leases.max_minutes, forwarded_for=forwarded_for
        )
        if self.settings.mode != "enforce":
            return _refused(409, "KVF_MODE is audit: kvfirewall writes no vault, so grants none")
        arm, store, records = self._run(HTTP_BUDGET_SECONDS)
        decision = resolve_ranges(self.settings, store, arm, save=False, refresh=False)
        if leases.ip_scope == "azure" and not decision.snapshot.in_azure_cloud(request.ip):
            return _refused(
                403,
                f"address {request.ip} is not in the AzureCloud service tag "
                f"(version {decision.snapshot.version}): KVF_LEASE_IP_SCOPE allows Azure "
                "addresses only",
            )
        roles = RoleReader(
            endpoint=self.settings.arm_endpoint, credential=self.service.credential()
        )
        network = IPv4Network(request.ip)
        for ref in request.vaults:
            problem = self._check(ref, principal, network, arm, roles)
            if problem is not None:
                return problem
        lease = Lease.grant(request, principal=principal.object_id, now=self.service.now())
        record = LeaseRecord(lease)
        records.write(record)
        base = desired_rules(self.settings, decision.snapshot)
        results = self._reconcile(arm, store, base, decision.snapshot.version, lease.vaults)
        if all(r.outcome in OPENED for r in results):
            _log("granted", lease, "; ".join(r.reason for r in results))
            return Answer(200, {"lease": lease.to_json(), "vaults": [r.to_json() for r in results]})
        # All or nothing: end it now and take its rule back where it was written.
        ended = record.released(self.service.now())
        records.write(ended)
        opened = [parse_vault_id(r.id) for r in results if r.outcome in OPENED]
        undone = self._reconcile(arm, store, base, decision.snapshot.version, opened)
        if all(r.outcome in OPENED for r in undone):
            records.write(dataclasses.replace(ended, cleared=True))
        failed = [r for r in results if r.outcome not in OPENED]
        _log("not granted", lease, "; ".join(f"{r.id}: {r.error or r.reason}" for r in failed))
        full = any((r.error or "").startswith("refused:") for r in failed)
        return _refused(
            409 if full else 503,
            (
                "a vault has no room for the rule: nothing was granted"
                if full
                else "not every vault could be opened: nothing was granted; retry later"
            ),
            vaults=[r.to_json() for r in results],
        )

    def _check(
        self, ref: VaultRef, principal: Principal, network: IPv4Network, arm: Arm, roles: RoleReader
    ) -> Answer | None:
        """Whether one vault may be leased to `principal` for `network`, from a fresh read."""
        if ref.subscription not in self.settings.subscriptions:
            return _refused(
                403,
                f"vault {ref.id} is not leasable: subscription {ref.subscription} is not managed",
            )
        document = arm.get_vault_document(ref)
        if document is None:
            return _refused(403, f"vault {ref.id} is not leasable: it does not exist")
        state = state_of(document)
        if not in_scope(state, self.settings):
            return _refused(
                403, f"vault {state.id} is not leasable: it is not in scope (KVF_VAULT_TAG)"
            )
        name, value = self.settings.leases.tag
        if not any(k.lower() == name.lower() and v == value for k, v in state.tags.items()):
            return _refused(
                403,
                f"vault {state.id} is not leasable: it has no tag {name}={value} (KVF_LEASE_TAG)",
            )
        access = (state.public_network_access or "").lower()
        if access in INEFFECTIVE:
            return _refused(403, f"vault {state.id} is not leasable: {INEFFECTIVE[access]}")
        try:
            decision = roles.decide(
                principal.object_id,
                principal.tenant_id,
                VaultAccess.from_vault(document),
                self.settings.leases.principals,
            )
        except RoleReadFailed as exc:
            return _refused(503 if exc.transient else 500, f"vault {state.id}: {exc}")
        if not decision.allowed:
            return _refused(403, f"vault {state.id}: not authorized: {decision.reason}")
        present = {current_ip_network(v) for v in ip_values(state.network_acls or {})}
        if network not in present and len(present) + 1 > IPV4_RULE_LIMIT:
            return _refused(
                409,
                f"vault {state.id} has {len(present)} IPv4 rules: no room for another under "
                f"the limit of {IPV4_RULE_LIMIT} (nothing is evicted)",
            )
        return None

    # ---------------------------------------------------------------- release, expiry, list

    def release(self, lease_id: str, *, authorization: str | None) -> Answer:
        """`DELETE /api/leases/{id}`: end a lease now and take its rule back."""
        principal = self._authenticate(authorization)
        if isinstance(principal, Answer):
            return principal
        arm, store, records = self._run(HTTP_BUDGET_SECONDS)
        record = records.read(lease_id)
        if record is None:
            return _refused(404, "no lease with that id was ever issued")
        if record.lease.principal.lower() != principal.object_id.lower():
            return _refused(403, "the lease belongs to another principal")
        now = self.service.now()
        if not record.active(now):
            return Answer(200, {"released": False, "lease": record.lease.to_json(), "vaults": []})
        ended = record.released(now)
        records.write(ended)
        results = self._clear([ended], arm, store, records, "released")
        return Answer(
            200,
            {
                "released": True,
                "lease": ended.lease.to_json(),
                "vaults": [r.to_json() for r in results],
            },
        )

    def expire(self) -> list[VaultResult]:
        """The expiry timer: reconcile the vaults of every lease that ended and was not cleared
        yet (a lease released while a write failed, or one that ran out). One query when there
        is none."""
        arm, store, records = self._run(TIMER_BUDGET_SECONDS)
        ended = records.uncleared(self.service.now())
        if not ended:
            return []
        return self._clear(ended, arm, store, records, "expired")

    def active(self) -> dict:
        """`GET /api/leases`: `{"leases": [...]}`, the active ones."""
        records = self.service.store.lease_records()
        found = sorted(records.active(self.service.now()), key=lambda r: r.lease.expires_at)
        return {"leases": [r.lease.to_json() for r in found]}

    def _clear(
        self,
        ended: Sequence[LeaseRecord],
        arm: Arm,
        store: StateStore,
        records: LeaseStore,
        how: str,
    ) -> list[VaultResult]:
        """Reconcile the vaults of ended leases; a lease whose vaults all succeeded is cleared."""
        decision = resolve_ranges(self.settings, store, arm, save=False, refresh=False)
        base = desired_rules(self.settings, decision.snapshot)
        refs = {v.key: v for record in ended for v in record.lease.vaults}
        results = self._reconcile(arm, store, base, decision.snapshot.version, refs.values())
        done = {  # written, or nothing to write (gone, out of scope)
            r.id.lower()
            for r in results
            if r.outcome in OPENED or (r.outcome == "skipped" and not r.retryable)
        }
        for record in ended:
            if all(v.key in done for v in record.lease.vaults):
                records.write(dataclasses.replace(record, cleared=True))
                _log(how, record.lease, "its rule is gone where no other lease wants it")
            else:
                _log(how, record.lease, "some vaults failed: the expiry timer tries again")
        return results

    def _reconcile(
        self,
        arm: Arm,
        store: StateStore,
        base: Desired,
        version: str,
        refs: Iterable[VaultRef],
    ) -> list[VaultResult]:
        """The vaults through the write protocol, wanting what the active leases want."""
        worker = VaultWorker(
            self.settings,
            store,
            arm,
            base,
            True,
            source_version=version,
            in_scope=lambda state: in_scope(state, self.settings),
            now=self.service.now,
            reread=leased(base, store, self.service.now),
        )
        refs = list(refs)
        if not refs:
            return []
        with ThreadPoolExecutor(min(WORKERS, len(refs)), initializer=self.thread_init) as pool:
            return list(pool.map(worker.one, refs))


def _log(what: str, lease: Lease, detail: str) -> None:
    """One line per grant, release and expiry: who, which address, which vaults, why."""
    log.info(
        "kvfirewall lease %s: id=%s principal=%s ip=%s until=%s vaults=%s reason=%r: %s",
        what,
        lease.id,
        lease.principal,
        lease.ip,
        lease.to_json()["expiresAt"],
        ",".join(v.id for v in lease.vaults),
        lease.reason,
        detail,
        extra={"kvf_lease_id": lease.id, "kvf_principal": lease.principal, "kvf_ip": str(lease.ip)},
    )
