"""HTTP triggers (function key) of the status page, which read only what runs stored.

- GET /api/status: the page (HTML; `?format=json` for the same data as JSON), with the query
  parameters `outcome`, `sort` and `page` of its vault table.
- GET /api/runs: the stored runs' reports, newest first, each with its counts.
- GET /api/runs/{id}: a stored report's JSON, the id being its name (404 when there is none);
  for a fanned-out run still in progress, 202 and where it stands (`run_record.progress`).

The page is one self-contained document under a strict Content-Security-Policy: no script,
its style allowed by a nonce that is new for every response.
"""

import secrets

import azure.functions as func

from functions import answer, json_response

bp = func.Blueprint()
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page's links carry the function key
    "Cache-Control": "no-store",
}


@bp.function_name("status_http")
@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status_http(req: func.HttpRequest) -> func.HttpResponse:
    from datetime import datetime, timezone

    from kvfirewall.api import BadRequest
    from kvfirewall.service import service_from_env
    from kvfirewall.status import parse_status_query, status_json
    from kvfirewall.status_page import content_security_policy, render_status_page
    from kvfirewall.status_store import read_status

    params = dict(req.params)

    def page() -> func.HttpResponse:
        if params.get("format", "html") not in ("html", "json"):
            raise BadRequest("format must be html or json")
        query = parse_status_query(params)
        service = service_from_env()
        status = read_status(
            service.store,
            query,
            now=datetime.now(timezone.utc),
            leases=service.settings.leases.enabled,
        )
        if params.get("format") == "json":
            return json_response(200, status_json(status), headers=SECURITY_HEADERS)
        nonce = secrets.token_urlsafe(18)
        return func.HttpResponse(
            render_status_page(status, nonce=nonce, key=params.get("code")),
            status_code=200,
            headers={**SECURITY_HEADERS, "Content-Security-Policy": content_security_policy(nonce)},
            mimetype="text/html",
            charset="utf-8",
        )

    return answer(page, headers=SECURITY_HEADERS)


@bp.function_name("runs_http")
@bp.route(route="runs/{id?}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def runs_http(req: func.HttpRequest) -> func.HttpResponse:
    from kvfirewall.service import service_from_env
    from kvfirewall.status_store import list_runs, read_run

    run_id = req.route_params.get("id")

    def run() -> func.HttpResponse:
        store = service_from_env().store
        if not run_id:
            return json_response(200, list_runs(store), headers=SECURITY_HEADERS)
        body = read_run(store, run_id)
        if body is None:
            from kvfirewall.fan_out import progress

            running = progress(service_from_env(), run_id)
            if running is not None:  # a fanned-out run: where it stands
                return json_response(*running, headers={**SECURITY_HEADERS, "Retry-After": "10"})
            body = read_run(store, run_id)  # assembled just now, if it was complete
        if body is None:
            return json_response(
                404, {"error": "no stored run with that id"}, headers=SECURITY_HEADERS
            )
        return json_response(200, body, headers=SECURITY_HEADERS)

    return answer(run, headers=SECURITY_HEADERS)
