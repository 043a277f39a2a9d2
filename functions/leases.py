"""Access leases over HTTP, and their expiry timer.

- POST /api/leases (anonymous at the host; kvfirewall checks the Entra bearer token itself, so
  a pipeline needs no function key): body `{"vaults", "minutes", "ip", "reason"}`; 200 with the
  lease and every vault's result once the rule is on every vault.
- DELETE /api/leases/{id} (the same bearer): release now; `released` false if it had ended.
- GET /api/leases (function key): the active leases.
- Timer `expire_leases` on `%KVF_LEASE_SCHEDULE%`: takes the rules of ended leases away.

With KVF_LEASES=off every route answers 404 and the timer does nothing.
"""

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import azure.functions as func

from functions import answer, invocation_threads, json_response

if TYPE_CHECKING:
    from kvfirewall.lease_broker import Answer, LeaseBroker

bp = func.Blueprint()
log = logging.getLogger("kvfirewall")
OFF = {"error": "access leases are off (KVF_LEASES)"}
NO_STORE = {"Cache-Control": "no-store"}


def _leasing(
    handle: Callable[["LeaseBroker"], "Answer"], thread_init: Callable[[], None] | None = None
) -> func.HttpResponse:
    from kvfirewall.lease_broker import LeaseBroker
    from kvfirewall.service import service_from_env

    def run() -> func.HttpResponse:
        broker = LeaseBroker(service_from_env(), thread_init=thread_init)
        if not broker.enabled:
            return json_response(404, OFF, headers=NO_STORE)
        result = handle(broker)
        return json_response(result.status, result.body, headers={**NO_STORE, **result.headers})

    return answer(run, headers=NO_STORE)


@bp.function_name("lease_grant_http")
@bp.route(route="leases", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def lease_grant_http(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return _leasing(
        lambda broker: broker.grant(
            authorization=req.headers.get("Authorization"),
            body=req.get_body() or b"",
            forwarded_for=req.headers.get("X-Forwarded-For"),
        ),
        invocation_threads(context),
    )


@bp.function_name("lease_release_http")
@bp.route(route="leases/{id}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
def lease_release_http(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    lease_id = req.route_params.get("id", "")
    return _leasing(
        lambda broker: broker.release(lease_id, authorization=req.headers.get("Authorization")),
        invocation_threads(context),
    )


@bp.function_name("leases_http")
@bp.route(route="leases", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def leases_http(req: func.HttpRequest) -> func.HttpResponse:
    from kvfirewall.lease_broker import Answer

    return _leasing(lambda broker: Answer(200, broker.active()))


@bp.function_name("expire_leases")
@bp.timer_trigger(
    arg_name="timer", schedule="%KVF_LEASE_SCHEDULE%", run_on_startup=False, use_monitor=True
)
def expire_leases(timer: func.TimerRequest, context: func.Context) -> None:
    from kvfirewall.lease_broker import LeaseBroker
    from kvfirewall.service import service_from_env

    broker = LeaseBroker(service_from_env(), thread_init=invocation_threads(context))
    if broker.enabled:
        broker.expire()
