"""Errors at the edge: how an exception is shown in a report, a log line or on stderr.

Exceptions from the SDKs carry request ids, headers and sometimes a whole response body
over many lines; a report needs one bounded line that says what failed.
"""

from __future__ import annotations

MAX_ERROR_CHARS = 500


def one_line(exc: BaseException) -> str:
    """`<type>: <first line of the message>`, at most `MAX_ERROR_CHARS`: no traceback, no
    headers, nothing after the first line."""
    text = str(exc)
    first = text.splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}"[:MAX_ERROR_CHARS]
