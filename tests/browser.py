"""The app's HTTP functions behind a small local server, and the system Chromium driven by
Playwright: for the status page's browser tests and its README screenshot."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from kvfirewall.ledger import LocalStore
from kvfirewall.report import Report, ReportInfo
from tests.app_functions import FUNCTIONS

CHROMIUM = "/usr/bin/chromium"
# Root in a container needs --no-sandbox; the rest keeps Chromium off the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def store_runs(root: Path, runs: Sequence[ReportInfo], reports: dict[str, Report]) -> LocalStore:
    """A local state directory holding `runs`, each with its report (the newest runs'
    reports are given; the others are stored with no vaults, as small runs)."""
    store = LocalStore(root)
    for run in runs:
        stored = reports.get(run.name)
        data = stored.to_json() if stored else {"source": {"version": "8"}, "vaults": []}
        store.save_report(run.name, [json.dumps(data).encode()], counts=run.counts)
    return store


class _Handler(BaseHTTPRequestHandler):
    """GET /api/status and /api/runs/{id}, as the Functions host routes them."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/api/status":
            name, route_params = "status_http", {}
        elif url.path.startswith("/api/runs/"):
            name, route_params = "runs_http", {"id": url.path.removeprefix("/api/runs/")}
        else:
            self.send_error(404)
            return
        request = func.HttpRequest(
            method="GET",
            url=f"http://{self.headers['Host']}{self.path}",
            params=dict(parse_qsl(url.query)),
            route_params=route_params,
            headers=dict(self.headers),
            body=b"",
        )
        response = FUNCTIONS[name].get_user_function()(request)
        body = response.get_body()
        self.send_response(response.status_code)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", f"{response.mimetype}; charset={response.charset}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests assert on what the browser sees."""


@contextlib.contextmanager
def serve_functions() -> Iterator[str]:
    """The HTTP functions on a free port of 127.0.0.1; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless system Chromium (never a browser Playwright downloads)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
