"""A run's reads of the ledger entries of the vaults it lists: a subscription's in one query.

A run over every vault plans each listed vault against its ledger entry, and most vaults,
most runs, turn out compliant: one Table request per vault would cost such a run more CPU and
time than everything else it does. Where the store can (`StateStore.entries_of`), a
subscription's entries are read in one query when its first vault is planned, and kept for
the few subscriptions being worked at once.

An entry read this way may be older than the vault's plan by as long as the subscription
takes to list: it only decides that a vault needs no write. A vault that needs one is planned
again under its lease, on a fresh read of the vault and of its entry (writer.py), so an older
entry can cost a needless lease, or leave a change to the next run, but never a wrong write.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

from kvfirewall.ledger import LedgerEntry, StateStore

__all__ = ["LedgerReads"]


class _Subscription:
    """One subscription's entries, read once by the first thread that needs them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.read = False
        self.entries: Mapping[str, LedgerEntry] | None = None


class LedgerReads:
    """Ledger entries of listed vaults, for one run's worker threads. `keep` subscriptions'
    entries are held at once, the least recently used given up first (read again if one of
    its vaults comes later)."""

    def __init__(self, store: StateStore, *, keep: int) -> None:
        self._store = store
        self._keep = keep
        self._lock = threading.Lock()
        self._subscriptions: OrderedDict[str, _Subscription] = OrderedDict()

    def entry(self, vault_key: str) -> LedgerEntry:
        """The entry of this vault (lower-cased id), empty if it has none."""
        entries = self._entries(vault_key.split("/")[2])
        if entries is None:  # the store reads one entry for less
            return self._store.read_entry(vault_key)
        return entries.get(vault_key, LedgerEntry())

    def _entries(self, subscription: str) -> Mapping[str, LedgerEntry] | None:
        with self._lock:
            held = self._subscriptions.get(subscription)
            if held is None:
                held = self._subscriptions[subscription] = _Subscription()
                while len(self._subscriptions) > self._keep:
                    self._subscriptions.popitem(last=False)
            else:
                self._subscriptions.move_to_end(subscription)
        with held.lock:  # the others wait for the one query, and read none of their own
            if not held.read:
                held.entries = self._store.entries_of(subscription)  # a failure: read again
                held.read = True
            return held.entries
