"""The Resource Manager adapter for agent networks: read pools, scale sets and GitHub network
settings, list Managed DevOps Pools, check and fix subnets' Key Vault service endpoint.

Thin on purpose: it reads payloads through the real SDKs and hands them to `kvfirewall.pools`,
which decides what they mean. Errors are classified here, at the edge: a pool that cannot be
read (404, 403, an outage) becomes a status and a warning, never an exception that could stop
a run or a reason to remove its rules. A failed read is not retried within the run: the pool
keeps its last resolved networks and the next run reads it again, so a slow or throttled
Resource Manager costs one request per pool, not a retry storm.

Clients are made per subscription and kind, in the credential and endpoint style of
`kvfirewall.vaults.Arm` (the cloud's credential and token scope, the shared transport), with
their SDKs imported on first use: a cold start that resolves no pool does not pay for
azure-mgmt-compute or azure-mgmt-network.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from kvfirewall.clouds import default_credential, token_scope
from kvfirewall.errors import is_transient, one_line
from kvfirewall.pools import (
    EndpointStatus,
    PoolKind,
    PoolNetworks,
    PoolRef,
    PoolStatus,
    SubnetEndpoint,
    endpoint_check,
    networks_of,
    parse_pool_id,
    unreadable,
    with_key_vault_endpoint,
)
from kvfirewall.rules import SUBNET_ID_RE
from kvfirewall.transport import shared_transport
from kvfirewall.vaults import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    USER_AGENT,
    WRITE_TIMEOUT,
    CallCounts,
    CountingPolicy,
)

# azure-mgmt-devopsinfrastructure 1.0.0 defaults to 2024-10-19, which has no static addresses.
POOLS_API_VERSION = "2025-09-20"
# GitHub.Network has no Python SDK; its resources are read through the generic client.
NETWORK_SETTINGS_API_VERSION = "2024-04-02"
# A subnet PUT refused because someone wrote the subnet since it was read (412) is retried
# from a fresh read this many times in all.
ENDPOINT_FIX_ATTEMPTS = 3


class FixOutcome(Enum):
    """What an attempt to add the Key Vault endpoint to a subnet came to."""

    ADDED = "added"
    ALREADY_PRESENT = "already-present"  # nothing written: someone else got there first
    FAILED = "failed"


@dataclass(frozen=True)
class EndpointFix:
    """The result of `add_key_vault_endpoint`, for the vault run's report."""

    subnet_id: str
    outcome: FixOutcome
    detail: str = ""


def classify(exc: Exception) -> PoolStatus:
    """A failed read as a pool status: transient (worth the next run) or permanent."""
    status = exc.status_code if isinstance(exc, HttpResponseError) else None
    if status == 404:
        return PoolStatus.NOT_FOUND
    if status in (401, 403):
        return PoolStatus.FORBIDDEN
    return PoolStatus.UNAVAILABLE if is_transient(exc) else PoolStatus.REJECTED


def describe(exc: Exception) -> str:
    """The ARM error code and message, without request ids or headers."""
    if not isinstance(exc, HttpResponseError):
        return one_line(exc)
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None) or exc.reason or "Error"
    message = getattr(error, "message", None) or one_line(exc).removeprefix(
        f"{type(exc).__name__}: "
    )
    return f"HTTP {exc.status_code} {code}: {message}"[:300]


_FAILURES = (HttpResponseError, ServiceRequestError, ServiceResponseError)


class DiscoveryFailed(Exception):
    """A subscription's pools could not be listed; `status` says whether it may pass."""

    def __init__(self, message: str, status: PoolStatus) -> None:
        super().__init__(message)
        self.status = status


class AgentNetworks:
    """Agent-network reads (and the one subnet write) for one deployment."""

    def __init__(
        self,
        *,
        endpoint: str,
        credential=None,
        remaining: Callable[[], float | None] = lambda: None,
    ) -> None:
        """`remaining`: the seconds left of the run's time budget (None: no budget); every
        request's timeouts are cut to it, and none starts once it is spent."""
        if credential is None:
            credential = default_credential(endpoint)
        self.endpoint = endpoint.rstrip("/")
        self.counts = CallCounts()
        self._credential = credential
        self._remaining = remaining
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], Any] = {}

    def _client(self, kind: str, subscription: str):
        key = (kind, subscription.lower())
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._make(kind, subscription)
                self._clients[key] = client
            return client

    def _once(self, read_timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        """Every request: one attempt (see the module's docstring), with its own timeouts,
        since the shared transport has none worth having, cut to the run's budget."""
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            raise ServiceRequestError("not sent: the run's time budget is spent")
        cut = (lambda t: t) if remaining is None else (lambda t: min(t, remaining))
        return {
            "retry_total": 0,
            "connection_timeout": cut(CONNECT_TIMEOUT),
            "read_timeout": cut(read_timeout),
        }

    def _make(self, kind: str, subscription: str):
        options: dict[str, Any] = {
            "base_url": self.endpoint,
            "credential_scopes": [token_scope(self.endpoint)],
            "per_retry_policies": [CountingPolicy(self.counts, self._lock)],
            "user_agent": USER_AGENT,
            "transport": shared_transport(),
        }
        factory: Callable[..., Any]
        if kind == "pools":
            from azure.mgmt.devopsinfrastructure import DevOpsInfrastructureMgmtClient

            factory = DevOpsInfrastructureMgmtClient
            options["api_version"] = POOLS_API_VERSION
        elif kind == "compute":
            from azure.mgmt.compute import ComputeManagementClient

            factory = ComputeManagementClient
        elif kind == "network":
            from azure.mgmt.network import NetworkManagementClient

            factory = NetworkManagementClient
        else:
            from azure.mgmt.resource.resources import ResourceManagementClient

            factory = ResourceManagementClient
        return factory(self._credential, subscription, **options)

    # ---- pools

    def resolve(self, ref: PoolRef) -> PoolNetworks:
        """One pool's networks: one GET. Never raises for a pool that cannot be read."""
        try:
            payload = self._get(ref)
        except _FAILURES as exc:
            return unreadable(ref, classify(exc), describe(exc))
        return networks_of(ref, payload)

    def _get(self, ref: PoolRef) -> dict:
        once = self._once()
        if ref.kind is PoolKind.MANAGED_DEVOPS_POOL:
            pools = self._client("pools", ref.subscription).pools
            return pools.get(ref.resource_group, ref.name, **once).as_dict()
        if ref.kind is PoolKind.SCALE_SET:
            sets = self._client("compute", ref.subscription).virtual_machine_scale_sets
            return sets.get(ref.resource_group, ref.name, **once).as_dict()
        resources = self._client("resources", ref.subscription).resources
        return resources.get_by_id(
            ref.id, api_version=NETWORK_SETTINGS_API_VERSION, **once
        ).as_dict()

    def discover_pools(self, subscription: str) -> list[PoolNetworks]:
        """Every Managed DevOps Pool of a subscription with its networks, from the paged list
        alone (the list carries whole pools: no GET per pool). `DiscoveryFailed` on a failed
        page: a partial list must not pass for the whole, or its missing pools' rules would go.
        """
        pools = self._client("pools", subscription).pools
        found = []
        try:
            for pool in pools.list_by_subscription(**self._once()):
                payload = pool.as_dict()
                found.append(networks_of(parse_pool_id(payload["id"]), payload))
        except _FAILURES as exc:
            raise DiscoveryFailed(
                f"listing the Managed DevOps Pools of {subscription} failed: {describe(exc)}",
                classify(exc),
            ) from None
        return found

    # ---- subnets

    def _subnets(self, subnet_id: str):
        match = SUBNET_ID_RE.match(subnet_id)
        if match is None:
            raise ValueError(f"not a subnet resource id: {subnet_id!r}")
        operations = self._client("network", match["sub"]).subnets
        return operations, (match["rg"], match["vnet"], match["subnet"])

    def check_subnet(self, subnet_id: str) -> SubnetEndpoint:
        """Whether a subnet has the Microsoft.KeyVault service endpoint: one GET."""
        operations, names = self._subnets(subnet_id)
        try:
            subnet = operations.get(*names, **self._once()).as_dict()
        except _FAILURES as exc:
            return SubnetEndpoint(subnet_id, EndpointStatus.UNREADABLE, detail=describe(exc))
        return endpoint_check(subnet_id, subnet)

    def add_key_vault_endpoint(self, subnet_id: str) -> EndpointFix:
        """Add the Microsoft.KeyVault endpoint: GET the subnet, PUT it back whole with the
        endpoint added and `If-Match` its etag, so a write someone made in between is never
        overwritten (412: read again and retry). Two requests when nothing interferes."""
        from azure.mgmt.network.models import Subnet

        operations, names = self._subnets(subnet_id)
        detail = ""
        for _ in range(ENDPOINT_FIX_ATTEMPTS):
            try:
                current = operations.get(*names, **self._once()).as_dict()
            except _FAILURES as exc:
                return EndpointFix(subnet_id, FixOutcome.FAILED, describe(exc))
            if endpoint_check(subnet_id, current).status is EndpointStatus.PRESENT:
                return EndpointFix(subnet_id, FixOutcome.ALREADY_PRESENT)
            try:
                # The service finishes the update on its own; waiting for it would only
                # spend the run's time, and the next run's check reads the outcome.
                operations.begin_create_or_update(
                    *names,
                    Subnet(with_key_vault_endpoint(current)),
                    headers={"If-Match": current["etag"]},
                    polling=False,
                    **self._once(WRITE_TIMEOUT),
                )
            except HttpResponseError as exc:
                detail = describe(exc)
                if exc.status_code == 412:
                    continue
                return EndpointFix(subnet_id, FixOutcome.FAILED, detail)
            except (ServiceRequestError, ServiceResponseError) as exc:
                return EndpointFix(subnet_id, FixOutcome.FAILED, describe(exc))
            return EndpointFix(subnet_id, FixOutcome.ADDED)
        return EndpointFix(subnet_id, FixOutcome.FAILED, f"the subnet kept changing: {detail}")
