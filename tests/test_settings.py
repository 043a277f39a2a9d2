"""Settings are validated up front, with one clear message naming the setting and the value."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from kvfirewall.settings import HOST_SETTINGS, SETTINGS, Settings, SettingsError

SUB = "00000000-0000-0000-0000-00000000000A"
SUBNET = f"/subscriptions/{SUB}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
POOL = (
    f"/subscriptions/{SUB}/resourceGroups/agents/providers/Microsoft.DevOpsInfrastructure/pools/p"
)


def load(**values: str) -> Settings:
    env = {"KVF_SUBSCRIPTIONS": SUB, "KVF_ADO_GEOGRAPHIES": "Europe"}
    env.update(values)
    return Settings.from_env({k: v for k, v in env.items() if v is not None})


def test_defaults_and_parsing():
    s = load(KVF_ADO_GEOGRAPHIES="europe, UNITED kingdom,", KVF_ADO_REGIONS="SwedenCentral")
    assert s.subscriptions == (SUB.lower(),)
    assert s.geographies == ("Europe", "United Kingdom")
    assert s.all_regions == ("westeurope", "northeurope", "uksouth", "swedencentral")
    assert (s.mode, s.ip_source, s.service_tag_location) == ("audit", "api", "westus")
    assert s.arm_endpoint == "https://management.azure.com"
    assert (s.state.kind, s.state.value) == ("local", "./.kvfirewall")
    assert s.vault_tag is None


def test_whitespace_duplicates_and_trailing_commas_are_tolerated():
    s = load(
        KVF_SUBSCRIPTIONS=f" {SUB}, {SUB.lower()},,",
        KVF_EXTRA_IP_RULES="52.1.2.3, 52.1.2.3/32 ,",
        KVF_AGENT_SUBNETS=f"{SUBNET},{SUBNET.upper().replace('/SUBSCRIPTIONS', '/subscriptions')}",
    )
    assert s.subscriptions == (SUB.lower(),)
    assert s.extra_ip_rules == (IPv4Network("52.1.2.3/32"),)
    assert len(s.agent_subnets) == 1


def test_state_follows_functions_storage_unless_set():
    azurite = "UseDevelopmentStorage=true"
    assert load(AzureWebJobsStorage=azurite).state.kind == "connection-string"
    assert load(AzureWebJobsStorage=azurite, KVF_STATE="/tmp/x").state.value == "/tmp/x"
    by_name = load(AzureWebJobsStorage__accountName="kvfstate").state
    assert (by_name.kind, by_name.value, by_name.table_url) == (
        "identity",
        "https://kvfstate.blob.core.windows.net",
        "https://kvfstate.table.core.windows.net",
    )
    by_uri = load(
        AzureWebJobsStorage__blobServiceUri="https://s.blob.core.usgovcloudapi.net",
        AzureWebJobsStorage__tableServiceUri="https://s.table.core.usgovcloudapi.net",
        AzureWebJobsStorage__clientId="0b1c2d3e-0000-4000-8000-000000000001",
    ).state
    assert by_uri.table_url == "https://s.table.core.usgovcloudapi.net"
    assert by_uri.client_id == "0b1c2d3e-0000-4000-8000-000000000001"


def test_a_function_app_without_durable_state_is_refused():
    with pytest.raises(SettingsError, match="a Function App needs durable state"):
        load(FUNCTIONS_WORKER_RUNTIME="python")
    assert load(FUNCTIONS_WORKER_RUNTIME="python", KVF_STATE="/mnt/state").state.kind == "local"


def test_a_secret_in_the_ip_source_url_is_never_echoed():
    with pytest.raises(SettingsError) as caught:
        load(KVF_IP_SOURCE="http://example.com/tags.json?sig=S3CRET")
    assert "S3CRET" not in str(caught.value)
    assert "http://example.com/tags.json?…" in str(caught.value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"KVF_SUBSCRIPTIONS": ""}, "KVF_SUBSCRIPTIONS is required"),
        ({"KVF_SUBSCRIPTIONS": "my-sub"}, "KVF_SUBSCRIPTIONS: 'my-sub'"),
        ({"KVF_ADO_GEOGRAPHIES": "Mars"}, "unknown geography 'Mars'; valid: Asia Pacific"),
        ({"KVF_ADO_REGIONS": "west europe!"}, "KVF_ADO_REGIONS: 'west europe!'"),
        (
            {"KVF_EXTRA_IP_RULES": "10.1.0.0/16"},
            "KVF_EXTRA_IP_RULES: '10.1.0.0/16' is not a public",
        ),
        ({"KVF_EXTRA_IP_RULES": "192.168.1.1"}, "'192.168.1.1' is not a public"),
        ({"KVF_EXTRA_IP_RULES": "2603:1020::/48"}, "'2603:1020::/48' is IPv6"),
        ({"KVF_EXTRA_IP_RULES": "52.1.2.3/24"}, "host bits set (did you mean 52.1.2.0/24?)"),
        ({"KVF_EXTRA_IP_RULES": "52.1.2"}, "'52.1.2' is not an IPv4 address or CIDR"),
        ({"KVF_AGENT_SUBNETS": "/subscriptions/x/subnets/y"}, "KVF_AGENT_SUBNETS: '/subscr"),
        ({"KVF_MODE": "yolo"}, "KVF_MODE: 'yolo' is not one of audit, enforce"),
        ({"KVF_IP_SOURCE": "http://example.com/tags.json"}, "KVF_IP_SOURCE: 'http://exa"),
        ({"KVF_IP_SOURCE": "/no/such/file.json"}, "'/no/such/file.json' is not api, builtin"),
        ({"KVF_ARM_ENDPOINT": "http://management.azure.com"}, "KVF_ARM_ENDPOINT: 'http://"),
        ({"KVF_VAULT_TAG": "managed"}, "KVF_VAULT_TAG: 'managed' is not name=value"),
        ({"KVF_SERVICE_TAG_LOCATION": "us/../x"}, "KVF_SERVICE_TAG_LOCATION: 'us/../x'"),
        ({"KVF_MAX_RANGE_LOSS_PERCENT": "150"}, "KVF_MAX_RANGE_LOSS_PERCENT: '150'"),
        ({"KVF_ADO_GEOGRAPHIES": ""}, "nothing to allow"),
        (
            {"KVF_EXTRA_IP_RULES": "0.0.0.0/0"},
            "'0.0.0.0/0' is not a public address range (it overlaps",
        ),
        ({"KVF_EXTRA_IP_RULES": "128.0.0.0/1"}, "'128.0.0.0/1' is not a public address range"),
        ({"KVF_EXTRA_IP_RULES": "8.0.0.0/6"}, "(it overlaps the reserved 10.0.0.0/8)"),
        ({"KVF_EXTRA_IP_RULES": "100.64.1.1"}, "(it lies in the reserved 100.64.0.0/10)"),
        ({"KVF_EXTRA_IP_RULES": "52.0.0.0/8"}, "'52.0.0.0/8' is wider than /16"),
        ({"KVF_STATE": "SharedAccessSignature=sv=1&sig=x"}, "KVF_STATE: not a valid Azure Storage"),
        ({"KVF_STATE": "AccountName=a;AccountKey=not base64!"}, "AccountKey is not base64"),
        ({"KVF_IP_SOURCE": "x" * 300}, "KVF_IP_SOURCE: 'xxxx"),
        (
            {"AzureWebJobsStorage__blobServiceUri": "http://a.blob.core.windows.net"},
            "AzureWebJobsStorage__blobServiceUri: 'http://a.blob.core.windows.net' is not an https",
        ),
        ({"AzureWebJobsStorage__accountName": "Bad_Name"}, "'Bad_Name' is not a storage account"),
        ({"KVF_IP_SOURCE": "https://[x"}, "KVF_IP_SOURCE: 'https://[x' is not a valid URL"),
        (
            {"KVF_IP_SOURCE": "https://h:99999/t.json"},
            "'https://h:99999/t.json' is not a valid URL",
        ),
        ({"KVF_ARM_ENDPOINT": "https://[x"}, "KVF_ARM_ENDPOINT: 'https://[x' is not a valid URL"),
        ({"KVF_ARM_ENDPOINT": "https://u:pw@management.azure.com"}, "must not carry a user name"),
        ({"KVF_ARM_ENDPOINT": "https://management.azure.com/?x=1"}, "must not have a query string"),
        ({"KVF_REPORT_DAYS": "0"}, "KVF_REPORT_DAYS: '0' is not a whole number of days from 1"),
        ({"KVF_REPORT_DAYS": "1.5"}, "KVF_REPORT_DAYS: '1.5' is not a whole number"),
        ({"KVF_REPORT_DAYS": "99999"}, "KVF_REPORT_DAYS: '99999' is not a whole number"),
        ({"KVF_STATE": "AccountName=acct"}, "KVF_STATE: not a valid Azure Storage"),
        ({"KVF_AGENT_POOLS": f"{POOL},{SUBNET}"}, f"KVF_AGENT_POOLS: {SUBNET!r} is not an agent"),
        (
            {"KVF_AGENT_POOLS": POOL.replace("DevOpsInfrastructure/pools", "KeyVault/vaults")},
            "is a Microsoft.KeyVault/vaults, not an agent pool",
        ),
        ({"KVF_DISCOVER_POOLS": "maybe"}, "KVF_DISCOVER_POOLS: 'maybe' is not true or false"),
        ({"KVF_FIX_SERVICE_ENDPOINTS": "2"}, "KVF_FIX_SERVICE_ENDPOINTS: '2' is not true or"),
    ],
)
def test_bad_values_are_named_in_one_message(values, expected):
    with pytest.raises(SettingsError) as caught:
        load(**values)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_agent_pools_alone_are_something_to_allow_and_switches_default_off():
    pools = load(KVF_ADO_GEOGRAPHIES="", KVF_AGENT_POOLS=f"{POOL}, {POOL.upper()[:15]}{POOL[15:]}")
    assert [p.id for p in pools.agent_pools] == [POOL.replace(SUB, SUB.lower())]
    assert load(KVF_ADO_GEOGRAPHIES="", KVF_DISCOVER_POOLS="true").discover_pools
    assert (pools.discover_pools, pools.fix_service_endpoints) == (False, False)


def test_a_bad_connection_string_is_reported_without_its_secret():
    secret = "AccountName=acct;AccountKeyy=c2VjcmV0LXNlY3JldA=="
    with pytest.raises(SettingsError) as caught:
        load(KVF_STATE=secret)
    assert "KVF_STATE" in str(caught.value)
    assert "c2VjcmV0" not in str(caught.value)


def test_every_documented_setting_is_read(monkeypatch):
    """The SETTINGS table is the interface: each name must change the parsed result."""
    base = load()
    changed = {
        "KVF_ADO_REGIONS": "swedencentral",
        "KVF_IP_SOURCE": "builtin",
        "KVF_SERVICE_TAG_LOCATION": "westeurope",
        "KVF_AGENT_SUBNETS": SUBNET,
        "KVF_EXTRA_IP_RULES": "52.1.2.3",
        "KVF_VAULT_TAG": "kvfirewall=managed",
        "KVF_MODE": "enforce",
        "KVF_LOCK_OPEN_VAULTS": "true",
        "KVF_ENABLE_DISABLED_VAULTS": "yes",
        "KVF_ARM_ENDPOINT": "https://management.usgovcloudapi.net",
        "KVF_STATE": "/var/kvf",
        "KVF_MAX_RANGE_LOSS_PERCENT": "5",
        "KVF_REPORT_DAYS": "7",
        "KVF_FAN_OUT": "false",
        "KVF_ADO_GEOGRAPHIES": "India",
        "KVF_SUBSCRIPTIONS": "00000000-0000-0000-0000-00000000000b",
        "KVF_LISTING": "graph",
        "KVF_AGENT_POOLS": POOL,
        "KVF_DISCOVER_POOLS": "true",
        "KVF_FIX_SERVICE_ENDPOINTS": "on",
    }
    leasing = {
        "KVF_LEASES": "entra",
        "KVF_LEASE_TENANT": TENANT,
        "KVF_LEASE_AUDIENCES": "api://kvfirewall-leases",
    }
    lease_base = load(**leasing)
    lease_changes = {
        "KVF_LEASE_TENANT": "3f1c2a4b-1111-4222-8333-444455556667",
        "KVF_LEASE_AUDIENCES": "api://other",
        "KVF_LEASE_TAG": "leases=yes",
        "KVF_LEASE_MAX_MINUTES": "120",
        "KVF_LEASE_IP_SCOPE": "any",
        "KVF_LEASE_PRINCIPALS": TENANT,
    }
    assert set(changed) | set(lease_changes) | {"KVF_LEASES"} == set(SETTINGS) - HOST_SETTINGS
    assert lease_base != base
    for name, value in changed.items():
        assert load(**{name: value}) != base, name
    for name, value in lease_changes.items():
        assert load(**{**leasing, name: value}) != lease_base, name
        assert load(**{name: value}) == base, name  # read only with KVF_LEASES=entra


TENANT = "3f1c2a4b-1111-4222-8333-444455556666"


def test_lease_settings_are_parsed_with_the_clouds_authority():
    leases = load(
        KVF_LEASES="Entra",
        KVF_LEASE_TENANT=TENANT.upper(),
        KVF_LEASE_AUDIENCES="api://kvfirewall-leases, 0b6f1a2c-3d4e-4f50-8a61-72839405a6b7,",
        KVF_ARM_ENDPOINT="https://management.usgovcloudapi.net",
    ).leases
    assert leases.enabled and leases.tenant == TENANT
    assert leases.audiences == ("api://kvfirewall-leases", "0b6f1a2c-3d4e-4f50-8a61-72839405a6b7")
    assert leases.authority == "https://login.microsoftonline.us"
    assert (leases.tag, leases.max_minutes, leases.ip_scope) == (
        ("kvfirewall-leases", "enabled"),
        60,
        "azure",
    )
    own = load(
        KVF_LEASES="entra",
        KVF_LEASE_TENANT=TENANT,
        KVF_LEASE_AUDIENCES="api://x",
        AZURE_AUTHORITY_HOST="https://login.example.test/",
    )
    assert own.leases.authority == "https://login.example.test"
    assert not load().leases.enabled


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"KVF_LEASES": "on"}, "KVF_LEASES"),
        ({"KVF_LEASE_TENANT": None}, "KVF_LEASE_TENANT"),
        ({"KVF_LEASE_TENANT": "contoso.onmicrosoft.com"}, "KVF_LEASE_TENANT"),
        ({"KVF_LEASE_AUDIENCES": " , "}, "KVF_LEASE_AUDIENCES"),
        ({"KVF_LEASE_MAX_MINUTES": "1441"}, "KVF_LEASE_MAX_MINUTES"),
        ({"KVF_LEASE_MAX_MINUTES": "0"}, "KVF_LEASE_MAX_MINUTES"),
        ({"KVF_LEASE_IP_SCOPE": "anywhere"}, "KVF_LEASE_IP_SCOPE"),
        ({"KVF_LEASE_PRINCIPALS": "pipeline-sp"}, "KVF_LEASE_PRINCIPALS"),
        ({"KVF_LEASE_TAG": "novalue"}, "KVF_LEASE_TAG"),
        ({"AZURE_AUTHORITY_HOST": "http://login.microsoftonline.com"}, "AZURE_AUTHORITY_HOST"),
    ],
)
def test_bad_lease_settings_are_named(values, named):
    env = {
        "KVF_LEASES": "entra",
        "KVF_LEASE_TENANT": TENANT,
        "KVF_LEASE_AUDIENCES": "api://kvfirewall-leases",
        **values,
    }
    with pytest.raises(SettingsError) as caught:
        load(**env)
    assert str(caught.value).startswith(named)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KVF_IP_SOURCE", "htps://host/t.json?sig=S3CRET"),
        ("KVF_IP_SOURCE", "https://[x?sig=S3CRET"),
        ("KVF_ARM_ENDPOINT", "https://management.azure.com/?sig=S3CRET"),
        ("KVF_ARM_ENDPOINT", "https://user:S3CRET@management.azure.com"),
        ("AzureWebJobsStorage__blobServiceUri", "https://a.blob.core.windows.net/?sig=S3CRET"),
    ],
)
def test_no_error_message_echoes_a_secret(name, value):
    with pytest.raises(SettingsError) as caught:
        load(**{name: value})
    assert "S3CRET" not in str(caught.value)
    assert str(caught.value).startswith(name)


@pytest.mark.parametrize(
    "path",
    ["/var/kvf/a=b", "./state=1", r"C:\kvf\run=2;copy=3", "/srv/x;y=z", "/data/AccountName=x"],
)
def test_a_directory_whose_path_holds_an_equals_sign_is_a_directory(path):
    state = load(KVF_STATE=path).state
    assert (state.kind, state.value) == ("local", path)


def test_a_connection_string_is_known_by_its_fields():
    azurite = "UseDevelopmentStorage=true"
    assert load(KVF_STATE=azurite).state.kind == "connection-string"
    sas = "BlobEndpoint=https://a.blob.core.windows.net;TableEndpoint=https://a.table.core.windows.net;SharedAccessSignature=sv=1&sig=x"
    assert load(KVF_STATE=sas).state.kind == "connection-string"


def test_reports_are_kept_thirty_days_unless_set():
    assert load().report_days == 30
    assert load(KVF_REPORT_DAYS=" 90 ").report_days == 90
