"""Azure Functions entry point (Python v2 programming model).

Kept small on purpose: the app object and one blueprint per trigger from `functions/`; all
behaviour lives in the `kvfirewall` package. Nothing here reads settings, so a bad app setting
never stops the app from being indexed: each invocation fails with the settings message.
"""

import azure.functions as func

from functions import event_grid, http_api, leases, status, timer, work_queue

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (timer.bp, event_grid.bp, http_api.bp, status.bp, leases.bp, work_queue.bp):
    app.register_functions(blueprint)
