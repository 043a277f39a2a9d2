"""The Function App's triggers, one blueprint per kind. They translate Functions objects into
calls of `kvfirewall.service` and its results into logs and responses; nothing else.

No `from __future__ import annotations` in these modules: the Functions worker reads the
parameter annotations at indexing time and needs real types, not strings.
"""

import logging

# azure-core logs every request and response header at INFO; in App Insights that would drown
# kvfirewall's own lines (and cost money). Warnings and errors from the SDKs still get through.
logging.getLogger("azure").setLevel(logging.WARNING)
