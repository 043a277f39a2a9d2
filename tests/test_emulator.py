"""The ARM emulator, exercised through the real Azure SDK and DefaultAzureCredential.

If these pass, product tests that run against the emulator are testing the product against
the real SDK pipeline (auth, paging, retries, error mapping), not against a mock of it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.core.rest import HttpRequest
from azure.identity import DefaultAzureCredential
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.keyvault.models import (
    IPRule,
    NetworkRuleSet,
    VaultPatchParameters,
    VaultPatchProperties,
    VirtualNetworkRule,
)

from emulator import Emulator

SUB = "00000000-0000-0000-0000-0000000000a1"
OTHER_SUB = "00000000-0000-0000-0000-0000000000b2"
SUBNET = (
    f"/subscriptions/{SUB}/resourceGroups/Agents-RG/providers/Microsoft.Network"
    "/virtualNetworks/Agents-VNet/subnets/Pool-A"
)
FIXTURES = Path(__file__).parent / "fixtures"


def make_client(emu: Emulator, subscription: str = SUB, **kwargs) -> KeyVaultManagementClient:
    kwargs.setdefault("credential_scopes", [emu.url + "/.default"])
    return KeyVaultManagementClient(
        DefaultAzureCredential(), subscription, base_url=emu.url, **kwargs
    )


@pytest.fixture
def client(emulator: Emulator) -> KeyVaultManagementClient:
    return make_client(emulator)


def acls_patch(**acls) -> VaultPatchParameters:
    return VaultPatchParameters(
        properties=VaultPatchProperties(network_acls=NetworkRuleSet(**acls))
    )


# --------------------------------------------------------------------------- identity


def test_default_credential_gets_token_from_emulator(emulator: Emulator) -> None:
    token = DefaultAzureCredential().get_token(emulator.url + "/.default")
    assert token.token
    assert emulator.token_requests == 1


def test_token_endpoint_rejects_missing_or_wrong_identity_header(emulator: Emulator) -> None:
    url = f"{emulator.url}/msi/token"
    params = {"api-version": "2019-08-01", "resource": emulator.url}
    missing = requests.get(url, params=params, verify=emulator.ca_bundle, timeout=5)
    wrong = requests.get(
        url,
        params=params,
        headers={"X-IDENTITY-HEADER": "nope"},
        verify=emulator.ca_bundle,
        timeout=5,
    )
    good = requests.get(
        url,
        params=params,
        headers={"X-IDENTITY-HEADER": emulator.env()["IDENTITY_HEADER"]},
        verify=emulator.ca_bundle,
        timeout=5,
    )
    assert (missing.status_code, wrong.status_code, good.status_code) == (400, 401, 200)
    doc = good.json()
    assert doc["resource"] == emulator.url and doc["token_type"] == "Bearer"
    assert isinstance(doc["expires_on"], str) and doc["expires_on"].isdigit()


def test_token_for_wrong_audience_is_rejected(emulator: Emulator) -> None:
    emulator.add_vault(SUB, "rg", "kv-aud")
    # The public-cloud scope: the token endpoint issues it, ARM refuses it.
    client = make_client(emulator, credential_scopes=["https://management.azure.com/.default"])
    with pytest.raises(ClientAuthenticationError) as info:
        client.vaults.get("rg", "kv-aud")
    assert info.value.status_code == 401
    assert info.value.error.code == "InvalidAuthenticationToken"


def test_missing_bearer_token_and_missing_api_version(emulator: Emulator) -> None:
    path = f"/subscriptions/{SUB}/providers/Microsoft.KeyVault/vaults"
    anonymous = requests.get(
        emulator.url + path + "?api-version=2026-05-15", verify=emulator.ca_bundle, timeout=5
    )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "InvalidAuthenticationToken"

    response = make_client(emulator).send_request(HttpRequest("GET", path))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MissingApiVersionParameter"


# --------------------------------------------------------------------------- vault shape


def test_vault_without_acls_has_no_network_acls_key(
    emulator: Emulator, client: KeyVaultManagementClient
) -> None:
    vault_id = emulator.add_vault(SUB, "rg", "kv-plain", tags={"team": "a"})
    vault = client.vaults.get("rg", "kv-plain")
    assert vault.id == vault_id
    assert vault.properties.network_acls is None
    assert "networkAcls" not in emulator.vault(vault_id)["properties"]
    assert vault.properties.public_network_access == "Enabled"
    assert vault.properties.enable_rbac_authorization is True
    assert vault.tags == {"team": "a"}


def test_lookup_is_case_insensitive_and_id_keeps_casing(
    emulator: Emulator, client: KeyVaultManagementClient
) -> None:
    vault_id = emulator.add_vault(SUB, "My-RG", "My-Vault")
    assert client.vaults.get("my-rg", "MY-VAULT").id == vault_id
    assert emulator.vault(vault_id.lower())["id"] == vault_id
    with pytest.raises(ResourceNotFoundError) as info:
        client.vaults.get("my-rg", "absent")
    assert info.value.error.code == "ResourceNotFound"


def test_single_ip_comes_back_as_slash_32(
    emulator: Emulator, client: KeyVaultManagementClient
) -> None:
    poller = client.vaults.begin_create_or_update(
        "rg",
        "kv-new",
        {
            "location": "westeurope",
            "properties": {
                "tenantId": emulator.tenant_id,
                "sku": {"family": "A", "name": "standard"},
                "networkAcls": {"defaultAction": "Deny", "ipRules": [{"value": "20.37.194.7"}]},
            },
        },
    )
    created = poller.result()
    assert [r.value for r in created.properties.network_acls.ip_rules] == ["20.37.194.7/32"]
    assert emulator.requests[-1].status == 201

    updated = client.vaults.update(
        "rg",
        "kv-new",
        acls_patch(ip_rules=[IPRule(value="40.74.28.9"), IPRule(value="40.74.28.0/23")]),
    )
    assert [r.value for r in updated.properties.network_acls.ip_rules] == [
        "40.74.28.9/32",
        "40.74.28.0/23",
    ]


def test_subnet_ids_are_lower_cased_and_ignore_flag_is_not_echoed(
    emulator: Emulator, client: KeyVaultManagementClient
) -> None:
    emulator.add_subnet(SUBNET, service_endpoint=False)
    emulator.add_vault(SUB, "rg", "kv-vnet")
    client.vaults.update(
        "rg",
        "kv-vnet",
        acls_patch(
            virtual_network_rules=[
                VirtualNetworkRule(id=SUBNET, ignore_missing_vnet_service_endpoint=True)
            ]
        ),
    )
    rules = client.vaults.get("rg", "kv-vnet").properties.network_acls.virtual_network_rules
    assert [r.id for r in rules] == [SUBNET.lower()]
    assert rules[0].ignore_missing_vnet_service_endpoint is None


def test_patch_replaces_whole_network_acls_and_keeps_other_properties(
    emulator: Emulator, client: KeyVaultManagementClient
) -> None:
    emulator.add_subnet(SUBNET)
    vault_id = emulator.add_vault(
        SUB,
        "rg",
        "kv-patch",
        tags={"owner": "x"},
        public_network_access="Enabled",
        network_acls={
            "defaultAction": "Deny",
            "bypass": "None",
            "ipRules": [{"value": "20.42.5.0/24"}],
            "virtualNetworkRules": [{"id": SUBNET}],
        },
    )
    before = emulator.vault(vault_id)

    result = client.vaults.update("rg", "kv-patch", acls_patch(ip_rules=[IPRule(value="1.2.3.4")]))

    acls = result.properties.network_acls
    assert acls.default_action == "Allow"
    assert acls.bypass == "AzureServices"
    assert [r.value for r in acls.ip_rules] == ["1.2.3.4/32"]
    assert acls.virtual_network_rules == []
    after = emulator.vault(vault_id)
    assert after["tags"] == before["tags"]
    for key in set(before["properties"]) - {"networkAcls"}:
        assert after["properties"][key] == before["properties"][key]
    sent = emulator.requests[-1]
    assert sent.method == "PATCH"
    assert "accessPolicies" not in sent.body["properties"]


def test_put_replaces_existing_vault(emulator: Emulator, client: KeyVaultManagementClient) -> None:
    vault_id = emulator.add_vault(
        SUB, "rg", "kv-put", tags={"old": "1"}, network_acls={"ipRules": [{"value": "1.2.3.4"}]}
    )
    created_at = emulator.vault(vault_id)["systemData"]["createdAt"]
    replaced = client.vaults.begin_create_or_update(
        "RG", "KV-PUT", {"location": "westeurope", "tags": {"new": "2"}, "properties": {}}
    ).result()
    assert emulator.requests[-1].status == 200
    assert replaced.id == vault_id
    assert replaced.tags == {"new": "2"}
    assert replaced.properties.network_acls is None
    assert emulator.vault(vault_id)["systemData"]["createdAt"] == created_at


def test_patch_of_missing_vault_is_404(client: KeyVaultManagementClient) -> None:
    with pytest.raises(ResourceNotFoundError):
        client.vaults.update("rg", "kv-gone", acls_patch(ip_rules=[]))


# --------------------------------------------------------------------------- paging


def test_list_by_subscription_pages_through_every_vault_once(
    emulator: Emulator, client: KeyVaultManagementClient
) -> None:
    emulator.page_size = 3
    expected = {emulator.add_vault(SUB, f"rg-{i % 2}", f"kv-{i:02d}") for i in range(10)}
    emulator.add_vault(OTHER_SUB, "rg-0", "kv-elsewhere")

    ids = [v.id for v in client.vaults.list_by_subscription()]

    assert sorted(ids) == sorted(expected)
    assert len(ids) == len(set(ids))
    pages = [r for r in emulator.requests if r.path.endswith("/vaults")]
    assert len(pages) == 4
    assert "$skiptoken" not in pages[0].query
    assert all("$skiptoken" in r.query for r in pages[1:])

    with_top = [v.id for v in client.vaults.list_by_subscription(top=4)]
    assert sorted(with_top) == sorted(expected)


def test_list_by_resource_group(emulator: Emulator, client: KeyVaultManagementClient) -> None:
    emulator.add_vault(SUB, "rg-a", "kv-a1")
    emulator.add_vault(SUB, "rg-b", "kv-b1")
    assert [v.name for v in client.vaults.list_by_resource_group("RG-A")] == ["kv-a1"]


# --------------------------------------------------------------------------- validation


def _ip_rules(*values: str) -> dict:
    return {"ip_rules": [IPRule(value=v) for v in values]}


@pytest.mark.parametrize(
    ("acls", "code", "fragment"),
    [
        (
            _ip_rules("20.37.194.0/24", "2603:1010:6:d::/120"),
            "BadRequest",
            "properties.networkAcls.ipRules[1].value: 2603:1010:6:d::/120",
        ),
        (
            _ip_rules("10.0.0.0/8"),
            "BadRequest",
            "Invalid value found at properties.networkAcls.ipRules[0].value: 10.0.0.0/8 belongs "
            "to forbidden range 10.0.0.0\u201310.255.255.255 (private IP addresses)",
        ),
        (_ip_rules("192.168.1.1"), "BadRequest", "forbidden range"),
        (_ip_rules("not-an-ip"), "BadRequest", "ipRules[0].value"),
        (
            {"ip_rules": [IPRule(value=f"20.{i // 256}.{i % 256}.0/24") for i in range(1001)]},
            "BadRequest",
            "1000",
        ),
        (
            {
                "virtual_network_rules": [
                    VirtualNetworkRule(id=SUBNET.replace("Pool-A", f"s{i}")) for i in range(201)
                ]
            },
            "BadRequest",
            "200",
        ),
        (
            {"virtual_network_rules": [VirtualNetworkRule(id=SUBNET.replace("Pool-A", "nope"))]},
            "BadRequest",
            "Virtual Network could not be validated",
        ),
        (
            {"virtual_network_rules": [VirtualNetworkRule(id="agents-vnet/pool-a")]},
            "BadRequest",
            "Virtual Network could not be validated",
        ),
        (
            {"virtual_network_rules": [VirtualNetworkRule(id=SUBNET.replace("Pool-A", "NoSE"))]},
            "SubnetsHaveNoServiceEndpointsConfigured",
            "do not have ServiceEndpoints for Microsoft.KeyVault resources configured",
        ),
    ],
    ids=[
        "ipv6",
        "rfc1918",
        "rfc1918-single",
        "garbage",
        "1001-ip-rules",
        "201-vnet-rules",
        "unknown-subnet",
        "malformed-subnet",
        "no-service-endpoint",
    ],
)
def test_invalid_network_acls_are_rejected_without_change(
    emulator: Emulator, client: KeyVaultManagementClient, acls: dict, code: str, fragment: str
) -> None:
    emulator.add_subnet(SUBNET)
    for i in range(201):
        emulator.add_subnet(SUBNET.replace("Pool-A", f"s{i}"))
    emulator.add_subnet(SUBNET.replace("Pool-A", "NoSE"), service_endpoint=False)
    vault_id = emulator.add_vault(
        SUB,
        "rg",
        "kv-bad",
        network_acls={"defaultAction": "Deny", "ipRules": [{"value": "1.1.1.1"}]},
    )
    before = emulator.vault(vault_id)

    with pytest.raises(HttpResponseError) as info:
        client.vaults.update("rg", "kv-bad", acls_patch(**acls))

    assert info.value.status_code == 400
    assert info.value.error.code == code
    assert fragment in info.value.error.message
    assert emulator.vault(vault_id) == before
    assert emulator.events == []


def test_invalid_public_network_access_is_rejected(
    emulator: Emulator, client: KeyVaultManagementClient
) -> None:
    vault_id = emulator.add_vault(SUB, "rg", "kv-pna")
    with pytest.raises(HttpResponseError) as info:
        client.vaults.update(
            "rg", "kv-pna", {"properties": {"publicNetworkAccess": "SecuredByPerimeter"}}
        )
    assert info.value.status_code == 400
    result = client.vaults.update(
        "rg", "kv-pna", {"properties": {"publicNetworkAccess": "disabled"}}
    )
    assert result.properties.public_network_access == "Disabled"
    assert emulator.vault(vault_id)["properties"]["publicNetworkAccess"] == "Disabled"


def test_seeding_validates_like_the_api(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="forbidden range"):
        emulator.add_vault(SUB, "rg", "kv-seed", network_acls={"ipRules": [{"value": "10.1.2.3"}]})
    with pytest.raises(KeyError):
        emulator.vault(
            f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-seed"
        )


# --------------------------------------------------------------------------- concurrency


def test_overlapping_write_to_same_vault_gets_409(
    emulator: Emulator, client: KeyVaultManagementClient
) -> None:
    vault_id = emulator.add_vault(SUB, "rg", "kv-race")
    emulator.write_latency = 0.6
    outcome: dict[str, object] = {}

    def first() -> None:
        outcome["first"] = client.vaults.update(
            "rg", "kv-race", acls_patch(ip_rules=[IPRule(value="20.42.5.0/24")])
        )

    thread = threading.Thread(target=first)
    thread.start()
    # Wait until the first PATCH has reached the server, then a little for it to take the vault.
    deadline = time.monotonic() + 5
    while emulator.writes < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    with pytest.raises(ResourceExistsError) as info:
        make_client(emulator).vaults.update(
            "rg", "kv-race", acls_patch(ip_rules=[IPRule(value="40.74.28.0/23")])
        )
    thread.join()

    assert info.value.status_code == 409
    assert info.value.error.code == "Conflict"
    assert "serialize the operations" in info.value.error.message
    rules = emulator.vault(vault_id)["properties"]["networkAcls"]["ipRules"]
    assert rules == [{"value": "20.42.5.0/24"}]
    assert len(emulator.events) == 1
    assert outcome["first"].properties.network_acls.ip_rules[0].value == "20.42.5.0/24"


# --------------------------------------------------------------------------- throttling


def test_empty_write_bucket_answers_429_with_retry_after(emulator: Emulator) -> None:
    emulator.add_vault(SUB, "rg", "kv-busy")
    emulator.throttle(reads=None, writes=(3, 0.01))
    client = make_client(emulator, retry_total=0)

    remaining = []
    for i in range(3):
        client.vaults.update(
            "rg",
            "kv-busy",
            acls_patch(ip_rules=[IPRule(value=f"20.42.5.{i}")]),
            # update() passes {} as the headers argument of cls; read the raw response.
            cls=lambda resp, _body, _headers: remaining.append(
                int(resp.http_response.headers["x-ms-ratelimit-remaining-subscription-writes"])
            ),
        )
    assert remaining == [2, 1, 0]

    with pytest.raises(HttpResponseError) as info:
        client.vaults.update("rg", "kv-busy", acls_patch(ip_rules=[]))
    assert info.value.status_code == 429
    assert info.value.error.code == "SubscriptionRequestsThrottled"
    assert int(info.value.response.headers["Retry-After"]) >= 1
    assert emulator.writes == 4
    assert len(emulator.events) == 3

    # Reads have their own (here unlimited) bucket; other subscriptions their own buckets.
    assert client.vaults.get("rg", "kv-busy").name == "kv-busy"
    emulator.add_vault(OTHER_SUB, "rg", "kv-other")
    make_client(emulator, OTHER_SUB, retry_total=0).vaults.update(
        "rg", "kv-other", acls_patch(ip_rules=[])
    )


def test_injected_failure_is_retried_by_sdk(
    emulator: Emulator, client: KeyVaultManagementClient
) -> None:
    emulator.add_vault(SUB, "rg", "kv-flaky")
    emulator.fail("GET", r"/vaults/kv-flaky$", 503, headers={"Retry-After": "0"})
    assert client.vaults.get("rg", "kv-flaky").name == "kv-flaky"
    assert [r.status for r in emulator.requests] == [503, 200]
    assert emulator.reads == 2


# --------------------------------------------------------------------------- service tags


def test_service_tags_api_shape(emulator: Emulator, client: KeyVaultManagementClient) -> None:
    path = f"/subscriptions/{SUB}/providers/Microsoft.Network/locations/westeurope/serviceTags"
    request = HttpRequest("GET", path + "?api-version=2024-05-01")
    assert client.send_request(request).status_code == 404

    doc = json.loads((FIXTURES / "ServiceTags_Public_20251028.AzureDevOps-only.json").read_text())
    emulator.set_service_tags(doc)
    response = client.send_request(HttpRequest("GET", path + "?api-version=2024-05-01"))

    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "public"
    assert body["id"] == f"/subscriptions/{SUB}/providers/Microsoft.Network/serviceTags/public"
    assert body["type"] == "Microsoft.Network/serviceTags"
    assert body["changeNumber"] == "375"
    assert body["cloud"] == "Public"
    first = body["values"][0]
    assert first["name"] == "AzureDevOps"
    assert first["properties"]["changeNumber"] == "8"
    assert set(first["properties"]) == {
        "changeNumber",
        "region",
        "systemService",
        "addressPrefixes",
    }
    assert (
        first["properties"]["addressPrefixes"] == doc["values"][0]["properties"]["addressPrefixes"]
    )
    assert emulator.reads == 2


# --------------------------------------------------------------------------- events and log


def test_each_successful_write_records_an_event(
    emulator: Emulator, client: KeyVaultManagementClient
) -> None:
    vault_id = emulator.add_vault(SUB, "My-RG", "kv-events")
    assert emulator.events == []
    client.vaults.update("My-RG", "kv-events", acls_patch(ip_rules=[IPRule(value="1.2.3.4")]))
    client.vaults.update("My-RG", "kv-events", {"tags": {"a": "b"}})
    with pytest.raises(HttpResponseError):
        client.vaults.update("My-RG", "kv-events", acls_patch(ip_rules=[IPRule(value="10.0.0.1")]))

    events = emulator.events
    assert len(events) == 2
    subject = vault_id.replace("/resourceGroups/", "/resourcegroups/")
    event = events[0]
    assert event["subject"] == subject
    assert event["eventType"] == "Microsoft.Resources.ResourceWriteSuccess"
    assert event["topic"] == f"/subscriptions/{SUB}"
    assert (event["dataVersion"], event["metadataVersion"]) == ("2", "1")
    data = event["data"]
    assert data["operationName"] == "Microsoft.KeyVault/vaults/write"
    assert data["resourceProvider"] == "Microsoft.KeyVault"
    assert data["resourceUri"] == subject
    assert data["status"] == "Succeeded"
    assert data["subscriptionId"] == SUB
    assert data["authorization"]["action"] == "Microsoft.KeyVault/vaults/write"
    assert data["claims"]["appid"] == emulator.client_id
    assert events[0]["id"] != events[1]["id"]

    assert (emulator.reads, emulator.writes) == (0, 3)
    emulator.clear_log()
    assert (emulator.requests, emulator.events, emulator.writes) == ([], [], 0)
    assert emulator.vault(vault_id)["tags"] == {"a": "b"}


# --------------------------------------------------------------------------- static files


def test_static_files_redirects_and_faults(emulator: Emulator) -> None:
    emulator.add_file("/download/tags.json", b'{"values": []}')
    emulator.add_redirect("/latest", "/download/tags.json")
    emulator.fail("GET", r"^/flaky$", 500, times=2)

    got = requests.get(f"{emulator.url}/latest", verify=emulator.ca_bundle, timeout=5)
    assert got.status_code == 200
    assert got.json() == {"values": []}
    assert got.headers["Content-Type"] == "application/json"
    assert [r.status for r in emulator.requests] == [302, 200]
    for expected in (500, 500, 404):
        status = requests.get(f"{emulator.url}/flaky", verify=emulator.ca_bundle, timeout=5)
        assert status.status_code == expected
    assert (emulator.reads, emulator.writes) == (0, 0)


def test_reset_forgets_state_but_keeps_tokens(emulator: Emulator) -> None:
    client = make_client(emulator)
    emulator.add_vault(SUB, "rg", "kv-reset")
    emulator.add_subnet(SUBNET)
    emulator.add_file("/f", b"x")
    emulator.fail("*", "/vaults", 400, times=5)
    emulator.throttle(reads=(1, 0.001), writes=None)
    emulator.write_latency = 5.0
    emulator.page_size = 1
    with pytest.raises(HttpResponseError):
        client.vaults.get("rg", "kv-reset")

    emulator.reset()

    assert (emulator.requests, emulator.events, emulator.reads) == ([], [], 0)
    assert (emulator.page_size, emulator.write_latency) == (50, 0.0)
    assert list(client.vaults.list_by_subscription()) == []
    assert list(client.vaults.list_by_subscription()) == []  # no read throttle any more
    assert (
        requests.get(f"{emulator.url}/f", verify=emulator.ca_bundle, timeout=5).status_code == 404
    )
    with pytest.raises(ValueError, match="could not be validated"):
        emulator.add_vault(
            SUB, "rg", "kv-x", network_acls={"virtualNetworkRules": [{"id": SUBNET}]}
        )


def test_a_lost_response_applies_the_write_then_drops_the_connection(emulator, client):
    from azure.core.exceptions import ServiceResponseError

    vault_id = emulator.add_vault(SUB, "rg", "kv-lost")
    emulator.lose_response("PATCH", "kv-lost")
    with pytest.raises(ServiceResponseError):
        client.vaults.update(
            "rg", "kv-lost", {"properties": {"publicNetworkAccess": "Disabled"}}, retry_total=0
        )
    assert emulator.vault(vault_id)["properties"]["publicNetworkAccess"] == "Disabled"
    client.vaults.update("rg", "kv-lost", {"properties": {"publicNetworkAccess": "Enabled"}})
    assert emulator.vault(vault_id)["properties"]["publicNetworkAccess"] == "Enabled"


def test_a_deleted_vault_is_kept_until_purged_and_recovers_as_it_was(emulator, client):
    vault_id = emulator.add_vault(
        SUB,
        "rg",
        "kv-soft",
        location="West Europe",
        network_acls={"ipRules": [{"value": "1.2.3.4"}]},
    )
    created = emulator.vault(vault_id)["systemData"]["createdAt"]
    emulator.delete_vault(vault_id, retention_days=7)
    with pytest.raises(ResourceNotFoundError):
        client.vaults.get("rg", "kv-soft")
    deleted = client.vaults.get_deleted("kv-soft", "westeurope").as_dict()
    assert deleted["type"] == "Microsoft.KeyVault/deletedVaults"
    assert deleted["id"].endswith(
        "/providers/Microsoft.KeyVault/locations/westeurope/deletedVaults/kv-soft"
    )
    props = deleted["properties"]
    assert (props["vaultId"], props["location"]) == (vault_id, "westeurope")
    assert set(props) == {
        "vaultId",
        "location",
        "deletionDate",
        "scheduledPurgeDate",
        "tags",
        "purgeProtectionEnabled",
    }
    assert props["scheduledPurgeDate"] > props["deletionDate"]

    emulator.recover_vault(vault_id)
    again = client.vaults.get("rg", "kv-soft").as_dict()
    assert again["systemData"]["createdAt"] == created
    assert again["properties"]["networkAcls"]["ipRules"] == [{"value": "1.2.3.4/32"}]
    with pytest.raises(ResourceNotFoundError):
        client.vaults.get_deleted("kv-soft", "westeurope")

    emulator.delete_vault(vault_id)
    emulator.purge_vault(vault_id)
    with pytest.raises(ResourceNotFoundError):
        client.vaults.get_deleted("kv-soft", "westeurope")
