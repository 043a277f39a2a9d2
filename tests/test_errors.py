"""Errors at the edge: one bounded line per error."""

from __future__ import annotations

from pathlib import Path

from kvfirewall.errors import MAX_ERROR_CHARS, one_line

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
