"""The ledger backends: a local directory and Azure Storage (against Azurite)."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from ipaddress import IPv4Network

import pytest

from kvfirewall import ledger
from kvfirewall.ledger import (
    AzureStore,
    LeaseBusy,
    LeaseLost,
    LedgerEntry,
    LocalStore,
    StaleEntry,
    open_store,
)
from kvfirewall.settings import StateLocation
from kvfirewall.sources import builtin_snapshot

KeptBlobLease = ledger._KeptBlobLease

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


class ManualTime(threading.Event):
    """A kept lease's stop event on a clock that moves only when the test moves it: each
    wait of the renewal thread ends when the clock has passed it, or the lease is released."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self._changed = threading.Condition()
        self._until: float | None = None  # the end of the renewal thread's current wait
        self._thread: threading.Thread | None = None

    def clock(self) -> float:
        return self.now

    def set(self) -> None:
        with self._changed:
            super().set()
            self._changed.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "a renewal thread that never wakes renews nothing"
        with self._changed:
            self._thread = threading.current_thread()
            self._until = self.now + timeout
            self._changed.notify_all()
            self._changed.wait_for(lambda: self.is_set() or self.now >= self._until)
            self._until = None
            return self.is_set()

    def _idle(self) -> bool:
        """The renewal thread waits for a time still to come, or has ended."""
        waiting = self._until is not None and self._until > self.now
        ended = self._thread is not None and not self._thread.is_alive()
        return waiting or ended or self.is_set()

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass, stopping at each moment a wait of the renewal thread ends until
        the thread has done what fell due (it waits again, or gave up: not signalled, so
        polled)."""
        target = self.now + seconds
        with self._changed:
            while True:
                while not self._changed.wait_for(self._idle, timeout=0.02):
                    pass
                if self.now >= target:
                    return
                due = self._until if self._until is not None else target
                self.now = min(due, target)
                self._changed.notify_all()


class Renewals:
    """A lease client that notes when each renewal was asked for; `fail` makes it fail."""

    def __init__(self, client, time: ManualTime, *, fail: Exception | None = None) -> None:
        self.client, self.time, self.fail = client, time, fail
        self.at: list[float] = []

    def renew(self) -> None:
        self.at.append(self.time.now)
        if self.fail is not None:
            raise self.fail
        self.client.renew()

    def release(self) -> None:
        if self.client is not None:
            self.client.release()


@pytest.fixture
def manual_lease(azurite, monkeypatch):
    """Blob leases of the shortest term (15 s) whose renewals run on a manual clock; yields
    the clock, the renewals seen and a second store (another run) sharing the container."""
    monkeypatch.setattr(ledger, "LEASE_SECONDS", 15)
    time = ManualTime()
    seen: list[Renewals] = []

    def kept(client, *, term: float) -> ledger._KeptBlobLease:
        seen.append(Renewals(client, time))
        return KeptBlobLease(seen[-1], term=term, clock=time.clock, stop=time)

    monkeypatch.setattr(ledger, "_KeptBlobLease", kept)
    location = StateLocation(kind="connection-string", value=azurite)
    name = "kvf" + uuid.uuid4().hex[:12]
    holder, other = (AzureStore(location, table=name, container=name) for _ in range(2))
    return holder, other, time, seen


def test_a_blob_lease_is_renewed_every_third_of_its_term_and_outlives_it(manual_lease):
    """A holder that waits longer than the lease's term (a long Retry-After) keeps it: the
    lease is renewed in the background, so no other run can take the vault meanwhile. The
    term passes on a manual clock; every renewal is a real one, which Azurite must accept."""
    holder, other, time, seen = manual_lease
    with holder.lease(VAULT, wait_seconds=0) as lease:
        time.advance(4.9)
        assert seen[0].at == []
        time.advance(0.1)
        time.advance(16)  # past the term the lease was granted for
        assert seen[0].at == [5.0, 10.0, 15.0, 20.0]
        lease.hold()  # Azurite took every renewal
        with pytest.raises(LeaseBusy), other.lease(VAULT, wait_seconds=0):
            pass
    with other.lease(VAULT, wait_seconds=0):  # released: free at once, not after a term
        pass


def test_a_blob_lease_that_ran_out_and_was_taken_is_lost_at_the_next_renewal(manual_lease):
    """Had the lease run out (the process paused for longer than a term), another run could
    take it: the next renewal fails with 409 and the holder must not write any more."""
    from azure.storage.blob import BlobLeaseClient

    holder, other, time, _ = manual_lease
    with holder.lease(VAULT, wait_seconds=0) as lease:
        blob = other._container.get_blob_client(f"leases/{ledger._row_key(VAULT)}")
        BlobLeaseClient(blob).break_lease(lease_break_period=0)  # as if it had run out
        blob.acquire_lease(lease_duration=15)  # and another run took it
        time.advance(5)
        with pytest.raises(LeaseLost, match="could not be renewed"):
            lease.hold()


def test_a_lease_that_cannot_be_renewed_is_given_up_before_it_may_have_run_out():
    """Storage unreachable: the holder goes on while the lease surely still holds (less
    than two thirds of the term since the last renewal), and stops writing after that."""
    from azure.core.exceptions import ServiceRequestError

    time = ManualTime()
    renewals = Renewals(None, time, fail=ServiceRequestError("connection refused"))
    lease = KeptBlobLease(renewals, term=15, clock=time.clock, stop=time)
    try:
        time.advance(5)
        lease.hold()
        time.advance(5)
        with pytest.raises(LeaseLost, match="connection refused"):
            lease.hold()
        assert renewals.at == [5.0, 10.0]
    finally:
        lease.release()


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


def test_entries_not_listed_are_found_per_subscription(store):
    """What a run's sweep reads: only the entries of that subscription's vaults it did not
    list, not every entry."""
    elsewhere = VAULT.replace(
        "00000000-0000-0000-0000-000000000001", "0" * 8 + "-0000-0000-0000-" + "0" * 11 + "2"
    )
    for key in (VAULT, OTHER, elsewhere):
        store.write_entry(key, ENTRY, base=store.read_entry(key))
    subscription = VAULT.split("/")[2]
    found = dict(store.entries_not_in([subscription], {VAULT}))
    assert list(found) == [OTHER] and found[OTHER].ip_rules == ENTRY.ip_rules


def test_an_entry_being_written_is_not_taken_for_an_unlisted_one(tmp_path, monkeypatch):
    """A sweep that passes over the directory while a listed vault's entry is being written
    (its data complete, not yet renamed into place) must not find that vault unlisted: it
    would be taken for deleted."""
    store = LocalStore(tmp_path)
    store.write_entry(VAULT, ENTRY, base=LedgerEntry())
    subscription = VAULT.split("/")[2]
    found_meanwhile: list[dict] = []
    rename = ledger.os.replace

    def sweep_then_rename(source, target):
        found_meanwhile.append(dict(store.entries_not_in([subscription], {VAULT})))
        rename(source, target)

    monkeypatch.setattr(ledger.os, "replace", sweep_then_rename)
    store.write_entry(
        VAULT, dataclasses.replace(ENTRY, subnets=frozenset()), base=store.read_entry(VAULT)
    )
    assert found_meanwhile == [{}]


def test_a_run_plans_a_subscriptions_vaults_on_entries_read_in_one_query(azurite, monkeypatch):
    """Eight worker threads planning 30 vaults of one subscription (20 with an entry) cost
    the Table ledger one query, not a read per vault, and see what `read_entry` sees: the
    same rules and the same version, which a conditional write accepts."""
    from kvfirewall.ledger_reads import LedgerReads
    from kvfirewall.transport import shared_transport

    name = "kvf" + uuid.uuid4().hex[:12]
    store = AzureStore(
        StateLocation(kind="connection-string", value=azurite), table=name, container=name
    )
    keys = [VAULT.replace("kv1", f"kv-{n:02}") for n in range(30)]
    for key in keys[:20]:
        store.write_entry(key, ENTRY, base=LedgerEntry())
    table_port = azurite.split("TableEndpoint=")[1].split("/")[2]
    transport, reads_sent = shared_transport(), []
    send = transport.send

    def counted(request, **kwargs):
        if table_port in request.url:
            reads_sent.append(request.method)
        return send(request, **kwargs)

    monkeypatch.setattr(transport, "send", counted)
    reads = LedgerReads(store, keep=2)
    start = threading.Barrier(8)

    def plan_all() -> list[LedgerEntry]:
        start.wait()
        return [reads.entry(key) for key in keys]

    threads_saw = [[] for _ in range(8)]
    threads = [
        threading.Thread(target=lambda n=n: threads_saw[n].extend(plan_all())) for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reads_sent == ["GET"]
    monkeypatch.setattr(transport, "send", send)
    expected = [store.read_entry(key) for key in keys]
    assert all(seen == expected for seen in threads_saw)
    assert [bool(entry) for entry in expected] == [True] * 20 + [False] * 10
    store.write_entry(keys[0], LedgerEntry(), base=threads_saw[0][0])  # its version holds


def test_a_local_ledger_is_read_per_vault(tmp_path):
    """A file read per vault costs less than reading every file of the directory."""
    from kvfirewall.ledger_reads import LedgerReads

    store = LocalStore(tmp_path)
    store.write_entry(VAULT, ENTRY, base=LedgerEntry())
    assert store.entries_of(VAULT.split("/")[2]) is None
    assert LedgerReads(store, keep=1).entry(VAULT) == store.read_entry(VAULT)


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "not-landed"])
def test_an_entry_created_without_an_answer_is_tried_again(azurite, monkeypatch, landed):
    """The connection drops after a new entry's POST went out. The SDK does not send a POST
    again; the ledger does, once: a create that had landed is then answered 409, and the
    writer is told to read the entry again (where it finds its own write); one that had not
    is simply made."""
    from azure.core.exceptions import ServiceResponseError

    from kvfirewall.transport import shared_transport

    name = "kvf" + uuid.uuid4().hex[:12]
    store = AzureStore(
        StateLocation(kind="connection-string", value=azurite), table=name, container=name
    )
    store.write_entry(OTHER, ENTRY, base=LedgerEntry())  # the table exists
    transport, posts = shared_transport(), []
    send = transport.send

    def drop_first_answer(request, **kwargs):
        if request.method == "POST" and f"/{name}" in request.url:
            posts.append(request.url)
            if len(posts) == 1:
                if landed:
                    send(request, **kwargs)
                raise ServiceResponseError("Connection reset by peer")
        return send(request, **kwargs)

    monkeypatch.setattr(transport, "send", drop_first_answer)
    if landed:
        with pytest.raises(StaleEntry):
            store.write_entry(VAULT, ENTRY, base=LedgerEntry())
    else:
        assert store.write_entry(VAULT, ENTRY, base=LedgerEntry()).version
    assert len(posts) == 2
    assert store.read_entry(VAULT).ip_rules == ENTRY.ip_rules
