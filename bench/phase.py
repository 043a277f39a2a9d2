"""One benchmark phase in a process of its own, so that its peak RSS is the reconciler's alone.

Started by `bench.run` with the environment pointing at the emulator; prints one JSON line.
Phases: `full` and `rerun` reconcile every vault in scope and store the report, as the timer
does in enforce mode;
`event` reconciles the vault an Event Grid event (JSON on stdin) names, as the Event Grid
trigger does.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from importlib import import_module
from typing import Any

from kvfirewall.report import Report, VaultResult
from kvfirewall.service import Service, service_from_env

PROGRESS_SECONDS = 5.0


class _Heartbeat:
    """A line on stderr every few seconds: vaults done so far, and how fast."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.done = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def __call__(self, done: int, result: VaultResult) -> None:
        self.done = done

    def _beat(self) -> None:
        while not self._stop.wait(PROGRESS_SECONDS):
            elapsed = time.monotonic() - self.started
            print(
                f"[bench] {self.phase}: {elapsed:.0f} s, {self.done} vaults done "
                f"({self.done / elapsed:.0f}/s)",
                file=sys.stderr,
                flush=True,
            )


def run(phase: str, event: dict[str, Any] | None) -> dict[str, Any]:
    """Run the phase through the product's service and describe what it did.

    `runCpuSeconds` is the CPU the run itself took, every thread of the process included:
    not the interpreter's start or the imports, which `warm` has done before."""
    service = service_from_env()
    warm(service)
    cpu_before = time.process_time()
    if phase == "event":
        if event is None:
            raise SystemExit("the event phase needs an event on stdin")
        outcome = service.handle_event(
            event_type=event.get("eventType"), subject=event.get("subject"), data=event.get("data")
        )
        if outcome.report is None:
            raise SystemExit(f"event {outcome.action}: {outcome.reason}")
        report: Report = outcome.report
    else:
        with _Heartbeat(phase) as heartbeat:
            report = service.run(
                write=service.writes,
                mode=service.settings.mode,
                save_snapshot=True,
                progress=heartbeat,
                trigger="timer",  # as the timer does, the full report is stored
            )
    run_cpu = time.process_time() - cpu_before
    errors = sorted({v.error for v in report.vaults if v.error})
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": report.duration_seconds,
        "armCalls": report.arm_calls,
        "counts": report.counts,
        "cutShort": report.cut_short,
        "errors": errors[:5],
        # Linux reports ru_maxrss in KiB.
        "peakRssMb": usage.ru_maxrss / 1024,
        "cpuSeconds": usage.ru_utime + usage.ru_stime,  # imports included
        "runCpuSeconds": run_cpu,
        "vaultsReconciled": report.total,
        "store": type(service.store).__name__,  # where the ledger was: what --state chose
    }


def warm(service: Service) -> None:
    """Import what a run imports on first use (the credential, the HTTP stack), so that the
    run's CPU is its own work: a warm Function App instance has done so before."""
    service.arm()
    import_module("azure.core.pipeline.transport")
    import_module("requests")


def main() -> None:
    phase = sys.argv[1]
    event = json.load(sys.stdin) if phase == "event" else None
    print(json.dumps(run(phase, event)), flush=True)


if __name__ == "__main__":
    main()
