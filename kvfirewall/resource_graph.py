"""Listing vaults through Azure Resource Graph: one paged query for every subscription in scope.

Resource Graph answers from its own copy of Resource Manager, which lags writes by seconds to
minutes, with no upper bound. Its rows therefore only decide which vaults need work: a row
that plans compliant costs nothing more (no GET, no write), and one that plans a write goes to
the writer, which takes the vault's lease and plans again on a fresh GET (writer.py). A vault
that drifted after the graph's copy was taken is left to its Event Grid event or to the next
run; a row made stale by a fix meanwhile writes nothing, because the fresh read is compliant.

The graph has a quota of its own, per identity: 15 queries per 5-second window, told in
`x-ms-user-quota-remaining` and `x-ms-user-quota-resets-after` (hh:mm:ss) on every answer.
`GraphQuota`, a pipeline policy, takes those in, and no page is asked for while the last
answer said the window is spent: a listing of any size then gets no 429 of its own making. A
429 anyway (another instance of the same identity spent the window) is waited out, up to
`ATTEMPTS` times a page; then, as on any other failure, `GraphFailed` tells the caller to list
per subscription instead.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline.policies import SansIOHTTPPolicy

from kvfirewall.errors import one_line
from kvfirewall.plan import VaultState
from kvfirewall.vaults import CONNECT_TIMEOUT, READ_TIMEOUT, Arm, OutOfTime

__all__ = ["VAULTS_QUERY", "GraphFailed", "GraphQuota", "ResourceGraph"]

# Ordered by id: without an order, pages may repeat or skip rows. Every column the planner
# and the scope check need, and nothing more (rows are up to 1,000 a page).
VAULTS_QUERY = (
    "resources"
    " | where type =~ 'microsoft.keyvault/vaults'"
    " | project id, location, tags, networkAcls = properties.networkAcls,"
    " publicNetworkAccess = properties.publicNetworkAccess, systemData"
    " | order by id asc"
)
PAGE_ROWS = 1000  # the most a page holds
MAX_SUBSCRIPTIONS = 1000  # named in one query; more are queried in further batches
ATTEMPTS = 3  # of one page, throttled answers included
QUOTA_WINDOW = 5.0  # seconds: waited after a 429 that did not say when the window resets
_DURATION_RE = re.compile(r"^(\d+):(\d{2}):(\d{2})(?:\.\d+)?$")


class GraphFailed(Exception):
    """Resource Graph could not list the vaults; the message is one line, safe to report."""


def _duration(value: str) -> float | None:
    """hh:mm:ss as seconds; None if it is not that."""
    match = _DURATION_RE.match(value.strip())
    if match is None:
        return None
    hours, minutes, seconds = (int(part) for part in match.groups())
    return hours * 3600.0 + minutes * 60.0 + seconds


class GraphQuota(SansIOHTTPPolicy):
    """What Resource Graph's answers said of the identity's quota: the queries left in the
    window, and when it resets."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._spent_until = 0.0  # no query before this (the window is spent)

    def on_response(self, request, response) -> None:
        headers = response.http_response.headers
        remaining = headers.get("x-ms-user-quota-remaining", "")
        resets = _duration(headers.get("x-ms-user-quota-resets-after", ""))
        throttled = response.http_response.status_code == 429
        if not (throttled or (remaining.isdigit() and int(remaining) == 0)):
            return
        with self._lock:
            wait = QUOTA_WINDOW if resets is None else resets
            self._spent_until = max(self._spent_until, self._clock() + wait)

    def wait_seconds(self) -> float:
        """How long to wait before the next query: 0 while the window has queries left."""
        with self._lock:
            return max(0.0, self._spent_until - self._clock())


class ResourceGraph:
    """The vaults of a set of subscriptions, as Resource Graph lists them."""

    def __init__(self, arm: Arm) -> None:
        from azure.mgmt.resourcegraph import ResourceGraphClient

        self._arm = arm
        self.quota = GraphQuota(arm.now)
        self._client = arm.tenant_client(ResourceGraphClient, self.quota)

    def vaults(
        self,
        subscriptions: Sequence[str],
        *,
        reserve_seconds: float = 0.0,
        thread_init: Callable[[], None] | None = None,
    ) -> Iterator[VaultState]:
        """Every vault of these subscriptions, ordered by id (subscriptions in sorted order,
        `MAX_SUBSCRIPTIONS` a query), page by page. No page is asked for with less than
        `reserve_seconds` of the budget left (`OutOfTime`, once the rows already had are
        yielded); a page that cannot be had raises `GraphFailed`.

        The next page is fetched, on a thread of its own, while the caller works through the
        current one: a query's round trip is then hidden behind the reconcile of the rows
        before it, and memory holds at most two pages. A caller that stops early leaves at
        most one page read beyond the one it was given, which is awaited before returning,
        so that no request outlives the listing."""
        ordered = sorted(subscriptions)
        batches = iter(
            [ordered[i : i + MAX_SUBSCRIPTIONS] for i in range(0, len(ordered), MAX_SUBSCRIPTIONS)]
        )
        ahead = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kvf-graph", initializer=thread_init
        )
        try:
            batch: list[str] | None = next(batches, None)
            if batch is None:
                return
            self._check_budget(reserve_seconds)
            pending: Future | None = ahead.submit(self._page, batch, None)
            while pending is not None:
                data, token = pending.result()
                pending = None
                if not token:
                    batch, token = next(batches, None), None
                stopped: OutOfTime | None = None
                if batch is not None:
                    try:
                        self._check_budget(reserve_seconds)
                        pending = ahead.submit(self._page, batch, token)
                    except OutOfTime as exc:
                        stopped = exc  # raised once this page's rows are yielded
                for row in data:
                    yield _state(row)
                if stopped is not None:
                    raise stopped
        finally:
            ahead.shutdown(wait=True, cancel_futures=True)

    def _check_budget(self, reserve_seconds: float) -> None:
        """`OutOfTime` once less than `reserve_seconds` of the budget is left."""
        remaining = self._arm.remaining()
        if remaining is not None and remaining < reserve_seconds:
            raise OutOfTime("listing through Resource Graph stopped: the budget is spent")

    def _page(self, subscriptions: list[str], token: str | None) -> tuple[list, str | None]:
        from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

        request = QueryRequest(
            subscriptions=subscriptions,
            query=VAULTS_QUERY,
            options=QueryRequestOptions(
                skip_token=token, top=PAGE_ROWS, result_format="objectArray"
            ),
        )
        attempt = 0
        while True:
            attempt += 1
            wait = self.quota.wait_seconds()
            if wait and not self._arm.pause(wait):
                raise GraphFailed("its quota resets only after the time budget")
            remaining = self._arm.remaining()
            cut = float("inf") if remaining is None else max(0.0, remaining)
            try:
                response = self._client.resources(
                    request,
                    retry_total=0,
                    connection_timeout=min(CONNECT_TIMEOUT, cut),
                    read_timeout=min(READ_TIMEOUT, cut),
                )
            except HttpResponseError as exc:
                if exc.status_code == 429 and attempt < ATTEMPTS:
                    continue  # the quota policy took in when the window resets
                raise GraphFailed(one_line(exc)) from None
            except (ServiceRequestError, ServiceResponseError) as exc:
                raise GraphFailed(one_line(exc)) from None
            data = response.data
            if not isinstance(data, list):
                raise GraphFailed("the answer's data is not a list of rows (objectArray)")
            return data, response.skip_token


def _state(row: dict) -> VaultState:
    """A Resource Graph row (the columns of VAULTS_QUERY) as a `VaultState`."""
    return VaultState(
        id=row["id"],
        tags=dict(row.get("tags") or {}),
        public_network_access=row.get("publicNetworkAccess"),
        network_acls=row.get("networkAcls"),
        created_at=(row.get("systemData") or {}).get("createdAt"),
        location=row.get("location"),
    )
