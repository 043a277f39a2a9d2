"""Azure Resource Graph and management groups, as far as kvfirewall uses them.

Resource Graph (Resources_Resources, `POST /providers/Microsoft.ResourceGraph/resources`; the
shapes of Azure/azure-rest-api-specs `specification/resourcegraph/resource-manager/
Microsoft.ResourceGraph/stable/2021-03-01/resourcegraph.json` and its examples): a request
names `subscriptions` or `managementGroups`, a `query` and `options` (`$top`, `$skipToken`,
`resultFormat`); the answer carries `totalRecords`, `count`, `resultTruncated`, `data` (an
array of objects with `resultFormat=objectArray`), `facets` and, while rows follow,
`$skipToken`. Only the one query shape kvfirewall sends is understood (vaults, projected,
ordered by `id`); any other query is refused with 400 `InvalidQuery`, as the service refuses
a query it cannot parse. Each caller has the service's quota (15 queries per 5-second
window), told in `x-ms-user-quota-remaining` and `x-ms-user-quota-resets-after` (hh:mm:ss) on
every answer, and answered with 429 `RateLimiting` once spent.

The graph is a copy that lags Resource Manager: every vault change is recorded and shows up
in query results `lag` seconds (of the emulator's clock) later, or at `catch_up()`; lag 0 is a
graph that is always current. The service's real lag (seconds to minutes, no upper bound) and
its permission trimming (rows the caller may not read are left out) are not modelled.

Management groups (ManagementGroups_GetDescendants, `GET /providers/Microsoft.Management/
managementGroups/{groupId}/descendants`, example `GetDescendants.json` of API 2023-04-01): every
management group and subscription below a group, paged with `nextLink` (`$skiptoken`). A group
can be made to answer 403 (no right to read it) or 404.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from .errors import ArmError, bad_request

__all__ = ["GRAPH_QUOTA", "ManagementGroups", "ResourceGraph", "is_tenant_path"]

GRAPH_PATH = "/providers/microsoft.resourcegraph/resources"
GRAPH_API_VERSIONS = frozenset({"2019-04-01", "2021-03-01", "2022-10-01", "2024-04-01"})
MAX_ROWS = 1000  # the service's largest page
GRAPH_QUOTA = (15, 5.0)  # queries per window of seconds, per caller
GROUP_TYPE = "Microsoft.Management/managementGroups"
GROUP_SUBSCRIPTION_TYPE = "Microsoft.Management/managementGroups/subscriptions"
_DESCENDANTS_RE = re.compile(
    r"^/providers/Microsoft\.Management/managementGroups/(?P<group>[^/]+)/descendants/?$",
    re.IGNORECASE,
)
# What a projection may name: a column, or a property path of the vault document.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("id",),
    "name": ("name",),
    "type": ("type",),
    "location": ("location",),
    "tags": ("tags",),
    "systemData": ("systemData",),
    "properties.networkAcls": ("properties", "networkAcls"),
    "properties.publicNetworkAccess": ("properties", "publicNetworkAccess"),
}
_PROJECTED_RE = re.compile(r"^(?:(?P<alias>[A-Za-z_]\w*)\s*=\s*)?(?P<expr>[A-Za-z_][\w.]*)$")


def is_tenant_path(path: str) -> bool:
    """A Resource Graph query or a management group read."""
    return path.rstrip("/").lower() == GRAPH_PATH or bool(_DESCENDANTS_RE.match(path))


def _invalid_query(detail: str) -> ArmError:
    return ArmError(
        400,
        "BadRequest",
        "Please provide below info when asking for support: Query is invalid. Please refer to "
        f"the documentation for the Azure Resource Graph service and fix the error before "
        f"retrying. {detail}",
    )


def parse_query(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """The projected columns (name, document path) of the one query shape understood:

    resources | where type =~ 'microsoft.keyvault/vaults' | project <columns> | order by id asc
    """
    stages = [" ".join(stage.split()) for stage in text.split("|")]
    if (
        len(stages) != 4
        or stages[0].lower() != "resources"
        or stages[1].lower().replace('"', "'") != "where type =~ 'microsoft.keyvault/vaults'"
        or not stages[2].lower().startswith("project ")
        or stages[3].lower() not in ("order by id asc", "sort by id asc")
    ):
        raise _invalid_query("Only the Key Vault listing query is modelled by this emulator.")
    columns = []
    for item in stages[2][len("project ") :].split(","):
        match = _PROJECTED_RE.match(item.strip())
        if not match or match["expr"] not in _COLUMNS:
            raise _invalid_query(f"Unknown column or expression '{item.strip()}'.")
        expr = match["expr"]
        columns.append((match["alias"] or expr.replace(".", "_"), _COLUMNS[expr]))
    if not any(path == ("id",) for _, path in columns):
        raise _invalid_query("The query must project the id column to be paged.")
    return columns


def _field(document: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = document
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _untoken(token: str, what: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad_request(f"The {what} '{token}' is invalid.", code="InvalidSkipToken") from None


def _duration(seconds: float) -> str:
    """hh:mm:ss, rounded up, as x-ms-user-quota-resets-after gives it."""
    whole = max(0, math.ceil(seconds))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class ManagementGroups:
    """A management group hierarchy: groups with parents, subscriptions in groups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, tuple[str, str | None]] = {}  # lower id -> (id, parent)
        self._subscriptions: dict[str, str] = {}  # subscription -> parent group (lower)
        self._refused: dict[str, int] = {}  # group (lower) -> 403 or 404
        self.page_size = 50

    def reset(self) -> None:
        """No groups, no subscriptions in them."""
        with self._lock:
            self._groups, self._subscriptions, self._refused = {}, {}, {}
            self.page_size = 50

    def add_group(self, group: str, *, parent: str | None = None) -> None:
        """A management group, under `parent` (None: under the tenant root)."""
        with self._lock:
            self._groups[group.lower()] = (group, parent.lower() if parent else None)

    def add_subscription(self, subscription: str, group: str) -> None:
        """Place (or move) a subscription under a group."""
        with self._lock:
            self._subscriptions[subscription.lower()] = group.lower()

    def refuse(self, group: str, status: int) -> None:
        """Answer reads of this group with 403 (no right to read it) or 404."""
        if status not in (403, 404):
            raise ValueError("a group is refused with 403 or 404")
        with self._lock:
            self._refused[group.lower()] = status

    def subscriptions_under(self, group: str) -> set[str]:
        """Every subscription below a group, at any depth."""
        with self._lock:
            return {s for _, s, kind in self._below(group.lower()) if kind == "subscription"}

    def _below(self, group: str) -> Iterator[tuple[str, str, str]]:
        """(parent, name, kind) of every descendant, groups before what they hold."""
        pending = [group]
        while pending:
            parent = pending.pop(0)
            for key, (name, above) in sorted(self._groups.items()):
                if above == parent:
                    yield parent, name, "group"
                    pending.append(key)
            for subscription, above in sorted(self._subscriptions.items()):
                if above == parent:
                    yield parent, subscription, "subscription"

    def descendants(self, group: str, query: Mapping[str, str], base_url: str) -> dict[str, Any]:
        """ManagementGroups_GetDescendants: one page."""
        key = group.lower()
        scope = f"/providers/Microsoft.Management/managementGroups/{group}"
        with self._lock:
            refused = self._refused.get(key)
            known = key in self._groups
            rows = list(self._below(key)) if known else []
            names = {k: name for k, (name, _) in self._groups.items()}
        if refused == 403:
            raise ArmError(
                403,
                "AuthorizationFailed",
                "The client does not have authorization to perform action "
                "'Microsoft.Management/managementGroups/descendants/read' over scope "
                f"'{scope}' or the scope is invalid. If access was recently granted, please "
                "refresh your credentials.",
            )
        if refused == 404 or not known:
            raise ArmError(404, "NotFound", f"'{scope}' not found")
        top = query.get("$top")
        size = int(top) if top and top.isdigit() and int(top) > 0 else self.page_size
        token = query.get("$skiptoken")
        start = int(_untoken(token, "skip token")) if token else 0
        page = rows[start : start + size]

        def entry(parent: str, name: str, kind: str) -> dict[str, Any]:
            group_kind = kind == "group"
            return {
                "name": name,
                "type": GROUP_TYPE if group_kind else GROUP_SUBSCRIPTION_TYPE,
                "id": f"/providers/{GROUP_TYPE}/{name}" if group_kind else f"/subscriptions/{name}",
                "properties": {
                    "displayName": name,
                    "parent": {"id": f"/providers/{GROUP_TYPE}/{names.get(parent, parent)}"},
                },
            }

        doc: dict[str, Any] = {"value": [entry(*row) for row in page], "nextLink": None}
        if start + size < len(rows):
            doc["nextLink"] = (
                f"{base_url}{quote(scope)}/descendants?api-version="
                f"{quote(query.get('api-version', ''))}&$skiptoken={_token(str(start + size))}"
            )
        return doc


class ResourceGraph:
    """The graph's copy of the vaults, its query, its quota and its lag."""

    def __init__(self, clock: Callable[[], float], groups: ManagementGroups) -> None:
        self._clock = clock
        self._groups = groups
        self._lock = threading.Lock()
        self._view: dict[str, dict[str, Any]] = {}  # lower vault id -> vault document
        self._changes: list[tuple[float, str, dict[str, Any] | None]] = []
        self._windows: dict[str, tuple[float, int]] = {}  # caller -> (window start, used)
        self.lag = 0.0  # seconds before a change shows; math.inf: only at catch_up()
        self.page_size = MAX_ROWS  # the most rows a page holds, whatever `$top` asks
        self.quota = GRAPH_QUOTA
        self.queries = 0  # queries answered, throttled ones included

    def changed(self, vault_id: str, vault: dict[str, Any] | None) -> None:
        """Resource Manager's notice of a vault written (or deleted: None)."""
        with self._lock:
            self._changes.append((self._clock(), vault_id.lower(), vault))

    def catch_up(self) -> None:
        """Take in every change recorded so far, whatever the lag."""
        with self._lock:
            self._apply(math.inf)

    def _apply(self, until: float) -> None:
        kept = []
        for stamp, key, vault in self._changes:
            if stamp > until:
                kept.append((stamp, key, vault))
            elif vault is None:
                self._view.pop(key, None)
            else:
                self._view[key] = vault
        self._changes = kept

    def _take_quota(self, caller: str) -> dict[str, str]:
        """One query of the caller's window, and the headers telling what is left."""
        size, window = self.quota
        with self._lock:
            now = self._clock()
            start, used = self._windows.get(caller, (now, 0))
            if now - start >= window:
                start, used = now, 0
            resets = _duration(start + window - now)
            if used >= size:
                raise ArmError(
                    429,
                    "RateLimiting",
                    "Please provide below info when asking for support: Client application "
                    "has been throttled and should not attempt to repeat the request until "
                    "an amount of time has elapsed. Please see "
                    "https://aka.ms/resourcegraph-throttling for help.",
                    headers={
                        "x-ms-user-quota-remaining": "0",
                        "x-ms-user-quota-resets-after": resets,
                    },
                )
            self._windows[caller] = (start, used + 1)
            return {
                "x-ms-user-quota-remaining": str(size - used - 1),
                "x-ms-user-quota-resets-after": resets,
            }

    def query(
        self, query: Mapping[str, str], body: Any, caller: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Resources_Resources: one page of the vaults query, and the quota headers."""
        with self._lock:
            self.queries += 1
        if query.get("api-version") not in GRAPH_API_VERSIONS:
            raise bad_request(
                f"The api-version '{query.get('api-version')}' is invalid.",
                code="InvalidApiVersionParameter",
            )
        headers = self._take_quota(caller)
        if not isinstance(body, Mapping) or not isinstance(body.get("query"), str):
            raise bad_request("The request content was invalid: a query is required.")
        columns = parse_query(body["query"])
        options = body.get("options") or {}
        if options.get("resultFormat", "objectArray") != "objectArray":
            raise bad_request("Only resultFormat objectArray is modelled by this emulator.")
        top = options.get("$top", MAX_ROWS)
        if not isinstance(top, int) or not 1 <= top <= MAX_ROWS:
            raise bad_request(f"$top must be between 1 and {MAX_ROWS}.", code="InvalidTop")
        subscriptions = {s.lower() for s in body.get("subscriptions") or ()}
        for group in body.get("managementGroups") or ():
            subscriptions |= self._groups.subscriptions_under(group)
        if not subscriptions:
            raise bad_request("The request names no subscription or management group.")
        token = options.get("$skipToken")
        after = _untoken(token, "skip token") if token else ""
        with self._lock:
            self._apply(self._clock() - self.lag)
            matching = sorted(
                (key, vault)
                for key, vault in self._view.items()
                if key.split("/")[2] in subscriptions
            )
        rows = [(key, vault) for key, vault in matching if key > after]
        page = rows[: min(top, self.page_size)]
        doc: dict[str, Any] = {
            "totalRecords": len(matching),
            "count": len(page),
            "resultTruncated": "false",
            "facets": [],
            "data": [{name: _field(vault, path) for name, path in columns} for _, vault in page],
        }
        if len(rows) > len(page):
            doc["$skipToken"] = _token(page[-1][0])
        return doc, headers

    def reset(self) -> None:
        """Forget the copy, the changes, the windows and the settings."""
        with self._lock:
            self._view, self._changes, self._windows = {}, [], {}
            self.lag, self.page_size, self.quota, self.queries = 0.0, MAX_ROWS, GRAPH_QUOTA, 0


def route(
    graph: ResourceGraph,
    groups: ManagementGroups,
    method: str,
    path: str,
    query: Mapping[str, str],
    body: Any,
    caller: str,
    base_url: str,
) -> tuple[int, Any, dict[str, str]]:
    """Answer a tenant-level path of `is_tenant_path`: status, document, extra headers."""
    if path.rstrip("/").lower() == GRAPH_PATH:
        if method != "POST":
            raise ArmError(405, "MethodNotAllowed", f"The HTTP method '{method}' is not supported.")
        doc, headers = graph.query(query, body, caller)
        return 200, doc, headers
    match = _DESCENDANTS_RE.match(path)
    if match is None or method != "GET":
        raise ArmError(405, "MethodNotAllowed", f"The HTTP method '{method}' is not supported.")
    return 200, groups.descendants(match["group"], query, base_url), {}
