"""Resource Manager's role assignments and role definitions (Microsoft.Authorization 2022-04-01).

Listing at a scope returns the assignments at, above and below it, as the service does;
`$filter=assignedTo('{id}')` also returns those of the groups the principal is in, and
`principalId eq '{id}'` only the principal's own. Pages carry `nextLink` with a `$skipToken`.
The built-in roles carry their real permissions.
"""

from __future__ import annotations

import copy
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from .errors import ArmError, bad_request

__all__ = ["BUILT_IN_ROLES", "RoleStore", "is_rbac_path", "is_tenant_path"]

_KV_READ_ACTIONS = [
    "Microsoft.Authorization/*/read",
    "Microsoft.Insights/alertRules/*",
    "Microsoft.Resources/deployments/*",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Support/*",
    "Microsoft.KeyVault/checkNameAvailability/read",
    "Microsoft.KeyVault/deletedVaults/read",
    "Microsoft.KeyVault/locations/*/read",
    "Microsoft.KeyVault/vaults/*/read",
    "Microsoft.KeyVault/operations/read",
]


def _permission(
    actions: Iterable[str] = (),
    not_actions: Iterable[str] = (),
    data_actions: Iterable[str] = (),
    not_data_actions: Iterable[str] = (),
) -> dict[str, list[str]]:
    return {
        "actions": list(actions),
        "notActions": list(not_actions),
        "dataActions": list(data_actions),
        "notDataActions": list(not_data_actions),
    }


# name -> (guid, description, permissions), as the built-in roles page lists them.
BUILT_IN_ROLES: dict[str, tuple[str, str, list[dict[str, list[str]]]]] = {
    "Owner": (
        "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
        "Grants full access to manage all resources, including the ability to assign roles in "
        "Azure RBAC.",
        [_permission(["*"])],
    ),
    "Reader": (
        "acdd72a7-3385-48ef-bd42-f606fba81ae7",
        "View all resources, but does not allow you to make any changes.",
        [_permission(["*/read"])],
    ),
    "Key Vault Contributor": (
        "f25e0fa2-a7c8-4377-a976-54943a77a395",
        "Lets you manage key vaults, but not access to them.",
        [
            _permission(
                [
                    "Microsoft.Authorization/*/read",
                    "Microsoft.Insights/alertRules/*",
                    "Microsoft.KeyVault/*",
                    "Microsoft.Resources/deployments/*",
                    "Microsoft.Resources/subscriptions/resourceGroups/read",
                    "Microsoft.Support/*",
                ],
                [
                    "Microsoft.KeyVault/locations/deletedVaults/purge/action",
                    "Microsoft.KeyVault/hsmPools/*",
                    "Microsoft.KeyVault/managedHsms/*",
                ],
            )
        ],
    ),
    "Key Vault Reader": (
        "21090545-7ca7-4776-b22c-e363652d74d2",
        "Read metadata of key vaults and its certificates, keys, and secrets. Cannot read "
        "sensitive values such as secret contents or key material.",
        [
            _permission(
                _KV_READ_ACTIONS,
                data_actions=[
                    "Microsoft.KeyVault/vaults/*/read",
                    "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
                ],
            )
        ],
    ),
    "Key Vault Secrets User": (
        "4633458b-17de-408a-b874-0445c86b69e6",
        "Read secret contents.",
        [
            _permission(
                data_actions=[
                    "Microsoft.KeyVault/vaults/secrets/getSecret/action",
                    "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
                ]
            )
        ],
    ),
    "Key Vault Secrets Officer": (
        "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
        "Perform any action on the secrets of a key vault, except manage permissions.",
        [_permission(_KV_READ_ACTIONS, data_actions=["Microsoft.KeyVault/vaults/secrets/*"])],
    ),
    "Key Vault Administrator": (
        "00482a5a-887f-4fb3-b363-3b7fe8e74483",
        "Perform all data plane operations on a key vault and all objects in it, including "
        "certificates, keys, and secrets. Cannot manage key vault resources or manage role "
        "assignments.",
        [_permission(_KV_READ_ACTIONS, data_actions=["Microsoft.KeyVault/vaults/*"])],
    ),
}

_PROVIDER = "/providers/Microsoft.Authorization/"
_ASSIGNMENTS_RE = re.compile(
    r"^(?P<scope>/.*?)?/providers/Microsoft\.Authorization/roleAssignments/?$", re.IGNORECASE
)
_DEFINITION_RE = re.compile(
    r"^(?P<scope>/.*?)?/providers/Microsoft\.Authorization/roleDefinitions/(?P<guid>[^/]+)/?$",
    re.IGNORECASE,
)
_MG_RE = re.compile(
    r"^/providers/Microsoft\.Management/managementGroups/(?P<mg>[^/]+)$", re.IGNORECASE
)
_SUB_RE = re.compile(r"^/subscriptions/(?P<sub>[^/]+)", re.IGNORECASE)
_ASSIGNED_TO_RE = re.compile(r"^assignedTo\('(?P<id>[^']+)'\)$", re.IGNORECASE)
_PRINCIPAL_EQ_RE = re.compile(r"^principalId\s+eq\s+'(?P<id>[^']+)'$", re.IGNORECASE)


def is_rbac_path(path: str) -> bool:
    """A role assignments list or a role definition GET, at any scope."""
    return bool(_ASSIGNMENTS_RE.match(path) or _DEFINITION_RE.match(path))


def is_tenant_path(path: str) -> bool:
    """An RBAC path outside any subscription (root or management group scope)."""
    return path.lower().startswith("/providers/") and is_rbac_path(path)


def _norm(scope: str) -> str:
    return "/" if scope in ("", "/") else scope.rstrip("/").lower()


class RoleStore:
    """Role definitions (built-in plus custom), assignments and group memberships."""

    def __init__(self, page_size: int = 20) -> None:
        self._lock = threading.Lock()
        self._default_page_size = page_size
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.page_size = self._default_page_size
            self._definitions: dict[str, dict[str, Any]] = {
                guid: _definition(guid, name, "BuiltInRole", description, permissions)
                for name, (guid, description, permissions) in BUILT_IN_ROLES.items()
            }
            self._assignments: list[dict[str, Any]] = []
            self._groups: dict[str, set[str]] = {}  # member -> groups it is in
            self._management_groups: dict[str, list[str]] = {}  # subscription -> ancestors

    # ------------------------------------------------------------------ setters

    def add_role(
        self, name: str, permissions: list[Mapping[str, Iterable[str]]], *, guid: str | None = None
    ) -> str:
        """A custom role; returns its guid. Missing permission lists default to empty."""
        guid = guid or str(uuid.uuid4())
        entries = [
            _permission(
                p.get("actions", ()),
                p.get("notActions", ()),
                p.get("dataActions", ()),
                p.get("notDataActions", ()),
            )
            for p in permissions
        ]
        with self._lock:
            self._definitions[guid.lower()] = _definition(guid, name, "CustomRole", "", entries)
        return guid

    def assign(
        self,
        scope: str,
        principal_id: str,
        role: str,
        *,
        principal_type: str = "ServicePrincipal",
        condition: str | None = None,
    ) -> str:
        """Assign a role (a built-in role's name or a role guid) at `scope`; returns the id."""
        guid = BUILT_IN_ROLES[role][0] if role in BUILT_IN_ROLES else role.lower()
        scope = scope.rstrip("/") or "/"
        sub = _SUB_RE.match(scope)
        definition_scope = f"/subscriptions/{sub['sub']}" if sub else ""
        name = str(uuid.uuid4())
        base = "" if scope == "/" else scope
        assignment = {
            "id": f"{base}{_PROVIDER}roleAssignments/{name}",
            "name": name,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {
                "roleDefinitionId": f"{definition_scope}{_PROVIDER}roleDefinitions/{guid}",
                "principalId": principal_id,
                "principalType": principal_type,
                "scope": scope,
                "condition": condition,
                "conditionVersion": "2.0" if condition else None,
                "createdOn": "2025-01-01T00:00:00.0000000Z",
                "updatedOn": "2025-01-01T00:00:00.0000000Z",
                "createdBy": None,
                "updatedBy": None,
                "delegatedManagedIdentityResourceId": None,
                "description": None,
            },
        }
        with self._lock:
            self._assignments.append(assignment)
        return assignment["id"]

    def add_to_group(self, member_id: str, group_id: str) -> None:
        with self._lock:
            self._groups.setdefault(member_id.lower(), set()).add(group_id.lower())

    def place_subscription(self, subscription: str, management_groups: Iterable[str]) -> None:
        """The management groups above a subscription, nearest first."""
        with self._lock:
            self._management_groups[subscription.lower()] = [g.lower() for g in management_groups]

    # ------------------------------------------------------------------ REST

    def handle(
        self, method: str, path: str, query: Mapping[str, str], base_url: str
    ) -> tuple[int, Any]:
        if method != "GET":
            raise ArmError(
                405, "MethodNotAllowed", f"The HTTP method '{method}' is not supported here."
            )
        m = _DEFINITION_RE.match(path)
        if m:
            return 200, self._definition(m["guid"], m["scope"] or "")
        m = _ASSIGNMENTS_RE.match(path)
        assert m is not None
        return 200, self._list(m["scope"] or "/", query, base_url, path)

    def _definition(self, guid: str, scope: str) -> dict[str, Any]:
        with self._lock:
            definition = self._definitions.get(guid.lower())
        if definition is None:
            raise ArmError(
                404,
                "RoleDefinitionDoesNotExist",
                f"The specified role definition with ID '{guid}' does not exist.",
            )
        doc = copy.deepcopy(definition)
        sub = _SUB_RE.match(scope)
        if sub:
            doc["id"] = f"/subscriptions/{sub['sub']}{doc['id']}"
        return doc

    def _list(
        self, scope: str, query: Mapping[str, str], base_url: str, path: str
    ) -> dict[str, Any]:
        text = (query.get("$filter") or "").strip()
        principals: set[str] | None = None
        if text:
            assigned = _ASSIGNED_TO_RE.match(text)
            own = _PRINCIPAL_EQ_RE.match(text)
            if assigned:
                who = assigned["id"].lower()
                with self._lock:
                    principals = {who} | self._groups.get(who, set())
            elif own:
                principals = {own["id"].lower()}
            else:
                raise bad_request(f"The filter '{text}' is not supported.", code="InvalidFilter")
        with self._lock:
            related = [
                copy.deepcopy(a)
                for a in self._assignments
                if self._related(a["properties"]["scope"], scope)
                and (principals is None or a["properties"]["principalId"].lower() in principals)
            ]
            size = self.page_size
        start = 0
        token = query.get("$skipToken")
        if token:
            try:
                start = int(token)
            except ValueError:
                raise bad_request(f"The skip token '{token}' is invalid.") from None
        doc: dict[str, Any] = {"value": related[start : start + size]}
        if start + size < len(related):
            params = [f"api-version={quote(query.get('api-version', ''))}"]
            if text:
                params.append(f"$filter={quote(text)}")
            params.append(f"$skipToken={start + size}")
            doc["nextLink"] = f"{base_url}{quote(path)}?{'&'.join(params)}"
        return doc

    def _related(self, assigned: str, listed: str) -> bool:
        """Whether an assignment at `assigned` is at, above or below the scope `listed`."""
        a, s = _norm(assigned), _norm(listed)
        if a == "/" or s == "/" or a == s:
            return True
        if s.startswith(a + "/") or a.startswith(s + "/"):
            return True
        mg = _MG_RE.match(a)
        sub = _SUB_RE.match(s)
        if mg and sub:
            return mg["mg"].lower() in self._management_groups.get(sub["sub"].lower(), [])
        return False


def _definition(
    guid: str, name: str, kind: str, description: str, permissions: list[dict[str, list[str]]]
) -> dict[str, Any]:
    return {
        "id": f"{_PROVIDER}roleDefinitions/{guid}",
        "name": guid,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": name,
            "type": kind,
            "description": description,
            "assignableScopes": ["/"],
            "permissions": copy.deepcopy(permissions),
            "createdOn": "2020-05-19T17:52:46.2216425Z",
            "updatedOn": "2024-01-01T00:00:00.0000000Z",
            "createdBy": None,
            "updatedBy": None,
        },
    }
