"""Local Azure Resource Manager emulator for kvfirewall's tests and demo.

Speaks enough of the real ARM REST protocol (Key Vault vaults, Service Tag Discovery,
App Service managed identity) that the unmodified Azure SDK runs against it offline.
"""

from .server import Emulator, Recorded

__all__ = ["Emulator", "Recorded"]
