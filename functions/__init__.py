"""The Function App's triggers, one blueprint per kind. They translate Functions objects into
calls of `kvfirewall.service` and its results into logs and responses; nothing else.

No `from __future__ import annotations` in these modules: the Functions worker reads the
parameter annotations at indexing time and needs real types, not strings.

The worker imports these modules on every cold start, to index the app before any invocation:
each trigger imports the engine (settings, service, and the Azure SDKs behind them) when it
first runs, so that indexing costs little more than `azure.functions` itself.
"""

import json
import logging
from collections.abc import Callable

import azure.functions as func

log = logging.getLogger("kvfirewall")

# azure-core logs every request and response header at INFO; in App Insights that would drown
# kvfirewall's own lines (and cost money). Warnings and errors from the SDKs still get through.
logging.getLogger("azure").setLevel(logging.WARNING)


def invocation_threads(context: func.Context) -> Callable[[], None]:
    """An initializer for the threads a run starts: the Python worker forwards a log record
    to the host (and App Insights) only from threads that carry the invocation's id."""

    def carry_invocation_id() -> None:
        context.thread_local_storage.invocation_id = context.invocation_id

    return carry_invocation_id


def json_response(
    status: int, body: object, *, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    """A JSON answer; `body` already serialized (bytes) or an object to serialize."""
    data = body if isinstance(body, bytes) else json.dumps(body, indent=1)
    return func.HttpResponse(data, status_code=status, headers=headers, mimetype="application/json")


def answer(
    handle: Callable[[], func.HttpResponse], *, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    """Run an HTTP function's work and answer its failures as `{"error": ...}` with no
    internals: 400 bad input, 500 bad settings or a fault of kvfirewall's own (retrying would
    not help), 503 when Azure or the storage was not reachable (retrying may)."""
    from azure.core.exceptions import AzureError

    from kvfirewall.api import BadRequest
    from kvfirewall.settings import SettingsError

    try:
        return handle()
    except SettingsError as exc:
        log.error("kvfirewall settings: %s", exc)
        error = (500, f"kvfirewall is misconfigured: {exc}")
    except BadRequest as exc:
        error = (400, str(exc))
    except (AzureError, OSError) as exc:  # details go to the log only, never to the caller
        log.exception("kvfirewall HTTP function failed: Azure or the storage not reachable")
        error = (503, f"Azure was not reachable ({type(exc).__name__}); retry later")
    except Exception as exc:
        log.exception("kvfirewall HTTP function failed")
        error = (500, f"kvfirewall failed ({type(exc).__name__}); see the log")
    return json_response(error[0], {"error": error[1]}, headers=headers)
