"""Management groups: the subscriptions below a group, read when a run starts.

The group's descendants (ManagementGroups_GetDescendants, every group and subscription below
it at any depth, paged) come from the management group service itself, which knows a
subscription the moment it is moved in. Resource Graph's `resourcecontainers` table would
answer the same in the query that lists the vaults, but lags like every graph table: a
subscription moved into the group would wait for the graph before it is managed, and the
answer would spend the graph's small quota. Reading it needs
`Microsoft.Management/managementGroups/descendants/read` on the group (the group reader role of
infra/managementgroup.json; the built-in Management Group Reader does not list it), and costs
one tenant-level read per page (not any subscription's quota).
"""

from __future__ import annotations

from kvfirewall.rules import SUBSCRIPTION_RE
from kvfirewall.vaults import Arm

__all__ = ["ManagementGroups"]

SUBSCRIPTION_TYPE = "microsoft.management/managementgroups/subscriptions"


class ManagementGroups:
    """Reads of the management group hierarchy, through an `Arm`'s credential and budget."""

    def __init__(self, arm: Arm) -> None:
        from azure.mgmt.managementgroups import ManagementGroupsMgmtClient

        self._arm = arm
        self._client = arm.tenant_client(ManagementGroupsMgmtClient)

    def subscriptions(self, group: str) -> list[str]:
        """The subscription ids (lower-cased) below `group`, at any depth, page by page; each
        page is one read, retried on its own like every read."""
        found: list[str] = []
        token: str | None = None
        while True:

            def page(token=token, **options) -> tuple[list, str | None]:
                pages = self._client.management_groups.get_descendants(group, **options).by_page(
                    continuation_token=token
                )
                return list(next(pages)), pages.continuation_token

            items, token = self._arm.tenant_read(page)
            for item in items:
                name, kind = str(item.name or "").lower(), str(item.type or "").lower()
                if kind == SUBSCRIPTION_TYPE and SUBSCRIPTION_RE.match(name):
                    found.append(name)
            if not token:
                return found
