"""The Resource Manager reads behind `authorization.decide`: role assignments and definitions.

One `RoleReader` serves one run (one lease request): it lists a principal's assignments once
per subscription, with `$filter=assignedTo('{oid}')` at the subscription, which returns those at,
above (management groups, root) and below it (resource groups, vaults, secrets), the
principal's groups' included, following `nextLink`; and reads each role definition once. Like
`vaults.Arm`, azure-core's retry is off: a failed read is reported as transient or not, and the
caller answers (503 or 500) instead of waiting inside a request.
"""

from __future__ import annotations

import threading
from collections.abc import Collection

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from kvfirewall.authorization import (
    Decision,
    Permission,
    RoleAssignment,
    RoleDefinition,
    VaultAccess,
    decide,
    role_definition_key,
)
from kvfirewall.clouds import default_credential
from kvfirewall.errors import is_transient
from kvfirewall.rules import parse_vault_id
from kvfirewall.transport import shared_transport
from kvfirewall.vaults import CONNECT_TIMEOUT, READ_TIMEOUT, USER_AGENT, token_scope

__all__ = ["RoleReadFailed", "RoleReader"]

# One attempt per read (the caller decides about retries), with the request timeouts set per
# call: the process's shared transport is not the client's own to configure.
_ONE_TRY = {"retry_total": 0, "connection_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT}


class RoleReadFailed(Exception):
    """A role read failed; the message is safe to report. `transient`: worth a retry later."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class RoleReader:
    """Role assignments and definitions through azure-mgmt-authorization, cached per run."""

    def __init__(self, *, endpoint: str, credential=None) -> None:
        self.endpoint = endpoint.rstrip("/")
        if credential is None:
            credential = default_credential(self.endpoint)
        self._credential = credential
        self._lock = threading.Lock()
        self._clients: dict[str, object] = {}
        self._assignments: dict[tuple[str, str], tuple[RoleAssignment, ...]] = {}
        self._roles: dict[str, RoleDefinition | None] = {}

    def _client(self, subscription: str):
        with self._lock:
            client = self._clients.get(subscription)
            if client is None:
                from azure.mgmt.authorization import AuthorizationManagementClient

                client = AuthorizationManagementClient(
                    self._credential,
                    subscription,
                    base_url=self.endpoint,
                    credential_scopes=[token_scope(self.endpoint)],
                    user_agent=USER_AGENT,
                    transport=shared_transport(),
                )
                self._clients[subscription] = client
            return client

    def assignments(self, principal_id: str, subscription: str) -> tuple[RoleAssignment, ...]:
        """The principal's assignments that bear on `subscription` (read once per run)."""
        key = (principal_id.lower(), subscription.lower())
        if key not in self._assignments:
            listed = _guard(
                lambda: list(
                    self._client(subscription).role_assignments.list_for_scope(
                        f"/subscriptions/{subscription}",
                        filter=f"assignedTo('{principal_id}')",
                        **_ONE_TRY,
                    )
                )
            )
            self._assignments[key] = tuple(
                RoleAssignment(a.scope or "", a.role_definition_id or "", a.condition or None)
                for a in listed
            )
        return self._assignments[key]

    def role(self, role_definition_id: str, subscription: str) -> RoleDefinition | None:
        """A role definition (read once per run); None if it no longer exists."""
        key = role_definition_key(role_definition_id)
        if key not in self._roles:
            client = self._client(subscription)
            try:
                found = _guard(
                    lambda: client.role_definitions.get_by_id(role_definition_id, **_ONE_TRY)
                )
            except RoleReadFailed as exc:
                if exc.status != 404:
                    raise
                found = None
            self._roles[key] = None if found is None else _definition(found)
        return self._roles[key]

    def decide(
        self,
        object_id: str,
        tenant_id: str,
        vault: VaultAccess,
        allowed_principals: Collection[str] = (),
    ) -> Decision:
        """`authorization.decide`, reading only what it needs: nothing for an allow-listed
        principal or an access-policy vault."""
        needs_roles = vault.rbac and not any(
            p.lower() == object_id.lower() for p in allowed_principals
        )
        assignments: tuple[RoleAssignment, ...] = ()
        roles: dict[str, RoleDefinition] = {}
        if needs_roles:
            subscription = parse_vault_id(vault.id).subscription
            assignments = self.assignments(object_id, subscription)
            for assignment in assignments:
                role = self.role(assignment.role_definition_id, subscription)
                if role is not None:
                    roles[role_definition_key(assignment.role_definition_id)] = role
        return decide(
            object_id,
            tenant_id,
            vault,
            assignments=assignments,
            roles=roles,
            allowed_principals=allowed_principals,
        )


def _definition(model) -> RoleDefinition:
    return RoleDefinition(
        id=model.id or "",
        name=model.role_name or "",
        permissions=tuple(
            Permission(tuple(p.data_actions or ()), tuple(p.not_data_actions or ()))
            for p in model.permissions or ()
        ),
    )


def _guard(call):
    """Run one read, classifying its failure at this edge (as every Azure call is)."""
    try:
        return call()
    except HttpResponseError as exc:
        status = exc.status_code or 0
        code = getattr(getattr(exc, "error", None), "code", None) or exc.reason or "Error"
        raise RoleReadFailed(
            f"reading role assignments failed: HTTP {status} {code}",
            transient=is_transient(exc),
            status=status,
        ) from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise RoleReadFailed(
            f"reading role assignments failed: {type(exc).__name__}", transient=True
        ) from None
