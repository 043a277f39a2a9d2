"""The ledger backends: a local directory and Azure Storage (against Azurite)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from ipaddress import IPv4Network

import pytest

from kvfirewall import ledger
from kvfirewall.ledger import (
    AzureStore,
    LeaseBusy,
    LedgerEntry,
    LocalStore,
    StaleEntry,
    open_store,
)
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
    store = AzureStore(
        StateLocation(kind="connection-string", value=connection), table=name, container=name
    )
    return store


def test_entries_round_trip_per_vault_and_empty_means_forgotten(store):
    assert store.read_entry(VAULT) == LedgerEntry()
    store.write_entry(VAULT, ENTRY, base=LedgerEntry())
    assert store.read_entry(VAULT) == ENTRY
    assert store.read_entry(OTHER) == LedgerEntry()
    store.write_entry(VAULT, LedgerEntry(), base=store.read_entry(VAULT))
    assert store.read_entry(VAULT) == LedgerEntry()


def test_snapshot_round_trip(store):
    assert store.read_snapshot() is None
    snapshot = builtin_snapshot()
    store.write_snapshot(snapshot)
    again = store.read_snapshot()
    assert (again.version, again.regions) == (snapshot.version, snapshot.regions)


def test_local_writes_are_atomic_files(tmp_path):
    store = LocalStore(tmp_path)
    store.write_entry(VAULT, ENTRY, base=LedgerEntry())
    files = list((tmp_path / "ledger").glob("*.json"))
    assert len(files) == 1 and not list((tmp_path / "ledger").glob(".tmp*"))


def test_reading_azure_storage_creates_nothing(azurite):
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient

    name = "kvf" + uuid.uuid4().hex[:12]
    store = AzureStore(
        StateLocation(kind="connection-string", value=azurite), table=name, container=name
    )
    assert store.read_entry(VAULT) == LedgerEntry()
    assert store.read_snapshot() is None
    store.write_entry(VAULT, LedgerEntry(), base=LedgerEntry())
    tables = {t.name for t in TableServiceClient.from_connection_string(azurite).list_tables()}
    containers = {
        c.name for c in BlobServiceClient.from_connection_string(azurite).list_containers()
    }
    assert name not in tables and name not in containers
    store.write_entry(VAULT, ENTRY, base=LedgerEntry())  # the first write creates the table
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


def test_storage_calls_end_within_the_runs_budget(azurite):
    """Storage that hangs is cut at the run's deadline (not after its own 8 s read timeout
    and a retry), and no call starts once the budget is spent."""
    import socket
    import time

    from kvfirewall.transport import OutOfTime

    hung = socket.socket()  # accepts connections (the kernel does) and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    port = hung.getsockname()[1]
    key = azurite.split("AccountKey=")[1].split(";")[0]
    location = StateLocation(
        kind="connection-string",
        value=f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;",
    )
    try:
        store = AzureStore(location)
        deadline = time.monotonic() + 0.5
        with pytest.raises(OutOfTime):
            store.within(lambda: deadline - time.monotonic()).read_entry(VAULT)
        with pytest.raises(OutOfTime):
            store.within(lambda: 0.0).read_snapshot()
    finally:
        hung.close()
    spent = AzureStore(StateLocation(kind="connection-string", value=azurite)).within(lambda: 0.0)
    with pytest.raises(OutOfTime):
        spent.write_entry(VAULT, ENTRY, base=LedgerEntry())


def test_a_writer_with_a_stale_version_overwrites_nothing(store):
    """A holder whose lease ran out unnoticed read the entry before another holder wrote it:
    its write must fail, whether it would create, replace or delete the entry."""
    ours = store.read_entry(VAULT)
    theirs = store.write_entry(VAULT, ENTRY, base=store.read_entry(VAULT))
    with pytest.raises(StaleEntry):  # we would create it: they created it first
        store.write_entry(VAULT, LedgerEntry(generation="ours", subnets=frozenset("a")), base=ours)
    ours = store.read_entry(VAULT)
    newer = dataclasses.replace(ENTRY, subnets=frozenset({"/subscriptions/x/subnets/b"}))
    store.write_entry(VAULT, newer, base=theirs)  # they write again
    with pytest.raises(StaleEntry):
        store.write_entry(VAULT, dataclasses.replace(ENTRY, generation="ours"), base=ours)
    with pytest.raises(StaleEntry):
        store.write_entry(VAULT, LedgerEntry(), base=ours)
    assert store.read_entry(VAULT) == newer


def test_an_entry_at_the_rule_limits_fits_azure_table_limits(azurite):
    """1,000 IP rules and 200 subnet ids of 200 characters, all owned and all pending."""
    from azure.data.tables import TableServiceClient

    name = "kvf" + uuid.uuid4().hex[:12]
    store = AzureStore(
        StateLocation(kind="connection-string", value=azurite), table=name, container=name
    )
    ips = frozenset(IPv4Network(f"20.{n // 250}.{n % 250}.0/24") for n in range(1000))
    subnets = frozenset(
        f"/subscriptions/{uuid.uuid4()}/resourcegroups/{'r' * 60}/providers/microsoft.network"
        f"/virtualnetworks/{'v' * 30}/subnets/{n:04}"
        for n in range(200)
    )
    assert min(map(len, subnets)) >= 200
    big = LedgerEntry(ip_rules=ips, subnets=subnets, pending_ip_rules=ips, pending_subnets=subnets)
    store.write_entry(VAULT, big, base=LedgerEntry())
    assert store.read_entry(VAULT) == big
    [entity] = (
        TableServiceClient.from_connection_string(azurite).get_table_client(name).list_entities()
    )
    for key, value in entity.items():  # String: 64 KiB of UTF-16
        assert len(str(value).encode("utf-16-le")) <= 64 * 1024, key
    assert len(entity) + 3 <= 255  # with PartitionKey, RowKey and Timestamp
    total = sum(
        len(k.encode("utf-16-le")) + len(str(v).encode("utf-16-le")) for k, v in entity.items()
    )
    assert total < 1024 * 1024
