"""The ledger backends: a local directory and Azure Storage (against Azurite)."""

from __future__ import annotations

import time
import uuid
from ipaddress import IPv4Network

import pytest

from kvfirewall import ledger
from kvfirewall.ledger import AzureStore, LeaseBusy, LedgerEntry, LocalStore, open_store
from kvfirewall.settings import StateLocation
from kvfirewall.sources import builtin_snapshot

VAULT = "/subscriptions/00000000-0000-0000-0000-000000000001/resourcegroups/rg/providers/microsoft.keyvault/vaults/kv1"
OTHER = VAULT.replace("kv1", "kv2")
ENTRY = LedgerEntry(
    ip_rules=frozenset({IPv4Network("40.74.28.0/23")}),
    subnets=frozenset({"/subscriptions/x/subnets/a"}),
    pending_ip_rules=frozenset({IPv4Network("52.1.2.3/32")}),
)


@pytest.fixture(params=["local", "azure"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(StateLocation(kind="local", value=str(tmp_path / "state")))
    connection = request.getfixturevalue("azurite")
    # A table and container of its own per test: Azurite is shared by the session.
    name = "kvf" + uuid.uuid4().hex[:12]
    return AzureStore(
        StateLocation(kind="connection-string", value=connection), table=name, container=name
    )


def test_entries_round_trip_per_vault_and_empty_means_forgotten(store):
    assert store.read_entry(VAULT) == LedgerEntry()
    store.write_entry(VAULT, ENTRY)
    assert store.read_entry(VAULT) == ENTRY
    assert store.read_entry(OTHER) == LedgerEntry()
    store.write_entry(VAULT, LedgerEntry())
    assert store.read_entry(VAULT) == LedgerEntry()


def test_snapshot_round_trip(store):
    assert store.read_snapshot() is None
    snapshot = builtin_snapshot()
    store.write_snapshot(snapshot)
    again = store.read_snapshot()
    assert (again.version, again.regions) == (snapshot.version, snapshot.regions)


def test_local_writes_are_atomic_files(tmp_path):
    store = LocalStore(tmp_path)
    store.write_entry(VAULT, ENTRY)
    files = list((tmp_path / "ledger").iterdir())
    assert len(files) == 1 and not files[0].name.startswith(".tmp")


def test_reading_azure_storage_creates_nothing(azurite):
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient

    name = "kvf" + uuid.uuid4().hex[:12]
    store = AzureStore(
        StateLocation(kind="connection-string", value=azurite), table=name, container=name
    )
    assert store.read_entry(VAULT) == LedgerEntry()
    assert store.read_snapshot() is None
    store.write_entry(VAULT, LedgerEntry())
    tables = {t.name for t in TableServiceClient.from_connection_string(azurite).list_tables()}
    containers = {
        c.name for c in BlobServiceClient.from_connection_string(azurite).list_containers()
    }
    assert name not in tables and name not in containers
    store.write_entry(VAULT, ENTRY)  # the first real write creates what it needs
    assert store.read_entry(VAULT) == ENTRY


def test_a_vault_lease_excludes_other_holders_until_released(store):
    with store.lease(VAULT, wait_seconds=0) as lease:
        lease.hold()
        with pytest.raises(LeaseBusy), store.lease(VAULT, wait_seconds=0.6):
            pass
        with store.lease(OTHER, wait_seconds=0):  # another vault is free
            pass
    with store.lease(VAULT, wait_seconds=0):  # released
        pass


def test_a_blob_lease_outlives_its_term_while_held(azurite, monkeypatch):
    """A holder that waits longer than the lease's term (a long Retry-After) keeps it: the
    lease is renewed in the background, so no other run can take the vault meanwhile."""
    monkeypatch.setattr(ledger, "LEASE_SECONDS", 15)  # the shortest term Blob leases allow
    location = StateLocation(kind="connection-string", value=azurite)
    name = "kvf" + uuid.uuid4().hex[:12]
    holder, other = (AzureStore(location, table=name, container=name) for _ in range(2))
    with holder.lease(VAULT, wait_seconds=0) as lease:
        time.sleep(17)
        lease.hold()
        with pytest.raises(LeaseBusy), other.lease(VAULT, wait_seconds=0):
            pass
