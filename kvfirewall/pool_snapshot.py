"""The agent pools' last resolved networks, and which networks a run uses for each pool.

Pure, like the range guard in `ranges.py`: the shell (`agent_pools.py`) reads the pools and
the stored snapshot, this module decides. A pool that cannot be read this time keeps the
networks it last resolved to, so an outage, a 403 or a pool deleted by mistake never makes
kvfirewall remove its rules; a pool taken out of `KVF_AGENT_POOLS`, or no longer in its
subscription's listing, leaves the snapshot, and its rules go where kvfirewall added them.
A pool (or a subscription's discovery) that fails with nothing stored for it is *unresolved*:
its networks are unknown, so the planner removes nothing while there is one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from kvfirewall.pools import PoolNetworks, PoolRef, PoolStatus, parse_pool_id
from kvfirewall.rules import canonical_subnet_id, public_ipv4_network


@dataclass(frozen=True)
class StoredPool:
    """One pool's networks as last read; `discovered_in` is the subscription whose listing
    found it (None: it is listed in KVF_AGENT_POOLS)."""

    pool: PoolRef
    subnets: tuple[str, ...]
    addresses: tuple[IPv4Network, ...]
    resolved_at: str
    discovered_in: str | None = None

    def to_json(self) -> dict:
        return {
            "id": self.pool.id,
            "kind": self.pool.kind.value,
            "subnets": list(self.subnets),
            "addresses": [str(a) for a in self.addresses],
            "resolvedAt": self.resolved_at,
            "discoveredIn": self.discovered_in,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> StoredPool:
        """Validated as strictly as a fresh read (the store may be old or tampered with);
        raises ValueError (RuleError is one)."""
        found_in = data.get("discoveredIn")
        return cls(
            pool=parse_pool_id(str(data["id"])),
            subnets=tuple(canonical_subnet_id(str(s)) for s in data["subnets"]),
            addresses=tuple(public_ipv4_network(str(a)) for a in data["addresses"]),
            resolved_at=str(data["resolvedAt"]),
            discovered_in=None if found_in is None else str(found_in).lower(),
        )


@dataclass(frozen=True)
class PoolSnapshot:
    """Every pool's last resolved networks, and the subscriptions whose Managed DevOps Pools
    were listed in full at least once (with the time of the last full listing)."""

    pools: Mapping[str, StoredPool] = field(default_factory=dict)  # key -> pool
    discovered: Mapping[str, str] = field(default_factory=dict)  # subscription -> when

    def to_json(self) -> dict:
        return {
            "pools": [p.to_json() for _, p in sorted(self.pools.items())],
            "discovered": dict(sorted(self.discovered.items())),
        }

    @classmethod
    def from_json(cls, data: Mapping) -> PoolSnapshot:
        pools = (StoredPool.from_json(p) for p in data["pools"])
        discovered = {str(k).lower(): str(v) for k, v in dict(data["discovered"]).items()}
        return cls(pools={p.pool.key: p for p in pools}, discovered=discovered)

    def found_in(self, subscription: str) -> tuple[PoolNetworks, ...]:
        """The pools the last full listing of a subscription found, as networks."""
        return tuple(
            PoolNetworks(p.pool, PoolStatus.OK, p.subnets, p.addresses)
            for p in self.pools.values()
            if p.discovered_in == subscription
        )


@dataclass(frozen=True)
class DiscoveryFailure:
    """A subscription whose Managed DevOps Pools could not be listed in full."""

    subscription: str
    status: PoolStatus
    detail: str


@dataclass(frozen=True)
class PoolDecision:
    """The networks a run uses for each pool, and the snapshot to store."""

    pools: tuple[PoolNetworks, ...]  # an unreadable pool with its kept networks
    snapshot: PoolSnapshot
    warnings: tuple[str, ...] = ()
    unresolved: tuple[str, ...] = ()  # pools or listings with nothing known: removals held


def choose_pools(
    *,
    listed: Iterable[PoolNetworks],
    discovered: Mapping[str, Iterable[PoolNetworks]],
    failures: Iterable[DiscoveryFailure],
    last: PoolSnapshot,
    now: str,
) -> PoolDecision:
    """What each pool contributes this run: what it read as, or, when it could not be read,
    its last resolved networks (named in a warning every run until it reads again).

    `listed`: the results for KVF_AGENT_POOLS; `discovered`: the pools each subscription's
    listing found; `failures`: the listings that failed, whose last found pools are kept.
    A pool both listed and discovered counts as listed.
    """
    entries: dict[str, StoredPool] = {}
    used: dict[str, PoolNetworks] = {}
    warnings: list[str] = []
    unresolved: list[str] = []

    def take(result: PoolNetworks, found_in: str | None) -> None:
        key = result.pool.key
        if key in used:
            return
        warnings.extend(result.warnings)
        if result.readable:
            entries[key] = StoredPool(result.pool, result.subnets, result.addresses, now, found_in)
            used[key] = result
            return
        prior = last.pools.get(key)
        if prior is None:
            unresolved.append(f"agent pool {result.pool.id}")
            used[key] = result
            return
        entries[key] = dataclasses.replace(prior, discovered_in=found_in)
        used[key] = dataclasses.replace(result, subnets=prior.subnets, addresses=prior.addresses)

    for result in listed:
        take(result, None)
    discovered_at = {}
    for subscription, results in discovered.items():
        discovered_at[subscription] = now
        for result in results:
            take(result, subscription)
    for failure in failures:
        kept = last.found_in(failure.subscription)
        known = failure.subscription in last.discovered
        warnings.append(
            f"listing the Managed DevOps Pools of subscription {failure.subscription} failed "
            f"({failure.detail}); "
            + (
                f"the {len(kept)} pool(s) it last found stay, nothing removed on their account"
                if known
                else "no earlier listing is known, so no rule is removed until one succeeds"
            )
        )
        if not known:
            unresolved.append(f"the Managed DevOps Pools of subscription {failure.subscription}")
            continue
        discovered_at[failure.subscription] = last.discovered[failure.subscription]
        for result in kept:
            take(dataclasses.replace(result, status=failure.status), failure.subscription)
    return PoolDecision(
        pools=tuple(used.values()),
        snapshot=PoolSnapshot(pools=entries, discovered=discovered_at),
        warnings=tuple(dict.fromkeys(warnings)),
        unresolved=tuple(unresolved),
    )
