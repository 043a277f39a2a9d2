"""Shared fixtures: one local ARM emulator per session, reset before each test that uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator import Emulator

# Credential sources that would take precedence over, or interfere with, the emulator's
# App Service managed identity inside DefaultAzureCredential.
_FOREIGN_CREDENTIAL_ENV = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_USERNAME",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "AZURE_FEDERATED_TOKEN_FILE",
)


@pytest.fixture(scope="session")
def arm_emulator_session() -> Iterator[Emulator]:
    """Started once: generating the CA and binding a port is the slow part."""
    with Emulator(page_size=50) as emu:
        yield emu


@pytest.fixture
def emulator(arm_emulator_session: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """A clean emulator with os.environ pointing azure-identity and the product at it."""
    emu = arm_emulator_session
    emu.reset()
    for name in _FOREIGN_CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in emu.env().items():
        monkeypatch.setenv(name, value)
    yield emu
