"""Sovereign clouds: storage suffix, sign-in authority and Discovery location follow
KVF_ARM_ENDPOINT's cloud; explicit settings still win."""

from __future__ import annotations

import pytest

from kvfirewall.clouds import credential_options
from kvfirewall.settings import Settings

SUB = "00000000-0000-0000-0000-00000000000a"


def load(**values: str) -> Settings:
    return Settings.from_env({"KVF_SUBSCRIPTIONS": SUB, "KVF_ADO_GEOGRAPHIES": "Europe", **values})


@pytest.mark.parametrize(
    ("endpoint", "suffix", "authority", "location"),
    [
        (
            "https://management.azure.com",
            "core.windows.net",
            "https://login.microsoftonline.com",
            "westus",
        ),
        (
            "https://management.usgovcloudapi.net/",
            "core.usgovcloudapi.net",
            "https://login.microsoftonline.us",
            "usgovvirginia",
        ),
        (
            "https://Management.ChinaCloudApi.cn",
            "core.chinacloudapi.cn",
            "https://login.chinacloudapi.cn",
            "chinanorth2",
        ),
    ],
)
def test_each_cloud_gets_its_storage_authority_and_location(endpoint, suffix, authority, location):
    s = load(KVF_ARM_ENDPOINT=endpoint, AzureWebJobsStorage__accountName="kvfstate")
    assert s.state.value == f"https://kvfstate.blob.{suffix}"
    assert s.state.table_url == f"https://kvfstate.table.{suffix}"
    assert s.service_tag_location == location
    assert credential_options(s.arm_endpoint, env={}) == {"authority": authority}


def test_explicit_settings_win_over_the_clouds_defaults():
    s = load(
        KVF_ARM_ENDPOINT="https://management.usgovcloudapi.net",
        KVF_SERVICE_TAG_LOCATION="usgovtexas",
        AzureWebJobsStorage__accountName="kvfstate",
        AzureWebJobsStorage__tableServiceUri="https://other.table.core.usgovcloudapi.net",
    )
    assert s.service_tag_location == "usgovtexas"
    assert s.state.table_url == "https://other.table.core.usgovcloudapi.net"
    # azure-identity's own setting is respected: no authority is forced over it.
    env = {"AZURE_AUTHORITY_HOST": "https://login.example.test"}
    assert credential_options(s.arm_endpoint, env=env) == {}


def test_an_unknown_endpoint_keeps_the_public_defaults():
    """Azure Stack or an emulator: the authority is azure-identity's default, storage by
    account name and the Discovery location are the public cloud's (set them explicitly)."""
    s = load(KVF_ARM_ENDPOINT="https://management.local.azurestack.external")
    assert s.service_tag_location == "westus"
    assert credential_options(s.arm_endpoint, env={}) == {}
    named = load(
        KVF_ARM_ENDPOINT="https://management.local.azurestack.external",
        AzureWebJobsStorage__accountName="kvfstate",
    )
    assert named.state.value == "https://kvfstate.blob.core.windows.net"
