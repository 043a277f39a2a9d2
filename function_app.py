"""Azure Functions entry point (Python v2 programming model).

Kept small on purpose: the app object only. Triggers are blueprints in `functions/`, and all
behaviour lives in the `kvfirewall` package.
"""

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
