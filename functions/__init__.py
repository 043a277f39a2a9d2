"""The Function App's triggers, one blueprint per kind. They translate Functions objects into
calls of `kvfirewall.service` and its results into logs and responses; nothing else.

No `from __future__ import annotations` in these modules: the Functions worker reads the
parameter annotations at indexing time and needs real types, not strings.

The worker imports these modules on every cold start, to index the app before any invocation:
each trigger imports the engine (settings, service, and the Azure SDKs behind them) when it
first runs, so that indexing costs little more than `azure.functions` itself.
"""

import logging
from collections.abc import Callable

import azure.functions as func

# azure-core logs every request and response header at INFO; in App Insights that would drown
# kvfirewall's own lines (and cost money). Warnings and errors from the SDKs still get through.
logging.getLogger("azure").setLevel(logging.WARNING)


def invocation_threads(context: func.Context) -> Callable[[], None]:
    """An initializer for the threads a run starts: the Python worker forwards a log record
    to the host (and App Insights) only from threads that carry the invocation's id."""

    def carry_invocation_id() -> None:
        context.thread_local_storage.invocation_id = context.invocation_id

    return carry_invocation_id
