"""A run's agent networks: the pools resolved (or kept from the snapshot), their subnets and
the static ones checked for the Key Vault service endpoint, and the endpoint fixed on request.

The imperative shell around `pool_snapshot` (which decides) and `agent_networks` (which
reads): it runs once per run, before planning, so that the planner gets the pools' networks
as part of `Desired` and stays pure. Every read is one attempt: a pool, a listing or a
subnet that fails is reported and left to the next run, never retried into the run's budget.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from kvfirewall.agent_networks import AgentNetworks, DiscoveryFailed, EndpointFix, FixOutcome
from kvfirewall.ledger import StateStore
from kvfirewall.pool_snapshot import DiscoveryFailure, PoolDecision, PoolSnapshot, choose_pools
from kvfirewall.pools import (
    KEY_VAULT_SERVICE,
    EndpointStatus,
    PoolNetworks,
    PoolStatus,
    SubnetEndpoint,
)
from kvfirewall.rules import subnet_key
from kvfirewall.settings import Settings

log = logging.getLogger("kvfirewall")


def resolve_pools(
    settings: Settings,
    store: StateStore,
    nets: AgentNetworks,
    *,
    save: bool,
    refresh: bool = True,
    now: datetime | None = None,
) -> PoolDecision:
    """The networks of every listed pool and, with KVF_DISCOVER_POOLS, of every Managed
    DevOps Pool of the managed subscriptions (one paged list each); with `save`, the result
    becomes the stored snapshot (dry runs don't move it).

    Without `refresh` (an event about a vault) the stored snapshot serves for the pools and
    subscriptions it knows: one event should cost one vault read, and the timer keeps the
    snapshot current. Pools and subscriptions it does not know are read all the same.
    """
    if not (settings.agent_pools or settings.discover_pools):
        return PoolDecision(pools=(), snapshot=PoolSnapshot())
    warnings: list[str] = []
    try:
        stored = store.read_pools()
        last = PoolSnapshot() if stored is None else PoolSnapshot.from_json(stored)
    except (ValueError, KeyError, TypeError) as exc:  # unreadable or tampered: not a baseline
        last = PoolSnapshot()
        warnings.append(f"stored agent pool snapshot ignored: {exc}")
    listed = []
    for ref in settings.agent_pools:
        prior = None if refresh else last.pools.get(ref.key)
        if prior is not None and prior.discovered_in is None:
            listed.append(PoolNetworks(ref, PoolStatus.OK, prior.subnets, prior.addresses))
        else:
            listed.append(nets.resolve(ref))
    discovered: dict[str, tuple[PoolNetworks, ...]] = {}
    failures: list[DiscoveryFailure] = []
    if settings.discover_pools:
        for subscription in settings.subscriptions:
            if not refresh and subscription in last.discovered:
                discovered[subscription] = last.found_in(subscription)
                continue
            try:
                discovered[subscription] = tuple(nets.discover_pools(subscription))
            except DiscoveryFailed as exc:
                failures.append(DiscoveryFailure(subscription, exc.status, str(exc)))
    stamp = (now or datetime.now(timezone.utc)).isoformat()
    decision = choose_pools(
        listed=listed, discovered=discovered, failures=failures, last=last, now=stamp
    )
    if save and decision.snapshot != last:
        store.write_pools(decision.snapshot.to_json())
    if warnings:
        decision = PoolDecision(
            pools=decision.pools,
            snapshot=decision.snapshot,
            warnings=(*warnings, *decision.warnings),
            unresolved=decision.unresolved,
        )
    return decision


@dataclass(frozen=True)
class SubnetCheck:
    """The run's subnets and their Key Vault service endpoint, with the fixes made."""

    endpoints: tuple[SubnetEndpoint, ...] = ()
    fixes: tuple[EndpointFix, ...] = ()

    @property
    def warnings(self) -> tuple[str, ...]:
        """One per subnet whose rule admits nothing yet (or that could not be checked),
        except those this run fixed."""
        fixed = {subnet_key(f.subnet_id) for f in self.fixes if f.outcome is not FixOutcome.FAILED}
        return tuple(
            e.warning
            for e in self.endpoints
            if e.warning is not None and subnet_key(e.subnet_id) not in fixed
        ) + tuple(
            f"adding the {KEY_VAULT_SERVICE} service endpoint to "
            f"subnet {f.subnet_id} failed: {f.detail}"
            for f in self.fixes
            if f.outcome is FixOutcome.FAILED
        )

    def has_endpoint(self, subnet_id: str) -> bool:
        key = subnet_key(subnet_id)
        fixed = any(
            subnet_key(f.subnet_id) == key and f.outcome is not FixOutcome.FAILED
            for f in self.fixes
        )
        present = any(
            subnet_key(e.subnet_id) == key and e.status is EndpointStatus.PRESENT
            for e in self.endpoints
        )
        return fixed or present

    def fixes_json(self) -> list[dict]:
        return [
            {"subnet": f.subnet_id, "outcome": f.outcome.value, "detail": f.detail}
            for f in self.fixes
        ]


def check_subnets(nets: AgentNetworks, subnets: Iterable[str], *, fix: bool) -> SubnetCheck:
    """Read each subnet once (deduplicated, ids compare case-insensitively) for the Key Vault
    service endpoint; with `fix`, add it where it is missing. Each warning is logged too."""
    unique = {subnet_key(s): s for s in subnets}
    endpoints = tuple(nets.check_subnet(s) for s in unique.values())
    fixes = ()
    if fix:
        fixes = tuple(
            nets.add_key_vault_endpoint(e.subnet_id)
            for e in endpoints
            if e.status is EndpointStatus.MISSING
        )
    check = SubnetCheck(endpoints=endpoints, fixes=fixes)
    for fixed in fixes:
        if fixed.outcome is FixOutcome.ADDED:
            log.info("kvfirewall: added the Microsoft.KeyVault endpoint to %s", fixed.subnet_id)
    return check


def pools_json(pools: Iterable[PoolNetworks], check: SubnetCheck) -> list[dict]:
    """The pools as `GET /api/ranges` and reports show them."""
    return [
        {
            "id": p.pool.id,
            "kind": p.pool.kind.value,
            "status": p.status.value,
            "subnets": [{"id": s, "serviceEndpoint": check.has_endpoint(s)} for s in p.subnets],
            "addresses": [str(a) for a in p.addresses],
        }
        for p in pools
    ]
