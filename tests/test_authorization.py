"""Who may lease a vault: wildcard evaluation (properties), and the whole decision through the
real azure-mgmt-authorization and azure-mgmt-keyvault clients against the emulator."""

from __future__ import annotations

from typing import Any

import pytest
from azure.identity import DefaultAzureCredential
from azure.mgmt.keyvault import KeyVaultManagementClient
from hypothesis import given
from hypothesis import strategies as st

from emulator import Emulator
from kvfirewall.authorization import (
    GET_SECRET,
    Basis,
    Permission,
    RoleDefinition,
    VaultAccess,
    action_matches,
    permission_allows,
    role_allows,
)
from kvfirewall.role_assignments import RoleReader, RoleReadFailed
from kvfirewall.vaults import token_scope

SUB = "11111111-2222-4333-8444-555555555555"
OID = "5d1e0f3a-2b4c-4d6e-8f70-819203a4b5c6"
OTHER_OID = "6e2f1a4b-3c5d-4e7f-8a81-92a314b5c6d7"
GROUP = "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"
RG = f"/subscriptions/{SUB}/resourceGroups/rg-app"

# ---------------------------------------------------------------- wildcard evaluation

ascii_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
no_star = ascii_text.map(lambda s: s.replace("*", ""))


@given(ascii_text)
def test_a_lone_star_matches_every_action(action: str) -> None:
    assert action_matches("*", action)


@given(no_star, no_star)
def test_without_a_star_only_the_same_string_matches_in_any_case(pattern: str, action: str) -> None:
    assert action_matches(pattern, action) == (pattern.lower() == action.lower())
    assert action_matches(pattern.swapcase(), pattern)


@given(st.lists(no_star, min_size=2, max_size=5), st.lists(ascii_text, min_size=4, max_size=4))
def test_a_star_anywhere_stands_for_any_run_of_characters(
    parts: list[str], fillers: list[str]
) -> None:
    """Filling each `*` of a pattern with anything (slashes included) gives a match."""
    pattern = "*".join(parts)
    action = parts[0] + "".join(f + p for f, p in zip(fillers, parts[1:], strict=False))
    assert action_matches(pattern, action)
    assert action_matches(pattern.upper(), action.lower())


@given(no_star.filter(lambda s: len(s) > 1))
def test_dropping_a_character_breaks_a_match_without_stars(action: str) -> None:
    assert not action_matches(action, action[:-1])
    assert not action_matches(action[:-1], action)


@given(st.lists(ascii_text, max_size=3), st.lists(ascii_text, max_size=3), ascii_text)
def test_not_data_actions_take_away_within_their_entry(
    allowed: list[str], denied: list[str], action: str
) -> None:
    entry = Permission(tuple(allowed), tuple(denied))
    expected = any(action_matches(p, action) for p in allowed) and not any(
        action_matches(p, action) for p in denied
    )
    assert permission_allows(entry, action) == expected
    assert not permission_allows(Permission(tuple(allowed), (*denied, action)), action)


@given(
    st.lists(
        st.tuples(st.lists(ascii_text, max_size=2), st.lists(ascii_text, max_size=2)), max_size=3
    ),
    ascii_text,
)
def test_a_role_grants_what_any_of_its_entries_grants(
    entries: list[tuple[list[str], list[str]]], action: str
) -> None:
    permissions = tuple(Permission(tuple(a), tuple(d)) for a, d in entries)
    role = RoleDefinition("id", "custom", permissions)
    assert role_allows(role, action) == any(permission_allows(p, action) for p in permissions)


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        ("Microsoft.KeyVault/vaults/secrets/getSecret/action", True),
        ("microsoft.keyvault/VAULTS/secrets/getsecret/ACTION", True),
        ("Microsoft.KeyVault/*", True),
        ("*/getSecret/action", True),
        ("Microsoft.KeyVault/*/getSecret/*", True),
        ("Microsoft.KeyVault/vaults/*/read", False),
        ("Microsoft.KeyVault/vaults/secrets/getSecret", False),
        ("Microsoft.KeyVault/vaults/secrets/readMetadata/action", False),
        ("Microsoft.KeyVault.vaults/secrets/getSecret/action", False),
        ("Microsoft?KeyVault/vaults/secrets/getSecret/action", False),
    ],
)
def test_wildcard_examples(pattern: str, matches: bool) -> None:
    assert action_matches(pattern, GET_SECRET) is matches


# ---------------------------------------------------------------- through the emulator


@pytest.fixture
def reader(emulator: Emulator) -> RoleReader:
    emulator.roles.page_size = 2  # every listing below pages
    return RoleReader(endpoint=emulator.url)


def vault_access(emulator: Emulator, vault_id: str) -> VaultAccess:
    """The vault as the real Key Vault client reads it."""
    client = KeyVaultManagementClient(
        DefaultAzureCredential(),
        SUB,
        base_url=emulator.url,
        credential_scopes=[token_scope(emulator.url)],
    )
    name = vault_id.rsplit("/", 1)[-1]
    return VaultAccess.from_vault(client.vaults.get("rg-app", name).as_dict())


def rbac_vault(emulator: Emulator, name: str = "kv-app") -> str:
    vault_id = emulator.add_vault(SUB, "rg-app", name, tags={"kvfirewall-leases": "enabled"})
    emulator.add_vault(SUB, "rg-app", name + "2")  # a prefix twin that must not count
    return vault_id


def role_requests(emulator: Emulator, kind: str) -> list[Any]:
    return [r for r in emulator.requests if f"/{kind}" in r.path]


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("Key Vault Secrets User", True),
        ("Key Vault Secrets Officer", True),
        ("Key Vault Administrator", True),
        ("Reader", False),
        ("Key Vault Reader", False),
        ("Key Vault Contributor", False),
        ("Owner", False),
    ],
)
def test_built_in_roles_at_the_vault(
    emulator: Emulator, reader: RoleReader, role: str, allowed: bool
) -> None:
    vault_id = rbac_vault(emulator)
    emulator.roles.assign(vault_id, OID, role)
    decision = reader.decide(OID, emulator.tenant_id, vault_access(emulator, vault_id))
    assert decision.allowed is allowed
    if allowed:
        assert decision.basis is Basis.ROLE_ASSIGNMENT
        assert role in decision.reason
    else:
        assert vault_id in decision.reason


def test_a_custom_role_that_takes_get_secret_back_does_not_allow(
    emulator: Emulator, reader: RoleReader
) -> None:
    vault_id = rbac_vault(emulator)
    guid = emulator.roles.add_role(
        "Secrets but not values",
        [{"dataActions": ["Microsoft.KeyVault/vaults/secrets/*"], "notDataActions": [GET_SECRET]}],
    )
    emulator.roles.assign(vault_id, OID, guid)
    assert not reader.decide(OID, emulator.tenant_id, vault_access(emulator, vault_id)).allowed


def test_not_data_actions_of_one_entry_do_not_cancel_another(
    emulator: Emulator, reader: RoleReader
) -> None:
    vault_id = rbac_vault(emulator)
    guid = emulator.roles.add_role(
        "Two entries",
        [
            {"dataActions": ["Microsoft.KeyVault/*"], "notDataActions": [GET_SECRET]},
            {"dataActions": ["*/secrets/getSecret/action"]},
        ],
    )
    emulator.roles.assign(vault_id, OID, guid)
    assert reader.decide(OID, emulator.tenant_id, vault_access(emulator, vault_id)).allowed


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("{vault}", True),
        ("{vault}/secrets/db-password", True),
        (RG, True),
        (f"/subscriptions/{SUB}", True),
        ("/providers/Microsoft.Management/managementGroups/mg-platform", True),
        ("/", True),
        ("{vault}2", False),
        ("{vault}2/secrets/db-password", False),
        (f"/subscriptions/{SUB}/resourceGroups/rg-ap", False),
        ("{vault}/keys/signing", False),
        (f"/subscriptions/{SUB}/resourceGroups/rg-other", False),
        ("/providers/Microsoft.Management/managementGroups/mg-elsewhere", False),
    ],
)
def test_scopes_at_above_and_below_the_vault(
    emulator: Emulator, reader: RoleReader, scope: str, allowed: bool
) -> None:
    vault_id = rbac_vault(emulator)
    emulator.roles.place_subscription(SUB, ["mg-platform", "tenant-root"])
    emulator.roles.assign(scope.format(vault=vault_id), OID, "Key Vault Secrets User")
    decision = reader.decide(OID, emulator.tenant_id, vault_access(emulator, vault_id))
    assert decision.allowed is allowed


def test_a_group_assignment_counts_and_the_listing_is_paged(
    emulator: Emulator, reader: RoleReader
) -> None:
    vault_id = rbac_vault(emulator)
    for name in ("a", "b", "c", "d", "e"):
        emulator.roles.assign(f"{RG}/providers/Microsoft.Web/sites/{name}", OID, "Reader")
    emulator.roles.add_to_group(OID, GROUP)
    emulator.roles.assign(vault_id, GROUP, "Key Vault Secrets User", principal_type="Group")
    emulator.roles.assign(vault_id, OTHER_OID, "Key Vault Administrator")
    decision = reader.decide(OID, emulator.tenant_id, vault_access(emulator, vault_id))
    assert decision.allowed
    listed = role_requests(emulator, "roleAssignments")
    assert len(listed) == 3  # 6 assignments in pages of 2
    assert all(r.query["$filter"] == f"assignedTo('{OID}')" for r in listed)
    assert sum("$skipToken" in r.query for r in listed) == 2


def test_reads_are_cached_for_the_run(emulator: Emulator, reader: RoleReader) -> None:
    emulator.roles.page_size = 50
    first, second = rbac_vault(emulator, "kv-one"), rbac_vault(emulator, "kv-two")
    emulator.roles.assign(RG, OID, "Key Vault Reader")
    emulator.roles.assign(second, OID, "Key Vault Reader")
    emulator.roles.assign(first, OID, "Key Vault Secrets User")
    assert reader.decide(OID, emulator.tenant_id, vault_access(emulator, first)).allowed
    assert not reader.decide(OID, emulator.tenant_id, vault_access(emulator, second)).allowed
    assert len(role_requests(emulator, "roleAssignments")) == 1
    assert len(role_requests(emulator, "roleDefinitions")) == 2


def test_an_assignment_with_a_condition_grants_nothing(
    emulator: Emulator, reader: RoleReader
) -> None:
    vault_id = rbac_vault(emulator)
    condition = "@Resource[Microsoft.KeyVault/vaults/secrets:name] StringEquals 'ci'"
    emulator.roles.assign(vault_id, OID, "Key Vault Secrets User", condition=condition)
    assert not reader.decide(OID, emulator.tenant_id, vault_access(emulator, vault_id)).allowed


def test_a_deleted_custom_role_grants_nothing(emulator: Emulator, reader: RoleReader) -> None:
    vault_id = rbac_vault(emulator)
    emulator.roles.assign(vault_id, OID, "0badc0de-0000-4000-8000-000000000000")
    emulator.roles.assign(RG, OID, "Key Vault Secrets User")
    decision = reader.decide(OID, emulator.tenant_id, vault_access(emulator, vault_id))
    assert decision.allowed
    assert RG in decision.reason


@pytest.mark.parametrize(("status", "transient"), [(503, True), (429, True), (403, False)])
def test_failed_reads_are_classified(
    emulator: Emulator, reader: RoleReader, status: int, transient: bool
) -> None:
    vault_id = rbac_vault(emulator)
    access = vault_access(emulator, vault_id)
    emulator.fail("GET", "roleAssignments", status)
    with pytest.raises(RoleReadFailed) as caught:
        reader.decide(OID, emulator.tenant_id, access)
    assert caught.value.transient is transient
    assert str(status) in str(caught.value)


def policy(object_id: str, tenant: str, secrets: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "tenantId": tenant,
        "objectId": object_id,
        "permissions": {"keys": ["get"], "secrets": secrets, "certificates": []},
        **extra,
    }


@pytest.mark.parametrize(
    ("make", "allowed"),
    [
        (lambda t: policy(OID, t, ["get", "list"]), True),
        (lambda t: policy(OID.upper(), t, ["Get"]), True),
        (lambda t: policy(OID, t, ["all"]), True),
        (lambda t: policy(OID, t, ["list", "set"]), False),
        (lambda t: policy(OTHER_OID, t, ["get"]), False),
        (lambda t: policy(OID, "9e8d7c6b-aaaa-4bbb-8ccc-ddddeeeeffff", ["get"]), False),
        (lambda t: policy(OID, t, ["get"], applicationId=OTHER_OID), False),
    ],
)
def test_access_policy_vaults(emulator: Emulator, reader: RoleReader, make, allowed) -> None:
    vault_id = rbac_vault(emulator)
    emulator.set_access_policies(vault_id, [make(emulator.tenant_id)])
    emulator.roles.assign(vault_id, OID, "Key Vault Secrets User")  # ignored without RBAC
    decision = reader.decide(OID, emulator.tenant_id, vault_access(emulator, vault_id))
    assert decision.allowed is allowed
    assert decision.basis is (Basis.ACCESS_POLICY if allowed else Basis.NONE)
    assert not role_requests(emulator, "roleAssignments")


def test_an_access_policy_does_not_count_on_an_rbac_vault(
    emulator: Emulator, reader: RoleReader
) -> None:
    vault_id = rbac_vault(emulator)
    emulator.set_access_policies(vault_id, [policy(OID, emulator.tenant_id, ["get"])])
    vault = emulator.vault(vault_id)
    vault["properties"]["enableRbacAuthorization"] = True
    access = VaultAccess.from_vault(vault)
    assert not reader.decide(OID, emulator.tenant_id, access).allowed


def test_an_allow_listed_principal_needs_no_role(emulator: Emulator, reader: RoleReader) -> None:
    vault_id = rbac_vault(emulator)
    access = vault_access(emulator, vault_id)
    emulator.clear_log()
    decision = reader.decide(OID, emulator.tenant_id, access, [OID.upper()])
    assert (decision.allowed, decision.basis) == (True, Basis.ALLOW_LIST)
    assert not emulator.requests
    assert not reader.decide(OTHER_OID, emulator.tenant_id, access, [OID]).allowed


def test_a_vault_of_another_tenant_is_refused(emulator: Emulator, reader: RoleReader) -> None:
    vault_id = rbac_vault(emulator)
    emulator.roles.assign(vault_id, OID, "Key Vault Secrets User")
    other = "9e8d7c6b-aaaa-4bbb-8ccc-ddddeeeeffff"
    decision = reader.decide(OID, other, vault_access(emulator, vault_id))
    assert not decision.allowed
    assert "another tenant" in decision.reason
