"""The status page's render time and peak memory at 10,000 vaults (run by hand).

`python -m bench.status [--vaults N] [--runs N]`: stores a 30-day history of timer runs and
a newest report of N vaults in a local state directory, then times what one `GET /api/status`
does: read the stored reports, the snapshot and the page's ledger entries, build the model and
render the HTML (the median of 5, with the process's version memo warm as in a running app),
and the JSON. No Resource Manager call is involved.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

from kvfirewall.status import StatusQuery, status_json
from kvfirewall.status_page import render_status_page
from kvfirewall.status_store import read_status
from tests.browser import store_runs
from tests.status_data import estate, history, report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.status")
    parser.add_argument("--vaults", type=int, default=10_000)
    parser.add_argument("--every-hours", type=int, default=1, help="timer runs per hour")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        runs = history(days=30, every_hours=args.every_hours)
        store = store_runs(Path(state), runs, {runs[0].name: report(estate(args.vaults))})
        size = (Path(state) / "reports" / f"{runs[0].name}.json").stat().st_size

        def once(query: StatusQuery) -> tuple[float, int]:
            started = time.perf_counter()
            status = read_status(store, query, now=datetime.now(timezone.utc))
            page = render_status_page(status, nonce="bench")
            return time.perf_counter() - started, len(page)

        first, _ = once(StatusQuery())  # cold: the bisection reads reports
        timings = {}
        for label, query in (
            ("all, by outcome", StatusQuery()),
            ("failed only", StatusQuery(outcome="failed")),
            ("by name, page 50", StatusQuery(sort="vault", page=50)),
        ):
            samples = [once(query) for _ in range(5)]
            timings[label] = (statistics.median(s for s, _ in samples), samples[0][1])
        tracemalloc.start()
        status = read_status(store, StatusQuery(), now=datetime.now(timezone.utc))
        render_status_page(status, nonce="bench")
        status_json(status)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(f"{args.vaults} vaults, {len(runs)} stored runs, newest report {size / 1e6:.1f} MB")
    print(f"first load (reads ~log2(runs) reports for the source date): {first * 1000:.0f} ms")
    for label, (seconds, chars) in timings.items():
        print(f"{label:<18} {seconds * 1000:6.0f} ms median of 5, page {chars / 1000:.0f} kB")
    print(f"peak Python memory of one load: {peak / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
