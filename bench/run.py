"""Benchmark: reconcile N vaults over S subscriptions on a throttled, slow local Resource Manager.

Run by hand, not in CI:

    .venv/bin/python -m bench.run --vaults 1000 --subscriptions 10 --latency 0.02
    .venv/bin/python -m bench.run --quick            # 20 vaults, 2 subscriptions, no latency

The emulator (`python -m emulator --control`) runs in a process of its own, seeded with the
estate (70 % locked with rules of their own, 20 % open, 10 % without ACLs; none holds the
Azure DevOps ranges), the service tags, a latency added to every ARM call and, unless
`--no-throttle`, Resource Manager's token buckets per subscription: 250 reads refilled at
25/s, 200 writes refilled at 10/s. Each phase runs the product (`kvfirewall.service`, enforce
mode, ranges from the Discovery API, geography Europe, a local ledger, or with `--state azurite`
Azure Storage in Azurite, without fan-out) in a fresh process
(`bench.phase`), so that its peak RSS is the reconciler's alone:

    full         every vault in scope; every vault needs one write
    rerun        the same again; every vault is compliant
    event        an Event Grid event (kvfirewall's own last write) for a compliant vault
    event-drift  the same event after the vault's rules were removed: the event's read, then
                 under the vault's lease a fresh read, one write and the read that checks it
    graph-rerun  (with `--graph`, after rerun) the in-sync run again, its vaults listed by one
                 Resource Graph query (KVF_LISTING=graph, 1,000 rows a page) instead of each
                 subscription's list: a query is counted as a read

Per phase it prints a row (a table, or Markdown with `--markdown`) and a JSON line. Columns:
wall time of the reconcile itself (without interpreter start and imports); ARM reads and
writes the reconciler sent; 429s it received / the emulator served; its peak RSS; applied
writes per second; and the share of the write quota used:

    quota use = writes applied / (S * (200 + 10 * wall))

that is, the writes applied against the most that the per-subscription write buckets (full at
the start: 200, refilled at 10/s) could have allowed during the run. It is 100 % only for a
run that keeps every bucket empty; with fewer than 200 writes per subscription the quota
cannot be the limit, and `quotaMinSeconds` (the least time the buckets allow for the busiest
subscription's writes, (W - 200) / 10, the quota floor) is 0; `wall/floor` is the wall time
against it. `429/writes` is the share of write requests answered 429. `CPU ms/vault` is the
CPU the reconcile took in its process (every thread; not the interpreter's start or imports)
per vault it reconciled: a phase's own cost, without the emulator's.

Progress goes to stderr: a line per phase and, inside long phases, every 5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from emulator.server import WRITE_BUCKET

ROOT = Path(__file__).resolve().parent.parent
WRITE_BURST, WRITE_REFILL_PER_SECOND = WRITE_BUCKET  # what `--throttle` gives the emulator
PHASES = ("full", "rerun", "event", "event-drift")
# Credentials that would take precedence over the emulator's managed identity.
FOREIGN_ENV_PREFIXES = ("KVF_", "AZURE_", "MSI_", "IDENTITY_", "AzureWebJobs")
COLUMNS = (
    ("N", "vaults", "{}"),
    ("S", "subscriptions", "{}"),
    ("latency ms", "latencyMs", "{:g}"),
    ("phase", "phase", "{}"),
    ("wall s", "seconds", "{:.2f}"),
    ("reads", "reads", "{}"),
    ("writes", "writes", "{}"),
    ("429s client/emulator", "throttled", "{}"),
    ("peak RSS MB", "peakRssMb", "{:.0f}"),
    ("CPU ms/vault", "cpuMsPerVault", "{:.2f}"),
    ("writes/s", "writesPerSecond", "{:.1f}"),
    ("quota use", "quotaUse", "{:.0%}"),
    ("quota floor s", "quotaMinSeconds", "{:.1f}"),
    ("wall/floor", "floorRatio", "{:.2f}"),
    ("429/writes", "throttledShare", "{:.1%}"),
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class EmulatorProcess:
    """`python -m emulator --control`, seeded; commands on its stdin, JSON answers on stdout."""

    def __init__(self, args: argparse.Namespace) -> None:
        command = [
            sys.executable,
            "-m",
            "emulator",
            "--control",
            f"--vaults={args.vaults}",
            f"--subscriptions={args.subscriptions}",
            f"--latency={args.latency}",
            f"--write-latency={args.write_latency}",
            f"--page-size={args.page_size}",
        ]
        if not args.no_throttle:
            command.append("--throttle")
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.env: dict[str, str] = {}
        for line in self._lines():
            if line.startswith("export "):
                name, _, value = shlex.split(line)[1].partition("=")
                self.env[name] = value
            elif line.startswith("# ready"):
                return
        raise RuntimeError("the emulator ended before it was ready")

    def _lines(self):
        stdout: IO[str] = self.process.stdout  # type: ignore[assignment]
        yield from (line.rstrip("\n") for line in stdout)

    def ask(self, command: str) -> Any:
        stdin: IO[str] = self.process.stdin  # type: ignore[assignment]
        stdin.write(command + "\n")
        stdin.flush()
        answer = next(self._lines(), None)
        if answer is None:
            raise RuntimeError(f"the emulator ended while answering {command!r}")
        return json.loads(answer)

    def close(self) -> None:
        """End of input stops the emulator; kill it if it does not stop."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def phase_env(emulator_env: dict[str, str], state: str) -> dict[str, str]:
    """The reconciler's settings: enforce, Discovery API ranges for Europe, a local ledger."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV_PREFIXES)}
    env.update(emulator_env)
    env.update(
        {
            "KVF_MODE": "enforce",
            "KVF_IP_SOURCE": "api",
            "KVF_ADO_GEOGRAPHIES": "Europe",
            "KVF_STATE": state,
        }
    )
    return env


def run_phase(env: dict[str, str], phase: str, event: Any = None) -> tuple[dict, float]:
    """One phase in a fresh process; its JSON result and the process's wall time."""
    started = time.monotonic()
    if phase == "graph-rerun":
        env = {**env, "KVF_LISTING": "graph"}
    result = subprocess.run(
        [sys.executable, "-m", "bench.phase", "event" if event is not None else phase],
        cwd=ROOT,
        env=env,
        input=json.dumps(event) if event is not None else "",
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"phase {phase} failed (exit {result.returncode})")
    return json.loads(result.stdout.splitlines()[-1]), time.monotonic() - started


def list_pages(vaults: int, subscriptions: int, page_size: int) -> int:
    """Pages of Vaults_ListBySubscription a full listing takes (an empty list is one page)."""
    per = [vaults // subscriptions + (i < vaults % subscriptions) for i in range(subscriptions)]
    return sum(max(1, -(-n // page_size)) for n in per)


def row(
    args: argparse.Namespace,
    phase: str,
    result: dict,
    process_s: float,
    emu: dict,
    emulator_cpu_before: float,
) -> dict:
    """Everything measured about one phase, with the derived figures."""
    seconds = result["seconds"]
    calls = result["armCalls"]
    applied = emu["writesApplied"]
    quota = not args.no_throttle and phase in ("full", "rerun", "graph-rerun")
    ceiling = args.subscriptions * (WRITE_BURST + WRITE_REFILL_PER_SECOND * seconds)
    emulator_429 = emu["throttledReads"] + emu["throttledWrites"]
    floor = quota_floor(emu["maxWritesPerSubscription"])
    return {
        "vaults": args.vaults,
        "subscriptions": args.subscriptions,
        "latencyMs": args.latency * 1000,
        "writeLatencyMs": args.write_latency * 1000,
        "throttle": not args.no_throttle,
        "phase": phase,
        "seconds": round(seconds, 3),
        "processSeconds": round(process_s, 3),
        "reads": calls["reads"],
        "writes": calls["writes"],
        "throttled": f"{calls['throttled']}/{emulator_429}",
        "throttledClient": calls["throttled"],
        "throttledEmulator": emulator_429,
        "emulatorReads": emu["reads"],
        "emulatorWrites": emu["writes"],
        "writesApplied": applied,
        "writeWindowSeconds": round(emu["writeSeconds"], 3),  # first to last applied write
        "tokenRequests": emu["tokenRequests"],
        "listPages": list_pages(args.vaults, args.subscriptions, args.page_size),
        "peakRssMb": round(result["peakRssMb"], 1),
        "cpuSeconds": round(result["cpuSeconds"], 2),
        "runCpuSeconds": round(result["runCpuSeconds"], 3),
        "cpuMsPerVault": round(1000 * result["runCpuSeconds"] / result["vaultsReconciled"], 3)
        if result["vaultsReconciled"]
        else None,
        "emulatorCpuSeconds": round(emu["cpuSeconds"] - emulator_cpu_before, 2),
        "writesPerSecond": round(applied / seconds, 2) if quota and seconds > 0 else None,
        "quotaCeilingWrites": round(ceiling) if quota else None,
        "quotaUse": round(applied / ceiling, 4) if quota else None,
        "quotaMinSeconds": floor if quota else None,
        "floorRatio": round(seconds / floor, 3) if quota and floor > 0 else None,
        "throttledShare": round(emu["throttledWrites"] / emu["writes"], 4)
        if emu["writes"]
        else None,
        "counts": {k: v for k, v in result["counts"].items() if v},
        "cutShort": result["cutShort"],
        "errors": result["errors"],
    }


def quota_floor(writes_in_busiest_subscription: int) -> float:
    """The least time the write buckets allow for a run: after the burst, the busiest
    subscription's writes at the refill rate."""
    return max(0.0, (writes_in_busiest_subscription - WRITE_BURST) / WRITE_REFILL_PER_SECOND)


def cells(data: dict) -> list[str]:
    out = []
    for _, key, fmt in COLUMNS:
        value = data[key]
        out.append("-" if value is None else fmt.format(value))
    return out


def print_rows(rows: list[dict], *, markdown: bool) -> None:
    header = [title for title, _, _ in COLUMNS]
    print_table(header, [cells(r) for r in rows], markdown=markdown, text_column=3)


def print_table(
    header: list[str], body: list[list[str]], *, markdown: bool, text_column: int | None = None
) -> None:
    """A table for people: markdown (for the README), or right-aligned columns; numbers are
    aligned right in both, `text_column` left in markdown."""
    if markdown:
        print("| " + " | ".join(header) + " |")
        align = ("---" if i == text_column else "---:" for i in range(len(header)))
        print("|" + "|".join(align) + "|")
        for line in body:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(c) for c in column) for column in zip(header, *body, strict=True)]
    for line in (header, *body):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--vaults", type=int, default=100, help="N, vaults in the estate")
    parser.add_argument("--subscriptions", type=int, default=1, help="S, spread evenly")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per ARM call")
    parser.add_argument(
        "--write-latency", type=float, default=0.0, help="extra seconds a write holds its vault"
    )
    parser.add_argument("--page-size", type=int, default=50, help="vaults per list page")
    parser.add_argument("--no-throttle", action="store_true", help="no ARM token buckets")
    parser.add_argument("--quick", action="store_true", help="20 vaults, 2 subscriptions, 0 ms")
    parser.add_argument("--markdown", action="store_true", help="rows as a Markdown table")
    parser.add_argument(
        "--graph", action="store_true", help="also the in-sync run listed through Resource Graph"
    )
    parser.add_argument(
        "--state",
        choices=("local", "azurite"),
        default="local",
        help="the ledger: a local directory, or Azure Storage in Azurite (no fan-out)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.vaults, args.subscriptions, args.latency = 20, 2, 0.0
    if args.vaults < 1 or args.subscriptions < 1 or args.subscriptions > args.vaults:
        parser.error("need 1 <= --subscriptions <= --vaults")

    log(
        f"emulator: {args.vaults} vaults in {args.subscriptions} subscriptions, "
        f"latency {args.latency * 1000:g} ms, throttle {'off' if args.no_throttle else 'on'}"
    )
    emulator = EmulatorProcess(args)
    rows: list[dict] = []
    try:
        with contextlib.ExitStack() as stack:
            state = stack.enter_context(tempfile.TemporaryDirectory(prefix="kvf-bench-state-"))
            if args.state == "azurite":
                from bench.queue import AzuriteProcess  # bench.queue imports this module

                azurite = AzuriteProcess(state)
                stack.callback(azurite.close)
                # Synchronous, as a run over every vault is without fan-out: this measures
                # one process against Table and Blob storage, not the queue (bench.queue).
                env = {**phase_env(emulator.env, azurite.connection), "KVF_FAN_OUT": "false"}
            else:
                env = phase_env(emulator.env, state)
            event = None
            phases = PHASES if not args.graph else (*PHASES[:2], "graph-rerun", *PHASES[2:])
            for phase in phases:
                if phase == "event-drift":
                    emulator.ask(f"drift {event['subject']}")
                emulator.ask("clear")
                cpu_before = emulator.ask("stats")["cpuSeconds"]
                log(f"phase {phase} ...")
                result, process_s = run_phase(
                    env, phase, event if phase.startswith("event") else None
                )
                data = row(args, phase, result, process_s, emulator.ask("stats"), cpu_before)
                data["state"], data["store"] = args.state, result["store"]
                rows.append(data)
                log(
                    f"phase {phase}: {data['seconds']:.2f} s, {data['reads']} reads, "
                    f"{data['writes']} writes, {data['throttled']} 429s, {data['counts']}; "
                    f"CPU s: reconciler {data['cpuSeconds']}, emulator {data['emulatorCpuSeconds']}"
                )
                if phase == "full":
                    event = emulator.ask("event")
                    if event is None:
                        raise RuntimeError("the full run wrote no vault: no event to replay")
    finally:
        emulator.close()
    print_rows(rows, markdown=args.markdown)
    for data in rows:
        print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
