"""Cold start: what `import function_app` costs next to the one SDK it needs at import.

    .venv/bin/python -m bench.coldstart [--repeat 15] [--top 15]

The Functions worker imports `function_app` to index the app before any invocation. All it
needs then is `azure.functions`: the triggers import azure-identity, azure-mgmt-keyvault and
the storage SDKs at their first invocation. So the reference is `import azure.functions`, and

    ratio = median(import function_app) / median(import azure.functions)

each timed inside a fresh interpreter (interpreter start-up excluded), the two alternating,
`--repeat` times each, with no KVF_* or storage settings in the environment. On a shared
machine the spread between processes is wider than the difference measured, so a third
series times both in one process, `import azure.functions` and then `import function_app`
(which then costs only what it adds): the median of (reference + added) / reference. Bytecode is
cached (in a temporary PYTHONPYCACHEPREFIX, filled by one untimed import first), as in a
deployed app: otherwise PYTHONDONTWRITEBYTECODE would make every run compile the app's own
modules from source while the installed SDKs load their compiled bytecode. Then
`python -X importtime` shows what `import function_app` loads beyond `azure.functions`, and
which of the SDKs a trigger uses lazily were loaded anyway.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "azure.functions"
TARGET = "function_app"
# Needed by some trigger at its first invocation, never to index the app.
LAZY = (
    "azure.core",
    "azure.identity",
    "azure.mgmt.keyvault",
    "azure.mgmt.devopsinfrastructure",
    "azure.mgmt.compute",
    "azure.mgmt.network",
    "azure.mgmt.resource",
    "azure.data.tables",
    "azure.storage.blob",
    "requests",
    "urllib3",
    "kvfirewall.service",
    "kvfirewall.settings",
    "kvfirewall.reconcile",
    "kvfirewall.vaults",
    "kvfirewall.ledger",
    "kvfirewall.sources",
    "kvfirewall.agent_networks",
    "kvfirewall.agent_pools",
)
# Imports the modules named on the command line in turn; prints the seconds each took.
_TIMED = """
import importlib, sys, time
for module in sys.argv[1:]:
    started = time.perf_counter()
    importlib.import_module(module)
    print(time.perf_counter() - started)
"""


def clean_env(pycache: str) -> dict[str, str]:
    """No settings (indexing must not depend on them), and bytecode cached in `pycache`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KVF_", "AzureWebJobs", "AZURE_")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def python(pycache: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=clean_env(pycache),
        capture_output=True,
        text=True,
        check=True,
    )


def import_seconds(pycache: str, *modules: str) -> list[float]:
    """Seconds each `import module` takes, in turn, in a fresh interpreter."""
    return [float(line) for line in python(pycache, "-c", _TIMED, *modules).stdout.split()]


def importtime_beyond_reference(pycache: str) -> list[tuple[int, int, int, str]]:
    """(self µs, cumulative µs, depth, module) of every module `import function_app` loads
    once `azure.functions` is already imported, in import-time order."""
    code = f"import {REFERENCE}; import {TARGET}"
    stderr = python(pycache, "-X", "importtime", "-c", code).stderr
    rows: list[tuple[int, int, int, str]] = []
    past_reference = False
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        if past_reference:
            rows.append((int(self_us), int(cumulative_us), depth, name.strip()))
        elif depth == 0 and name.strip() == REFERENCE:
            past_reference = True
    return rows


def loaded_lazily_needed(pycache: str) -> list[str]:
    """Which of the `LAZY` modules `import function_app` loads anyway."""
    names = ", ".join(repr(m) for m in LAZY)
    code = f"import sys, {TARGET}; print(*[m for m in ({names},) if m in sys.modules])"
    return python(pycache, "-c", code).stdout.split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.coldstart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeat", type=int, default=15, help="fresh processes per import")
    parser.add_argument("--top", type=int, default=15, help="modules listed by import time")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kvf-pycache-") as pycache:
        report(pycache, repeat=args.repeat, top=args.top)
    return 0


def report(pycache: str, *, repeat: int, top: int) -> None:
    python(pycache, "-c", f"import {TARGET}")  # compiles and caches the bytecode of both
    timings: dict[str, list[float]] = {REFERENCE: [], TARGET: []}
    paired: list[tuple[float, float]] = []
    for _ in range(repeat):  # alternating, so that a busy moment hits every series alike
        for module in timings:
            timings[module].extend(import_seconds(pycache, module))
        reference_s, added_s = import_seconds(pycache, REFERENCE, TARGET)
        paired.append((reference_s, added_s))
    print(f"separate processes, {repeat} each:")
    for module, seconds in timings.items():
        print(
            f"  import {module:<16} median {statistics.median(seconds) * 1000:7.1f} ms, "
            f"fastest {min(seconds) * 1000:7.1f} ms"
        )
    reference, target = (statistics.median(timings[m]) for m in (REFERENCE, TARGET))
    fastest = min(timings[TARGET]) / min(timings[REFERENCE])
    print(f"  ratio {target / reference:.2f} (of the fastest: {fastest:.2f})")
    print(f"one process, {REFERENCE} first, {repeat} processes:")
    print(
        f"  import {REFERENCE:<16} median {statistics.median(r for r, _ in paired) * 1000:7.1f} ms"
        f", then import {TARGET} median {statistics.median(a for _, a in paired) * 1000:.1f} ms"
    )
    print(f"  ratio {statistics.median((r + a) / r for r, a in paired):.3f}")

    rows = importtime_beyond_reference(pycache)
    total = sum(cumulative for _, cumulative, depth, _ in rows if depth == 0)
    print(f"\n-X importtime: {len(rows)} modules beyond {REFERENCE}, {total / 1000:.1f} ms")
    print(f"top {top} by cumulative time:")
    for self_us, cumulative_us, depth, name in sorted(rows, key=lambda r: -r[1])[:top]:
        indent = "  " * depth
        print(f"  {cumulative_us / 1000:7.1f} ms  (self {self_us / 1000:5.1f})  {indent}{name}")
    loaded = loaded_lazily_needed(pycache)
    print(f"\nloaded at import though only triggers need them: {', '.join(loaded) or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
