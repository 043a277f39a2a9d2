"""The explicit lock-down options, over the whole estate and under write faults: they close
open firewalls and switch "disabled" vaults to selected networks, admitting nothing beyond
the configured ranges and subnets, and report it per vault."""

from __future__ import annotations

from conftest import SUB_A, TAG, Seeded

LOCKDOWN = {"KVF_LOCK_OPEN_VAULTS": "true", "KVF_ENABLE_DISABLED_VAULTS": "true"}


def test_lock_down_options_close_and_enable_only_what_is_safe(estate, figures):
    emulator = estate.emulator
    clean = emulator.add_vault(SUB_A, "rg", "kv-dark", tags=TAG, public_network_access="Disabled")
    estate.vaults[clean] = Seeded(id=clean, managed=True, enabled=False)
    emulator.fail("PATCH", "kv-", 409, times=4)
    settings = estate.settings(**LOCKDOWN)
    report = estate.converge(settings=settings)[-1]
    results = {v.id: v for v in report.vaults}

    switched = emulator.vault(clean)["properties"]
    assert switched["publicNetworkAccess"] == "Enabled"
    assert switched["networkAcls"]["defaultAction"] == "Deny"
    assert estate.nets(clean) == set(estate.desired(settings).ip_rules)
    assert {c.rule for c in results[clean].access} == {
        "publicNetworkAccess: Disabled -> Enabled",
        "defaultAction: Allow -> Deny",
    }
    for vault_id, seeded in estate.vaults.items():
        vault = emulator.vault(vault_id)["properties"]
        if seeded.managed and seeded.enabled:  # open ones are closed now
            assert estate.acls(vault_id)["defaultAction"] == "Deny", vault_id
        if seeded.managed and not seeded.enabled and vault_id != clean:
            # Their own rules would come to life: not switched, and the report says why.
            assert vault["publicNetworkAccess"] == "Disabled"
            assert "not switched" in results[vault_id].reason
        if not seeded.managed:
            assert vault_id not in results
    figures["rules lost"] += estate.check(settings=settings)
