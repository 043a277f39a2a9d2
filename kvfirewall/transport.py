"""One HTTP transport per process, shared by every SDK client, and per-request time limits.

A warm Function App instance serves many invocations; clients that each brought their own
transport opened new TLS connections for every run and never closed them, and requests'
default pool of 10 connections per host made 32 workers open (and discard) more. Every
Resource Manager and storage client of the process sends through `shared_transport()`,
whose pool per host holds as many connections as there are requests at once.

The transport then has no timeouts of its own worth having (its defaults are minutes):
each request carries them. `RequestTimeouts` sets them for a storage client, cut to the
time its run has left, if the call names that (`DEADLINE_OPTION`).

requests, left to itself, reads every environment variable twice for each request to find
its proxies (a quarter of the CPU a vault's write took): the session here looks them up once
per host and per value of the variables they come from.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from urllib.parse import urlsplit

# Requests in flight at once to one host: the reconcile workers (32) and listers (4), an
# event or two in the same process, and storage calls beside them.
POOL_SIZE = 48
HOST_POOLS = 8  # hosts kept pooled: Resource Manager, blob, table, and room
DEADLINE_OPTION = "kvfirewall_remaining"  # a call's option: () -> seconds its run has left

Remaining = Callable[[], float | None]
# What requests takes from the environment for an HTTP(S) request: its proxies, the hosts
# that bypass them, and the CA bundle.
ENVIRONMENT = (
    *("http_proxy", "https_proxy", "all_proxy", "no_proxy"),
    *("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"),
    *("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
)


class OutOfTime(Exception):
    """A run's time budget is spent: no further call is started."""


@functools.cache
def shared_transport():
    """The process's transport: one `requests.Session` whose connections are kept."""
    from azure.core.pipeline.transport import RequestsTransport
    from requests.adapters import HTTPAdapter

    session = _session_class()()
    adapter = HTTPAdapter(pool_connections=HOST_POOLS, pool_maxsize=POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # Not the session's owner: no client's close() may close it for the others.
    return RequestsTransport(session=session, session_owner=False)


@functools.cache
def _session_class():
    """A `requests.Session` that takes the environment's settings as requests would, from a
    cache keyed by the request's origin and the variables' values (so a changed variable
    counts at the next request), instead of reading the whole environment per request."""
    import requests

    class Session(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            # The environment is consulted below; requests' own per-request reading (and its
            # ~/.netrc credentials, which would replace a client's token) stays off.
            self.trust_env = False

        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            no_proxy = proxies.get("no_proxy") if proxies is not None else None
            parts = urlsplit(url)
            found, bundle = _environment_settings(
                f"{parts.scheme}://{parts.netloc}",
                no_proxy,
                tuple(os.environ.get(name) for name in ENVIRONMENT),
            )
            if proxies is not None:
                for key, value in found.items():
                    proxies.setdefault(key, value)
            if verify is True or verify is None:
                verify = bundle or verify
            return super().merge_environment_settings(url, proxies, stream, verify, cert)

    return Session


@functools.lru_cache(maxsize=64)
def _environment_settings(
    origin: str, no_proxy: str | None, environment: tuple[str | None, ...]
) -> tuple[dict[str, str], str | None]:
    """The proxies requests would take from the environment for `origin`, and its CA bundle
    (`environment`: the values of ENVIRONMENT, which the answer depends on)."""
    from requests.utils import get_environ_proxies

    values = dict(zip(ENVIRONMENT, environment, strict=True))
    bundle = values["REQUESTS_CA_BUNDLE"] or values["CURL_CA_BUNDLE"]
    return get_environ_proxies(origin, no_proxy=no_proxy), bundle


class RequestTimeouts:
    """A `raw_request_hook` (run by azure-core's hook policy before every attempt, retries
    included) that gives each request its connect and read timeouts, cut to the time its
    run has left; with none left the request is not sent (`OutOfTime`)."""

    def __init__(self, *, connect: float, read: float) -> None:
        self._connect = connect
        self._read = read

    def __call__(self, request) -> None:
        context = request.context
        options = context.options
        remaining: Remaining | None = options.pop(DEADLINE_OPTION, None) or context.get(
            DEADLINE_OPTION
        )
        context[DEADLINE_OPTION] = remaining  # kept for the retries of this call
        left = remaining() if remaining is not None else None
        if left is not None and left <= 0:
            raise OutOfTime("the run's time budget is spent")
        cut = float("inf") if left is None else left
        options["connection_timeout"] = min(options.get("connection_timeout", self._connect), cut)
        options["read_timeout"] = min(options.get("read_timeout", self._read), cut)
