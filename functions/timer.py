"""Timer trigger: refresh the AzureDevOps ranges and reconcile every vault in scope.

The schedule is the app setting KVF_SCHEDULE (NCRONTAB with seconds, UTC), which the host
resolves and which must be set: `0 0 * * * *` (hourly) in the sample settings and the
deployment. `use_monitor` keeps the schedule across restarts, and scale-out runs it on one
instance only; it never runs on startup, which would reconcile the estate on every cold start.
"""

import logging

import azure.functions as func

from functions import invocation_threads

bp = func.Blueprint()
log = logging.getLogger("kvfirewall")


class RunFailed(Exception):
    """Some vaults failed: the invocation is marked failed so that monitoring sees it."""


@bp.function_name("reconcile_timer")
@bp.timer_trigger(
    arg_name="timer", schedule="%KVF_SCHEDULE%", run_on_startup=False, use_monitor=True
)
def reconcile_timer(timer: func.TimerRequest, context: func.Context) -> None:
    from kvfirewall.service import log_report, service_from_env

    if timer.past_due:
        log.warning("kvfirewall timer is past due; reconciling now")
    report = service_from_env().scheduled_run(thread_init=invocation_threads(context))
    log_report(report)
    if report.failed:
        raise RunFailed(f"{report.counts['failed']} vaults failed; see the report above")
