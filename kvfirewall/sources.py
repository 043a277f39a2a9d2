"""Where the AzureDevOps ranges come from: the Discovery API, a file or URL, or the builtin copy.

Every failure becomes a `RangeSourceError`; the guard in `ranges.py` then keeps the last good
snapshot. Downloads are https-only (also after redirects), time-limited and size-capped,
because this document decides what may reach every vault.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin, urlsplit

from kvfirewall.errors import one_line
from kvfirewall.ranges import RangeSourceError, Snapshot, parse_service_tags
from kvfirewall.settings import redact_url

BUILTIN_FILE = "ServiceTags_Public_20251028.AzureDevOps-and-AzureCloud-europe.json"
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024  # weekly public files are ~5 MiB and growing
TIMEOUT = (5, 30)  # connect, read (seconds), per request and per chunk
DOWNLOAD_SECONDS = 120.0  # a whole download, redirects included
MAX_REDIRECTS = 5


class ServiceTagsApi(Protocol):
    def service_tags(self, location: str) -> dict: ...


@functools.cache
def builtin_snapshot() -> Snapshot:
    """The AzureDevOps entries of the 2025-10-28 public file, shipped with the package.

    Parsed once per process: every run needs it as the guard's first baseline."""
    text = resources.files("kvfirewall").joinpath("data", BUILTIN_FILE).read_text()
    return parse_service_tags(json.loads(text), source="builtin")


def fetch_snapshot(
    source: str,
    *,
    location: str,
    api: ServiceTagsApi | None,
    budget_seconds: float | None = None,
) -> Snapshot:
    """Fetch and parse the configured source (`api`, `builtin`, https URL or file path).

    A download ends within `budget_seconds` (default `DOWNLOAD_SECONDS`) whatever the server
    does; the Discovery API call is bounded by the `api` object's own budget."""
    if source == "builtin":
        return builtin_snapshot()
    if source == "api":
        if api is None:
            raise RangeSourceError("api: no Resource Manager client")
        try:
            document = api.service_tags(location)
        except Exception as exc:  # any SDK/transport failure is a source failure
            raise RangeSourceError(f"api: {one_line(exc)}") from None
        return parse_service_tags(document, source=f"api ({location})")
    if urlsplit(source).scheme.lower() == "https":
        shown = redact_url(source)
        budget = (
            DOWNLOAD_SECONDS if budget_seconds is None else min(budget_seconds, DOWNLOAD_SECONDS)
        )
        data = _download(source, max(1.0, budget))
        return parse_service_tags(_parse_json(data, shown), source=shown)
    return parse_service_tags(_parse_json(_read_file(Path(source)), source), source=source)


def _parse_json(data: bytes, source: str) -> object:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RangeSourceError(f"{source}: not valid JSON ({exc})") from None


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise RangeSourceError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise RangeSourceError(f"{path}: larger than {MAX_DOCUMENT_BYTES} bytes")
    return data


def _download(url: str, budget_seconds: float) -> bytes:
    """GET over https only, following at most a few https redirects, with a size cap and an
    overall deadline (a read timeout alone applies per chunk: a slow server could go on).

    Errors name the URL without its query string: a SAS token there is a secret.
    """
    import requests

    deadline = time.monotonic() + budget_seconds

    def error(detail: str) -> RangeSourceError:
        query = urlsplit(url).query
        if query:
            detail = detail.replace(query, "…")
        return RangeSourceError(f"{redact_url(url)}: {detail}")

    too_large = f"larger than {MAX_DOCUMENT_BYTES} bytes"
    for _ in range(MAX_REDIRECTS + 1):
        if urlsplit(url).scheme.lower() != "https":
            raise error("refusing a non-https URL")
        left = deadline - time.monotonic()
        timeout = (max(0.5, min(TIMEOUT[0], left)), max(0.5, min(TIMEOUT[1], left)))
        try:
            response = requests.get(url, timeout=timeout, stream=True, allow_redirects=False)
        except requests.RequestException as exc:
            raise error(one_line(exc)) from None
        with response:
            if response.is_redirect:
                url = urljoin(url, response.headers.get("Location", ""))
                continue
            if response.status_code != 200:
                raise error(f"HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_DOCUMENT_BYTES:
                raise error(too_large)
            data = bytearray()
            # A read timeout applies per receive: a server sending a byte now and then would
            # never trip it. The watchdog cuts the connection at the deadline instead.
            watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _abort, [response])
            watchdog.daemon = True
            watchdog.start()
            try:
                for chunk in response.iter_content(64 * 1024):
                    data.extend(chunk)
                    if len(data) > MAX_DOCUMENT_BYTES:
                        raise error(too_large)
            except RangeSourceError:
                raise
            except Exception as exc:  # whatever the cut connection raises
                if time.monotonic() >= deadline:
                    raise error(f"took longer than {budget_seconds:g} s") from None
                raise error(one_line(exc)) from None
            finally:
                watchdog.cancel()
            if time.monotonic() >= deadline:  # cut mid-body, the rest looked like a short read
                raise error(f"took longer than {budget_seconds:g} s")
            return bytes(data)
    raise error(f"more than {MAX_REDIRECTS} redirects")


def _abort(response) -> None:
    """Cut a download's connection from another thread: shutting the socket down wakes a
    receive that is blocked on it (closing alone may not)."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    response.close()
