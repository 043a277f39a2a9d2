"""The lease request parser and the lease model: strict input, exact JSON."""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvfirewall.api import BadRequest
from kvfirewall.leases import Lease, LeaseRequest, caller_address, parse_lease_request
from kvfirewall.rules import parse_vault_id

SUB = "11111111-2222-4333-8444-555555555555"
OID = "5d1e0f3a-2b4c-4d6e-8f70-819203a4b5c6"


def vault(n: int) -> str:
    return (
        f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.KeyVault/vaults/kv-{n:02d}"
    )


def parse(doc: Any, *, max_minutes: int = 60, forwarded_for: str | None = None) -> LeaseRequest:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_lease_request(body, max_minutes=max_minutes, forwarded_for=forwarded_for)


def test_a_full_request() -> None:
    request = parse(
        {"vaults": [vault(1), vault(2)], "minutes": 15, "ip": "52.1.2.3", "reason": "run 42"}
    )
    assert request == LeaseRequest(
        vaults=(parse_vault_id(vault(1)), parse_vault_id(vault(2))),
        minutes=15,
        ip=ipaddress.IPv4Address("52.1.2.3"),
        reason="run 42",
    )


def test_defaults_minutes_and_the_callers_address() -> None:
    request = parse({"vaults": [vault(1)]}, forwarded_for="10.0.0.9, 20.50.60.70:51234")
    assert (request.minutes, request.ip, request.reason) == (
        30,
        ipaddress.IPv4Address("20.50.60.70"),
        None,
    )
    assert parse({"vaults": [vault(1)], "ip": "52.1.2.3"}, max_minutes=10).minutes == 10


def test_the_body_ip_wins_over_the_forwarded_address() -> None:
    request = parse({"vaults": [vault(1)], "ip": "52.1.2.3"}, forwarded_for="20.50.60.70")
    assert request.ip == ipaddress.IPv4Address("52.1.2.3")


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        ([], "JSON object"),
        ({"vaults": [vault(1)], "ip": "52.1.2.3", "minute": 5}, "unknown field"),
        (b'{"vaults": [], "vaults": []}', "more than once"),
        ({"ip": "52.1.2.3"}, "vaults must be an array"),
        ({"vaults": vault(1), "ip": "52.1.2.3"}, "vaults must be an array"),
        ({"vaults": [], "ip": "52.1.2.3"}, "1 to 20"),
        ({"vaults": [vault(n) for n in range(21)], "ip": "52.1.2.3"}, "not 21"),
        ({"vaults": [vault(1), vault(1).upper()], "ip": "52.1.2.3"}, "repeats"),
        ({"vaults": [7], "ip": "52.1.2.3"}, "vaults[0] must be a string"),
        ({"vaults": ["/subscriptions/x/kv"], "ip": "52.1.2.3"}, "not a Key Vault resource id"),
        ({"vaults": [vault(1)], "ip": "52.1.2.3", "minutes": 0}, "between 1 and 60"),
        ({"vaults": [vault(1)], "ip": "52.1.2.3", "minutes": 61}, "between 1 and 60, not 61"),
        ({"vaults": [vault(1)], "ip": "52.1.2.3", "minutes": 5.5}, "whole number"),
        ({"vaults": [vault(1)], "ip": "52.1.2.3", "minutes": "5"}, "whole number"),
        ({"vaults": [vault(1)], "ip": "52.1.2.3", "minutes": True}, "whole number"),
        ({"vaults": [vault(1)], "ip": "52.1.2.3", "minutes": None}, "whole number"),
        ({"vaults": [vault(1)], "ip": "52.1.2.0/24"}, "not a range"),
        ({"vaults": [vault(1)], "ip": "52.1.2.3/32"}, "not a range"),
        ({"vaults": [vault(1)], "ip": "10.1.2.3"}, "not a public address"),
        ({"vaults": [vault(1)], "ip": "192.168.1.1"}, "not a public address"),
        ({"vaults": [vault(1)], "ip": "127.0.0.1"}, "not a public address"),
        ({"vaults": [vault(1)], "ip": "2001:db8::1"}, "IPv6"),
        ({"vaults": [vault(1)], "ip": "52.1.2"}, "not an IPv4 address"),
        ({"vaults": [vault(1)], "ip": 875823619}, "ip must be a string"),
        ({"vaults": [vault(1)], "ip": None}, "ip must be a string"),
        ({"vaults": [vault(1)]}, "ip is required"),
        ({"vaults": [vault(1)], "ip": "52.1.2.3", "reason": "x" * 201}, "at most 200"),
        ({"vaults": [vault(1)], "ip": "52.1.2.3", "reason": "a\nforged log line"}, "printable"),
        ({"vaults": [vault(1)], "ip": "52.1.2.3", "reason": 42}, "reason must be a string"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(doc: Any, says: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(says)):
        parse(doc)


def test_twenty_vaults_and_a_200_character_reason_are_accepted() -> None:
    request = parse(
        {"vaults": [vault(n) for n in range(20)], "ip": "52.1.2.3", "reason": "r" * 200}
    )
    assert len(request.vaults) == 20


@pytest.mark.parametrize(
    ("header", "address"),
    [
        ("20.50.60.70", "20.50.60.70"),
        ("20.50.60.70:443", "20.50.60.70"),
        ("1.2.3.4, 20.50.60.70:50000", "20.50.60.70"),
        ("  52.1.2.3 ,20.50.60.70 ", "20.50.60.70"),
    ],
)
def test_caller_address_is_the_right_most_entry(header: str, address: str) -> None:
    assert caller_address(header) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("20.50.60.70, 10.0.0.4:1234", "not a public address"),
        ("[2001:db8::1]:443", "IPv6"),
        ("2001:db8::1", "IPv6"),
        ("20.50.60.70, ", "not an IPv4 address"),
        ("unknown", "not an IPv4 address"),
    ],
)
def test_unusable_caller_addresses_are_refused(header: str, says: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(says)):
        caller_address(header)


def test_a_lease_expires_its_minutes_after_the_grant() -> None:
    request = parse({"vaults": [vault(1)], "ip": "52.1.2.3", "minutes": 20, "reason": "run 7"})
    now = datetime(2026, 3, 1, 12, 0, 30, 123456, tzinfo=timezone.utc)
    lease = Lease.grant(request, principal=OID, now=now)
    assert lease.to_json() == {
        "id": lease.id,
        "ip": "52.1.2.3",
        "principal": OID,
        "expiresAt": "2026-03-01T12:20:30Z",
        "vaults": [vault(1)],
        "reason": "run 7",
    }
    assert lease.active(datetime(2026, 3, 1, 12, 20, 29, tzinfo=timezone.utc))
    assert not lease.active(datetime(2026, 3, 1, 12, 20, 30, tzinfo=timezone.utc))
    assert Lease.grant(request, principal=OID, now=now).id != lease.id


@given(
    minutes=st.integers(1, 1440),
    vaults=st.integers(1, 20),
    reason=st.none() | st.text(max_size=200).filter(str.isprintable),
    seconds=st.integers(0, 10**9),
)
def test_a_lease_survives_its_json(
    minutes: int, vaults: int, reason: str | None, seconds: int
) -> None:
    doc: dict[str, Any] = {"vaults": [vault(n) for n in range(vaults)], "ip": "52.1.2.3"}
    doc["minutes"] = minutes
    if reason is not None:
        doc["reason"] = reason
    request = parse(doc, max_minutes=1440)
    lease = Lease.grant(
        request, principal=OID, now=datetime.fromtimestamp(seconds, tz=timezone.utc)
    )
    stored = json.loads(json.dumps(lease.to_json()))
    assert Lease.from_json(stored) == lease


@pytest.mark.parametrize(
    "broken",
    [{}, {"id": "x"}, {"expiresAt": "tomorrow"}, {"ip": "52.1.2"}, {"vaults": ["kv"]}],
)
def test_a_damaged_stored_lease_is_refused(broken: dict[str, Any]) -> None:
    request = parse({"vaults": [vault(1)], "ip": "52.1.2.3"})
    doc = Lease.grant(request, principal=OID, now=datetime.now(timezone.utc)).to_json()
    with pytest.raises(ValueError, match="not a stored lease"):
        Lease.from_json({} if not broken else doc | broken)
