"""The Function App's functions as the host indexes them: once per process, as a second
indexing fails on "duplicate" names; every test module that invokes functions shares this."""

import function_app

FUNCTIONS = {f.get_function_name(): f for f in function_app.app.get_functions()}
