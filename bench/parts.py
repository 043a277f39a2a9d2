"""Where a vault's CPU goes: the reconcile of drifted and of compliant vaults, part by part.

Run by hand, not in CI:

    .venv/bin/python -m bench.parts --vaults 1000 --subscriptions 10

The emulator runs in a process of its own, seeded as for `bench.run` (every vault drifted),
with no latency and no throttling: only CPU is measured here. The reconciler runs in this
process through `kvfirewall.service` (enforce, a local ledger) twice: `full` (every vault
written) and `rerun` (every vault compliant). Each part is a set of functions, timed on the
calling thread's own CPU clock (`time.thread_time`) by a wrapper around each call, so that
other threads, and the emulator, do not count; a profiler would multiply the cost of the
HTTP stack's many small calls. `total` is the process's CPU over the run, divided by the
vaults; `other` is what no part names (the worker pool, queues, results, the wrappers).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from bench.phase import warm
from bench.run import EmulatorProcess, phase_env

# A part: the functions it is made of, as ("module", "attribute path") where the callers look
# them up; disjoint call trees. One a version does not have (the SDK's models, once unused)
# counts nothing.
PARTS = (
    (
        "Resource Manager requests: azure-core pipeline, requests, TLS",
        (
            ("azure.core.pipeline._base", "Pipeline.run"),
            # A body read after the pipeline (an operation asked to stream).
            ("azure.core.rest._http_response_impl", "HttpResponseImpl.read"),
        ),
    ),
    (
        "SDK models: (de)serialization of a Vault",
        (
            ("azure.mgmt.keyvault.operations._operations", "_deserialize"),
            ("azure.mgmt.keyvault._utils.model_base", "Model.as_dict"),
        ),
    ),
    ("vault JSON to VaultState", (("kvfirewall.vaults", "state_of"),)),
    ("plan", (("kvfirewall.writer", "plan_vault"),)),
    ("ledger reads", (("kvfirewall.ledger", "LocalStore.read_entry"),)),
    ("ledger writes (write, fsync, rename)", (("kvfirewall.ledger", "LocalStore.write_entry"),)),
    ("the vault's lease (take, release)", (("kvfirewall.ledger", "LocalStore.lease"),)),
    ("pacing", (("kvfirewall.vaults", "Arm._pace"),)),
    ("logging", (("logging", "Logger.log"),)),
    ("report", (("kvfirewall.report", "Report.add"),)),
)


class Clock:
    """CPU seconds per part, summed over threads; a part's calls inside its own calls (a
    recursive function) count once."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._inside = threading.local()

    @contextlib.contextmanager
    def timing(self, part: str) -> Iterator[None]:
        depth = getattr(self._inside, part, 0)
        setattr(self._inside, part, depth + 1)
        started = time.thread_time()
        try:
            yield
        finally:
            setattr(self._inside, part, depth)
            if not depth:
                spent = time.thread_time() - started
                with self._lock:
                    self.seconds[part] += spent

    def wrap(self, part: str, function: Callable) -> Callable:
        # A context manager made by @contextlib.contextmanager (a lease): its enter and exit
        # are timed too. Other results (an HTTP response is a context manager) are not.
        context = inspect.isgeneratorfunction(getattr(function, "__wrapped__", None))

        @functools.wraps(function)
        def timed(*args, **kwargs):
            with self.timing(part):
                result = function(*args, **kwargs)
            return _TimedContext(self, part, result) if context else result

        return timed


class _TimedContext:
    def __init__(self, clock: Clock, part: str, inner) -> None:
        self._clock, self._part, self._inner = clock, part, inner

    def __enter__(self):
        with self._clock.timing(self._part):
            return self._inner.__enter__()

    def __exit__(self, *exc):
        with self._clock.timing(self._part):
            return self._inner.__exit__(*exc)


def _targets(parts: tuple = PARTS):
    """Each part's functions as (part, owner, name, function), where callers look them up."""
    for part, targets in parts:
        for module_name, path in targets:
            try:
                owner = importlib.import_module(module_name)
                *outer, name = path.split(".")
                for attribute in outer:
                    owner = getattr(owner, attribute)
                function = getattr(owner, name)
            except (ImportError, AttributeError):
                continue
            yield part, owner, name, function


def instrument(clock: Clock, parts: tuple = PARTS) -> None:
    """Wrap every part's functions where their callers look them up."""
    for part, owner, name, function in _targets(parts):
        setattr(owner, name, clock.wrap(part, function))


def measure_phase(service, phase: str) -> dict[str, float]:
    """Run one phase; CPU ms per vault, by part."""
    clock = Clock()
    instrument(clock)
    try:
        cpu = time.process_time()
        report = service.run(write=True, mode="enforce", save_snapshot=True, trigger="timer")
        cpu = time.process_time() - cpu
    finally:
        uninstrument()
    vaults = report.total
    expected = "updated" if phase == "full" else "unchanged"
    if report.counts.get(expected) != vaults:
        raise RuntimeError(f"{phase}: expected every vault {expected}, got {report.counts}")
    parts = {label: 1000 * clock.seconds[label] / vaults for label, _ in PARTS}
    parts["other"] = 1000 * cpu / vaults - sum(parts.values())
    parts["total"] = 1000 * cpu / vaults
    return parts


def uninstrument(parts: tuple = PARTS) -> None:
    """Put the original functions back."""
    for _, owner, name, function in _targets(parts):
        setattr(owner, name, getattr(function, "__wrapped__", function))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.parts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--vaults", type=int, default=1000)
    parser.add_argument("--subscriptions", type=int, default=10)
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args(argv)
    emulator_args = argparse.Namespace(
        vaults=args.vaults,
        subscriptions=args.subscriptions,
        latency=0.0,
        write_latency=0.0,
        page_size=50,
        no_throttle=True,
    )
    emulator = EmulatorProcess(emulator_args)
    try:
        with tempfile.TemporaryDirectory(prefix="kvf-bench-parts-") as state:
            os.environ.clear()
            os.environ.update(phase_env(emulator.env, state))
            from kvfirewall.service import service_from_env

            service = service_from_env()
            warm(service)
            columns = {phase: measure_phase(service, phase) for phase in ("full", "rerun")}
    finally:
        emulator.close()
    header = ("part", "drifted: CPU ms/vault", "compliant: CPU ms/vault")
    rows = [(label, f"{columns['full'][label]:.3f}", f"{columns['rerun'][label]:.3f}")
            for label in columns["full"]]  # fmt: skip
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|---|---:|---:|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        width = max(len(r[0]) for r in rows)
        for row in (header, *rows):
            print(f"{row[0]:<{width}}  {row[1]:>22}  {row[2]:>24}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
