"""Where access leases are kept, beside the ledger: one record per lease, keyed by its id.

The ledger keeps owning the rules; a record only says who holds which address on which vaults
until when. A record stays after its lease ends, so that a second release of it is answered
"already released" (not "never issued"), and the expiry timer can tell which ended leases
still have rules to take away (`cleared` false). Every reconcile lists the active leases: one
query, whatever the number of records.

Two backends, as for the ledger: a directory (`access-leases/<id>.json`) and an Azure Table
(`kvfirewallleases`, one partition, the row key the lease id, `EndsAt` a queryable time).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from kvfirewall.leases import Lease
from kvfirewall.ledger import _atomic_write

__all__ = ["AzureLeaseStore", "LeaseRecord", "LeaseStore", "LocalLeaseStore"]

LEASE_TABLE = "kvfirewallleases"
PARTITION = "lease"
FOLDER = "access-leases"


@dataclass(frozen=True)
class LeaseRecord:
    """A lease as stored: `released_at` when its holder released it early; `cleared` once
    its vaults were reconciled after it ended (its rules, if no other lease wants them, gone)."""

    lease: Lease
    released_at: datetime | None = None
    cleared: bool = False

    @property
    def ends_at(self) -> datetime:
        return min(self.lease.expires_at, self.released_at or self.lease.expires_at)

    def active(self, now: datetime) -> bool:
        return now < self.ends_at

    def released(self, now: datetime) -> LeaseRecord:
        return replace(self, released_at=now.astimezone(timezone.utc).replace(microsecond=0))

    def to_json(self) -> dict:
        return {
            **self.lease.to_json(),
            "releasedAt": _iso(self.released_at) if self.released_at else None,
            "cleared": self.cleared,
        }

    @staticmethod
    def from_json(doc: dict) -> LeaseRecord:
        """ValueError if `doc` is not a stored lease."""
        released = doc.get("releasedAt")
        try:
            at = _parse(released) if released else None
        except (TypeError, ValueError):
            raise ValueError("not a stored lease: bad releasedAt") from None
        return LeaseRecord(Lease.from_json(doc), at, doc.get("cleared") is True)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _lease_id(value: str) -> str | None:
    """The canonical form of a lease id, or None if it is not one (never a path)."""
    try:
        return str(uuid.UUID(value))
    except (TypeError, ValueError):
        return None


class LeaseStore(Protocol):
    def write(self, record: LeaseRecord) -> None:
        """Store a record (new, or over the one of the same id)."""
        ...

    def read(self, lease_id: str) -> LeaseRecord | None:
        """The record of a lease id; None if none was ever stored (or it is not an id)."""
        ...

    def active(self, now: datetime) -> list[LeaseRecord]:
        """The leases that have not ended at `now`."""
        ...

    def uncleared(self, now: datetime) -> list[LeaseRecord]:
        """The leases that ended by `now` whose vaults were not reconciled since."""
        ...


class LocalLeaseStore:
    """A directory, one JSON file per lease, written atomically."""

    def __init__(self, root: Path) -> None:
        self.folder = root / FOLDER

    def write(self, record: LeaseRecord) -> None:
        _atomic_write(self.folder / f"{record.lease.id}.json", record.to_json())

    def read(self, lease_id: str) -> LeaseRecord | None:
        canonical = _lease_id(lease_id)
        if canonical is None:
            return None
        try:
            return LeaseRecord.from_json(
                json.loads((self.folder / f"{canonical}.json").read_text())
            )
        except FileNotFoundError:
            return None

    def _all(self) -> list[LeaseRecord]:
        found = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else ():
            try:
                found.append(LeaseRecord.from_json(json.loads(path.read_text())))
            except (OSError, ValueError):  # not one of ours, or removed meanwhile
                continue
        return found

    def active(self, now: datetime) -> list[LeaseRecord]:
        return [r for r in self._all() if r.active(now)]

    def uncleared(self, now: datetime) -> list[LeaseRecord]:
        return [r for r in self._all() if not r.active(now) and not r.cleared]


class AzureLeaseStore:
    """An Azure Table: `Lease` the record's JSON, `EndsAt` and `Cleared` for the queries."""

    def __init__(self, table) -> None:
        """`table`: a `TableClient` (or one bound to a run's budget) of `LEASE_TABLE`."""
        self._table = table

    def write(self, record: LeaseRecord) -> None:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        entity = {
            "PartitionKey": PARTITION,
            "RowKey": record.lease.id,
            "Lease": json.dumps(record.to_json(), separators=(",", ":")),
            "EndsAt": record.ends_at,
            "Cleared": record.cleared,
        }
        try:
            self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        except ResourceNotFoundError:  # the first lease: no table yet
            from azure.core.exceptions import ResourceExistsError

            with contextlib.suppress(ResourceExistsError):  # created meanwhile
                self._table.create_table()
            self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def read(self, lease_id: str) -> LeaseRecord | None:
        from azure.core.exceptions import ResourceNotFoundError

        canonical = _lease_id(lease_id)
        if canonical is None:
            return None
        try:
            entity = self._table.get_entity(PARTITION, canonical)
        except ResourceNotFoundError:
            return None
        return LeaseRecord.from_json(json.loads(entity["Lease"]))

    def _query(self, condition: str, now: datetime) -> list[LeaseRecord]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entities = list(
                self._table.query_entities(
                    f"PartitionKey eq @p and {condition}", parameters={"p": PARTITION, "now": now}
                )
            )
        except ResourceNotFoundError:  # no lease yet
            return []
        found = []
        for entity in entities:
            try:
                found.append(LeaseRecord.from_json(json.loads(entity["Lease"])))
            except (KeyError, ValueError):
                continue
        return found

    def active(self, now: datetime) -> list[LeaseRecord]:
        return [r for r in self._query("EndsAt gt @now", now) if r.active(now)]

    def uncleared(self, now: datetime) -> list[LeaseRecord]:
        return self._query("EndsAt le @now and Cleared eq false", now)
