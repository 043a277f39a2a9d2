"""The ledger: which rules kvfirewall added to each vault, and the last good range snapshot.

Ownership is the whole safety story: a rule is removed only if the ledger says kvfirewall
added it. Additions are recorded as *pending* before the write and confirmed after it, so a
crash between the two never strands a rule as "someone else's" (see `reconcile.py`).

Two backends behind one small interface: a local directory (CLI, tests) and Azure Storage
(Table for the ledger, Blob for snapshots) for the Function App.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Protocol

from kvfirewall.ranges import Snapshot
from kvfirewall.settings import StateLocation

TABLE_NAME = "kvfirewallledger"
LEASE_SECONDS = 60  # a Blob lease's longest fixed term; kept renewed while held
LEASE_POLL_SECONDS = 0.5
CONTAINER_NAME = "kvfirewall"
SNAPSHOT_BLOB = "ranges/last-good.json"
# Storage that is down or hangs should fail a run in seconds, not after the SDKs' minutes of
# backoff and 60-300 s read timeouts: the next run (or Event Grid's redelivery, which waits only
# 30 s for an answer) is the better retry. Entries and the snapshot are a few kB.
TABLE_OPTIONS = {"retry_total": 1, "retry_backoff_factor": 0.5,
                 "connection_timeout": 5, "read_timeout": 8}  # fmt: skip
BLOB_OPTIONS = {"retry_total": 1, "initial_backoff": 1, "increment_base": 2,
                "random_jitter_range": 1, "connection_timeout": 5, "read_timeout": 8}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """The rules kvfirewall owns on one vault (IPv4 networks and lower-cased subnet ids)."""

    ip_rules: frozenset[IPv4Network] = frozenset()
    subnets: frozenset[str] = frozenset()
    pending_ip_rules: frozenset[IPv4Network] = frozenset()
    pending_subnets: frozenset[str] = frozenset()
    # The vault's creation time (systemData.createdAt): a vault deleted and created again under
    # the same id is another vault, and must not inherit this one's ownership.
    generation: str = ""

    def __bool__(self) -> bool:
        return bool(self.ip_rules or self.subnets or self.pending_ip_rules or self.pending_subnets)

    def to_json(self) -> dict:
        return {
            "ipRules": sorted(map(str, self.ip_rules)),
            "subnets": sorted(self.subnets),
            "pendingIpRules": sorted(map(str, self.pending_ip_rules)),
            "pendingSubnets": sorted(self.pending_subnets),
            "generation": self.generation,
        }

    @classmethod
    def from_json(cls, data: dict) -> LedgerEntry:
        return cls(
            ip_rules=frozenset(IPv4Network(v) for v in data.get("ipRules", ())),
            subnets=frozenset(data.get("subnets", ())),
            pending_ip_rules=frozenset(IPv4Network(v) for v in data.get("pendingIpRules", ())),
            pending_subnets=frozenset(data.get("pendingSubnets", ())),
            generation=str(data.get("generation", "")),
        )


class LeaseBusy(Exception):
    """Another run holds the vault's lease for longer than this run may wait."""


class LeaseLost(Exception):
    """The lease could not be kept (storage unreachable for a whole term): another run may
    hold it now, so this one must not write the vault or its ledger entry any more."""


class Lease(Protocol):
    """Held while one run writes a vault and its ledger entry."""

    def hold(self) -> None:
        """Raise `LeaseLost` unless the lease is still held; called before every write."""


class StateStore(Protocol):
    """Where ledger entries (keyed by lower-cased vault id) and the snapshot are kept.

    `lease` serializes the runs that write one vault (threads, processes, Function App
    instances sharing the store): without it two runs could each read, merge and PATCH, and
    the second write would drop what the first added, or its ledger would forget it.
    """

    def read_entry(self, vault_key: str) -> LedgerEntry: ...

    def write_entry(self, vault_key: str, entry: LedgerEntry) -> None: ...

    def read_snapshot(self) -> Snapshot | None: ...

    def write_snapshot(self, snapshot: Snapshot) -> None: ...

    def describe(self) -> str: ...

    def lease(
        self, vault_key: str, *, wait_seconds: float
    ) -> contextlib.AbstractContextManager[Lease]: ...


def open_store(location: StateLocation) -> StateStore:
    """The store for a validated `StateLocation`."""
    if location.kind == "local":
        return LocalStore(Path(location.value))
    return AzureStore(location)


def _row_key(vault_key: str) -> str:
    # Table keys may not hold '/', and ids are long: a digest is stable and safe.
    return hashlib.sha256(vault_key.encode()).hexdigest()


def _poll(try_once: Callable[[], bool], wait_seconds: float, what: str) -> None:
    """Try to take a lease until `wait_seconds` have passed; `LeaseBusy` then."""
    deadline = time.monotonic() + max(0.0, wait_seconds)
    while not try_once():
        if time.monotonic() >= deadline:
            raise LeaseBusy(f"another kvfirewall run holds the lease of {what}")
        time.sleep(LEASE_POLL_SECONDS * random.uniform(0.5, 1.0))


class _FileLease:
    """An OS file lock: released by the kernel when the process dies, so a crash never
    leaves a vault locked."""

    def hold(self) -> None:
        """Always held: the lock lasts as long as the process holds the file."""


class _KeptBlobLease:
    """A Blob lease renewed every third of its term by a thread of its own, so that no wait
    of the holder (a Retry-After, a slow storage call) lets it run out; if renewing fails
    for so long that it may have, `hold` says so.

    `clock` and `stop` (whose `wait` paces the renewals) can be replaced, so that renewals
    over a whole term are tested without waiting one."""

    def __init__(
        self,
        client,
        *,
        term: float,
        clock: Callable[[], float] = time.monotonic,
        stop: threading.Event | None = None,
    ) -> None:
        self._client = client
        self._term = term
        self._clock = clock
        self._lost: Exception | None = None
        self._stop = stop or threading.Event()
        self._thread = threading.Thread(target=self._keep, name="kvf-lease", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        renewed = self._clock()
        while not self._stop.wait(self._term / 3):
            try:
                self._client.renew()
                renewed = self._clock()
            except Exception as exc:  # kept, and raised by hold()
                taken = getattr(exc, "status_code", None) in (409, 412)  # ran out, re-leased
                if taken or self._clock() - renewed >= self._term * 2 / 3:
                    self._lost = exc
                    return

    def hold(self) -> None:
        if self._lost is not None:
            raise LeaseLost(f"the vault's lease could not be renewed: {self._lost}")

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):  # it runs out by itself within a minute anyway
            self._client.release()


class LocalStore:
    """A directory: one JSON file per vault, written atomically (write, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"directory {self.root}"

    def _entry_path(self, vault_key: str) -> Path:
        return self.root / "ledger" / f"{_row_key(vault_key)}.json"

    def read_entry(self, vault_key: str) -> LedgerEntry:
        path = self._entry_path(vault_key)
        if not path.exists():
            return LedgerEntry()
        return LedgerEntry.from_json(json.loads(path.read_text()))

    def write_entry(self, vault_key: str, entry: LedgerEntry) -> None:
        path = self._entry_path(vault_key)
        if not entry:
            path.unlink(missing_ok=True)
            return
        _atomic_write(path, {"vaultId": vault_key, **entry.to_json()})

    def read_snapshot(self) -> Snapshot | None:
        path = self.root / SNAPSHOT_BLOB
        return Snapshot.from_json(json.loads(path.read_text())) if path.exists() else None

    def write_snapshot(self, snapshot: Snapshot) -> None:
        _atomic_write(self.root / SNAPSHOT_BLOB, snapshot.to_json())

    @contextlib.contextmanager
    def lease(self, vault_key: str, *, wait_seconds: float) -> Iterator[Lease]:
        """An exclusive `flock` on `leases/<digest>.lock` (per open file, so threads of one
        process exclude each other too)."""
        import fcntl

        path = self.root / "leases" / f"{_row_key(vault_key)}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as handle:

            def try_once() -> bool:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True

            _poll(try_once, wait_seconds, vault_key)
            try:
                yield _FileLease()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AzureStore:
    """Azure Storage: Table `kvfirewallledger` (PartitionKey = subscription) and a Blob."""

    def __init__(
        self,
        location: StateLocation,
        *,
        table: str = TABLE_NAME,
        container: str = CONTAINER_NAME,
    ) -> None:
        from azure.data.tables import TableServiceClient
        from azure.storage.blob import BlobServiceClient

        self._location = location
        if location.kind == "identity":
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(
                managed_identity_client_id=location.client_id or None
            )
            tables = TableServiceClient(
                endpoint=location.table_url, credential=credential, **TABLE_OPTIONS
            )
            blobs = BlobServiceClient(
                account_url=location.value, credential=credential, **BLOB_OPTIONS
            )
        else:
            tables = TableServiceClient.from_connection_string(location.value, **TABLE_OPTIONS)
            blobs = BlobServiceClient.from_connection_string(location.value, **BLOB_OPTIONS)
        self._table = tables.get_table_client(table)
        self._container = blobs.get_container_client(container)

    def describe(self) -> str:
        return self._location.describe()

    def _created(self, write: Callable[[], object]) -> None:
        """Run a write, creating the table and container the first time one is missing.

        Reads never create anything, so a dry run works with read-only storage rights.
        """
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        try:
            write()
        except ResourceNotFoundError:
            for create in (self._table.create_table, self._container.create_container):
                with contextlib.suppress(ResourceExistsError):
                    create()
            write()

    @staticmethod
    def _partition(vault_key: str) -> str:
        parts = vault_key.split("/")
        return parts[2] if len(parts) > 2 else "_"

    def read_entry(self, vault_key: str) -> LedgerEntry:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(self._partition(vault_key), _row_key(vault_key))
        except ResourceNotFoundError:  # no entity, or no table yet
            return LedgerEntry()
        return LedgerEntry.from_json(json.loads(entity["Entry"]))

    def write_entry(self, vault_key: str, entry: LedgerEntry) -> None:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        partition, row = self._partition(vault_key), _row_key(vault_key)
        if not entry:
            with contextlib.suppress(ResourceNotFoundError):
                self._table.delete_entity(partition, row)
            return
        entity = {
            "PartitionKey": partition,
            "RowKey": row,
            "VaultId": vault_key,
            "Entry": json.dumps(entry.to_json(), separators=(",", ":")),
        }
        self._created(lambda: self._table.upsert_entity(entity, mode=UpdateMode.REPLACE))

    def read_snapshot(self) -> Snapshot | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            data = self._container.download_blob(SNAPSHOT_BLOB).readall()
        except ResourceNotFoundError:  # no blob, or no container yet
            return None
        return Snapshot.from_json(json.loads(data))

    def write_snapshot(self, snapshot: Snapshot) -> None:
        text = json.dumps(snapshot.to_json(), indent=1)
        self._created(lambda: self._container.upload_blob(SNAPSHOT_BLOB, text, overwrite=True))

    @contextlib.contextmanager
    def lease(self, vault_key: str, *, wait_seconds: float) -> Iterator[Lease]:
        """A Blob lease on `leases/<digest>` in the container, for `LEASE_SECONDS` at a
        time: if the holder dies, the lease runs out by itself within a minute."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        blob = self._container.get_blob_client(f"leases/{_row_key(vault_key)}")
        held = []

        def try_once() -> bool:
            try:
                held.append(blob.acquire_lease(lease_duration=LEASE_SECONDS))
            except ResourceNotFoundError:  # the first lease of this vault: create its blob
                try:
                    self._created(lambda: blob.upload_blob(b"", overwrite=False))
                except HttpResponseError as exc:  # created meanwhile (409, or 412 if leased)
                    if exc.status_code not in (409, 412):
                        raise
                return try_once()
            except HttpResponseError as exc:
                if exc.status_code == 409:  # LeaseAlreadyPresent
                    return False
                raise
            return True

        _poll(try_once, wait_seconds, vault_key)
        lease = _KeptBlobLease(held[0], term=LEASE_SECONDS)
        try:
            yield lease
        finally:
            lease.release()
