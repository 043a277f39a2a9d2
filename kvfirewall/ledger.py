"""The ledger: which rules kvfirewall added to each vault, and the last good range snapshot.

Ownership is the whole safety story: a rule is removed only if the ledger says kvfirewall
added it. Additions are recorded as *pending* before the write and confirmed after it, so a
crash between the two never strands a rule as "someone else's" (see `reconcile.py`).

Two backends behind one small interface: a local directory (CLI, tests) and Azure Storage
(Table for the ledger, Blob for snapshots) for the Function App.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from kvfirewall import filelock
from kvfirewall.clouds import PUBLIC, default_credential
from kvfirewall.entries import LedgerEntry
from kvfirewall.ranges import Snapshot
from kvfirewall.report import (
    ReportInfo,
    name_candidates,
    newest_first,
    parse_report_name,
    report_info,
)
from kvfirewall.settings import DEFAULT_REPORT_DAYS, StateLocation
from kvfirewall.transport import DEADLINE_OPTION, Remaining, RequestTimeouts, shared_transport

if TYPE_CHECKING:
    from kvfirewall.lease_store import LeaseStore

TABLE_NAME = "kvfirewallledger"
LEASE_SECONDS = 60  # a Blob lease's longest fixed term; kept renewed while held
LEASE_POLL_SECONDS = 0.5
CONTAINER_NAME = "kvfirewall"
SNAPSHOT_BLOB = "ranges/last-good.json"
POOLS_BLOB = "pools/last-resolved.json"  # the agent pools' last resolved networks
REPORTS = "reports"  # reports/<name>.json, in the directory or the container
# Storage that is down or hangs should fail a run in seconds, not after the SDKs' minutes of
# backoff and 60-300 s read timeouts: the next run (or Event Grid's redelivery, which waits only
# 30 s for an answer) is the better retry. Entries and the snapshot are a few kB. The timeouts
# are set per request (the transport is the process's, shared), cut to the run's budget.
TABLE_OPTIONS = {"retry_total": 1, "retry_backoff_factor": 0.5}
BLOB_OPTIONS = {"retry_total": 1, "initial_backoff": 1, "increment_base": 2,
                "random_jitter_range": 1}  # fmt: skip
STORAGE_TIMEOUTS = {"connect": 5.0, "read": 8.0}


class StaleEntry(Exception):
    """The ledger entry changed since it was read (another holder wrote it, after this
    one's lease ran out unnoticed): nothing was written; read it again and plan again."""


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

    def entries_of(self, subscription: str) -> Mapping[str, LedgerEntry] | None:
        """Every entry of one subscription's vaults by key, read in as few requests as the
        store allows, for a run that plans each of its vaults; None where one read per vault
        costs less (a local directory)."""
        ...

    def entries_not_in(
        self, subscriptions: Collection[str], listed: Collection[str]
    ) -> Iterator[tuple[str, LedgerEntry]]:
        """The entries of these subscriptions' vaults whose keys are not in `listed` (a
        complete listing of them): vaults deleted with no event kvfirewall saw. Only those
        entries are read."""
        ...

    def write_entry(self, vault_key: str, entry: LedgerEntry, *, base: LedgerEntry) -> LedgerEntry:
        """Store `entry` (an empty one deletes it) over `base`, the entry as it was read;
        `StaleEntry` if the stored entry is no longer that version. Returns `entry` with its
        new version."""
        ...

    def read_snapshot(self) -> Snapshot | None: ...

    def write_snapshot(self, snapshot: Snapshot) -> None: ...

    def read_pools(self) -> dict | None:
        """The agent pools' last resolved networks as stored (`PoolSnapshot.to_json`)."""
        ...

    def write_pools(self, data: dict) -> None: ...

    def describe(self) -> str: ...

    def within(self, remaining: Remaining) -> StateStore:
        """The store for one run, whose calls end within `remaining()` seconds."""
        ...

    def lease(
        self, vault_key: str, *, wait_seconds: float
    ) -> contextlib.AbstractContextManager[Lease]: ...

    def save_report(self, name: str, chunks: Iterable[bytes], *, counts: Mapping[str, int]) -> str:
        """Store a run's full report, streamed from `chunks`, as `reports/<name>.json` (or
        `<name>-2`, ... if that name is taken: never overwritten) with its counts beside it,
        and delete the reports older than the retention; returns the name it took."""
        ...

    def list_reports(self) -> list[ReportInfo]:
        """The stored reports, newest first, with their counts (no report is read)."""
        ...

    def read_report(self, name: str) -> bytes:
        """A stored report's JSON; `KeyError` when there is none by that name."""
        ...

    def lease_records(self) -> LeaseStore:
        """The access leases kept beside the ledger (see `lease_store`)."""
        ...


Clock = Callable[[], datetime]
T = TypeVar("T")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def open_store(
    location: StateLocation,
    *,
    arm_endpoint: str = PUBLIC.arm_endpoint,
    report_days: int = DEFAULT_REPORT_DAYS,
) -> StateStore:
    """The store for a validated `StateLocation`, keeping reports for `report_days`;
    identity-based storage signs in at the cloud of `arm_endpoint`."""
    if location.kind == "local":
        return LocalStore(Path(location.value), report_days=report_days)
    return AzureStore(location, arm_endpoint=arm_endpoint, report_days=report_days)


def _expired(name: str, now: datetime, report_days: int) -> bool:
    """Whether a report (by its name's time) is older than the retention; other names never
    are: nothing but kvfirewall's own reports is deleted."""
    parsed = parse_report_name(name)
    return parsed is not None and parsed[0] < now - timedelta(days=report_days)


def _row_key(vault_key: str) -> str:
    # Table keys may not hold '/', and ids are long: a digest is stable and safe.
    return hashlib.sha256(vault_key.encode()).hexdigest()


# A local entry's compare-and-swap locks one of 16 ** SWAP_LOCK_DIGITS files (named by the
# first digits of the entry's digest): held for one small file write, they are rarely shared.
SWAP_LOCK_DIGITS = 2

# An Azure Table String property holds at most 64 KiB (32K UTF-16 code units) and an entity at
# most 1 MiB in 255 properties: an entry's JSON is split across properties Entry0, Entry1, ...
# (1,000 IP rules and 200 subnet ids of 200 characters, owned and pending: 4 of them).
ENTRY_PROPERTY_CHARS = 30_000
ENTRY_PROPERTIES = 30  # 900,000 characters: well within an entity's 1 MiB


def _split(text: str) -> dict[str, str]:
    parts = [text[i : i + ENTRY_PROPERTY_CHARS] for i in range(0, len(text), ENTRY_PROPERTY_CHARS)]
    if len(parts) > ENTRY_PROPERTIES:
        raise ValueError(f"a ledger entry of {len(text)} characters does not fit an entity")
    return {f"Entry{n}": part for n, part in enumerate(parts)}


def _entry_of(entity) -> LedgerEntry:
    """A Table entity as the entry it holds, versioned by its ETag."""
    entry = LedgerEntry.from_json(json.loads(_joined(entity)))
    return replace(entry, version=entity.metadata["etag"])


def _joined(entity: dict) -> str:
    """The entry's JSON from its properties (`Entry`, before entries were split)."""
    if "Entry" in entity:
        return entity["Entry"]
    parts = []
    while f"Entry{len(parts)}" in entity:
        parts.append(entity[f"Entry{len(parts)}"])
    if not parts:
        raise KeyError("the ledger entity holds no entry")
    return "".join(parts)


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

    def __init__(
        self, root: Path, *, report_days: int = DEFAULT_REPORT_DAYS, clock: Clock = _utc_now
    ) -> None:
        self.root = root
        self.report_days = report_days
        self._clock = clock

    def describe(self) -> str:
        return f"directory {self.root}"

    def lease_records(self) -> LeaseStore:
        """The access leases kept beside this ledger (`lease_store.LocalLeaseStore`)."""
        from kvfirewall.lease_store import LocalLeaseStore

        return LocalLeaseStore(self.root)

    def within(self, remaining: Remaining) -> LocalStore:
        """The same store: a local file is not a call worth cutting short."""
        return self

    def _entry_path(self, vault_key: str) -> Path:
        return self.root / "ledger" / f"{_row_key(vault_key)}.json"

    def entries_not_in(
        self, subscriptions: Collection[str], listed: Collection[str]
    ) -> Iterator[tuple[str, LedgerEntry]]:
        """One pass over the directory; only the files of keys not listed are read."""
        known = {f"{_row_key(key)}.json" for key in listed}
        wanted = {s.lower() for s in subscriptions}
        folder = self.root / "ledger"
        for path in folder.glob("*.json") if folder.is_dir() else ():
            if path.name in known:
                continue
            try:
                data = path.read_bytes()
                key = str(json.loads(data).get("vaultId", ""))
            except (OSError, ValueError):  # removed meanwhile, or not an entry
                continue
            if self._subscription(key) in wanted:
                yield key, replace(LedgerEntry.from_json(json.loads(data)), version=_digest(data))

    @staticmethod
    def _subscription(vault_key: str) -> str:
        parts = vault_key.split("/")
        return parts[2] if len(parts) > 2 else ""

    def entries_of(self, subscription: str) -> Mapping[str, LedgerEntry] | None:
        """None: a file read per vault costs less than reading the whole directory."""
        return None

    def read_entry(self, vault_key: str) -> LedgerEntry:
        try:
            data = self._entry_path(vault_key).read_bytes()
        except FileNotFoundError:
            return LedgerEntry()
        return replace(LedgerEntry.from_json(json.loads(data)), version=_digest(data))

    def write_entry(self, vault_key: str, entry: LedgerEntry, *, base: LedgerEntry) -> LedgerEntry:
        """Compare and swap under an exclusive lock: the digest of what is stored must
        still be `base.version`. The lock is a file shared by the entries whose digests start
        alike (`SWAP_LOCK_DIGITS`): a lock file per entry would cost every vault's first
        write a file creation, which costs more CPU than the write itself."""
        path = self._entry_path(vault_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".swap-{path.name[:SWAP_LOCK_DIGITS]}"), "a+b") as lock:
            filelock.lock(lock)  # held for one file write: never for long (closing releases it)
            current = _digest(path.read_bytes()) if path.exists() else ""
            if current != base.version:
                raise StaleEntry(f"the ledger entry of {vault_key} changed since it was read")
            if not entry:
                path.unlink(missing_ok=True)
                return LedgerEntry()
            data = json.dumps(
                {"vaultId": vault_key, **entry.to_json()}, sort_keys=True, separators=(",", ":")
            ).encode()
            # The lock is exclusive: a temporary name of the entry's own is free (not *.json,
            # which a sweep of the directory would take for an entry).
            _atomic_write_bytes(path, data, temporary=path.with_name(f".tmp-{path.stem}"))
            return replace(entry, version=_digest(data))

    def read_snapshot(self) -> Snapshot | None:
        path = self.root / SNAPSHOT_BLOB
        return Snapshot.from_json(json.loads(path.read_text())) if path.exists() else None

    def write_snapshot(self, snapshot: Snapshot) -> None:
        _atomic_write(self.root / SNAPSHOT_BLOB, snapshot.to_json())

    def read_pools(self) -> dict | None:
        path = self.root / POOLS_BLOB
        return json.loads(path.read_text()) if path.exists() else None

    def write_pools(self, data: dict) -> None:
        _atomic_write(self.root / POOLS_BLOB, data)

    @contextlib.contextmanager
    def lease(self, vault_key: str, *, wait_seconds: float) -> Iterator[Lease]:
        """An exclusive lock on `leases/<digest>.lock` (per open file, so threads of one
        process exclude each other too; see `filelock`)."""
        path = self.root / "leases" / f"{_row_key(vault_key)}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as handle:
            _poll(lambda: filelock.try_lock(handle), wait_seconds, vault_key)
            try:
                yield _FileLease()
            finally:
                filelock.unlock(handle)

    def save_report(self, name: str, chunks: Iterable[bytes], *, counts: Mapping[str, int]) -> str:
        """The report is written to a temporary file first; then the name is taken by
        creating its counts file exclusively (`<name>.counts`), and the report moved into
        place: a listed report always has its counts, and is always complete."""
        folder = self.root / REPORTS
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            for taken in name_candidates(name):
                try:
                    with open(folder / f"{taken}.counts", "x", encoding="ascii") as handle:
                        json.dump(dict(counts), handle)
                        handle.flush()
                        os.fsync(handle.fileno())
                except FileExistsError:
                    continue
                os.replace(tmp, folder / f"{taken}.json")
                break
            else:
                raise FileExistsError(f"every name for report {name} is taken")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._prune(folder)
        return taken

    def _prune(self, folder: Path) -> None:
        now = self._clock()
        for path in sorted(folder.iterdir(), key=lambda p: p.suffix != ".json"):  # reports first
            if path.suffix in (".json", ".counts") and _expired(path.stem, now, self.report_days):
                path.unlink(missing_ok=True)

    def list_reports(self) -> list[ReportInfo]:
        folder = self.root / REPORTS
        found = []
        for path in folder.glob("*.json") if folder.is_dir() else ():
            try:
                counts = json.loads((folder / f"{path.stem}.counts").read_text("ascii"))
            except (OSError, ValueError):  # pruned meanwhile, or not one of ours
                continue
            info = report_info(path.stem, counts)
            if info is not None:
                found.append(info)
        return newest_first(found)

    def read_report(self, name: str) -> bytes:
        if parse_report_name(name) is None:
            raise KeyError(name)
        try:
            return (self.root / REPORTS / f"{name}.json").read_bytes()
        except FileNotFoundError:
            raise KeyError(name) from None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: dict) -> None:
    _atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())


def _atomic_write_bytes(path: Path, data: bytes, *, temporary: Path | None = None) -> None:
    """Write, fsync, rename: readers see the old file or the new one. The data goes first to
    `temporary`, a name only this writer uses, or else to a fresh temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if temporary is None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    else:
        fd, tmp = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), temporary
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Bounded:
    """A storage client whose calls carry their run's remaining time (`RequestTimeouts` reads
    it); the blob clients it hands out do too. Leases taken through it are not bound: their
    renewal and release outlive the call that took them."""

    def __init__(self, client, remaining: Remaining) -> None:
        self._client = client
        self._remaining = remaining

    def get_blob_client(self, *args, **kwargs) -> _Bounded:
        return _Bounded(self._client.get_blob_client(*args, **kwargs), self._remaining)

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return functools.partial(attribute, **{DEADLINE_OPTION: self._remaining})


class AzureStore:
    """Azure Storage: Table `kvfirewallledger` (PartitionKey = subscription) and a Blob."""

    def __init__(
        self,
        location: StateLocation,
        *,
        table: str = TABLE_NAME,
        container: str = CONTAINER_NAME,
        lease_table: str = "kvfirewallleases",  # lease_store.LEASE_TABLE
        arm_endpoint: str = PUBLIC.arm_endpoint,
        report_days: int = DEFAULT_REPORT_DAYS,
        clock: Clock = _utc_now,
    ) -> None:
        from azure.data.tables import TableServiceClient
        from azure.storage.blob import BlobServiceClient

        self._location = location
        self.report_days = report_days
        self._clock = clock
        shared = {
            "transport": shared_transport(),
            "raw_request_hook": RequestTimeouts(**STORAGE_TIMEOUTS),
        }
        if location.kind == "identity":
            credential = default_credential(arm_endpoint, client_id=location.client_id)
            tables = TableServiceClient(
                endpoint=location.table_url, credential=credential, **TABLE_OPTIONS, **shared
            )
            blobs = BlobServiceClient(
                account_url=location.value, credential=credential, **BLOB_OPTIONS, **shared
            )
        else:
            tables = TableServiceClient.from_connection_string(
                location.value, **TABLE_OPTIONS, **shared
            )
            blobs = BlobServiceClient.from_connection_string(
                location.value, **BLOB_OPTIONS, **shared
            )
        self._table = tables.get_table_client(table)
        self._container = blobs.get_container_client(container)
        self._lease_table = tables.get_table_client(lease_table)

    def within(self, remaining: Remaining) -> AzureStore:
        """This store for one run: every storage call of it is cut to `remaining()`, the
        seconds the run has left (its timeouts), and none starts once that is spent."""
        bound = copy.copy(self)
        bound._table = _Bounded(self._table, remaining)
        bound._container = _Bounded(self._container, remaining)
        bound._lease_table = _Bounded(self._lease_table, remaining)
        return bound

    def lease_records(self) -> LeaseStore:
        """The access leases kept beside this ledger (`lease_store.AzureLeaseStore`)."""
        from kvfirewall.lease_store import AzureLeaseStore

        return AzureLeaseStore(self._lease_table)

    def describe(self) -> str:
        return self._location.describe()

    def _created(self, write: Callable[[], T]) -> T:
        """Run a write, creating the table and container the first time one is missing; its
        result.

        Reads never create anything, so a dry run works with read-only storage rights.
        """
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        try:
            return write()
        except ResourceNotFoundError:
            for create in (self._table.create_table, self._container.create_container):
                with contextlib.suppress(ResourceExistsError):
                    create()
            return write()

    @staticmethod
    def _partition(vault_key: str) -> str:
        parts = vault_key.split("/")
        return parts[2] if len(parts) > 2 else "_"

    def entries_not_in(
        self, subscriptions: Collection[str], listed: Collection[str]
    ) -> Iterator[tuple[str, LedgerEntry]]:
        """One query of each subscription's partition, for the vault ids only."""
        from azure.core.exceptions import ResourceNotFoundError

        for subscription in subscriptions:
            query = self._table.query_entities(
                "PartitionKey eq @partition",
                parameters={"partition": subscription.lower()},
                select=["VaultId"],
            )
            try:
                keys = [str(e["VaultId"]) for e in query if e.get("VaultId") not in listed]
            except ResourceNotFoundError:  # no table yet: no entries
                return
            for key in keys:
                entry = self.read_entry(key)
                if entry:
                    yield key, entry

    def entries_of(self, subscription: str) -> dict[str, LedgerEntry]:
        """One query of the subscription's partition (a page per 1,000 entries), instead of
        a request per vault: a run over every vault plans most of them compliant, and a
        Table request costs more CPU than the rest of such a vault's reconcile."""
        from azure.core.exceptions import ResourceNotFoundError

        query = self._table.query_entities(
            "PartitionKey eq @partition", parameters={"partition": subscription.lower()}
        )
        try:
            return {str(entity["VaultId"]): _entry_of(entity) for entity in query}
        except ResourceNotFoundError:  # no table yet: no entries
            return {}

    def read_entry(self, vault_key: str) -> LedgerEntry:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(self._partition(vault_key), _row_key(vault_key))
        except ResourceNotFoundError:  # no entity, or no table yet
            return LedgerEntry()
        return _entry_of(entity)

    def write_entry(self, vault_key: str, entry: LedgerEntry, *, base: LedgerEntry) -> LedgerEntry:
        """Conditional on the entity's ETag (`base.version`); created only if there was none
        (409 if another holder created it meanwhile). Either way `StaleEntry` on a mismatch."""
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        partition, row = self._partition(vault_key), _row_key(vault_key)
        stale = StaleEntry(f"the ledger entry of {vault_key} changed since it was read")
        try:
            if not entry:
                if base.version:
                    self._table.delete_entity(
                        partition,
                        row,
                        etag=base.version,
                        match_condition=MatchConditions.IfNotModified,
                    )
                return LedgerEntry()
            entity = {
                "PartitionKey": partition,
                "RowKey": row,
                "VaultId": vault_key,
                **_split(json.dumps(entry.to_json(), separators=(",", ":"))),
            }
            if base.version:
                metadata = self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=base.version,
                    match_condition=MatchConditions.IfNotModified,
                )
            else:
                metadata = self._create_entity(entity)
        except (ResourceModifiedError, ResourceExistsError):
            raise stale from None
        except ResourceNotFoundError:  # deleted since it was read
            if entry or base.version:
                raise stale from None
            raise
        return replace(entry, version=metadata["etag"])

    def _create_entity(self, entity: dict) -> dict:
        """Create an entity; tried twice, like every other storage call. A create is a POST,
        which the SDK's retry does not send again once it went out (a connection reset
        before the answer): it may have landed. Sent again here, one that had landed is
        answered 409, which `write_entry` turns into `StaleEntry`: its caller reads the entry
        again and finds its own write there."""
        from azure.core.exceptions import ServiceResponseError

        try:
            return self._created(lambda: self._table.create_entity(entity))
        except ServiceResponseError:
            return self._created(lambda: self._table.create_entity(entity))

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

    def read_pools(self) -> dict | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            data = self._container.download_blob(POOLS_BLOB).readall()
        except ResourceNotFoundError:  # no blob, or no container yet
            return None
        return json.loads(data)

    def write_pools(self, data: dict) -> None:
        text = json.dumps(data, indent=1)
        self._created(lambda: self._container.upload_blob(POOLS_BLOB, text, overwrite=True))

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

    def save_report(self, name: str, chunks: Iterable[bytes], *, counts: Mapping[str, int]) -> str:
        """The name is taken by creating an empty blob that must not exist yet; then the
        report is uploaded over it in blocks, with its counts as the blob's metadata. A blob
        without that metadata is a report being written (or whose writer died): not listed."""
        taken = self.reserve_report(name)
        self.fill_report(taken, chunks, counts=counts)
        self._prune()
        return taken

    @property
    def container(self):
        """The state's blob container (its calls bound to the run's time, if `within`): a
        fanned-out run keeps its parts there (see `run_record`)."""
        return self._container

    def reserve_report(self, name: str) -> str:
        """Take a report name (`name`, `name-2`, ...) by creating an empty blob that must not
        exist yet; unlisted until `fill_report`. Returns the name taken."""
        from azure.core.exceptions import ResourceExistsError

        for taken in name_candidates(name):
            blob = self._container.get_blob_client(f"{REPORTS}/{taken}.json")
            try:
                self._created(lambda blob=blob: blob.upload_blob(b"", overwrite=False))
            except ResourceExistsError:
                continue
            return taken
        raise FileExistsError(f"every name for report {name} is taken")

    def fill_report(
        self, name: str, chunks: Iterable[bytes], *, counts: Mapping[str, int], etag: str = ""
    ) -> bool:
        """Upload a reserved report in blocks, its counts as the blob's metadata. With `etag`,
        only over that version of the blob (the empty reservation): False when another
        writer filled it first."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError
        from azure.storage.blob import ContentSettings

        condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            self._container.get_blob_client(f"{REPORTS}/{name}.json").upload_blob(
                (bytes(chunk) for chunk in chunks),
                overwrite=True,
                metadata={"counts": json.dumps(dict(counts), separators=(",", ":"))},
                content_settings=ContentSettings(content_type="application/json"),
                **condition,
            )
        except ResourceModifiedError:
            return False
        return True

    def report_reservation(self, name: str) -> str | None:
        """The ETag of a reserved report not filled yet; None if it is filled or missing."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            properties = self._container.get_blob_client(
                f"{REPORTS}/{name}.json"
            ).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return None if "counts" in (properties.metadata or {}) else properties.etag

    def _report_blobs(self, *, metadata: bool) -> Iterator[tuple[str, dict[str, str]]]:
        from azure.core.exceptions import ResourceNotFoundError

        prefix = f"{REPORTS}/"
        try:
            for blob in self._container.list_blobs(
                name_starts_with=prefix, include=["metadata"] if metadata else None
            ):
                if blob.name.endswith(".json"):
                    yield blob.name[len(prefix) : -len(".json")], blob.metadata or {}
        except ResourceNotFoundError:  # no container yet
            return

    def _prune(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        now = self._clock()
        for name, _ in list(self._report_blobs(metadata=False)):
            if _expired(name, now, self.report_days):
                with contextlib.suppress(ResourceNotFoundError):  # pruned by another run
                    self._container.delete_blob(f"{REPORTS}/{name}.json")

    def list_reports(self) -> list[ReportInfo]:
        found = []
        for name, metadata in self._report_blobs(metadata=True):
            if "counts" not in metadata:  # being written
                continue
            info = report_info(name, json.loads(metadata["counts"]))
            if info is not None:
                found.append(info)
        return newest_first(found)

    def read_report(self, name: str) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        if parse_report_name(name) is None:
            raise KeyError(name)
        try:
            download = self._container.download_blob(f"{REPORTS}/{name}.json")
        except ResourceNotFoundError:
            raise KeyError(name) from None
        if "counts" not in (download.properties.metadata or {}):  # being written
            raise KeyError(name)
        return download.readall()
