"""Queue triggers of a fanned-out run (see `kvfirewall.fan_out`).

- `reconcile_queue` on `kvfirewall-work`: one message's vaults of one subscription, each from a
  fresh read under its lease; its results become the message's part of the run's report. A
  failure of kvfirewall's own storage fails the invocation, so that the host delivers the
  message again (a repeated delivery does no harm); failed vaults do not, they are reported.
- `reconcile_poison` on `kvfirewall-work-poison`, where the host moves a message after
  `maxDequeueCount` failed deliveries (host.json): its vaults are reported failed, so that the
  run still completes and says so.

Both bind to the host's storage (`AzureWebJobsStorage`, by identity in Azure), which is the
state's account when KVF_STATE is not set; the queue's name is `work_queue.QUEUE_NAME`.
"""

import logging

import azure.functions as func

from functions import invocation_threads

bp = func.Blueprint()
log = logging.getLogger("kvfirewall")
QUEUE = "kvfirewall-work"


@bp.function_name("reconcile_queue")
@bp.queue_trigger(arg_name="message", queue_name=QUEUE, connection="AzureWebJobsStorage")
def reconcile_queue(message: func.QueueMessage, context: func.Context) -> None:
    from kvfirewall.fan_out import consume
    from kvfirewall.service import log_report, service_from_env

    work = _parsed(message)
    if work is None:
        return
    report = consume(service_from_env(), work, thread_init=invocation_threads(context))
    if report is None:
        log.info("kvfirewall message %s: done already, or its run is over", message.id)
    else:
        log_report(report)


@bp.function_name("reconcile_poison")
@bp.queue_trigger(
    arg_name="message", queue_name=f"{QUEUE}-poison", connection="AzureWebJobsStorage"
)
def reconcile_poison(message: func.QueueMessage) -> None:
    from kvfirewall.fan_out import poisoned
    from kvfirewall.service import service_from_env

    work = _parsed(message)
    if work is None:
        return
    report = poisoned(service_from_env(), work)
    log.warning("kvfirewall %s", report.warnings[0])


def _parsed(message: func.QueueMessage):
    """The work message, or None (logged) for one that is not kvfirewall's."""
    from kvfirewall.work_queue import MalformedMessage, WorkMessage

    try:
        return WorkMessage.from_text(message.get_body().decode("utf-8", errors="replace"))
    except MalformedMessage as exc:
        log.warning("kvfirewall queue message %s dropped as malformed: %s", message.id, exc)
        return None
