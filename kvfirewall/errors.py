"""Errors at the edge: how an exception is shown, and whether another attempt may succeed.

Exceptions from the SDKs carry request ids, headers and sometimes a whole response body
over many lines; a report needs one bounded line that says what failed. Whether it is worth
another attempt decides whether Event Grid delivers an event again (30 times over 24 hours):
only for what time can fix.
"""

from __future__ import annotations

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from kvfirewall.ledger import LeaseLost

MAX_ERROR_CHARS = 500
# Client errors that time fixes: a timeout, a conflicting write in progress, throttling. Every
# other 4xx (400 bad request, 401/403 no right, 404 no such thing) stays as it is.
TRANSIENT_CLIENT_STATUS = frozenset({408, 409, 429})


def one_line(exc: BaseException) -> str:
    """`<type>: <first line of the message>`, at most `MAX_ERROR_CHARS`: no traceback, no
    headers, nothing after the first line."""
    text = str(exc)
    first = text.splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}"[:MAX_ERROR_CHARS]


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt later may succeed where this one failed.

    Transient: 408, 409, 429 and 5xx answers, an answer without a status, timeouts and
    connection errors (of the SDKs or the OS). Permanent: any other 4xx; bad data (a ledger
    entry or document that does not parse: ValueError, KeyError, TypeError, JSON errors);
    a lost lease (another run may hold the vault now, and does it). Anything else is
    taken as transient: an unknown failure is not known to repeat.
    """
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        if status is None or status >= 500 or status in TRANSIENT_CLIENT_STATUS:
            return True
        return not 400 <= status < 500
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, TimeoutError, ConnectionError)):
        return True
    return not isinstance(exc, (ValueError, KeyError, TypeError, LeaseLost))
