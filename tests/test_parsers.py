"""The event and request parsers: exactly the vault writes and bodies they must accept, and
nothing they are fed makes them raise anything but their own validation error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvfirewall.api import BadRequest, ReconcileRequest, parse_reconcile_request
from kvfirewall.events import MalformedEvent, event_target
from kvfirewall.rules import parse_vault_id

SUB = "77777777-7777-7777-7777-777777777777"
VAULT = f"/subscriptions/{SUB}/resourcegroups/rg-app/providers/Microsoft.KeyVault/vaults/kv-app"
WRITE = "Microsoft.Resources.ResourceWriteSuccess"


def data(**changes) -> dict:
    return {
        "operationName": "Microsoft.KeyVault/vaults/write",
        "resourceUri": VAULT,
        "subscriptionId": SUB,
        "status": "Succeeded",
        **changes,
    }


def test_a_vault_write_names_the_vault_whatever_the_casing():
    target = event_target(
        event_type=WRITE.upper(),
        subject=VAULT,
        data=data(operationName="MICROSOFT.KEYVAULT/VAULTS/WRITE", resourceUri=VAULT.upper()),
    )
    assert target.vault == parse_vault_id(VAULT)


def test_resource_uri_and_subscription_id_may_be_absent_but_never_contradict():
    assert event_target(
        event_type=WRITE, subject=VAULT, data={"operationName": "Microsoft.KeyVault/vaults/write"}
    ).vault
    with pytest.raises(MalformedEvent, match="subscriptionId"):
        event_target(
            event_type=WRITE, subject=VAULT, data=data(subscriptionId=SUB.replace("7", "8"))
        )


@pytest.mark.parametrize(
    ("event_type", "operation"),
    [
        ("Microsoft.Resources.ResourceDeleteSuccess", "Microsoft.KeyVault/vaults/delete"),
        ("Microsoft.Resources.ResourceWriteFailure", "Microsoft.KeyVault/vaults/write"),
        (WRITE, "Microsoft.KeyVault/vaults/secrets/write"),
        (WRITE, "Microsoft.KeyVault/vaults/accessPolicies/write"),
        ("Microsoft.EventGrid.SubscriptionValidationEvent", None),
    ],
)
def test_other_events_are_ignored_with_a_reason(event_type, operation):
    target = event_target(event_type=event_type, subject=VAULT, data=data(operationName=operation))
    assert target.vault is None and target.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=20,
)
id_like = st.one_of(
    st.text(),
    st.builds(
        lambda prefix, middle, suffix: prefix + middle + suffix,
        st.sampled_from([VAULT[:40], VAULT[:70], VAULT, "/subscriptions/", ""]),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
        | st.sampled_from(["/..", "%2F", "?x=1", "#", "\u212a", "\x00", "/secrets/s"]),
        st.sampled_from(["", VAULT[-30:], "/providers/Microsoft.KeyVault/vaults/kv-x"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    event_type=st.one_of(st.just(WRITE), json_values),
    subject=st.one_of(id_like, json_values),
    payload=st.one_of(
        json_values,
        st.builds(
            data,
            operationName=st.one_of(st.just("Microsoft.KeyVault/vaults/write"), json_values),
            resourceUri=st.one_of(id_like, json_values),
        ),
    ),
)
def test_events_never_raise_anything_but_malformed_and_name_only_well_formed_vaults(
    event_type, subject, payload
):
    try:
        target = event_target(event_type=event_type, subject=subject, data=payload)
    except MalformedEvent as exc:
        assert len(str(exc)) < 600  # noqa: PT017 (raising is allowed, not required)
        return
    if target.vault is not None:
        assert parse_vault_id(subject) == target.vault
        assert target.vault.id.isascii() or not target.vault.resource_group.isascii()


SUBS = (SUB,)


def test_an_empty_body_means_every_vault_for_real():
    assert parse_reconcile_request(b"", subscriptions=SUBS) == ReconcileRequest()
    assert parse_reconcile_request(b"  \n", subscriptions=SUBS) == ReconcileRequest()
    assert parse_reconcile_request(b"{}", subscriptions=SUBS) == ReconcileRequest()


def test_a_body_names_one_vault_and_a_dry_run():
    request = parse_reconcile_request(
        json.dumps({"vaultId": VAULT, "dryRun": True}).encode(), subscriptions=SUBS
    )
    assert request == ReconcileRequest(vault=parse_vault_id(VAULT), dry_run=True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"dryrun": true}', "unknown field"),
        (b'{"dryRun": 1}', "dryRun must be true or false, not a number"),
        (b'{"dryRun": "false"}', "not a string"),
        (b'{"vaultId": ["x"]}', "vaultId must be a string, not an array"),
        (b'{"vaultId": "x"}', "is not a Key Vault resource id"),
        (
            json.dumps({"vaultId": VAULT.replace(SUB, SUB.replace("7", "9"))}).encode(),
            "not managed",
        ),
        (b"null", "not null"),
        (b"\xef\xbb\xbf{}", "not JSON"),  # a BOM is not JSON either
    ],
)
def test_bad_bodies_are_refused_with_a_message_saying_why(body, message):
    with pytest.raises(BadRequest, match=message):
        parse_reconcile_request(body, subscriptions=SUBS)


@settings(max_examples=400, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(
            st.sampled_from(["vaultId", "dryRun", "other"]),
            st.one_of(id_like, json_values),
            max_size=3,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_bodies_never_raise_anything_but_bad_request(body):
    try:
        request = parse_reconcile_request(body, subscriptions=SUBS)
    except BadRequest as exc:
        assert len(str(exc)) < 600  # noqa: PT017 (raising is allowed, not required)
        return
    assert isinstance(request.dry_run, bool)
    assert request.vault is None or request.vault.subscription in SUBS
