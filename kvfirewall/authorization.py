"""May a principal read the secrets of a vault? The rule a lease is granted by, kept pure.

A lease opens a vault's firewall to an address, so kvfirewall grants one only to a principal
that could already read the vault's secrets from inside the firewall; a lease adds reach, never
rights. Three ways qualify:

- the vault uses Azure RBAC (`enableRbacAuthorization`), and a role assignment at the vault, at
  a scope above it or on one of its secrets carries a role whose permissions allow
  `Microsoft.KeyVault/vaults/secrets/getSecret/action`, evaluated as Azure does: each permission
  entry grants its `dataActions` less its own `notDataActions`, matched case-insensitively with
  `*` standing for any run of characters anywhere in the string; a role grants what any of its
  entries grants;
- the vault uses access policies, and one for the object id, in the vault's tenant and not
  bound to an application (a compound identity), grants secrets `get` or `all`;
- the object id is allow-listed by the operator.

Where Azure would decide at request time on more than the role (an assignment with an ABAC
`condition`), no grant is assumed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any

__all__ = [
    "GET_SECRET",
    "AccessPolicy",
    "Basis",
    "Decision",
    "Permission",
    "RoleAssignment",
    "RoleDefinition",
    "VaultAccess",
    "action_matches",
    "decide",
    "permission_allows",
    "role_allows",
    "role_definition_key",
    "scope_covers",
]

GET_SECRET = "Microsoft.KeyVault/vaults/secrets/getSecret/action"
SECRET_READ_PERMISSIONS = frozenset({"get", "all"})
_MANAGEMENT_GROUP = "/providers/microsoft.management/managementgroups/"


class Basis(Enum):
    """Why a principal may lease a vault (or NONE)."""

    ALLOW_LIST = "allow-listed principal"
    ROLE_ASSIGNMENT = "role assignment"
    ACCESS_POLICY = "access policy"
    NONE = "none"


@dataclass(frozen=True)
class Permission:
    """One permission entry of a role definition (only its data-plane half matters here)."""

    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoleDefinition:
    id: str
    name: str
    permissions: tuple[Permission, ...]


@dataclass(frozen=True)
class RoleAssignment:
    """An assignment that Resource Manager listed for the principal (its groups' included)."""

    scope: str
    role_definition_id: str
    condition: str | None = None


@dataclass(frozen=True)
class AccessPolicy:
    tenant_id: str
    object_id: str
    application_id: str | None
    secrets: tuple[str, ...]


@dataclass(frozen=True)
class VaultAccess:
    """What a vault says about who may use its data plane."""

    id: str
    tenant_id: str
    rbac: bool
    access_policies: tuple[AccessPolicy, ...] = ()

    @staticmethod
    def from_vault(vault: Mapping[str, Any]) -> VaultAccess:
        """From a vault as Resource Manager returns it (the SDK's `as_dict()` has the same
        camelCase shape). Without `enableRbacAuthorization` a vault uses access policies."""
        properties = vault.get("properties") or {}
        policies = []
        for entry in properties.get("accessPolicies") or ():
            secrets = (entry.get("permissions") or {}).get("secrets") or ()
            policies.append(
                AccessPolicy(
                    tenant_id=str(entry.get("tenantId") or ""),
                    object_id=str(entry.get("objectId") or ""),
                    application_id=entry.get("applicationId") or None,
                    secrets=tuple(str(s) for s in secrets),
                )
            )
        return VaultAccess(
            id=vault["id"],
            tenant_id=str(properties.get("tenantId") or ""),
            rbac=properties.get("enableRbacAuthorization") is True,
            access_policies=tuple(policies),
        )


@dataclass(frozen=True)
class Decision:
    """The answer, with a reason fit for the caller (it names the vault, never a token)."""

    allowed: bool
    basis: Basis
    reason: str


@lru_cache(maxsize=1024)
def _pattern(action_pattern: str) -> re.Pattern[str]:
    parts = (re.escape(part) for part in action_pattern.split("*"))
    return re.compile(".*".join(parts), re.IGNORECASE | re.DOTALL)


def action_matches(pattern: str, action: str) -> bool:
    """Whether a permission string (`*` anywhere, case-insensitive) covers `action`."""
    return _pattern(pattern).fullmatch(action) is not None


def permission_allows(permission: Permission, action: str) -> bool:
    """An entry grants its data actions less its own not-data actions."""
    return any(action_matches(p, action) for p in permission.data_actions) and not any(
        action_matches(p, action) for p in permission.not_data_actions
    )


def role_allows(role: RoleDefinition, action: str) -> bool:
    return any(permission_allows(p, action) for p in role.permissions)


def role_definition_key(role_definition_id: str) -> str:
    """One role appears under several ids (`/subscriptions/x/providers/...` and
    `/providers/...`); its guid, lower-cased, is the same in all."""
    return role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()


def scope_covers(scope: str, vault_id: str) -> bool:
    """Whether an assignment at `scope` applies to reading the vault's secrets: the vault, a
    scope above it, or one of its secrets. Management group scopes count because the
    assignments come from a listing at the vault's subscription, which returns only the
    management groups above it."""
    s = scope.rstrip("/").lower()
    vault = vault_id.rstrip("/").lower()
    if s in ("", "/") or s.startswith(_MANAGEMENT_GROUP):
        return True
    return vault == s or vault.startswith(s + "/") or s.startswith(vault + "/secrets/")


def _same_id(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def decide(
    object_id: str,
    tenant_id: str,
    vault: VaultAccess,
    *,
    assignments: Iterable[RoleAssignment] = (),
    roles: Mapping[str, RoleDefinition] | None = None,
    allowed_principals: Collection[str] = (),
) -> Decision:
    """Whether `object_id` (of `tenant_id`) may read `vault`'s secrets. `roles` maps
    `role_definition_key`s to definitions; a role missing from it grants nothing."""
    if any(_same_id(object_id, p) for p in allowed_principals):
        return Decision(True, Basis.ALLOW_LIST, "the principal is allow-listed")
    if not _same_id(vault.tenant_id, tenant_id):
        return Decision(False, Basis.NONE, f"vault {vault.id} belongs to another tenant")
    if vault.rbac:
        roles = roles or {}
        for assignment in assignments:
            if assignment.condition or not scope_covers(assignment.scope, vault.id):
                continue
            role = roles.get(role_definition_key(assignment.role_definition_id))
            if role is not None and role_allows(role, GET_SECRET):
                return Decision(
                    True,
                    Basis.ROLE_ASSIGNMENT,
                    f"role '{role.name}' at {assignment.scope}",
                )
        return Decision(
            False,
            Basis.NONE,
            f"principal {object_id} holds no role that may read the secrets of vault {vault.id}",
        )
    for policy in vault.access_policies:
        if (
            _same_id(policy.object_id, object_id)
            and _same_id(policy.tenant_id, vault.tenant_id)
            and not policy.application_id
            and any(s.lower() in SECRET_READ_PERMISSIONS for s in policy.secrets)
        ):
            return Decision(True, Basis.ACCESS_POLICY, "an access policy grants secrets get")
    return Decision(
        False,
        Basis.NONE,
        f"no access policy of vault {vault.id} lets principal {object_id} get secrets",
    )
