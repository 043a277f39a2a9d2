"""Local Azure Resource Manager emulator for kvfirewall's tests and demo.

Speaks enough of the real ARM REST protocol (Key Vault vaults, Service Tag Discovery,
App Service managed identity, agent pools and subnets) that the unmodified Azure SDK runs
against it offline.
"""

from .agentnets import network_settings_payload, pool_payload, scale_set_payload
from .server import Emulator, Recorded

__all__ = [
    "Emulator",
    "Recorded",
    "network_settings_payload",
    "pool_payload",
    "scale_set_payload",
]
