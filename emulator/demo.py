"""A demo on the local emulator: `python -m emulator.demo` (scripts/demo runs it).

Seeds a small, realistic estate, then runs the real CLI (`python -m kvfirewall apply`) twice
in separate processes, as an operator would, and shows what each run cost in ARM calls.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
PLATFORM = "6f1c2a8e-4b7d-4c1e-9a53-2d8e0f4b7a10"
TEAM = "c3d9e5b1-7a2f-4e8c-b6d4-91a0f3e2c5d7"
AGENTS = (
    f"/subscriptions/{PLATFORM}/resourceGroups/rg-build-agents/providers/Microsoft.Network"
    "/virtualNetworks/vnet-agents/subnets/snet-vmss"
)
MANAGED = {"kvfirewall": "managed"}


def seed(emu: Emulator) -> None:
    """Vaults as teams leave them: locked with their own rules, open, bare, private, untagged."""
    emu.add_subnet(AGENTS)
    emu.add_vault(
        PLATFORM,
        "rg-payments",
        "kv-payments-prod",
        tags=MANAGED,
        network_acls={
            "defaultAction": "Deny",
            "bypass": "AzureServices",
            "ipRules": [{"value": "52.174.10.20"}, {"value": "40.74.28.0/23"}],
        },
    )
    emu.add_vault(PLATFORM, "rg-shared", "kv-shared-dev", tags=MANAGED)
    emu.add_vault(
        TEAM,
        "rg-legacy",
        "kv-legacy-app",
        tags=MANAGED,
        network_acls={"defaultAction": "Allow", "bypass": "AzureServices"},
    )
    emu.add_vault(
        TEAM, "rg-secure", "kv-private-link", tags=MANAGED, public_network_access="Disabled"
    )
    emu.add_vault(TEAM, "rg-sandbox", "kv-sandbox")


def main() -> int:
    with Emulator() as emu, tempfile.TemporaryDirectory(prefix="kvfirewall-demo-") as state:
        seed(emu)
        env = {
            **os.environ,
            **emu.env(),
            "KVF_SUBSCRIPTIONS": f"{PLATFORM},{TEAM}",
            "KVF_ADO_GEOGRAPHIES": "Europe",
            "KVF_AGENT_SUBNETS": AGENTS,
            "KVF_VAULT_TAG": "kvfirewall=managed",
            "KVF_IP_SOURCE": "builtin",
            "KVF_STATE": state,
        }
        for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
            env.pop(name, None)
        print("kvfirewall demo: 5 vaults in 2 subscriptions on a local ARM emulator")
        print("  allow: Azure DevOps 'Europe' ranges (builtin snapshot) + one agent subnet")
        print("  scope: vaults tagged kvfirewall=managed\n")
        for run in ("first", "second"):
            emu.clear_log()
            print(f"$ python -m kvfirewall apply    # {run} run", flush=True)
            result = subprocess.run(
                [sys.executable, "-m", "kvfirewall", "apply"], cwd=ROOT, env=env, check=False
            )
            print(f"-> emulator saw {emu.reads} ARM reads and {emu.writes} ARM writes\n")
            if result.returncode != 0:
                return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
