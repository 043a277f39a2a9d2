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


class LedgerReads:
    """Ledger entries of listed vaults, for one run. `keep` subscriptions' entries are held at
    once, the least recently used given up first (read again if one of its vaults comes
    later). A run plans its listed vaults on one thread; the lock keeps it safe for more (the
    others wait for the one query, and send none of their own)."""

    def __init__(self, store: StateStore, *, keep: int) -> None:
        self._store = store
        self._keep = keep
        self._lock = threading.Lock()
        self._held: OrderedDict[str, Mapping[str, LedgerEntry] | None] = OrderedDict()

    def entry(self, vault_key: str) -> LedgerEntry:
        """The entry of this vault (lower-cased id), empty if it has none."""
        entries = self._entries(vault_key.split("/")[2])
        if entries is None:  # the store reads one entry for less
            return self._store.read_entry(vault_key)
        return entries.get(vault_key, LedgerEntry())

    def _entries(self, subscription: str) -> Mapping[str, LedgerEntry] | None:
        with self._lock:
            if subscription in self._held:
                self._held.move_to_end(subscription)
                return self._held[subscription]
            entries = self._store.entries_of(subscription)  # a failure: read again next time
            self._held[subscription] = entries
            while len(self._held) > self._keep:
                self._held.popitem(last=False)
            return entries
