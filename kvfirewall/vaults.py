"""The Azure Resource Manager adapter: list, read and PATCH vaults; read service tags.

Thin on purpose: it turns the SDK's answers into `VaultState` and counts calls. The Key Vault
management client is built with a lean pipeline (`_lean_policies`) and its single-vault
operations are asked for the answer's JSON (`RAW_JSON`): the SDK's default pipeline and its
models cost more CPU than the rest of a drifted vault's reconcile, and none of it applies.

No call uses azure-core's retry. Writes cannot: azure-core would retry a PATCH only on
500/503/504 or with Retry-After, and would re-send the same body; Key Vault answers
overlapping writes with 409 ("serialize the operations"), after which the vault must be read
again. So a write is one attempt that says whether it may be retried, and `Backoff` paces
the caller's retries. Reads (single vaults, list pages) are retried here under the same
`Backoff`, so that an `Arm` with a time budget (an Event Grid delivery waits 30 s, an HTTP
request 230 s) never sleeps past it, even when Resource Manager asks for a long Retry-After.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import SansIOHTTPPolicy

from kvfirewall.clouds import default_credential, token_scope
from kvfirewall.errors import is_transient, one_line
from kvfirewall.plan import VaultState
from kvfirewall.rules import VaultRef
from kvfirewall.transport import OutOfTime, shared_transport

__all__ = ["Arm", "Backoff", "CallCounts", "OutOfTime", "WriteFailed", "state_of", "token_scope"]

SERVICE_TAGS_API_VERSION = "2024-05-01"
# The Key Vault client's api-version, pinned (the SDK's own at 14.1) so that its operations
# and the list pages read through `send_request` speak one version, whatever the SDK's default.
VAULTS_API_VERSION = "2026-05-15"
MAX_TAG_PAGES = 100  # Discovery API pages followed; the whole catalog is a few
RETRYABLE_READ_STATUS = frozenset({408, 429, 500, 502, 503, 504})
READ_RETRY_SECONDS = 60.0
# Resource Manager's token buckets, per subscription and principal: what each refills per
# second (reads 250 + 25/s, writes 200 + 10/s). Once fewer than LOW_WATER tokens remain, as
# the x-ms-ratelimit-remaining-subscription-* headers tell (see _Pacer), requests are spaced at
# the refill rate: a large run then goes as fast as the quota allows, without a storm of 429s.
REFILL_PER_SECOND = {"reads": 25.0, "writes": 10.0}
LOW_WATER = 20
# The shared bucket of a subscription (x-ms-ratelimit-remaining-subscription-global-*), 15 times
# a principal's, is drained by every principal: its refill is not all ours, so its mirror is
# refilled at no more than our own bucket's rate.
SHARED = "global"
MIN_RETRY_AFTER = 1.0  # a shorter Retry-After (0 included) is backed off as if absent
PACED_REQUEST_SECONDS = 10.0  # within a budget, a quota wait leaves the request this long
WRITE_TIMEOUT = 30  # seconds to wait for a PATCH response; the retry budget bounds the rest
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60
USER_AGENT = "kvfirewall/0.1"
T = TypeVar("T")


@dataclass
class CallCounts:
    """ARM requests sent (retries included) and throttling answers received."""

    reads: int = 0
    writes: int = 0
    throttled: int = 0


class _Pacer:
    """A mirror of one subscription's token bucket of one kind (reads or writes), as this
    process sees it: what the answers said was left, less the requests sent since, plus the
    refill. A request goes while the mirror holds more than a reserve (LOW_WATER, or half a
    smaller bucket); then the refill paces them.

    Shared by every thread, so a throttled answer holds back all of them until its
    Retry-After has passed, instead of each thread finding out with a 429 of its own. Until
    the first answer the bucket is unknown and requests go at the refill rate, so that many
    workers cannot spend a small bucket in their first instant. Nobody books a slot ahead:
    a caller told to wait asks again, by then with what the latest answers said.
    """

    def __init__(
        self, rate: float, clock: Callable[[], float], *, paced_until_known: bool = True
    ) -> None:
        """`paced_until_known`: before the first answer, go at the refill rate (a principal's
        own bucket); else go freely until an answer tells (the shared bucket, whose header
        Resource Manager may not send)."""
        self._rate = rate
        self._paced_until_known = paced_until_known
        self._clock = clock
        self._lock = threading.Lock()
        self._known = False  # until the first answer that says what is left
        self._ceiling = 0.0  # the most any answer said was left: about the bucket's size
        self._tokens = 1.0
        self._stamp = clock()
        self._blocked_until = 0.0

    def _reserve(self) -> float:
        return min(float(LOW_WATER), self._ceiling // 2)

    def _refill(self, now: float) -> None:
        cap = max(self._ceiling, self._reserve() + 1.0)
        self._tokens = min(cap, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def take(self, limit: float | None = None) -> float | None:
        """0 when a request may go now (its token taken); else the seconds after which to
        ask again, taking nothing; or None if those are more than `limit`."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            if not (self._known or self._paced_until_known):
                return 0.0
            short = self._reserve() + 1.0 - self._tokens
            wait = max(self._blocked_until - now, short / self._rate if short > 1e-6 else 0.0)
            if wait > 0:
                return None if limit is not None and wait > limit else wait
            self._tokens -= 1.0
            return 0.0

    def give_back(self) -> None:
        """Return a token taken for a request that another bucket's mirror held back."""
        with self._lock:
            self._tokens += 1.0

    def observe(self, remaining: int | None, retry_after: float | None) -> None:
        """Take in what an answer said. It may be older than requests sent since, so it
        only ever lowers the mirror; the refill raises it."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            if remaining is not None:
                self._ceiling = max(self._ceiling, float(remaining))
                # Requests sent before the first answer went at the refill rate, which
                # leaves the bucket as full as it was: that answer is taken as it is.
                known, self._known = self._known, True
                self._tokens = min(self._tokens, float(remaining)) if known else float(remaining)
            if retry_after:
                self._blocked_until = max(self._blocked_until, now + retry_after)


class CountingPolicy(SansIOHTTPPolicy):
    """Counts the requests sent (GET/HEAD as reads, the rest as writes) and the 429s."""

    def __init__(self, counts: CallCounts, lock: threading.Lock) -> None:
        self._counts = counts
        self._lock = lock

    def on_request(self, request) -> None:
        with self._lock:
            if _is_read(request.http_request):
                self._counts.reads += 1
            else:
                self._counts.writes += 1

    def on_response(self, request, response) -> None:
        if response.http_response.status_code == 429:
            with self._lock:
                self._counts.throttled += 1


class _CountingPolicy(CountingPolicy):
    """Counts, and tells each subscription's pacer what ARM answered."""

    def __init__(
        self, counts: CallCounts, lock: threading.Lock, pacer: Callable[[str, str], _Pacer]
    ) -> None:
        super().__init__(counts, lock)
        self._pacer = pacer

    def on_response(self, request, response) -> None:
        super().on_response(request, response)
        status = response.http_response.status_code
        kind = "reads" if _is_read(request.http_request) else "writes"
        parts = urlsplit(request.http_request.url).path.split("/")
        if len(parts) > 2 and parts[1].lower() == "subscriptions":
            headers = response.http_response.headers
            remaining = headers.get(f"x-ms-ratelimit-remaining-subscription-{kind}", "")
            shared = headers.get(f"x-ms-ratelimit-remaining-subscription-{SHARED}-{kind}", "")
            retry_after = _seconds(headers.get("Retry-After")) if status == 429 else None
            self._pacer(parts[2].lower(), kind).observe(
                int(remaining) if remaining.isdigit() else None, retry_after
            )
            if shared.isdigit():
                self._pacer(parts[2].lower(), f"{SHARED}-{kind}").observe(int(shared), None)


def _is_read(request) -> bool:
    """GET and HEAD, and a Resource Graph query: a POST that changes nothing."""
    method = request.method.upper()
    if method == "POST":
        path = urlsplit(request.url).path.rstrip("/").lower()
        return path.endswith("/providers/microsoft.resourcegraph/resources")
    return method in ("GET", "HEAD")


def _answer_json(pipeline_response, deserialized, headers) -> dict:
    """An operation's `cls`: the answer's JSON as Resource Manager wrote it (camelCase).

    The operation calls it after it has built its model, unless it was asked to `stream`;
    then `deserialized` is the unread body, and no model is built at all."""
    return json.loads(pipeline_response.http_response.read())


# The options that make a single-vault operation (get, update, get_deleted) answer with the
# vault's JSON: building a `Vault` model and turning it back into a mapping cost more CPU
# than the request itself (a list's pages are models: its operation takes no `stream`).
RAW_JSON: dict[str, Any] = {"stream": True, "cls": _answer_json}


class WriteFailed(Exception):
    """A vault write that failed; the message is safe to report.

    `retryable`: trying again (after a fresh read) may succeed. `maybe_applied`: the service
    may have applied the write anyway (5xx, lost response), so pending ownership must stay.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        maybe_applied: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.maybe_applied = maybe_applied
        self.retry_after = retry_after


@dataclass(frozen=True)
class DeletedVault:
    """A soft-deleted vault (Key Vault keeps every deleted vault for its retention period,
    recoverable with its networkAcls): when it was deleted and when it is purged."""

    deletion_date: str | None
    scheduled_purge_date: str | None


class Backoff:
    """Waits between attempts: Retry-After when given, else jittered exponential backoff,
    and never past the budget."""

    def __init__(
        self, budget_seconds: float, *, sleep: Callable[[float], None], clock: Callable[[], float]
    ) -> None:
        self._sleep = sleep
        self._clock = clock
        self._deadline = clock() + budget_seconds
        self.attempts = 1

    def wait(self, retry_after: float | None) -> bool:
        """Sleep before the next attempt; False (and no sleep) if that would pass the budget.

        A Retry-After under a second (`0` included) is no reason to try again at once: the
        own backoff then applies, so that such answers cannot make a vault spin."""
        delay = retry_after
        if delay is None or delay < MIN_RETRY_AFTER:
            own = min(10.0, 0.5 * 2 ** (self.attempts - 1)) * random.uniform(0.5, 1.0)
            delay = max(delay or 0.0, own)
        if self._clock() + delay > self._deadline:
            return False
        self._sleep(delay)
        self.attempts += 1
        return True


class Arm:
    """Resource Manager access for one deployment, with one SDK client per subscription."""

    def __init__(
        self,
        *,
        endpoint: str,
        subscriptions: tuple[str, ...],
        credential=None,
        write_retry_seconds: float = 60.0,
        budget_seconds: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`budget_seconds`: when set, no attempt or wait starts after that much time, and
        each request's timeout is cut to what is left (the caller's own deadline)."""
        if credential is None:
            credential = default_credential(endpoint)
        self.endpoint = endpoint.rstrip("/")
        self.subscriptions = subscriptions
        self.counts = CallCounts()
        self._credential = credential
        self._write_retry_seconds = write_retry_seconds
        self._sleep = sleep
        self._clock = clock
        self._deadline = None if budget_seconds is None else clock() + budget_seconds
        self._lock = threading.Lock()
        self._clients: dict = {}
        self._pacers: dict[tuple[str, str], _Pacer] = {}

    def _pacer(self, subscription: str, kind: str) -> _Pacer:
        with self._lock:
            key = (subscription.lower(), kind)
            if key not in self._pacers:
                own = kind.removeprefix(f"{SHARED}-")
                self._pacers[key] = _Pacer(
                    REFILL_PER_SECOND[own], self._clock, paced_until_known=own == kind
                )
            return self._pacers[key]

    def pace_write(self, subscription: str) -> None:
        """Wait for a write slot of the subscription's quota. The caller does it before the
        fresh read that its PATCH is based on, so that no wait falls between the two."""
        self._pace(subscription, "writes")

    def _pace(self, subscription: str, kind: str) -> None:
        """Wait for the subscription's quota, the principal's and the shared one, but not into
        the time the request itself needs (`OutOfTime` then, and no slot is taken)."""
        own, shared = self._pacer(subscription, kind), self._pacer(subscription, f"{SHARED}-{kind}")
        while True:
            remaining = self.remaining()
            limit = None if remaining is None else remaining - PACED_REQUEST_SECONDS
            wait = own.take(limit)
            if wait == 0:
                wait = shared.take(limit)
                if wait != 0:
                    own.give_back()
            if wait is None:
                raise OutOfTime(
                    "the subscription's request quota does not refill within the budget"
                )
            if wait == 0:
                return
            self._sleep(wait)

    def _client(self, subscription: str):
        with self._lock:
            client = self._clients.get(subscription)
            if client is None:
                from azure.mgmt.keyvault import KeyVaultManagementClient

                client = KeyVaultManagementClient(
                    self._credential,
                    subscription,
                    base_url=self.endpoint,
                    policies=self._lean_policies(),
                    transport=shared_transport(),
                    api_version=VAULTS_API_VERSION,
                )
                self._clients[subscription] = client
            return client

    def _lean_policies(self) -> list:
        """The Key Vault client's pipeline: a request id, the user agent, the bearer token
        for this cloud, the counting and pacing policy, and nothing else. The SDK's default
        adds retries and redirects (we retry ourselves, and Resource Manager does not
        redirect), resource provider registration (a write kvfirewall may not make), a JSON
        decoding of every answer the operations decode again, and logging and tracing
        policies: each costs CPU on every request. Timeouts are the transport's, per call."""
        import azure.mgmt.keyvault
        from azure.core.pipeline.policies import RequestIdPolicy, UserAgentPolicy
        from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

        return [
            RequestIdPolicy(),
            UserAgentPolicy(
                user_agent=USER_AGENT,
                sdk_moniker=f"mgmt-keyvault/{azure.mgmt.keyvault.__version__}",
            ),
            ARMChallengeAuthenticationPolicy(self._credential, token_scope(self.endpoint)),
            _CountingPolicy(self.counts, self._lock, self._pacer),
        ]

    def tenant_client(self, client_class: type, *policies: SansIOHTTPPolicy):
        """An SDK client of a tenant-level API (management groups, Resource Graph), one per
        class, with this Arm's credential, transport and call counts, plus `policies`."""
        with self._lock:
            client = self._clients.get(client_class)
            if client is None:
                client = client_class(
                    self._credential,
                    base_url=self.endpoint,
                    credential_scopes=[token_scope(self.endpoint)],
                    per_retry_policies=[
                        _CountingPolicy(self.counts, self._lock, self._pacer),
                        *policies,
                    ],
                    user_agent=USER_AGENT,
                    transport=shared_transport(),
                )
                self._clients[client_class] = client
            return client

    def tenant_read(self, call: Callable[..., T]) -> T:
        """One read outside any subscription's quota, retried like every read (and not by
        the client: its default pipeline has a retry policy, turned off per call)."""
        return self._read(None, lambda **options: call(retry_total=0, **options))

    def now(self) -> float:
        """This Arm's clock (monotonic seconds)."""
        return self._clock()

    def pause(self, seconds: float) -> bool:
        """Sleep, unless that would pass the time budget (False, and no sleep)."""
        remaining = self.remaining()
        if remaining is not None and seconds > remaining:
            return False
        self._sleep(seconds)
        return True

    def list_vaults(
        self, subscription: str, *, reserve_seconds: float = 0.0
    ) -> Iterator[VaultState]:
        """Every vault of a subscription, page by page (list results carry networkAcls).

        Each page is one `_read`: retried on its own under the budget, so a throttled page
        repeats no page before it and never sleeps past the deadline. No page is fetched with
        less than `reserve_seconds` of the budget left (`OutOfTime`): the caller could not
        reconcile its vaults anyway.

        Pages are read as JSON through the client's `send_request` (its pipeline, token and
        api-version): the SDK's `list_by_subscription` builds a `Vault` model per vault before
        any `cls` sees it and takes no `stream`, and that model, turned back into a mapping,
        costs a compliant vault more CPU than the rest of its reconcile. `nextLink` is
        followed only on Resource Manager's own host, like the Discovery API's."""
        from azure.core.rest import HttpRequest

        client = self._client(subscription)
        url: str | None = (
            f"{self.endpoint}/subscriptions/{subscription}/providers/Microsoft.KeyVault/vaults"
            f"?api-version={VAULTS_API_VERSION}"
        )
        while url:
            remaining = self.remaining()
            if remaining is not None and remaining < reserve_seconds:
                raise OutOfTime(f"listing {subscription} stopped: the time budget is spent")

            def page(url: str = url, **options) -> dict:
                return _arm_json(client.send_request(HttpRequest("GET", url), **options))

            document = self._read(subscription, page)
            for vault in document.get("value") or []:
                yield state_of(vault)
            url = document.get("nextLink") or None
            if url and not _same_origin(url, self.endpoint):  # the token goes only to ARM
                raise ValueError(f"vault list nextLink leaves {self.endpoint}: {url[:200]}")

    def remaining(self) -> float | None:
        """Seconds left of the time budget, or None without one."""
        return None if self._deadline is None else self._deadline - self._clock()

    def _timeout(self, longest: float) -> float:
        """A request's timeout, cut to the budget; no request starts once it is spent."""
        remaining = self.remaining()
        if remaining is None:
            return longest
        if remaining <= 0:
            raise OutOfTime("the time budget is spent")
        return min(longest, remaining)

    def _backoff(self, seconds: float) -> Backoff:
        remaining = self.remaining()
        budget = seconds if remaining is None else max(0.0, min(seconds, remaining))
        return Backoff(budget, sleep=self._sleep, clock=self._clock)

    def _read(self, subscription: str | None, call: Callable[..., T]) -> T:
        """One read, paced (by the subscription's quota, if it has one) and retried on
        throttling, server errors and transport failures."""
        backoff = self._backoff(READ_RETRY_SECONDS)
        while True:
            if subscription is not None:
                self._pace(subscription, "reads")
            try:
                return call(
                    connection_timeout=self._timeout(CONNECT_TIMEOUT),
                    read_timeout=self._timeout(READ_TIMEOUT),
                )
            except HttpResponseError as exc:
                if exc.status_code not in RETRYABLE_READ_STATUS or not backoff.wait(
                    _retry_after(exc)
                ):
                    raise
            except (ServiceRequestError, ServiceResponseError):
                if not backoff.wait(None):
                    raise

    def get_vault(self, ref: VaultRef) -> VaultState | None:
        """A fresh read of one vault, or None if it does not exist (any more)."""
        document = self.get_vault_document(ref)
        return None if document is None else state_of(document)

    def get_vault_document(self, ref: VaultRef) -> dict | None:
        """A fresh read of one vault as Resource Manager's JSON (camelCase), access policies
        and all; None if it does not exist (any more)."""
        vaults = self._client(ref.subscription).vaults
        try:
            return self._read(
                ref.subscription,
                lambda **kw: vaults.get(ref.resource_group, ref.name, **RAW_JSON, **kw),
            )
        except ResourceNotFoundError:
            return None

    def get_deleted_vault(self, ref: VaultRef, location: str) -> DeletedVault | None:
        """The soft-deleted vault of this id in `location`, or None once it is purged (or
        is not a deleted vault: recovered, or never deleted)."""
        vaults = self._client(ref.subscription).vaults
        try:
            deleted = self._read(
                ref.subscription,
                lambda **kw: vaults.get_deleted(ref.name, location, **RAW_JSON, **kw),
            )
        except ResourceNotFoundError:
            return None
        properties = deleted.get("properties") or {}
        if str(properties.get("vaultId", "")).lower() != ref.id.lower():
            return None  # a deleted vault of that name in another resource group
        return DeletedVault(
            deletion_date=properties.get("deletionDate"),
            scheduled_purge_date=properties.get("scheduledPurgeDate"),
        )

    def update_network_acls(
        self, ref: VaultRef, network_acls: dict, *, public_network_access: str | None = None
    ) -> VaultState:
        """One PATCH of the complete networkAcls, and nothing else (never accessPolicies);
        `publicNetworkAccess` only when a lock-down option switches it, in the same write.

        Deliberately a single attempt (the client has no retry policy): a retry must not
        re-send this body, because the vault may have changed meanwhile (a 409 means someone
        else is writing it). The caller re-reads, re-plans and paces with `write_backoff()`.
        """
        client = self._client(ref.subscription)
        properties: dict = {"networkAcls": network_acls}
        if public_network_access is not None:
            properties["publicNetworkAccess"] = public_network_access
        body = {"properties": properties}
        try:
            vault = client.vaults.update(
                ref.resource_group,
                ref.name,
                body,
                connection_timeout=self._timeout(CONNECT_TIMEOUT),
                read_timeout=self._timeout(WRITE_TIMEOUT),
                **RAW_JSON,
            )
        except HttpResponseError as exc:
            # Every 4xx means the write was not applied; anything else (5xx, a response cut
            # off mid-body, an unexpected status) may have been.
            client_error = 400 <= (exc.status_code or 0) < 500
            raise WriteFailed(
                _describe(exc),
                retryable=is_transient(exc),  # after a fresh read
                maybe_applied=not client_error,
                retry_after=_retry_after(exc),
                status=exc.status_code,
            ) from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            # A request that never left is not applied; a lost response may have been.
            raise WriteFailed(
                _describe(exc),
                retryable=True,
                maybe_applied=isinstance(exc, ServiceResponseError),
            ) from None
        return state_of(vault)

    def write_backoff(self) -> Backoff:
        """Pacing for the attempts at one vault's write, within `write_retry_seconds`."""
        return self._backoff(self._write_retry_seconds)

    def service_tags(self, location: str) -> dict:
        """The Service Tag Discovery API document, through the first managed subscription:
        every page of it (`nextLink`), as one document, or an error. A page that fails fails
        the whole document: a partial one would look like ranges removed."""
        from azure.core.rest import HttpRequest

        subscription = self.subscriptions[0]
        url = (
            f"{self.endpoint}/subscriptions/{subscription}/providers/Microsoft.Network"
            f"/locations/{location}/serviceTags?api-version={SERVICE_TAGS_API_VERSION}"
        )
        client = self._client(subscription)

        def call(url: str = url, **options) -> dict:
            return _arm_json(client.send_request(HttpRequest("GET", url), **options))

        document = self._read(subscription, call)
        values = list(document.get("values") or [])
        for _ in range(MAX_TAG_PAGES):
            link = document.get("nextLink")
            if not link:
                return {**document, "values": values}
            if not _same_origin(link, self.endpoint):  # the token goes only to Resource Manager
                raise ValueError(f"serviceTags nextLink leaves {self.endpoint}: {link[:200]}")
            document = self._read(subscription, lambda link=link, **kw: call(link, **kw))
            values.extend(document.get("values") or [])
        raise ValueError(f"serviceTags: more than {MAX_TAG_PAGES} pages")


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme.lower(), a.netloc.lower()) == (b.scheme.lower(), b.netloc.lower())


def _arm_json(response) -> dict:
    """The JSON of a `send_request` answer; an error answer raises `HttpResponseError`,
    which carries ARM's code and message (its `error` object)."""
    response.raise_for_status()
    return response.json()


def _retry_after(exc: HttpResponseError) -> float | None:
    headers = exc.response.headers if exc.response is not None else {}
    return _seconds(headers.get("Retry-After"))


def _seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (the form Resource Manager sends), or None."""
    try:
        return max(0.0, float(value or ""))
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    """The ARM error code and message, without request ids or headers."""
    if not isinstance(exc, HttpResponseError):
        return one_line(exc)
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None) or exc.reason or "Error"
    message = getattr(error, "message", None) or one_line(exc)
    return f"HTTP {exc.status_code} {code}: {message}"[:500]


def state_of(data: dict) -> VaultState:
    """A vault's JSON as a `VaultState`."""
    properties = data.get("properties") or {}
    return VaultState(
        id=data["id"],
        tags=dict(data.get("tags") or {}),
        public_network_access=properties.get("publicNetworkAccess"),
        network_acls=properties.get("networkAcls"),
        created_at=(data.get("systemData") or {}).get("createdAt"),
        location=data.get("location"),
    )
