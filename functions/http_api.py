"""HTTP triggers (function key): manual reconcile and dry run, and the allowed ranges.

- POST /api/reconcile, optional body {"vaultId": str, "dryRun": bool}: the JSON report.
- GET  /api/plan: the dry-run report for every vault in scope.
- GET  /api/ranges: the allowed ranges per geography and region, and the source version.
- GET  /api/reports[/{name}]: the stored reports, newest first, or one of them in full.

A run over every vault answers the counts and the vaults that changed or failed; unless it
is a dry run, its full report is stored and named in the answer (`report`). Runs answer
within the 230 s HTTP limit: a run that would take longer stops starting vaults and says so
in the report (`cutShort`); the timer reconciles the rest. Errors answer `{"error": ...}`
with no internals: 400 bad input, 404 no such report, 500 bad settings or a fault of
kvfirewall's own, 503 Azure or the storage unreachable.
"""

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import azure.functions as func

from functions import invocation_threads

if TYPE_CHECKING:
    from kvfirewall.service import Service

bp = func.Blueprint()
log = logging.getLogger("kvfirewall")


@bp.function_name("reconcile_http")
@bp.route(route="reconcile", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def reconcile_http(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    from kvfirewall.api import parse_reconcile_request

    def run(service: "Service") -> dict:
        request = parse_reconcile_request(
            req.get_body() or b"", subscriptions=service.settings.subscriptions
        )
        return _reported(service.requested_run(request, thread_init=invocation_threads(context)))

    return _answer(run)


@bp.function_name("plan_http")
@bp.route(route="plan", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def plan_http(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    from kvfirewall.api import ReconcileRequest

    request = ReconcileRequest(dry_run=True)
    threads = invocation_threads(context)
    return _answer(lambda s: _reported(s.requested_run(request, thread_init=threads)))


@bp.function_name("ranges_http")
@bp.route(route="ranges", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def ranges_http(req: func.HttpRequest) -> func.HttpResponse:
    return _answer(lambda s: s.ranges())


@bp.function_name("reports_http")
@bp.route(route="reports/{name?}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def reports_http(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params.get("name")

    def listed(service: "Service") -> dict:
        return {
            "reports": [
                {
                    "name": r.name,
                    "time": r.time.isoformat(),
                    "trigger": r.trigger,
                    "counts": r.counts,
                }
                for r in service.store.list_reports()
            ]
        }

    def one(service: "Service") -> bytes:
        try:
            return service.store.read_report(name)
        except KeyError:
            raise _NotFound(f"no stored report {name[:100]!r}") from None

    return _answer(one if name else listed)


class _NotFound(Exception):
    """A stored report that is not there; the message is safe for the caller."""


def _reported(report) -> dict:
    from kvfirewall.service import log_report

    log_report(report)
    return report.to_json()


def _answer(handle: Callable[["Service"], dict | bytes]) -> func.HttpResponse:
    from azure.core.exceptions import AzureError

    from kvfirewall.api import BadRequest
    from kvfirewall.service import service_from_env
    from kvfirewall.settings import SettingsError

    try:
        body = handle(service_from_env())
    except SettingsError as exc:
        log.error("kvfirewall settings: %s", exc)
        return _json(500, {"error": f"kvfirewall is misconfigured: {exc}"})
    except BadRequest as exc:
        return _json(400, {"error": str(exc)})
    except _NotFound as exc:
        return _json(404, {"error": str(exc)})
    except (AzureError, OSError) as exc:  # details go to the log only, never to the caller
        log.exception("kvfirewall HTTP run failed: Azure or the storage not reachable")
        return _json(
            503,
            {"error": f"Azure was not reachable ({type(exc).__name__}); retry later"},
        )
    except Exception as exc:  # a fault of kvfirewall's own: retrying would not help
        log.exception("kvfirewall HTTP run failed")
        return _json(500, {"error": f"kvfirewall failed ({type(exc).__name__}); see the log"})
    if isinstance(body, bytes):
        return func.HttpResponse(body, status_code=200, mimetype="application/json")
    return _json(200, body)


def _json(status: int, body: dict) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, indent=1), status_code=status, mimetype="application/json"
    )
