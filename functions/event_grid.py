"""Event Grid trigger: a vault was created or changed, reconcile it within seconds.

Subscribed to the subscription's system topic (ResourceWriteSuccess, filtered to
`Microsoft.KeyVault/vaults/write`), in either the Event Grid or the CloudEvents schema.
Malformed and unrelated events are logged and dropped (a redelivery would not fix them);
transient failures fail the invocation so that Event Grid delivers the event again.
kvfirewall's own PATCH raises an event too: it finds the vault compliant and writes nothing.
"""

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger("kvfirewall")


@bp.function_name("reconcile_event")
@bp.event_grid_trigger(arg_name="event")
# Annotated with EventGridEvent because the worker accepts only a plain class here; it passes a
# CloudEvent instead when the subscription delivers the CloudEvents schema.
def reconcile_event(event: func.EventGridEvent) -> None:
    from kvfirewall.service import RetryLater, log_report, service_from_env

    event_type = event.type if isinstance(event, func.CloudEvent) else event.event_type
    data = event.get_json()  # both schemas; the raw `data`, not necessarily an object
    service = service_from_env()
    try:
        outcome = service.handle_event(event_type=event_type, subject=event.subject, data=data)
    except RetryLater as exc:
        log.warning("kvfirewall event %s: will be retried: %s", event.id, exc)
        raise
    if outcome.action == "malformed":
        log.warning("kvfirewall event %s dropped as malformed: %s", event.id, outcome.reason)
    elif outcome.action == "ignored":
        log.info("kvfirewall event %s ignored: %s", event.id, outcome.reason)
    elif outcome.action == "failed":  # permanent: a redelivery would fail the same way
        log.error("kvfirewall event %s failed, not retried: %s", event.id, outcome.reason)
    else:
        log_report(outcome.report)
