"""Run the emulator in the foreground for a demo: `python -m emulator [--seed]`."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import time
from pathlib import Path

from . import Emulator

_FIXTURE = (
    Path(__file__).resolve().parent.parent
    / "tests"
    / "fixtures"
    / "ServiceTags_Public_20251028.AzureDevOps-only.json"
)


def main() -> None:
    """Start, optionally seed a demo vault and service tags, print the env, serve until ^C."""
    parser = argparse.ArgumentParser(prog="python -m emulator", description=__doc__)
    parser.add_argument("--seed", action="store_true", help="add a demo vault and service tags")
    parser.add_argument("--subscription", default="00000000-0000-0000-0000-000000000001")
    args = parser.parse_args()
    # Treat SIGTERM like ^C so the temporary CA directory is removed either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Emulator() as emu:
        if args.seed:
            vault_id = emu.add_vault(args.subscription, "demo-rg", "demo-kv")
            print(f"# seeded {vault_id}")
            if _FIXTURE.exists():
                emu.set_service_tags(json.loads(_FIXTURE.read_text()))
                print(f"# service tags from {_FIXTURE.name}")
        for name, value in emu.env().items():
            print(f"export {name}={shlex.quote(value)}")
        print("# Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
