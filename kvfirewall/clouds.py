"""The Azure clouds kvfirewall knows, told apart by their Resource Manager endpoint.

One table, read wherever a cloud-specific value is needed: the token audience of Resource
Manager, the storage endpoints' DNS suffix (identity-based storage named by account), the
Entra ID authority that credentials sign in at, and a Discovery API location that exists in
that cloud. Any other endpoint (Azure Stack, a test emulator) keeps the public cloud's storage
suffix, authority and location unless they are set explicitly, and gets `<endpoint>/.default`
as its token audience.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Cloud:
    """What differs between Azure clouds, as far as kvfirewall goes."""

    name: str
    arm_endpoint: str
    token_scope: str
    storage_suffix: str
    authority_host: str
    service_tag_location: str


PUBLIC = Cloud(
    name="AzureCloud",
    arm_endpoint="https://management.azure.com",
    token_scope="https://management.azure.com/.default",
    storage_suffix="core.windows.net",
    authority_host="https://login.microsoftonline.com",
    service_tag_location="westus",
)
CLOUDS = (
    PUBLIC,
    Cloud(
        name="AzureUSGovernment",
        arm_endpoint="https://management.usgovcloudapi.net",
        token_scope="https://management.core.usgovcloudapi.net/.default",
        storage_suffix="core.usgovcloudapi.net",
        authority_host="https://login.microsoftonline.us",
        service_tag_location="usgovvirginia",
    ),
    Cloud(
        name="AzureChinaCloud",
        arm_endpoint="https://management.chinacloudapi.cn",
        token_scope="https://management.chinacloudapi.cn/.default",
        storage_suffix="core.chinacloudapi.cn",
        authority_host="https://login.chinacloudapi.cn",
        service_tag_location="chinanorth2",
    ),
)


def cloud_of(arm_endpoint: str) -> Cloud | None:
    """The known cloud whose Resource Manager this is, or None (Azure Stack, an emulator)."""
    base = arm_endpoint.rstrip("/").lower()
    return next((c for c in CLOUDS if c.arm_endpoint == base), None)


def defaults_for(arm_endpoint: str) -> Cloud:
    """The cloud whose values apply when no setting says otherwise: the endpoint's own, or
    the public cloud's for an endpoint that is not a known cloud."""
    return cloud_of(arm_endpoint) or PUBLIC


def token_scope(arm_endpoint: str) -> str:
    """The credential scope that matches a Resource Manager endpoint."""
    cloud = cloud_of(arm_endpoint)
    return cloud.token_scope if cloud else f"{arm_endpoint.rstrip('/')}/.default"


def credential_options(arm_endpoint: str, env: Mapping[str, str] | None = None) -> dict:
    """Keyword arguments for azure-identity credentials in the endpoint's cloud: its authority,
    unless azure-identity's own `AZURE_AUTHORITY_HOST` is set (then that one applies) or the
    cloud is not a known one (azure-identity's default). Managed identity needs none."""
    env = os.environ if env is None else env
    cloud = cloud_of(arm_endpoint)
    if cloud is None or env.get("AZURE_AUTHORITY_HOST", "").strip():
        return {}
    return {"authority": cloud.authority_host}


def default_credential(arm_endpoint: str, *, client_id: str | None = None):
    """A `DefaultAzureCredential` that signs in at the endpoint's cloud."""
    from azure.identity import DefaultAzureCredential

    options = credential_options(arm_endpoint)
    if client_id:
        options["managed_identity_client_id"] = client_id
    return DefaultAzureCredential(**options)
