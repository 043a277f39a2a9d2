"""Resource ids and rules are parsed strictly: what reaches Resource Manager is well-formed."""

from __future__ import annotations

import pytest

from kvfirewall.rules import RuleError, canonical_subnet_id, parse_vault_id, subnet_key

SUB = "11111111-1111-1111-1111-111111111111"
VAULT = f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.KeyVault/vaults/kv-app"


def test_a_vault_id_in_any_casing_parses_to_one_ledger_key():
    lower = parse_vault_id(VAULT.replace("resourceGroups", "resourcegroups").lower())
    assert lower.key == parse_vault_id(VAULT).key
    assert (lower.subscription, lower.resource_group, lower.name) == (SUB, "rg-app", "kv-app")
    assert parse_vault_id(VAULT.replace("rg-app", "rg-café")).resource_group == "rg-café"


@pytest.mark.parametrize(
    "bad",
    [
        VAULT + "/",
        VAULT + "\n",
        VAULT + "?api-version=2020-01-01",
        VAULT + "/../../other",
        VAULT.replace("rg-app", "rg%2Fapp"),
        VAULT.replace("rg-app", "rg/../x"),
        VAULT.replace("Microsoft.KeyVault/vaults", "Microsoft.Storage/storageAccounts"),
        VAULT.replace(SUB, "not-a-guid"),
        VAULT.replace("kv-app", "k"),
        VAULT.replace("kv-app", "kv_app"),
        " " + VAULT,
        "",
        VAULT.replace("KeyVault", "\u212aeyVault"),  # Kelvin sign: folds to "k"
        VAULT.replace("kv-app", "kv-ap\u017f"),  # long s: folds to "s"
        VAULT.replace("subscriptions", "\u017fubscriptions"),
    ],
)
def test_anything_else_is_refused(bad):
    with pytest.raises(RuleError):
        parse_vault_id(bad)


def test_subnet_ids_are_validated_and_compared_case_insensitively():
    subnet = (
        f"/subscriptions/{SUB}/resourceGroups/net/providers/Microsoft.Network"
        "/virtualNetworks/vnet/subnets/Agents"
    )
    assert canonical_subnet_id(f"  {subnet} ") == subnet
    assert subnet_key(subnet) == subnet_key(subnet.lower())
    with pytest.raises(RuleError):
        canonical_subnet_id(subnet.replace("/subnets/Agents", ""))
    with pytest.raises(RuleError):
        canonical_subnet_id(subnet.replace("Microsoft.Network", "Microsoft.Networ\u212a"))
    rg_in_unicode = subnet.replace("/net/", "/réseau/")  # Azure allows Unicode letters there
    assert canonical_subnet_id(rg_in_unicode) == rg_in_unicode
