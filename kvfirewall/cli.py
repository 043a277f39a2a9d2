"""`python -m kvfirewall`: the same engine as the Function App, from a laptop or a pipeline.

Exit codes: 0 all vaults fine, 1 some vault failed, 2 bad settings or arguments.
`apply` writes even when KVF_MODE is audit: the operator asked for it explicitly; KVF_MODE
governs the unattended triggers. `plan` and `apply` print the vaults that changed or failed
(the counts cover all); `apply` stores the full report, which `reports NAME` prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import TextIO

from kvfirewall.errors import one_line
from kvfirewall.report import ReportInfo, VaultResult
from kvfirewall.rules import RuleError, VaultRef, parse_vault_id
from kvfirewall.service import Service
from kvfirewall.settings import Settings, SettingsError


class UsageError(Exception):
    """Bad command-line input; exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvfirewall",
        description="Keep Key Vault firewalls open to exactly what Azure DevOps needs.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("ranges", "show what would be allowed, and from which source version"),
        ("plan", "dry run: report what apply would change (never writes)"),
        ("apply", "reconcile the vaults (writes) and store the report"),
        ("reports", "list the stored reports, newest first, or print one"),
        ("status", "what the stored runs say: every vault's state, the last runs, the source"),
        ("leases", "list the active access leases"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--json", action="store_true", help="print JSON")
        command.add_argument("-v", "--verbose", action="store_true", help="log every vault")
        if name in ("plan", "apply"):
            command.add_argument("--vault", metavar="ID", help="only this vault (resource id)")
        if name == "reports":
            command.add_argument("name", nargs="?", help="print this stored report (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.verbose:  # one line per vault; the SDK's HTTP logging stays quiet
        logging.getLogger("kvfirewall").setLevel(logging.DEBUG)
    try:
        service = Service.from_settings(Settings.from_env())
        vault = _target(getattr(args, "vault", None), service.settings)
    except (SettingsError, UsageError) as exc:
        print(f"kvfirewall: error: {exc}", file=sys.stderr)
        return 2
    progress = _Progress(sys.stderr)
    try:
        if args.command == "ranges":
            return _ranges(service.ranges(), as_json=args.json)
        if args.command == "reports":
            return _reports(service, args.name, as_json=args.json)
        if args.command == "status":
            return _status(service, as_json=args.json)
        if args.command == "leases":
            return _leases(service, as_json=args.json)
        write = args.command == "apply"
        report = service.run(
            write=write,
            mode="enforce" if write else "plan",
            vault=vault,
            progress=progress,
            trigger="cli" if write else None,
        )
    except Exception as exc:  # e.g. the state store is unreachable: say so, no traceback
        print(f"kvfirewall: error: {one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    print(json.dumps(report.to_json(), indent=2) if args.json else report.to_table())
    return 1 if report.failed else 0


def _target(value: str | None, settings: Settings) -> VaultRef | None:
    if value is None:
        return None
    try:
        ref = parse_vault_id(value)
    except RuleError as exc:
        raise UsageError(f"--vault: {exc}") from None
    if not settings.management_groups and ref.subscription not in settings.subscriptions:
        raise UsageError(f"--vault: subscription {ref.subscription} is not in KVF_SUBSCRIPTIONS")
    return ref


def _reports(service: Service, name: str | None, *, as_json: bool) -> int:
    """One stored report's JSON, or the list: one line per report, newest first."""
    if name is not None:
        try:
            data = service.store.read_report(name)
        except KeyError:
            print(f"kvfirewall: error: no stored report {name!r}", file=sys.stderr)
            return 2
        sys.stdout.buffer.write(data)
        return 0
    reports = service.store.list_reports()
    if as_json:
        print(json.dumps([_report_json(r) for r in reports], indent=2))
        return 0
    for info in reports:
        counts = ", ".join(f"{n} {k}" for k, n in info.counts.items() if n) or "no vaults"
        print(f"{info.time:%Y-%m-%d %H:%M:%S}Z  {info.trigger:<5}  {info.name}  {counts}")
    if not reports:
        print(f"no stored reports in {service.store.describe()}", file=sys.stderr)
    return 0


def _report_json(info: ReportInfo) -> dict:
    return {
        "name": info.name,
        "time": info.time.isoformat(),
        "trigger": info.trigger,
        "counts": info.counts,
    }


def _ranges(data: dict, *, as_json: bool) -> int:
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"source: {data['source']}  version: {data['version']}  ({data['status']})")
    for rule in data["ipRules"] + data["virtualNetworkRules"]:
        print(f"  {rule['rule']:<20}  {rule['why']}")
    for pool in data["pools"]:
        print(f"pool {pool['id']}: {pool['status']}")
        for subnet in pool["subnets"]:
            endpoint = "endpoint ok" if subnet["serviceEndpoint"] else "NO Key Vault endpoint"
            print(f"  subnet {subnet['id']}  ({endpoint})")
        for address in pool["addresses"]:
            print(f"  address {address}")
    for warning in data["warnings"]:
        print(f"warning: {warning}")
    print(f"{len(data['ipRules'])} IPv4 rules, {len(data['virtualNetworkRules'])} subnet rules")
    return 0


def _status(service: Service, *, as_json: bool) -> int:
    from datetime import datetime, timezone

    from kvfirewall.status import StatusQuery, status_json, status_text
    from kvfirewall.status_store import read_status

    status = read_status(
        service.store,
        StatusQuery(),
        now=datetime.now(timezone.utc),
        leases=service.settings.leases.enabled,
    )
    print(json.dumps(status_json(status), indent=2) if as_json else status_text(status))
    return 0


def _leases(service: Service, *, as_json: bool) -> int:
    """The active leases: the same object as `GET /api/leases`, or one line each."""
    from kvfirewall.lease_broker import LeaseBroker

    data = LeaseBroker(service).active()
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    for lease in data["leases"]:
        print(
            f"{lease['expiresAt']}  {lease['ip']:<15}  {lease['principal']}  "
            f"{len(lease['vaults'])} vault(s)  {lease['id']}  {lease['reason'] or ''}".rstrip()
        )
        for vault in lease["vaults"]:
            print(f"    {vault}")
    if not data["leases"]:
        print("no active leases", file=sys.stderr)
    return 0


class _Progress:
    """Progress on stderr: a live counter on a terminal, a line every few seconds otherwise."""

    def __init__(self, stream: TextIO, *, every_seconds: float = 5.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every_seconds
        self.last = time.monotonic()
        self.shown = False

    def __call__(self, done: int, result: VaultResult) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write(f"\r\033[K{done} vaults reconciled ({result.outcome}: {result.id})")
            self.stream.flush()
        elif now - self.last >= self.every:
            self.stream.write(f"{done} vaults reconciled\n")
            self.last = now
        self.shown = True

    def close(self) -> None:
        """End the live counter's line so that the report starts on a line of its own."""
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
