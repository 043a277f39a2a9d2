"""An exclusive, non-blocking lock on an open file, on Windows as elsewhere.

`fcntl.flock` where there is `fcntl` (Linux, macOS), `msvcrt.locking` on Windows. Both lock
per open file (two handles of one process exclude each other, so threads do too), and the
operating system releases the lock when its holder dies: a crash never leaves it taken.
Both are advisory towards other programs, and neither is reliable on network file systems
(NFS, SMB shares), where the state directory should not be.
"""

from __future__ import annotations

from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt


def try_lock(handle: BinaryIO) -> bool:
    """Take the lock if it is free; False if another handle holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    handle.seek(0)  # msvcrt locks bytes from the current position: always the first one
    try:
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:  # locked by another handle (Windows raises a PermissionError)
        return False
    return True


def lock(handle: BinaryIO) -> None:
    """Take the lock, waiting for it: for locks held only as long as one small file write
    (msvcrt gives up after 10 s with an OSError)."""
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return
    handle.seek(0)
    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)


def unlock(handle: BinaryIO) -> None:
    """Release a lock taken with `try_lock`."""
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        return
    handle.seek(0)
    msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
