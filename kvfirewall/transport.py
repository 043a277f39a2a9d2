"""One HTTP transport per process, shared by every SDK client, and per-request time limits.

A warm Function App instance serves many invocations; clients that each brought their own
transport opened new TLS connections for every run and never closed them, and requests'
default pool of 10 connections per host made 32 workers open (and discard) more. Every
Resource Manager and storage client of the process sends through `shared_transport()`,
whose pool per host holds as many connections as there are requests at once.

The transport then has no timeouts of its own worth having (its defaults are minutes):
each request carries them. `RequestTimeouts` sets them for a storage client, cut to the
time its run has left, if the call names that (`DEADLINE_OPTION`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

# Requests in flight at once to one host: the reconcile workers (32) and listers (4), an
# event or two in the same process, and storage calls beside them.
POOL_SIZE = 48
HOST_POOLS = 8  # hosts kept pooled: Resource Manager, blob, table, and room
DEADLINE_OPTION = "kvfirewall_remaining"  # a call's option: () -> seconds its run has left

Remaining = Callable[[], float | None]


class OutOfTime(Exception):
    """A run's time budget is spent: no further call is started."""


@functools.cache
def shared_transport():
    """The process's transport: one `requests.Session` whose connections are kept."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=HOST_POOLS, pool_maxsize=POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # Not the session's owner: no client's close() may close it for the others.
    return RequestsTransport(session=session, session_owner=False)


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
