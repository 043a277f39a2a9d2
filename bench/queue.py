"""Benchmark: a drifted run fanned out over the work queue, consumed by 1, 2, 4... processes.

Run by hand, not in CI:

    .venv/bin/python -m bench.queue --vaults 2000 --subscriptions 20 --latency 0.02 \\
        --consumers 1 2 4 --repeat 2 --parts --markdown
    .venv/bin/python -m bench.queue --quick        # 20 vaults, 2 subscriptions, 1 and 2

For each consumer count K, on a fresh estate: the ARM emulator (seeded and throttled as
`bench.run` does) and Azurite (the Storage emulator, in memory) each in a process of their
own; the timer's path in a process (`plan`: list every vault, queue the drifted ones on
`kvfirewall-work`, grouped by subscription); then K consumer processes (`consume`) that do
what the Functions host does for `reconcile_queue`: receive a message, hand it to
`kvfirewall.fan_out.consume`, delete it once that returned. A consumer stops when the queue
holds no message any more (the last one consumed assembled the run's report); until then an
idle consumer asks the queue how many are left, five times a second.

Measured per K: the consumers' wall time (from starting them until the last has stopped, and
from the first message taken to the last done), their CPU (all of it, from the kernel's
account of the waited-for children; and the work alone: each process's CPU, every thread,
from taking a message to deleting it, so that neither interpreter start and imports nor the
waits for a message count), Azurite's CPU over the same time, the requests the consumers
sent to storage and to Resource Manager (counted at the process's shared transport) and the
429s, and the quota figures of `bench.run` (`row`): `quotaMinSeconds` is the least time the
write buckets allow. `--repeat` runs every count again, in rounds, and prints the medians;
`--parts` times each part of a consumer's CPU (`CONSUMER_PARTS`) as `bench.parts` does. From
the measured CPU per vault it then simulates more instances:

    T(I) = plan + max(vaults x CPU per vault / min(I, messages), quota floor, longest message)

one consumer process per instance, each with a core of its own; an instance takes a whole
message (up to 100 vaults of one subscription), so no more instances than messages work at
once, and no run is shorter than its longest message or than the write buckets allow.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any
from urllib.parse import urlsplit

from bench.run import (
    ROOT,
    EmulatorProcess,
    log,
    phase_env,
    print_table,
    quota_floor,
    row,
)

AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
POLL_SECONDS = 0.2  # an empty queue while other consumers hold messages: look again
VISIBILITY_SECONDS = 600  # a message taken is hidden from the others this long
SIMULATED_INSTANCES = (1, 10, 50)
# A consumer's CPU by part (`--parts`, timed as `bench.parts` times them): disjoint call
# trees, looked up where their callers find them.
QUEUE_PART = "the queue: the message received and deleted (the Functions host's work)"
HTTP_PART = "of which the HTTP stack: requests, urllib3, sockets"
CONSUMER_PARTS = (
    (
        "Resource Manager: the fresh read, the PATCH, the check",
        (("kvfirewall.vaults", "Arm.get_vault"), ("kvfirewall.vaults", "Arm.update_network_acls")),
    ),
    ("the vault's lease (Blob): taken, released", (("kvfirewall.ledger", "AzureStore.lease"),)),
    ("ledger read (Table)", (("kvfirewall.ledger", "AzureStore.read_entry"),)),
    (
        "ledger writes (Table): pending, confirmed",
        (("kvfirewall.ledger", "AzureStore.write_entry"),),
    ),
    ("plan", (("kvfirewall.writer", "plan_vault"),)),
    (
        "per message: the stored ranges and pools, the agent subnet check",
        (
            ("kvfirewall.reconcile", "resolve_ranges"),
            ("kvfirewall.reconcile", "resolve_pools"),
            ("kvfirewall.reconcile", "check_subnets"),
        ),
    ),
    (
        "per message: the run's record (its part, the manifest, the report assembled)",
        (
            ("kvfirewall.run_record", "RunRecord.has_part"),
            ("kvfirewall.run_record", "RunRecord.add_part"),
            ("kvfirewall.ledger", "AzureStore.report_reservation"),
            ("kvfirewall.fan_out", "_complete"),
        ),
    ),
    ("report", (("kvfirewall.report", "Report.add"),)),
    ("logging", (("logging", "Logger.log"),)),
    # Inside the parts above, counted on its own: what the requests themselves cost.
    (HTTP_PART, (("azure.core.pipeline.transport", "RequestsTransport.send"),)),
)
COLUMNS = (
    ("run", "repeat", "{}"),
    ("N", "vaults", "{}"),
    ("S", "subscriptions", "{}"),
    ("consumers", "consumers", "{}"),
    ("messages", "messages", "{}"),
    ("plan s", "planSeconds", "{:.2f}"),
    ("consume wall s", "seconds", "{:.2f}"),
    ("work wall s", "workSeconds", "{:.2f}"),
    ("CPU s all", "cpuSecondsAll", "{:.1f}"),
    ("CPU s work", "cpuSeconds", "{:.1f}"),
    ("CPU ms/vault", "cpuMsPerVault", "{:.1f}"),
    ("Azurite CPU ms/vault", "azuriteMsPerVault", "{:.1f}"),
    ("storage req/vault", "storagePerVault", "{:.2f}"),
    ("reads", "reads", "{}"),
    ("writes", "writes", "{}"),
    ("429s", "throttledEmulator", "{}"),
    ("quota floor s", "quotaMinSeconds", "{:.1f}"),
)


# ---- the roles a process of this benchmark plays -----------------------------------------


def cpu_seconds() -> float:
    """This process's CPU (every thread), from the kernel's account."""
    return time.process_time()


def plan() -> dict[str, Any]:
    """The timer's run: list, settle, queue. Its report says what it queued."""
    from kvfirewall.service import service_from_env

    started = time.monotonic()
    report = service_from_env().scheduled_run()
    return {
        "run": report.run_id,
        "queued": report.queued,
        "messages": report.messages,
        "seconds": time.monotonic() - started,
        "cpuSeconds": cpu_seconds(),
        "armCalls": report.arm_calls,
    }


def request_counter(connection: str) -> Counter:
    """Count every request the process sends from now on, by service (`arm`, `blob`,
    `table`, `queue`: the storage endpoints of `connection` name theirs), at the shared
    transport, where every client of the process sends; retries count as requests."""
    from kvfirewall.settings import _connection_fields
    from kvfirewall.transport import shared_transport

    fields = _connection_fields(connection)
    kinds = {
        urlsplit(fields[f"{kind}endpoint"]).netloc: kind
        for kind in ("blob", "table", "queue")
        if f"{kind}endpoint" in fields
    }
    counts: Counter = Counter()
    transport = shared_transport()
    send = transport.send

    def counted(request, **kwargs):
        counts[kinds.get(urlsplit(request.url).netloc, "arm")] += 1
        return send(request, **kwargs)

    transport.send = counted
    return counts


def consume(run_id: str, *, parts: bool = False) -> dict[str, Any]:
    """Take messages until the queue is empty and every message is deleted, as the host
    would. CPU and requests are counted while a message is handled (received, consumed,
    deleted), not while the process waits for one; with `parts`, each part's CPU too."""
    # What an instance has imported after its first invocation: the engine and the SDKs.
    import azure.mgmt.keyvault  # noqa: F401
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    import kvfirewall.reconcile  # noqa: F401
    from bench.parts import Clock, instrument
    from kvfirewall import fan_out
    from kvfirewall.service import service_from_env
    from kvfirewall.work_queue import QUEUE_NAME, WorkMessage

    service = service_from_env()
    client = QueueClient.from_connection_string(
        os.environ["KVF_STATE"], QUEUE_NAME, message_decode_policy=TextBase64DecodePolicy()
    )
    clock = Clock()
    if parts:
        instrument(clock, CONSUMER_PARTS)
    requests = request_counter(os.environ["KVF_STATE"])
    first = last = None
    messages = vaults = 0
    longest = cpu = 0.0
    sent: Counter = Counter()
    arm = {"reads": 0, "writes": 0, "throttled": 0}
    while True:
        cpu_before, before = cpu_seconds(), Counter(requests)
        queue_cpu = time.thread_time()
        taken = list(client.receive_messages(max_messages=1, visibility_timeout=VISIBILITY_SECONDS))
        if not taken:
            if client.get_queue_properties().approximate_message_count == 0:
                break  # every message deleted: each was consumed, the last assembled the run
            time.sleep(POLL_SECONDS)
            continue
        queue_cpu = time.thread_time() - queue_cpu
        message = taken[0]
        began = time.time()
        first = first if first is not None else began
        work = WorkMessage.from_text(message.content)
        report = fan_out.consume(service, work)
        deleted = time.thread_time()
        client.delete_message(message)
        clock.seconds[QUEUE_PART] += queue_cpu + time.thread_time() - deleted
        last = time.time()
        cpu += cpu_seconds() - cpu_before
        sent.update(requests - before)
        longest = max(longest, last - began)
        messages += 1
        vaults += len(work.vaults)
        for key in arm:
            arm[key] += (report.arm_calls if report else {}).get(key, 0)
    return {
        "run": run_id,
        "messages": messages,
        "vaults": vaults,
        "first": first,
        "last": last,
        "longestMessageSeconds": longest,
        "cpuSeconds": cpu,
        "processCpuSeconds": cpu_seconds(),
        "armCalls": arm,
        "requests": dict(sent),
        "parts": dict(clock.seconds),
    }


# ---- the benchmark ------------------------------------------------------------------------


class AzuriteProcess:
    """Azurite's blob and queue services, in memory, on free local ports."""

    def __init__(self, workdir: str) -> None:
        if not AZURITE_BIN.exists():
            raise SystemExit("Azurite is not installed: run `npm ci`")
        blob, queue, table = (_free_port() for _ in range(3))
        self.process = subprocess.Popen(
            [
                str(AZURITE_BIN),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                *("--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1"),
                *("--tableHost", "127.0.0.1", "--blobPort", str(blob)),
                *("--queuePort", str(queue), "--tablePort", str(table)),
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.connection = (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{blob}/devstoreaccount1;"
            f"TableEndpoint=http://127.0.0.1:{table}/devstoreaccount1;"
            f"QueueEndpoint=http://127.0.0.1:{queue}/devstoreaccount1;"
        )
        deadline = time.monotonic() + 30
        for port in (blob, queue, table):
            while not _listening(port):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("Azurite did not start")
                time.sleep(0.1)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _role(env: dict[str, str], *role: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.queue", *role],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen) -> dict[str, Any]:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{process.args[3:]} failed (exit {process.returncode})")
    return json.loads(out.splitlines()[-1])


def children_cpu() -> float:
    """The CPU of the children waited for so far, from the kernel's account."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """A running process's CPU so far (every thread), from the kernel's account."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure(args: argparse.Namespace, consumers: int) -> dict[str, Any]:
    """One drifted run on a fresh estate, its messages taken by `consumers` processes."""
    emulator = EmulatorProcess(args)
    try:
        with tempfile.TemporaryDirectory(prefix="kvf-bench-azurite-") as workdir:
            azurite = AzuriteProcess(workdir)
            try:
                env = {**phase_env(emulator.env, azurite.connection), "KVF_FAN_OUT": "true"}
                planned = _result(_role(env, "plan"))
                log(
                    f"{consumers} consumers: planned in {planned['seconds']:.1f} s, "
                    f"{planned['queued']} vaults in {planned['messages']} messages"
                )
                emulator.ask("clear")
                role = ("consume", planned["run"], *(["--parts"] if args.parts else []))
                azurite_before = process_cpu(azurite.process.pid)
                cpu_before, started = children_cpu(), time.monotonic()
                processes = [_role(env, *role) for _ in range(consumers)]
                results = [_result(p) for p in processes]
                seconds = time.monotonic() - started
                cpu_all = children_cpu() - cpu_before
                azurite_cpu = process_cpu(azurite.process.pid) - azurite_before
                stats = emulator.ask("stats")
                from kvfirewall.service import service_from_env

                store = service_from_env(env).store
                report = json.loads(store.read_report(planned["run"]))
            finally:
                azurite.close()
    finally:
        emulator.close()
    cpu = sum(r["cpuSeconds"] for r in results)
    calls = {k: sum(r["armCalls"][k] for r in results) for k in ("reads", "writes", "throttled")}
    requests = sum((Counter(r["requests"]) for r in results), Counter())
    storage = sum(requests[k] for k in ("blob", "table", "queue"))
    queued = planned["queued"]
    parts: Counter = sum((Counter(r["parts"]) for r in results), Counter())
    done = [r for r in results if r["first"] is not None]
    work = max(r["last"] for r in done) - min(r["first"] for r in done) if done else 0.0
    # The quota figures exactly as `bench.run` defines them, for the consumers' part of the run.
    quota = row(
        args,
        "full",
        {
            "seconds": seconds,
            "armCalls": calls,
            "peakRssMb": 0.0,
            "cpuSeconds": cpu,
            "runCpuSeconds": cpu,
            "vaultsReconciled": args.vaults,
            "counts": report["counts"],
            "cutShort": report.get("cutShort", 0),
            "errors": [],
        },
        0.0,
        stats,
        stats["cpuSeconds"],
    )
    return {
        "vaults": args.vaults,
        "subscriptions": args.subscriptions,
        "latencyMs": args.latency * 1000,
        "consumers": consumers,
        "messages": planned["messages"],
        "queued": planned["queued"],
        "planSeconds": round(planned["seconds"], 3),
        "planCpuSeconds": round(planned["cpuSeconds"], 2),
        "planReads": planned["armCalls"].get("reads", 0),
        "seconds": round(seconds, 3),
        "workSeconds": round(work, 3),
        "cpuSecondsAll": round(cpu_all, 2),
        "cpuSeconds": round(cpu, 2),
        "cpuMsPerVault": round(1000 * cpu / queued, 2) if queued else 0.0,
        "processCpuSeconds": [round(r["processCpuSeconds"], 2) for r in results],
        "azuriteCpuSeconds": round(azurite_cpu, 2),
        "azuriteMsPerVault": round(1000 * azurite_cpu / queued, 2) if queued else 0.0,
        "requests": dict(requests),
        "storagePerVault": round(storage / queued, 2) if queued else 0.0,
        "armPerVault": round(requests["arm"] / queued, 2) if queued else 0.0,
        "partsMsPerVault": {k: round(1000 * v / queued, 3) for k, v in parts.items()}
        if queued
        else {},
        "longestMessageSeconds": round(max(r["longestMessageSeconds"] for r in results), 3),
        "messagesPerConsumer": [r["messages"] for r in results],
        "reads": calls["reads"],
        "writes": calls["writes"],
        "throttledClient": calls["throttled"],
        "throttledEmulator": quota["throttledEmulator"],
        "writesApplied": quota["writesApplied"],
        "quotaMinSeconds": quota["quotaMinSeconds"],
        "quotaUse": quota["quotaUse"],
        "counts": {k: v for k, v in report["counts"].items() if v},
        "failures": sorted({v["error"] for v in report["vaults"] if v["outcome"] == "failed"}),
        "poisoned": report.get("poisoned", 0),
    }


def simulate(measured: list[dict], vaults: int, subscriptions: int) -> list[dict]:
    """The model in the module's docstring, from the measured CPU per vault (the median of
    the measured runs), planner time per vault and longest message."""
    from kvfirewall.work_queue import VAULTS_PER_MESSAGE

    per_vault = sorted(r["cpuSeconds"] / r["queued"] for r in measured)[len(measured) // 2]
    plan_per_vault = min(r["planSeconds"] / r["vaults"] for r in measured)
    longest = min(r["longestMessageSeconds"] for r in measured)
    per_sub = [vaults // subscriptions + (i < vaults % subscriptions) for i in range(subscriptions)]
    messages = sum(-(-n // VAULTS_PER_MESSAGE) for n in per_sub)
    # bench.run's quotaMinSeconds for the busiest subscription, with its buckets.
    floor = quota_floor(max(per_sub))
    rows = []
    for instances in SIMULATED_INSTANCES:
        cpu = vaults * per_vault / min(instances, messages)
        planned = vaults * plan_per_vault
        rows.append(
            {
                "vaults": vaults,
                "subscriptions": subscriptions,
                "instances": instances,
                "messages": messages,
                "planSeconds": round(planned, 1),
                "cpuBoundSeconds": round(cpu, 1),
                "quotaMinSeconds": round(floor, 1),
                "longestMessageSeconds": round(longest, 1),
                "seconds": round(planned + max(cpu, floor, longest), 1),
                "bound": max(
                    (("CPU", cpu), ("quota", floor), ("message", longest)), key=lambda b: b[1]
                )[0],
            }
        )
    return rows


SIM_COLUMNS = (
    ("N", "vaults", "{}"),
    ("S", "subscriptions", "{}"),
    ("instances", "instances", "{}"),
    ("messages", "messages", "{}"),
    ("plan s", "planSeconds", "{:.1f}"),
    ("CPU / instances s", "cpuBoundSeconds", "{:.1f}"),
    ("quota floor s", "quotaMinSeconds", "{:.1f}"),
    ("longest message s", "longestMessageSeconds", "{:.1f}"),
    ("simulated wall s", "seconds", "{:.1f}"),
    ("bound by", "bound", "{}"),
)


def print_columns(columns: tuple, rows: list[dict], *, markdown: bool) -> None:
    header = [title for title, _, _ in columns]
    body = [["-" if r[k] is None else f.format(r[k]) for _, k, f in columns] for r in rows]
    print_table(header, body, markdown=markdown)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plan"]:
        print(json.dumps(plan()), flush=True)
        return 0
    if argv[:1] == ["consume"] and len(argv) in (2, 3):
        print(json.dumps(consume(argv[1], parts=argv[2:] == ["--parts"])), flush=True)
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.queue",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--vaults", type=int, default=2000, help="N, vaults in the estate")
    parser.add_argument("--subscriptions", type=int, default=20, help="S, spread evenly")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per ARM call")
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--page-size", type=int, default=50, help="vaults per list page")
    parser.add_argument("--no-throttle", action="store_true", help="no ARM token buckets")
    parser.add_argument("--quick", action="store_true", help="20 vaults, 2 subscriptions, 0 ms")
    parser.add_argument(
        "--simulate",
        nargs="*",
        default=["10000x100", "10000x10"],
        metavar="NxS",
        help="estates to simulate besides the measured one",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per consumer count (medians are printed)"
    )
    parser.add_argument("--parts", action="store_true", help="the consumers' CPU by part")
    parser.add_argument("--markdown", action="store_true", help="rows as Markdown tables")
    args = parser.parse_args(argv)
    args.write_latency = 0.0  # what `bench.run`'s emulator start reads
    if args.quick:
        args.vaults, args.subscriptions, args.latency, args.consumers = 20, 2, 0.0, [1, 2]
    if args.vaults < 1 or args.subscriptions < 1 or args.subscriptions > args.vaults:
        parser.error("need 1 <= --subscriptions <= --vaults")
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    estates = [(args.vaults, args.subscriptions)]
    for text in args.simulate:
        n, _, s = text.partition("x")
        if not (n.isdigit() and s.isdigit() and 1 <= int(s) <= int(n)):
            parser.error(f"--simulate {text!r}: not NxS")
        estates.append((int(n), int(s)))

    measured = []
    for repeat in range(1, args.repeat + 1):  # each count once per round: alike conditions
        for consumers in args.consumers:
            log(
                f"run {repeat}, {consumers} consumers: {args.vaults} vaults in "
                f"{args.subscriptions} subscriptions, latency {args.latency * 1000:g} ms"
            )
            data = {"repeat": repeat, **measure(args, consumers)}
            measured.append(data)
            log(
                f"run {repeat}, {consumers} consumers: {data['seconds']:.1f} s, CPU "
                f"{data['cpuSeconds']:.1f} s (all {data['cpuSecondsAll']:.1f} s), {data['counts']}"
            )
            for error in data["failures"]:
                log(f"run {repeat}, {consumers} consumers: failed: {error}")
    simulated = [r for n, s in estates for r in simulate(measured, n, s)]
    print_columns(COLUMNS, measured, markdown=args.markdown)
    if args.repeat > 1:
        print()
        print_columns(COLUMNS, medians(measured, args.consumers), markdown=args.markdown)
    if args.parts:
        print()
        print_parts(measured, args.consumers, markdown=args.markdown)
    print()
    print_columns(SIM_COLUMNS, simulated, markdown=args.markdown)
    for data in (*measured, *simulated):
        print(json.dumps(data))
    return 0


def medians(measured: list[dict], counts: list[int]) -> list[dict]:
    """Per consumer count, the median of each figure over its runs."""
    rows = []
    for consumers in counts:
        runs = [r for r in measured if r["consumers"] == consumers]
        row = {**runs[0], "repeat": "median"}
        for _, key, _ in COLUMNS:
            values = [r[key] for r in runs]
            if key != "repeat" and len(set(values)) > 1:  # the same in every run: as it is
                row[key] = median(values)
        rows.append(row)
    return rows


def print_parts(measured: list[dict], counts: list[int], *, markdown: bool) -> None:
    """The consumers' CPU per vault by part: per consumer count, the median over its runs;
    `other` is what no part names (the worker pool, threads, JSON of the messages)."""
    labels = [label for label, _ in CONSUMER_PARTS if label != HTTP_PART]
    labels.insert(len(labels) - 2, QUEUE_PART)
    columns: dict[int, dict[str, float]] = {}
    for consumers in counts:
        runs = [r for r in measured if r["consumers"] == consumers]
        column = {
            label: median([r["partsMsPerVault"].get(label, 0.0) for r in runs])
            for label in (*labels, HTTP_PART)
        }
        total = median([r["cpuMsPerVault"] for r in runs])
        column["other"] = total - sum(column[label] for label in labels)
        column["total, CPU ms per vault"] = total
        columns[consumers] = column
    header = ["part", *(f"{k} consumers" if k > 1 else "1 consumer" for k in counts)]
    body = [
        [label, *(f"{columns[k][label]:.3f}" for k in counts)]
        for label in (*labels, "other", "total, CPU ms per vault", HTTP_PART)
    ]
    print_table(header, body, markdown=markdown, text_column=0)


if __name__ == "__main__":
    sys.exit(main())
