"""Shared fixtures: one local ARM emulator per session, reset before each test that uses it."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

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
def emulator(arm_emulator_session: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """A clean emulator with os.environ pointing azure-identity and the product at it."""
    emu = arm_emulator_session
    emu.reset()
    for name in _FOREIGN_CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in emu.env().items():
        monkeypatch.setenv(name, value)
    return emu


# ---- Azurite (Azure Storage emulator, npm package `azurite`) ------------------------------

AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURITE_BIN = Path(__file__).resolve().parent.parent / "node_modules" / ".bin" / "azurite"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Azurite (blob, queue and table, in memory); yields its connection string."""
    if not AZURITE_BIN.exists():
        pytest.fail("Azurite is not installed: run `npm ci` (scripts/test does it)")
    blob, queue, table = _free_port(), _free_port(), _free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    process = subprocess.Popen(
        [
            str(AZURITE_BIN),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--blobHost",
            "127.0.0.1",
            "--queueHost",
            "127.0.0.1",
            "--tableHost",
            "127.0.0.1",
            "--blobPort",
            str(blob),
            "--queuePort",
            str(queue),
            "--tablePort",
            str(table),
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    for port in (blob, queue, table):
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"Azurite did not start: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    yield (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob}/devstoreaccount1;"
        f"TableEndpoint=http://127.0.0.1:{table}/devstoreaccount1;"
        f"QueueEndpoint=http://127.0.0.1:{queue}/devstoreaccount1;"
    )
    process.kill()  # in-memory: nothing to flush, and Azurite is slow to honour SIGTERM
    process.wait(timeout=10)
