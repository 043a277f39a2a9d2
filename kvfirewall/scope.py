"""Which subscriptions a run manages: those named in KVF_SUBSCRIPTIONS and those below each
management group named there, as the groups stand when the run starts.

A group that cannot be read this run (no right, not found, an outage) gives one warning and
nothing else: its subscriptions are not reached by this run. They are never out of scope on
that account; and being out of scope never removes anything either: a vault outside the
scope is left exactly as it is, ledger included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvfirewall.errors import is_transient, one_line
from kvfirewall.settings import Settings

__all__ = ["Scope", "resolve_scope"]


@dataclass(frozen=True)
class Scope:
    """The subscriptions of one run, and the groups it could not read."""

    subscriptions: tuple[str, ...]
    unread_groups: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    transient: bool = False  # a group failed for a reason that time may fix

    def __contains__(self, subscription: object) -> bool:
        return subscription in self.subscriptions


def resolve_scope(settings: Settings, descendants: Callable[[str], list[str]]) -> Scope:
    """The configured subscriptions, then each group's current ones (`descendants`), once."""
    subscriptions = list(settings.subscriptions)
    unread: list[str] = []
    warnings: list[str] = []
    transient = False
    for group in settings.management_groups:
        try:
            below = descendants(group)
        except Exception as exc:  # one group's failure must not stop the others
            unread.append(group)
            transient = transient or is_transient(exc)
            warnings.append(
                f"management group {group} could not be read ({one_line(exc)}): its "
                "subscriptions are not reached by this run; nothing is removed"
            )
            continue
        if not below:
            warnings.append(f"management group {group} holds no subscription")
        subscriptions.extend(below)
    return Scope(
        subscriptions=tuple(dict.fromkeys(subscriptions)),
        unread_groups=tuple(unread),
        warnings=tuple(warnings),
        transient=transient,
    )
