"""The emulator's Entra-like authority and Microsoft.Authorization reads, in their REST shapes."""

from __future__ import annotations

import requests

from emulator import Emulator

TENANT = "3f1c2a4b-1111-4222-8333-444455556666"
SUB = "11111111-2222-4333-8444-555555555555"
OID = "5d1e0f3a-2b4c-4d6e-8f70-819203a4b5c6"
API = {"api-version": "2022-04-01"}


def get(emu: Emulator, path: str, **params: str) -> requests.Response:
    token = requests.get(
        f"{emu.url}/msi/token",
        params={"api-version": "2019-08-01", "resource": emu.url},
        headers={"X-IDENTITY-HEADER": emu.identity_header},
        timeout=10,
    ).json()["access_token"]
    return requests.get(
        f"{emu.url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_openid_documents_state_the_issuers_and_key_sets(emulator: Emulator) -> None:
    v2 = requests.get(f"{emulator.url}/{TENANT}/v2.0/.well-known/openid-configuration", timeout=10)
    v1 = requests.get(f"{emulator.url}/{TENANT}/.well-known/openid-configuration", timeout=10)
    assert v2.json()["issuer"] == f"{emulator.url}/{TENANT}/v2.0"
    assert v1.json()["issuer"] == f"https://sts.windows.net/{TENANT}/"
    keys = requests.get(v2.json()["jwks_uri"], timeout=10).json()["keys"]
    assert keys == requests.get(v1.json()["jwks_uri"], timeout=10).json()["keys"]
    assert [k["kid"] for k in keys] == [emulator.authority.signing_key.kid]
    emulator.authority.rotate()
    assert len(requests.get(v2.json()["jwks_uri"], timeout=10).json()["keys"]) == 2
    unknown = requests.get(f"{emulator.url}/contoso/.well-known/openid-configuration", timeout=10)
    assert unknown.status_code == 400
    assert "AADSTS90002" in unknown.json()["error_description"]


def test_role_assignments_at_above_and_below_a_scope(emulator: Emulator) -> None:
    rg = f"/subscriptions/{SUB}/resourceGroups/rg"
    vault = f"{rg}/providers/Microsoft.KeyVault/vaults/kv"
    roles = emulator.roles
    above = roles.assign(f"/subscriptions/{SUB}", OID, "Reader")
    below = roles.assign(f"{vault}/secrets/s", OID, "Key Vault Secrets User")
    roles.assign(f"/subscriptions/{SUB}/resourceGroups/other", OID, "Reader")
    roles.assign(vault, "6e2f1a4b-3c5d-4e7f-8a81-92a314b5c6d7", "Owner")
    listed = get(
        emulator,
        f"{rg}/providers/Microsoft.Authorization/roleAssignments",
        **API,
        **{"$filter": f"assignedTo('{OID}')"},
    )
    assert {a["id"] for a in listed.json()["value"]} == {above, below}
    path = f"{rg}/providers/Microsoft.Authorization/roleAssignments"
    bad = get(emulator, path, **API, **{"$filter": "roleName eq 'x'"})
    assert bad.status_code == 400


def test_role_definitions_by_id(emulator: Emulator) -> None:
    guid = "4633458b-17de-408a-b874-0445c86b69e6"
    found = get(emulator, f"/providers/Microsoft.Authorization/roleDefinitions/{guid}", **API)
    assert found.json()["properties"]["roleName"] == "Key Vault Secrets User"
    scoped = get(
        emulator,
        f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}",
        **API,
    )
    assert scoped.json()["id"].startswith(f"/subscriptions/{SUB}/providers/")
    missing = get(
        emulator, f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/x", **API
    )
    assert (missing.status_code, missing.json()["error"]["code"]) == (
        404,
        "RoleDefinitionDoesNotExist",
    )
