"""Run the emulator in the foreground: `python -m emulator [--seed] [--vaults N ...]`.

`--seed` adds one demo vault. `--vaults N --subscriptions S` seeds an estate of N vaults for
benchmarks (and prints KVF_SUBSCRIPTIONS with the rest of the environment); `--latency` and
`--throttle` make it behave like a remote, rate-limited Resource Manager. With `--control`
the process is driven from stdin, one command a line, each answered by one JSON line on
stdout, so that a benchmark can read the emulator's counters without sharing its memory:

    stats   requests seen, by kind and answer; successful writes and when they happened;
            the CPU time the emulator has used
    event   the newest Event Grid event (one is raised per successful vault write)
    clear   forget the request log, the events and the counters (vaults are kept)
    drift ID  open the vault's firewall and drop its rules, as its team might (no event)

End of input stops it.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shlex
import signal
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import Emulator, vaults

_FIXTURE = (
    Path(__file__).resolve().parent.parent
    / "tests"
    / "fixtures"
    / "ServiceTags_Public_20251028.AzureDevOps-only.json"
)


def bench_subscription(index: int) -> str:
    """A stable, well-formed subscription id per index, so that runs are comparable."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kvfirewall-bench/subscription/{index}"))


def seed_estate(emu: Emulator, vaults: int, subscriptions: int) -> list[str]:
    """`vaults` vaults spread evenly over `subscriptions`, as teams leave them: 70 % locked
    (Deny) with one to three rules of their own, 20 % open (Allow), 10 % without any ACLs.
    None holds the Azure DevOps ranges, so a first run writes every vault. Deterministic."""
    rng = random.Random(20251028)
    subs = [bench_subscription(i) for i in range(subscriptions)]
    for index in range(vaults):
        sub = subs[index % subscriptions]
        group = f"rg-team-{index // subscriptions % 10:02d}"
        name = f"kv-bench-{index:06d}"
        kind = rng.random()
        if kind < 0.7:
            # Public addresses outside every AzureDevOps range (13.64.0.0/11 is not one).
            own = [
                {"value": f"13.{rng.randint(64, 95)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"}
                for _ in range(rng.randint(1, 3))
            ]
            acls: dict[str, Any] | None = {
                "defaultAction": "Deny",
                "bypass": "AzureServices",
                "ipRules": own,
            }
        elif kind < 0.9:
            acls = {"defaultAction": "Allow", "bypass": "AzureServices"}
        else:
            acls = None
        emu.add_vault(sub, group, name, network_acls=acls)
    return subs


def stats(emu: Emulator) -> dict[str, Any]:
    """The counters a benchmark needs, computed from the request log and the events."""
    answers: Counter[str] = Counter()
    throttled: Counter[str] = Counter()
    for request in emu.requests:
        if not request.path.lower().startswith("/subscriptions/"):
            continue
        kind = "read" if request.method == "GET" else "write"
        answers[f"{request.method} {request.status}"] += 1
        if request.status == 429:
            throttled[kind] += 1
    by_subscription: dict[str, list[float]] = {}
    for event in emu.events:
        stamp = (
            datetime.strptime(event["eventTime"][:26], "%Y-%m-%dT%H:%M:%S.%f")
            .replace(tzinfo=timezone.utc)
            .timestamp()
        )
        by_subscription.setdefault(event["data"]["subscriptionId"], []).append(stamp)
    stamps = [s for times in by_subscription.values() for s in times]
    return {
        "reads": emu.reads,
        "writes": emu.writes,
        "throttledReads": throttled["read"],
        "throttledWrites": throttled["write"],
        "answers": dict(sorted(answers.items())),
        "writesApplied": len(stamps),
        "writeSeconds": max(stamps) - min(stamps) if stamps else 0.0,
        "maxWritesPerSubscription": max((len(t) for t in by_subscription.values()), default=0),
        "tokenRequests": emu.token_requests,
        "cpuSeconds": _cpu_seconds(),
    }


def _cpu_seconds() -> float:
    """CPU time this process has used so far: the emulator shares the machine it measures."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _drift(emu: Emulator, vault_id: str) -> str:
    """Replace the vault's networkAcls with an open firewall without rules; all else stays."""
    vault = emu.vault(vault_id)
    return emu.add_vault(
        *vaults.parse_vault_id(vault_id),
        location=vault["location"],
        tags=vault["tags"],
        network_acls={"defaultAction": "Allow", "bypass": "AzureServices"},
        public_network_access=vault["properties"]["publicNetworkAccess"],
    )


def _control(emu: Emulator) -> None:
    """Answer commands from stdin until it closes."""
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            answer: Any = stats(emu)
        elif command == "event":
            events = emu.events
            answer = events[-1] if events else None
        elif command == "clear":
            emu.clear_log()
            answer = {"cleared": True}
        elif command.startswith("drift "):
            try:
                answer = {"drifted": _drift(emu, command.removeprefix("drift ").strip())}
            except (KeyError, ValueError) as exc:
                answer = {"error": str(exc)}
        else:
            answer = {"error": f"unknown command {command!r}"}
        print(json.dumps(answer), flush=True)


def main() -> None:
    """Start, optionally seed, print the env, serve until ^C (or end of input with --control)."""
    parser = argparse.ArgumentParser(
        prog="python -m emulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", action="store_true", help="add a demo vault and service tags")
    parser.add_argument("--subscription", default="00000000-0000-0000-0000-000000000001")
    parser.add_argument("--vaults", type=int, default=0, help="seed a benchmark estate")
    parser.add_argument("--subscriptions", type=int, default=1, help="spread over this many")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to ARM calls")
    parser.add_argument(
        "--write-latency", type=float, default=0.0, help="seconds a vault write holds the vault"
    )
    parser.add_argument("--page-size", type=int, default=50, help="vaults per list page")
    parser.add_argument(
        "--throttle",
        action="store_true",
        help="ARM token buckets per subscription: 250 reads (25/s), 200 writes (10/s)",
    )
    parser.add_argument("--control", action="store_true", help="take commands from stdin")
    args = parser.parse_args()
    if args.vaults and args.subscriptions < 1:
        parser.error("--subscriptions must be at least 1")
    # Treat SIGTERM like ^C so the temporary CA directory is removed either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Emulator(page_size=args.page_size) as emu:
        env = emu.env()
        if args.seed:
            vault_id = emu.add_vault(args.subscription, "demo-rg", "demo-kv")
            print(f"# seeded {vault_id}")
        if args.vaults:
            subs = seed_estate(emu, args.vaults, args.subscriptions)
            env["KVF_SUBSCRIPTIONS"] = ",".join(subs)
            print(f"# seeded {args.vaults} vaults in {len(subs)} subscriptions")
        if (args.seed or args.vaults) and _FIXTURE.exists():
            emu.set_service_tags(json.loads(_FIXTURE.read_text()))
            print(f"# service tags from {_FIXTURE.name}")
        emu.latency = args.latency
        emu.write_latency = args.write_latency
        if args.throttle:
            emu.throttle()
        for name, value in env.items():
            print(f"export {name}={shlex.quote(value)}")
        try:
            if args.control:
                print("# ready: commands on stdin (stats, event, clear)", flush=True)
                _control(emu)
            else:
                print("# Ctrl-C to stop", flush=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
