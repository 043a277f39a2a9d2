"""The shared transport's session takes the environment's proxies and CA bundle as requests
does, without reading the whole environment for every request."""

from __future__ import annotations

import pytest
import requests

from kvfirewall.transport import ENVIRONMENT, _session_class

URLS = (
    "https://management.azure.com/subscriptions/x?api-version=1",
    "http://127.0.0.1:10002/devstoreaccount1/Tables",
    "https://kvfwstate.blob.core.windows.net/kvfirewall/leases/abc",
)
ENVIRONMENTS = (
    {},
    {"HTTPS_PROXY": "http://proxy.example:3128"},
    {"https_proxy": "http://proxy.example:3128", "no_proxy": "127.0.0.1,.core.windows.net"},
    {"ALL_PROXY": "http://all.example:8080", "NO_PROXY": "management.azure.com"},
    {"HTTP_PROXY": "http://plain.example:80", "REQUESTS_CA_BUNDLE": "/etc/ca.pem"},
    {"CURL_CA_BUNDLE": "/etc/curl-ca.pem"},
)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_requests_get_the_settings_requests_would_take_from_the_environment(
    environment, monkeypatch
):
    """Each environment is set in turn in one process: a changed variable counts at once."""
    session = _session_class()()
    reference = requests.Session()
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    for url in URLS:
        for verify in (None, True, False, "/own/ca.pem"):
            ours = session.merge_environment_settings(url, {}, None, verify, None)
            theirs = reference.merge_environment_settings(url, {}, None, verify, None)
            assert ours == theirs, (url, verify)


def test_no_netrc_credentials_replace_a_clients_token(tmp_path, monkeypatch):
    """requests would sign a request with ~/.netrc's password for its host, overwriting the
    bearer token the SDK set."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine management.azure.com login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    request = requests.Request(
        "GET", URLS[0], headers={"Authorization": "Bearer token-of-the-client"}
    )
    assert requests.Session().prepare_request(request).headers["Authorization"].startswith("Basic")
    prepared = _session_class()().prepare_request(request)
    assert prepared.headers["Authorization"] == "Bearer token-of-the-client"
