"""HTTP triggers (function key): manual reconcile and dry run, and the allowed ranges.

- POST /api/reconcile, optional body {"vaultId": str, "dryRun": bool}: the JSON report; a
  run over every vault that is not a dry run, fanned out over the work queue, answers 202
  with what it settled and the run's id (`run`, and `Location: /api/runs/{id}`).
- GET  /api/plan: the dry-run report for every vault in scope.
- GET  /api/ranges: the allowed ranges per geography and region, and the source version.

A run over every vault answers the counts and the vaults that changed or failed; unless it
is a dry run, its full report is stored and named in the answer (`report`). Runs answer
within the 230 s HTTP limit: a run that would take longer stops starting vaults and says so
in the report (`cutShort`); the timer reconciles the rest. Errors answer `{"error": ...}`
with no internals: 400 bad input, 404 no such report, 500 bad settings or a fault of
kvfirewall's own, 503 Azure or the storage unreachable.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

import azure.functions as func

from functions import answer, invocation_threads, json_response

if TYPE_CHECKING:
    from kvfirewall.service import Service

bp = func.Blueprint()


@bp.function_name("reconcile_http")
@bp.route(route="reconcile", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def reconcile_http(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    from kvfirewall.api import parse_reconcile_request

    def run() -> func.HttpResponse:
        from kvfirewall.service import service_from_env

        service = service_from_env()
        settings = service.settings
        request = parse_reconcile_request(
            req.get_body() or b"",
            subscriptions=None if settings.management_groups else settings.subscriptions,
        )
        report = service.requested_run(request, thread_init=invocation_threads(context))
        if report.run_id:  # fanned out: GET /api/runs/{id} tells when it is done
            location = {"Location": f"/api/runs/{report.run_id}"}
            return json_response(202, _reported(report), headers=location)
        return json_response(200, _reported(report))

    return answer(run)


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


def _reported(report) -> dict:
    from kvfirewall.service import log_report

    log_report(report)
    return report.to_json()


def _answer(handle: Callable[["Service"], dict]) -> func.HttpResponse:
    from kvfirewall.service import service_from_env

    return answer(lambda: json_response(200, handle(service_from_env())))
