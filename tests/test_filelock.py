"""The local store's vault lock works without `fcntl`, as on Windows."""

from __future__ import annotations

import fcntl
import importlib
import os
import sys

import pytest

from kvfirewall import filelock
from kvfirewall.ledger import LeaseBusy, LocalStore

VAULT = "/subscriptions/00000000-0000-0000-0000-000000000001/resourcegroups/rg/providers/microsoft.keyvault/vaults/kv1"
OTHER = VAULT.replace("kv1", "kv2")


def test_vault_leases_exclude_each_other_where_there_is_no_fcntl(monkeypatch, tmp_path):
    """Without `fcntl` the lock is taken with `msvcrt.locking`. Here a stand-in `msvcrt` with
    its Windows behaviour (a byte range from the current position, per handle, a
    PermissionError when taken) plays it, on top of the real `flock`."""
    real_flock = fcntl.flock
    calls: list[tuple[int, int, int]] = []

    class Msvcrt:
        LK_UNLCK, LK_NBLCK = 0, 2

        @staticmethod
        def locking(fd: int, mode: int, nbytes: int) -> None:
            calls.append((mode, nbytes, os.lseek(fd, 0, os.SEEK_CUR)))
            try:
                real_flock(fd, fcntl.LOCK_UN if mode == 0 else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PermissionError(13, "Permission denied") from None

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` fails, as on Windows
    monkeypatch.setitem(sys.modules, "msvcrt", Msvcrt)
    try:
        windows = importlib.reload(filelock)
        assert windows.fcntl is None
        store = LocalStore(tmp_path)
        with store.lease(VAULT, wait_seconds=0):
            with pytest.raises(LeaseBusy), store.lease(VAULT, wait_seconds=0):
                pass
            with store.lease(OTHER, wait_seconds=0):
                pass
        with store.lease(VAULT, wait_seconds=0):  # released
            pass
        assert {mode for mode, _, _ in calls} == {0, 2}
        assert all((nbytes, position) == (1, 0) for _, nbytes, position in calls)
    finally:
        monkeypatch.undo()
        importlib.reload(filelock)
    assert filelock.fcntl is fcntl
