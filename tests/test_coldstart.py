"""Indexing the Function App does no work: no settings, no network, no SDK beyond azure.functions.

The worker imports `function_app` on every cold start before any invocation; the Azure SDKs
and the engine are imported by the first invocation that needs them (`bench/coldstart.py`
measures what that saves). Behaviour, not timing: this checks what the import touches.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.coldstart import LAZY

ROOT = Path(__file__).resolve().parent.parent

# azure.functions is imported first and not watched: what it does is the worker's own cost,
# and may change between its releases; what function_app adds is the app's.
SCRIPT = """
import json, os, socket, sys, threading
import azure.functions
threads_before = threading.active_count()

touched = {"env": [], "network": []}

class WatchedEnviron(dict):
    def _note(self, key):
        if isinstance(key, str) and key.startswith(("KVF_", "AzureWebJobs", "AZURE_", "IDENTITY_")):
            touched["env"].append(key)
    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)
    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)
    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)

def no_network(*args, **kwargs):
    touched["network"].append(repr(args)[:200])
    raise OSError("no network at import")

os.environ = WatchedEnviron(os.environ)
socket.socket.connect = socket.socket.connect_ex = no_network
socket.getaddrinfo = socket.create_connection = no_network

import function_app

print(json.dumps({
    **touched,
    "loaded": [m for m in json.loads(sys.argv[1]) if m in sys.modules],
    "threads": threading.active_count() - threads_before,
    "functions": sorted(f.get_function_name() for f in function_app.app.get_functions()),
}))
"""


def test_importing_the_function_app_reads_no_setting_and_loads_no_sdk():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(LAZY)],
        cwd=ROOT,
        env={},  # no settings at all: indexing must not need them
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["env"] == []
    assert out["network"] == []
    assert out["loaded"] == []
    assert out["threads"] == 0
    assert out["functions"] == [
        "expire_leases",
        "lease_grant_http",
        "lease_release_http",
        "leases_http",
        "plan_http",
        "ranges_http",
        "reconcile_event",
        "reconcile_http",
        "reconcile_poison",
        "reconcile_queue",
        "reconcile_timer",
        "runs_http",
        "status_http",
    ]
