"""Errors at the edge: one bounded line per error, and which ones time can fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from azure.core.exceptions import (
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)

from kvfirewall.errors import MAX_ERROR_CHARS, is_transient, one_line
from kvfirewall.ledger import LeaseLost

ROOT = Path(__file__).resolve().parent.parent


def test_an_error_is_shown_as_its_type_and_first_line_only():
    exc = RuntimeError("storage unreachable\nTraceback (most recent call last):\n  secret")
    assert one_line(exc) == "RuntimeError: storage unreachable"
    assert one_line(ValueError()) == "ValueError: "
    assert len(one_line(OSError("x" * 10_000))) == MAX_ERROR_CHARS


def test_every_module_shows_errors_through_the_one_helper():
    """A second copy of the helper drifts (another bound, another format)."""
    copies = [
        path.relative_to(ROOT)
        for path in (ROOT / "kvfirewall").glob("*.py")
        if "splitlines()[0]" in path.read_text() and path.name != "errors.py"
    ]
    assert copies == []


def http_error(status: int | None) -> HttpResponseError:
    exc = HttpResponseError(message=f"HTTP {status}")
    exc.status_code = status
    return exc


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, None])
def test_what_time_can_fix_is_transient(status):
    assert is_transient(http_error(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 412])
def test_other_client_errors_are_permanent(status):
    assert not is_transient(http_error(status))


@pytest.mark.parametrize(
    "exc",
    [
        ServiceRequestError("connection refused"),
        ServiceResponseError("connection reset"),
        ServiceResponseTimeoutError("read timed out"),
        TimeoutError(),
        ConnectionResetError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_timeouts_and_connection_errors_are_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        json.JSONDecodeError("Expecting value", "{not json", 0),
        KeyError("Entry"),
        TypeError("'NoneType' object is not iterable"),
        ValueError("'1.2.3.400/32' does not appear to be an IPv4 network"),
        LeaseLost("the vault's lease could not be renewed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_bad_data_and_a_lost_lease_are_permanent(exc):
    assert not is_transient(exc)
