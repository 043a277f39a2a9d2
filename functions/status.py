"""HTTP triggers (function key) of the status page, which read only what runs stored.

- GET /api/status: the page (HTML; `?format=json` for the same data as JSON), with the query
  parameters `outcome`, `sort` and `page` of its vault table.
- GET /api/runs/{id}: a stored report's JSON, the id being its name (404 when there is none).

The page is one self-contained document under a strict Content-Security-Policy: no script,
its style allowed by a nonce that is new for every response.
"""

import json
import logging
import secrets

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger("kvfirewall")
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
    from kvfirewall.settings import SettingsError
    from kvfirewall.status import parse_status_query, status_json
    from kvfirewall.status_page import content_security_policy, render_status_page
    from kvfirewall.status_store import read_status

    params = dict(req.params)
    try:
        if params.get("format", "html") not in ("html", "json"):
            raise BadRequest("format must be html or json")
        query = parse_status_query(params)
        status = read_status(service_from_env().store, query, now=datetime.now(timezone.utc))
    except BadRequest as exc:
        return _json(400, {"error": str(exc)})
    except SettingsError as exc:
        log.error("kvfirewall settings: %s", exc)
        return _json(500, {"error": f"kvfirewall is misconfigured: {exc}"})
    except Exception as exc:  # details go to the log only, never to the caller
        log.exception("kvfirewall status page failed")
        return _json(503, {"error": f"the state store was not reachable ({type(exc).__name__})"})
    if params.get("format") == "json":
        return _json(200, status_json(status))
    nonce = secrets.token_urlsafe(18)
    return func.HttpResponse(
        render_status_page(status, nonce=nonce, key=params.get("code")),
        status_code=200,
        headers={**SECURITY_HEADERS, "Content-Security-Policy": content_security_policy(nonce)},
        mimetype="text/html",
        charset="utf-8",
    )


@bp.function_name("run_http")
@bp.route(route="runs/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def run_http(req: func.HttpRequest) -> func.HttpResponse:
    from kvfirewall.service import service_from_env
    from kvfirewall.settings import SettingsError
    from kvfirewall.status_store import read_run

    run_id = req.route_params.get("id", "")
    try:
        body = read_run(service_from_env().store, run_id)
    except SettingsError as exc:
        log.error("kvfirewall settings: %s", exc)
        return _json(500, {"error": f"kvfirewall is misconfigured: {exc}"})
    except Exception as exc:
        log.exception("kvfirewall run report failed")
        return _json(503, {"error": f"the state store was not reachable ({type(exc).__name__})"})
    if body is None:
        return _json(404, {"error": "no stored run with that id"})
    return func.HttpResponse(
        body, status_code=200, headers=SECURITY_HEADERS, mimetype="application/json"
    )


def _json(status: int, body: dict) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, indent=1),
        status_code=status,
        headers=SECURITY_HEADERS,
        mimetype="application/json",
    )
