"""A local HTTPS Azure Resource Manager that the real Azure SDK can talk to offline.

It models only what kvfirewall touches: Key Vault vaults (get, list, create/replace, update;
soft-deleted vaults: get, and recover and purge for tests), the Service Tag Discovery API, the
App Service managed-identity token endpoint, role assignments and role definitions, an Entra
ID-like authority (OpenID configurations, signing keys), plus static files for downloader
tests. Faults, throttling and latency are injectable so that the
product's error handling can be exercised against the real SDK pipeline.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hmac
import json
import math
import os
import re
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import trustme

from . import agentnets, entra, graph, rbac, servicetags, vaults
from .errors import ArmError, bad_request

__all__ = ["READ_BUCKET", "SHARED_FACTOR", "WRITE_BUCKET", "Emulator", "Recorded"]

_UNTHROTTLED_REMAINING = 11999
# Resource Manager's token buckets per subscription and principal: (size, refilled per second).
READ_BUCKET = (250, 25.0)
WRITE_BUCKET = (200, 10.0)
# Every principal of a subscription also draws on a shared bucket 15 times as large, reported
# in x-ms-ratelimit-remaining-subscription-global-reads|writes.
SHARED_FACTOR = 15
_TOKEN_LIFETIME = 24 * 3600
_KEY_VAULT_CONTRIBUTOR = "f25e0fa2-a7c8-4377-a976-54943a77a395"

_VAULT_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.KeyVault/vaults/(?P<name>[^/]+)/?$",
    re.IGNORECASE,
)
_LIST_SUB_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.KeyVault/vaults/?$", re.IGNORECASE
)
_LIST_RG_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.KeyVault/vaults/?$",
    re.IGNORECASE,
)
_TAGS_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.Network/locations/(?P<loc>[^/]+)"
    r"/serviceTags/?$",
    re.IGNORECASE,
)
_DELETED_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.KeyVault/locations/(?P<loc>[^/]+)"
    r"/deletedVaults/(?P<name>[^/]+)/?$",
    re.IGNORECASE,
)
_RESOURCE_GROUPS_RE = re.compile(r"/resourceGroups/", re.IGNORECASE)


@dataclass(frozen=True)
class Recorded:
    """One request as the emulator saw it; header names are lower-cased."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection instead of answering (a lost response)
    drip_seconds: float = 0.0  # send the body one byte at a time, this far apart (a slow server)


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    headers: dict[str, str]
    body: Any
    landed: threading.Event | None = None  # stalls: set once each stalled request is done
    unfinished: int = 0


@dataclass
class WriteGate:
    """Vault writes held in progress until the test opens the gate (see `hold_writes`)."""

    held: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)

    def open(self) -> None:
        self.opened.set()


@dataclass
class _Intercept:
    method: str
    pattern: re.Pattern[str]
    remaining: int
    before: Callable[[Emulator], None] | None
    after: Callable[[Emulator], None] | None


@dataclass
class _Token:
    resource: str
    client_id: str
    expires_on: int


class _Bucket:
    """ARM's token bucket: `size` tokens, refilled at `rate` per second."""

    def __init__(
        self, size: int, rate: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.size = float(size)
        self.rate = float(rate)
        self.tokens = float(size)
        self._clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.size, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def remaining(self) -> int:
        self._refill()
        return int(self.tokens)

    def retry_after(self) -> int:
        self._refill()
        if self.rate <= 0:
            return 3600
        return max(1, math.ceil((1.0 - self.tokens) / self.rate))


def _fault(method: str, path_regex: str, times: int, *, seconds: float = 0.0) -> _Fault:
    """A fault that needs no status or body (a reset, a stall)."""
    pattern = re.compile(path_regex, re.IGNORECASE)
    return _Fault(method.upper(), pattern, 0, times, {"seconds": str(seconds)}, None)


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _iso_now() -> str:
    return _iso(datetime.now(timezone.utc))


def _iso(moment: datetime) -> str:
    """ARM timestamps carry 7 fractional digits; Python gives 6, so pad one."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _encode_skiptoken(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode()).decode().rstrip("=")


def _decode_skiptoken(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad_request(
            f"The skip token '{token}' is invalid.", code="InvalidSkipToken"
        ) from None


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP/1.1 adapter; all logic lives in Emulator._handle."""

    protocol_version = "HTTP/1.1"
    # Responses leave in two writes (headers, then body); with Nagle's algorithm the body would
    # wait for the client's delayed ACK of the headers, about 40 ms on Linux, on every call.
    disable_nagle_algorithm = True
    server_version = "kvfirewall-arm-emulator"
    sys_version = ""
    timeout = 30

    def setup(self) -> None:
        super().setup()
        # The TLS handshake runs here, in the connection's own thread, so one slow client
        # cannot stall the accept loop.
        self.server.emulator._connected()  # type: ignore[attr-defined]
        self.request.do_handshake()

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError, OSError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Tests read emu.requests instead; stderr noise helps no one."""

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        emulator: Emulator = self.server.emulator  # type: ignore[attr-defined]
        response = emulator._handle(self.command, self.path, dict(self.headers.items()), raw)
        if response.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if not response.drip_seconds:
            self.wfile.write(response.body)
            return
        self.wfile.flush()
        for index in range(len(response.body)):
            self.wfile.write(response.body[index : index + 1])
            self.wfile.flush()
            time.sleep(response.drip_seconds)

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = do_HEAD = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emulator: Emulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Dropped client connections are normal in tests; don't print tracebacks."""


class Emulator:
    """Local HTTPS ARM endpoint with Key Vault, service tags and a managed-identity endpoint."""

    tenant_id = "72f988bf-0000-4000-8000-00000000aaaa"
    client_id = "5a1d0c3e-0000-4000-8000-00000000bbbb"
    principal_id = "9c4b7f21-0000-4000-8000-00000000cccc"

    def __init__(self, page_size: int = 50) -> None:
        self._default_page_size = page_size
        self.page_size = page_size
        self.latency = 0.0
        self.write_latency = 0.0
        self.identity_header = secrets.token_urlsafe(24)
        self._lock = threading.RLock()
        self._tokens: dict[str, _Token] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._generation = 0
        self.authority = entra.Authority()
        self.roles = rbac.RoleStore()
        # Resource Graph's lagging copy of the vaults, and the management group hierarchy.
        self.management_groups = graph.ManagementGroups()
        # A test may replace `clock` after this: the graph asks for it each time.
        self.graph = graph.ResourceGraph(lambda: self.clock(), self.management_groups)  # noqa: PLW0108

        self._tmpdir = tempfile.mkdtemp(prefix="kvf-arm-emulator-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_bundle = os.path.join(self._tmpdir, "ca.pem")
        ca.cert_pem.write_to_path(self.ca_bundle)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self._ssl)
        self.reset()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        """Bind 127.0.0.1 on a free port and serve from a daemon thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.emulator = self
        server.socket = self._ssl.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="arm-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and delete the CA file."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._cleanup()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL without a trailing slash; only known once started."""
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return f"https://127.0.0.1:{self._port}"

    def env(self) -> dict[str, str]:
        """Environment that points the product and azure-identity at this emulator."""
        return {
            "KVF_ARM_ENDPOINT": self.url,
            "REQUESTS_CA_BUNDLE": self.ca_bundle,
            "SSL_CERT_FILE": self.ca_bundle,
            "IDENTITY_ENDPOINT": f"{self.url}/msi/token",
            "IDENTITY_HEADER": self.identity_header,
        }

    def reset(self) -> None:
        """Forget everything a test may have set up (page_size and latencies revert too).

        Issued tokens stay valid, so credentials cached across tests keep working.
        """
        with self._lock:
            self._vaults: dict[tuple[str, str, str], dict[str, Any]] = {}
            # Soft-deleted vaults by (subscription, location, name), all lower-cased: each
            # with the vault as it was, its deletion and its scheduled purge date.
            self._deleted: dict[tuple[str, str, str], dict[str, Any]] = {}
            self._subnets: dict[str, bool] = {}
            # Pools, scale sets, network settings and subnet documents: `agentnets`.
            self.agent_networks = agentnets.AgentNetworks(self._subnets)
            self._service_tags: dict[str, Any] | None = None
            self._files: dict[str, tuple[bytes, str, float]] = {}
            self._redirects: dict[str, str] = {}
            self._faults: list[_Fault] = []
            self._lost: list[_Fault] = []
            self._resets: list[_Fault] = []
            self._stalls: list[_Fault] = []
            self._intercepts: list[_Intercept] = []
            self._limits: dict[str, tuple[int, float] | None] = {}
            self._buckets: dict[tuple[str, str], _Bucket] = {}
            self._busy: set[tuple[str, str, str]] = set()
            if getattr(self, "_gate", None) is not None:
                self._gate.open()  # a test's held writes end with it
            self._gate: WriteGate | None = None
            self._generation += 1
            self.latency = 0.0
            self.write_latency = 0.0
            self.page_size = self._default_page_size
            self.tags_page_size = 0  # service tag values per Discovery API page; 0: one page
            self.clock: Callable[[], float] = time.monotonic  # the token buckets' clock
            self.authority.reset()
            self.roles.reset()
            self.graph.reset()
            self.management_groups.reset()
            self.clear_log()

    def clear_log(self) -> None:
        """Empty the request log and events and zero the counters; state is kept."""
        with self._lock:
            self._requests: list[Recorded] = []
            self._events: list[dict[str, Any]] = []
            self._reads = 0
            self._writes = 0
            self._token_requests = 0
            self._connections = 0
            self._faults_served = 0
            self._throttled = 0

    # ------------------------------------------------------------------ seeding

    def add_vault(
        self,
        subscription: str,
        resource_group: str,
        name: str,
        *,
        location: str = "westeurope",
        tags: Mapping[str, str] | None = None,
        network_acls: Mapping[str, Any] | None = None,
        public_network_access: str = "Enabled",
    ) -> str:
        """Create or replace a vault as a PUT would, without a request or an event."""
        properties: dict[str, Any] = {"publicNetworkAccess": public_network_access}
        if network_acls is not None:
            properties["networkAcls"] = copy.deepcopy(dict(network_acls))
        body = {"location": location, "tags": dict(tags or {}), "properties": properties}
        key = vaults.vault_key(subscription, resource_group, name)
        with self._lock:
            previous = self._vaults.get(key)
            vault_id = (
                previous["id"]
                if previous
                else vaults.make_vault_id(subscription, resource_group, name)
            )
            try:
                vault = vaults.build_vault(
                    vault_id,
                    body,
                    subnets=self._subnets,
                    tenant_id=self.tenant_id,
                    actor="emulator-seed",
                    now=_iso_now(),
                    previous=previous,
                )
            except ArmError as exc:
                raise ValueError(str(exc)) from None
            self._vaults[key] = vault
            self.graph.changed(vault_id, vault)
        return vault_id

    def add_subnet(self, subnet_id: str, *, service_endpoint: bool = True) -> None:
        """Make a subnet exist, with or without the Microsoft.KeyVault service endpoint (as
        Key Vault validates rules against it, and as Subnets_Get shows it)."""
        if not vaults.is_subnet_id(subnet_id):
            raise ValueError(f"not a subnet resource id: {subnet_id!r}")
        endpoints = [agentnets.KEY_VAULT_SERVICE] if service_endpoint else []
        self.agent_networks.put_subnet(subnet_id, service_endpoints=endpoints)
        with self._lock:
            self._subnets[vaults.normalize_subnet_id(subnet_id)] = service_endpoint

    def set_service_tags(self, doc: Mapping[str, Any]) -> None:
        """Serve a ServiceTags_Public file-shaped doc through the discovery API."""
        servicetags.check_file_doc(doc)
        with self._lock:
            self._service_tags = copy.deepcopy(dict(doc))

    def add_file(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str = "application/json",
        drip_seconds: float = 0.0,
    ) -> None:
        """Serve `body` at `path` over plain unauthenticated GET."""
        with self._lock:
            self._files[path] = (bytes(body), content_type, drip_seconds)

    def add_redirect(self, path: str, location: str) -> None:
        """Answer GET `path` with 302 to `location` (absolute or relative)."""
        with self._lock:
            self._redirects[path] = location

    # ------------------------------------------------------------------ inspection

    def vault(self, vault_id: str) -> dict[str, Any]:
        """The JSON a GET of this vault returns; KeyError when absent."""
        key = vaults.vault_key(*vaults.parse_vault_id(vault_id))
        with self._lock:
            return copy.deepcopy(self._vaults[key])

    @property
    def requests(self) -> list[Recorded]:
        """Every request except the token endpoint, in completion order."""
        with self._lock:
            return list(self._requests)

    @property
    def events(self) -> list[dict[str, Any]]:
        """One Event Grid ResourceWriteSuccess event per successful vault PUT/PATCH."""
        with self._lock:
            return copy.deepcopy(self._events)

    @property
    def reads(self) -> int:
        """ARM GETs seen, whatever their answer."""
        with self._lock:
            return self._reads

    @property
    def writes(self) -> int:
        """ARM PUT/PATCHes seen, whatever their answer."""
        with self._lock:
            return self._writes

    @property
    def faults_served(self) -> int:
        """Injected faults answered (fail, lose_response, reset_connection, stall) plus 429s
        from the token buckets: what a reliability scenario put the client through."""
        with self._lock:
            return self._faults_served + self._throttled

    @property
    def connections(self) -> int:
        """TCP connections accepted (each a TLS handshake) since the log was cleared."""
        with self._lock:
            return self._connections

    def _connected(self) -> None:
        with self._lock:
            self._connections += 1

    @property
    def token_requests(self) -> int:
        """Calls to the managed-identity endpoint, to check that clients cache tokens."""
        with self._lock:
            return self._token_requests

    # ------------------------------------------------------------------ faults and limits

    def throttle(
        self,
        reads: tuple[int, float] | None = READ_BUCKET,
        writes: tuple[int, float] | None = WRITE_BUCKET,
        *,
        shared_reads: tuple[int, float] | None = None,
        shared_writes: tuple[int, float] | None = None,
    ) -> None:
        """Enable per-subscription token buckets (size, refill/s); None disables a kind. The
        shared (global) buckets default to SHARED_FACTOR times the principal's; a smaller one
        stands for other principals that have spent most of it."""

        def shared(own: tuple[int, float] | None) -> tuple[int, float] | None:
            return own and (own[0] * SHARED_FACTOR, own[1] * SHARED_FACTOR)

        with self._lock:
            self._limits = {
                "read": reads,
                "write": writes,
                "global-read": shared_reads or shared(reads),
                "global-write": shared_writes or shared(writes),
            }
            self._buckets = {}

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        *,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next `times` matching requests with `status` instead; method '*' = any."""
        with self._lock:
            self._faults.append(
                _Fault(
                    method=method.upper(),
                    pattern=re.compile(path_regex, re.IGNORECASE),
                    status=status,
                    remaining=times,
                    headers=dict(headers or {}),
                    body=body,
                )
            )

    def lose_response(self, method: str, path_regex: str, *, times: int = 1) -> None:
        """Process the next `times` matching requests normally, then drop the connection
        without answering: the client cannot know whether its write landed."""
        with self._lock:
            self._lost.append(
                _Fault(
                    method=method.upper(),
                    pattern=re.compile(path_regex, re.IGNORECASE),
                    status=0,
                    remaining=times,
                    headers={},
                    body=None,
                )
            )

    def clear_faults(self) -> None:
        """Disarm every injected fault and intercept that has not fired yet."""
        with self._lock:
            for armed in (self._faults, self._lost, self._resets, self._stalls, self._intercepts):
                armed.clear()

    def reset_connection(self, method: str, path_regex: str, *, times: int = 1) -> None:
        """Drop the connection of the next `times` matching requests before processing
        them (a connection reset): the request surely did not apply."""
        with self._lock:
            self._resets.append(_fault(method, path_regex, times))

    def stall(
        self, method: str, path_regex: str, seconds: float, *, times: int = 1
    ) -> threading.Event:
        """Hold the next `times` matching requests for `seconds` before processing them, as
        an overloaded front end does: a client that times out first cannot know whether
        the request applied (it does, late). The event is set once all `times` have landed."""
        stall = _fault(method, path_regex, times, seconds=seconds)
        stall.landed, stall.unfinished = threading.Event(), times
        with self._lock:
            self._stalls.append(stall)
        return stall.landed

    def hold_writes(self) -> WriteGate:
        """Hold every vault write from now on in progress, its vault busy (another write gets
        409), until `gate.open()`; `gate.held` is set when one is: for tests that need
        someone's write in progress at an exact point, without timing it."""
        with self._lock:
            self._gate = WriteGate()
            return self._gate

    def intercept(
        self,
        method: str,
        path_regex: str,
        *,
        before: Callable[[Emulator], None] | None = None,
        after: Callable[[Emulator], None] | None = None,
        times: int = 1,
    ) -> None:
        """Run `before` ahead of the next `times` matching requests and `after` once each is
        processed but not yet answered: the hooks by which tests interleave someone else's
        write, or kill a client, at an exact point."""
        with self._lock:
            self._intercepts.append(
                _Intercept(method.upper(), re.compile(path_regex, re.I), times, before, after)
            )

    def write_as(
        self,
        vault_id: str,
        *,
        actor: str = "someone@contoso.com",
        network_acls: Mapping[str, Any] | None = None,
        public_network_access: str | None = None,
    ) -> None:
        """Someone else's PATCH of a vault (validated and normalized like any PATCH, with its
        Event Grid event), without a recorded request."""
        properties: dict[str, Any] = {}
        if network_acls is not None:
            properties["networkAcls"] = copy.deepcopy(dict(network_acls))
        if public_network_access is not None:
            properties["publicNetworkAccess"] = public_network_access
        sub, rg, name = vaults.parse_vault_id(vault_id)
        key = vaults.vault_key(sub, rg, name)
        with self._lock:
            new = vaults.patch_vault(
                self._vaults[key],
                {"properties": properties},
                subnets=self._subnets,
                actor=actor,
                now=_iso_now(),
            )
            self._commit(key, new, sub, actor, "PATCH", True, {})

    def set_access_policies(self, vault_id: str, policies: list[Mapping[str, Any]]) -> None:
        """Switch a vault to the access-policy model with these policies (the REST shape)."""
        key = vaults.vault_key(*vaults.parse_vault_id(vault_id))
        with self._lock:
            properties = self._vaults[key]["properties"]
            properties["enableRbacAuthorization"] = False
            properties["accessPolicies"] = copy.deepcopy(list(policies))

    def delete_vault(self, vault_id: str, *, retention_days: int = 90) -> None:
        """Delete a vault as someone else would (no request is recorded). Soft-delete is
        always on: the vault is kept as a deleted vault until it is purged or recovered."""
        key = vaults.vault_key(*vaults.parse_vault_id(vault_id))
        with self._lock:
            vault = self._vaults.pop(key)
            self.graph.changed(vault["id"], None)
            deleted = datetime.now(timezone.utc)
            purge = deleted + timedelta(days=retention_days)
            self._deleted[(key[0], vault["location"], key[2])] = {
                "vault": vault,
                "deletionDate": _iso(deleted),
                "scheduledPurgeDate": _iso(purge),
            }

    def recover_vault(self, vault_id: str) -> None:
        """Recover a deleted vault: it comes back as it was (networkAcls, createdAt)."""
        sub, _rg, name = vaults.parse_vault_id(vault_id)
        with self._lock:
            found = next(k for k in self._deleted if (k[0], k[2]) == (sub.lower(), name.lower()))
            vault = self._deleted.pop(found)["vault"]
            self._vaults[vaults.vault_key(*vaults.parse_vault_id(vault["id"]))] = vault
            self.graph.changed(vault["id"], vault)

    def purge_vault(self, vault_id: str) -> None:
        """Purge a deleted vault: gone for good."""
        sub, _rg, name = vaults.parse_vault_id(vault_id)
        with self._lock:
            for key in [k for k in self._deleted if (k[0], k[2]) == (sub.lower(), name.lower())]:
                del self._deleted[key]

    # ------------------------------------------------------------------ request handling

    def _handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], raw_body: bytes
    ) -> _Response:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        lower_headers = {k.lower(): v for k, v in headers.items()}
        if path.rstrip("/").lower() == "/msi/token":
            return self._token_endpoint(method, query, lower_headers)

        body: Any = None
        body_error = False
        if raw_body:
            try:
                body = json.loads(raw_body)
            except (ValueError, UnicodeDecodeError):
                body = raw_body.decode("utf-8", "replace")
                body_error = True

        hook = self._take_intercept(method, path)
        if hook is not None and hook.before is not None:
            hook.before(self)
        if self._take_fault(method, path, self._resets) is not None:
            return _Response(0, drop=True)  # never processed, never recorded
        stall = self._take_fault(method, path, self._stalls)
        if stall is not None:
            generation = self._generation
            time.sleep(float(stall.headers["seconds"]))
            if generation != self._generation:  # reset meanwhile: a request of an old test
                self._landed(stall)
                return _Response(0, drop=True)
        response = self._route(method, path, query, lower_headers, body, body_error)
        if hook is not None and hook.after is not None:
            hook.after(self)
        if self._take_fault(method, path, self._lost) is not None:
            response.drop = True
        with self._lock:
            self._requests.append(
                Recorded(method, path, query, lower_headers, body, response.status)
            )
        if stall is not None:
            self._landed(stall)
        return response

    def _landed(self, stall: _Fault) -> None:
        with self._lock:
            stall.unfinished -= 1
            if stall.unfinished == 0 and stall.landed is not None:
                stall.landed.set()

    def _take_fault(self, method: str, path: str, faults: list[_Fault]) -> _Fault | None:
        """The first armed fault of `faults` matching this request, used up by one."""
        with self._lock:
            for fault in faults:
                if fault.method in ("*", method) and fault.pattern.search(path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        faults.remove(fault)
                    self._faults_served += 1
                    return fault
        return None

    def _take_intercept(self, method: str, path: str) -> _Intercept | None:
        with self._lock:
            for hook in self._intercepts:
                if hook.method in ("*", method) and hook.pattern.search(path):
                    hook.remaining -= 1
                    if hook.remaining <= 0:
                        self._intercepts.remove(hook)
                    return hook
        return None

    def _fault_response(self, fault: _Fault) -> _Response:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if fault.body is None:
            try:
                phrase = HTTPStatus(fault.status).phrase
            except ValueError:
                phrase = "Error"
            body = _json_bytes(
                {"error": {"code": phrase.replace(" ", ""), "message": "Injected failure."}}
            )
        elif isinstance(fault.body, bytes):
            body = fault.body
            headers["Content-Type"] = "application/octet-stream"
        elif isinstance(fault.body, str):
            body = fault.body.encode()
            headers["Content-Type"] = "text/plain; charset=utf-8"
        else:
            body = _json_bytes(fault.body)
        headers.update(fault.headers)
        return _Response(fault.status, body, headers)

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        body_error: bool,
    ) -> _Response:
        in_subscription = path.lower().startswith("/subscriptions/")
        tenant = graph.is_tenant_path(path)  # Resource Graph has a quota of its own
        is_arm = in_subscription or tenant or rbac.is_tenant_path(path)  # not throttled here
        methods = {"GET": "read", "PUT": "write", "PATCH": "write"}
        kind = methods.get(method) if in_subscription else None
        if kind:
            with self._lock:
                if kind == "read":
                    self._reads += 1
                else:
                    self._writes += 1

        fault = self._take_fault(method, path, self._faults)
        if fault is not None:
            return self._fault_response(fault)
        if not is_arm:
            served = self.authority.respond(method, path, self.url)
            if served is not None:
                status, doc = served
                return _Response(status, _json_bytes(doc), {"Content-Type": "application/json"})
            return self._static(method, path)

        subscription = path.split("/")[2]
        response_headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Cache-Control": "no-cache",
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-correlation-request-id": str(uuid.uuid4()),
        }
        try:
            caller = self._authenticate(headers)
            if not any(k.lower() == "api-version" for k in query):
                raise bad_request(
                    "The api-version query parameter (?api-version=) is required for all requests.",
                    code="MissingApiVersionParameter",
                )
            if kind:
                self._take_token(subscription, kind)
            if self.latency > 0:
                time.sleep(self.latency)
            if body_error:
                raise bad_request(
                    "The request content was invalid and could not be deserialized.",
                    code="InvalidRequestContent",
                )
            if tenant:
                status, doc, extra = graph.route(
                    self.graph, self.management_groups, method, path, query, body, caller, self.url
                )
                response_headers.update(extra)
            else:
                status, doc = self._arm(method, path, query, headers, body, caller)
            response = _Response(status, _json_bytes(doc), response_headers)
        except ArmError as exc:
            response_headers.update(exc.headers)
            response = _Response(exc.status, _json_bytes(exc.body()), response_headers)
        if kind:
            response.headers[f"x-ms-ratelimit-remaining-subscription-{kind}s"] = str(
                self._remaining(subscription, kind)
            )
            with self._lock:
                shared = self._bucket(subscription, f"global-{kind}")
                if shared is not None:
                    header = f"x-ms-ratelimit-remaining-subscription-global-{kind}s"
                    response.headers[header] = str(shared.remaining())
        return response

    def _static(self, method: str, path: str) -> _Response:
        with self._lock:
            file = self._files.get(path)
            location = self._redirects.get(path)
        if method not in ("GET", "HEAD"):
            return _Response(405, b"method not allowed", {"Content-Type": "text/plain"})
        if location is not None:
            return _Response(302, b"", {"Location": location})
        if file is not None:
            return _Response(200, file[0], {"Content-Type": file[1]}, drip_seconds=file[2])
        return _Response(404, b"not found", {"Content-Type": "text/plain"})

    # ------------------------------------------------------------------ identity

    def _token_endpoint(
        self, method: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Response:
        """App Service managed identity protocol (api-version 2019-08-01)."""
        with self._lock:
            self._token_requests += 1

        def error(status: int, message: str) -> _Response:
            doc = {"statusCode": status, "message": message}
            return _Response(status, _json_bytes(doc), {"Content-Type": "application/json"})

        if method != "GET":
            return error(405, "Only GET is supported.")
        secret = headers.get("x-identity-header")
        if not secret:
            return error(400, "The X-IDENTITY-HEADER header is required.")
        if not hmac.compare_digest(secret.encode(), self.identity_header.encode()):
            return error(401, "The X-IDENTITY-HEADER header value is not valid.")
        if query.get("api-version") != "2019-08-01":
            return error(400, "The api-version parameter must be 2019-08-01.")
        resource = query.get("resource")
        if not resource:
            return error(400, "The resource parameter is required.")
        client_id = (
            query.get("client_id") or query.get("object_id") or query.get("mi_res_id")
        ) or self.client_id
        token = "emu." + secrets.token_urlsafe(32)
        expires_on = int(time.time()) + _TOKEN_LIFETIME
        with self._lock:
            self._tokens[token] = _Token(resource, client_id, expires_on)
        doc = {
            "access_token": token,
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id,
        }
        return _Response(200, _json_bytes(doc), {"Content-Type": "application/json"})

    def _authenticate(self, headers: dict[str, str]) -> str:
        """Accept only tokens issued here for this emulator's URL; return the caller's appid."""
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ArmError(
                401,
                "InvalidAuthenticationToken",
                "Authentication failed. The 'Authorization' header is missing or is not a "
                "Bearer token.",
            )
        with self._lock:
            token = self._tokens.get(value.strip())
        if token is None:
            raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if token.expires_on < time.time():
            raise ArmError(401, "ExpiredAuthenticationToken", "The access token expiry has passed.")
        if token.resource.rstrip("/") != self.url:
            raise ArmError(
                401,
                "InvalidAuthenticationToken",
                f"The access token has been obtained for wrong audience or resource "
                f"'{token.resource}'. It should exactly match with one of the allowed "
                f"audiences '{self.url}/','{self.url}'.",
            )
        return token.client_id

    # ------------------------------------------------------------------ throttling

    def _bucket(self, subscription: str, kind: str) -> _Bucket | None:
        limit = self._limits.get(kind)
        if limit is None:
            return None
        key = (subscription.lower(), kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(*limit, clock=self.clock)
        return bucket

    def _take_token(self, subscription: str, kind: str) -> None:
        """A token of the principal's bucket and of the shared one, or a 429 taking none."""
        with self._lock:
            buckets = [
                b
                for b in (
                    self._bucket(subscription, kind),
                    self._bucket(subscription, f"global-{kind}"),
                )
                if b is not None
            ]
            empty = [b for b in buckets if b.remaining() < 1]
            if not empty:
                for bucket in buckets:
                    bucket.take()
                return
            wait = max(b.retry_after() for b in empty)
            self._throttled += 1
        raise ArmError(
            429,
            "SubscriptionRequestsThrottled",
            f"Number of '{kind}' requests for subscription '{subscription}' exceeded. Please try "
            f"again after '{wait}' seconds after additional tokens are available. Refer to "
            "https://aka.ms/arm-throttling",
            headers={"Retry-After": str(wait)},
        )

    def _remaining(self, subscription: str, kind: str) -> int:
        with self._lock:
            bucket = self._bucket(subscription, kind)
            return _UNTHROTTLED_REMAINING if bucket is None else bucket.remaining()

    # ------------------------------------------------------------------ ARM resources

    def _arm(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        caller: str,
    ) -> tuple[int, Any]:
        if rbac.is_rbac_path(path):
            return self.roles.handle(method, path, query, self.url)
        m = _VAULT_RE.match(path)
        if m:
            sub, rg, name = m["sub"], m["rg"], m["name"]
            if method == "GET":
                return 200, self._get_vault(sub, rg, name)
            if method in ("PUT", "PATCH"):
                return self._write_vault(method, sub, rg, name, body, caller, headers)
            raise _method_not_allowed(method)
        m = _LIST_SUB_RE.match(path) or _LIST_RG_RE.match(path)
        if m:
            if method != "GET":
                raise _method_not_allowed(method)
            rg = m.groupdict().get("rg")
            return 200, self._list_vaults(m["sub"], rg, query)
        m = _DELETED_RE.match(path)
        if m:
            if method != "GET":
                raise _method_not_allowed(method)
            return 200, self._get_deleted(m["sub"], m["loc"], m["name"])
        m = _TAGS_RE.match(path)
        if m:
            if method != "GET":
                raise _method_not_allowed(method)
            with self._lock:
                doc = self._service_tags
                if doc is None:
                    raise ArmError(
                        404,
                        "NotFound",
                        "Service tags are not available for this subscription and location.",
                    )
                shaped = servicetags.api_shape(doc, m["sub"])
            return 200, self._tags_page(shaped, path, query)
        answer = self.agent_networks.route(
            method,
            path,
            query,
            headers,
            body,
            caller=caller,
            base_url=self.url,
            page_size=self.page_size,
        )
        if answer is not None:
            return answer
        raise ArmError(
            404,
            "InvalidResourceType",
            f"The resource type could not be found for the path '{path}'.",
        )

    def _tags_page(self, doc: dict[str, Any], path: str, query: dict[str, str]) -> dict[str, Any]:
        """One page of the Discovery answer: `tags_page_size` values, and a `nextLink` (with
        a `$skipToken`) while more follow; the whole answer when no page size is set."""
        size = self.tags_page_size
        if not size:
            return doc
        token = query.get("$skipToken", "0")
        if not token.isdigit():
            raise bad_request(f"The skip token '{token}' is invalid.", code="InvalidSkipToken")
        start = int(token)
        values = doc["values"]
        page = {**doc, "values": values[start : start + size]}
        if start + size < len(values):
            version = quote(query.get("api-version", ""))
            page["nextLink"] = (
                f"{self.url}{quote(path)}?api-version={version}&$skipToken={start + size}"
            )
        return page

    def _get_vault(self, sub: str, rg: str, name: str) -> dict[str, Any]:
        with self._lock:
            vault = self._vaults.get(vaults.vault_key(sub, rg, name))
            if vault is None:
                raise _vault_not_found(rg, name)
            return copy.deepcopy(vault)

    def _get_deleted(self, sub: str, location: str, name: str) -> dict[str, Any]:
        """Vaults_GetDeleted: the DeletedVault shape of the REST spec."""
        key = (sub.lower(), location.replace(" ", "").lower(), name.lower())
        with self._lock:
            deleted = self._deleted.get(key)
            if deleted is None:
                raise ArmError(
                    404,
                    "ResourceNotFound",
                    f"The Resource 'Microsoft.KeyVault/deletedVaults/{name}' under location "
                    f"'{location}' was not found.",
                )
            vault = deleted["vault"]
            return {
                "id": f"/subscriptions/{key[0]}/providers/Microsoft.KeyVault/locations/{key[1]}"
                f"/deletedVaults/{vault['name']}",
                "name": vault["name"],
                "type": "Microsoft.KeyVault/deletedVaults",
                "properties": {
                    "vaultId": vault["id"],
                    "location": vault["location"],
                    "deletionDate": deleted["deletionDate"],
                    "scheduledPurgeDate": deleted["scheduledPurgeDate"],
                    "tags": copy.deepcopy(vault["tags"]),
                    "purgeProtectionEnabled": bool(
                        vault["properties"].get("enablePurgeProtection", False)
                    ),
                },
            }

    def _list_vaults(self, sub: str, rg: str | None, query: dict[str, str]) -> dict[str, Any]:
        top = query.get("$top")
        if top is not None:
            try:
                size = int(top)
            except ValueError:
                size = 0
            if size < 1:
                raise bad_request(f"The value '{top}' is not valid for $top.", code="InvalidTop")
        else:
            size = self.page_size
        token = query.get("$skiptoken")
        after = _decode_skiptoken(token) if token else None
        with self._lock:
            matching = sorted(
                (v["id"].lower(), v)
                for k, v in self._vaults.items()
                if k[0] == sub.lower() and (rg is None or k[1] == rg.lower())
            )
            if after is not None:
                matching = [item for item in matching if item[0] > after]
            page = [copy.deepcopy(v) for _, v in matching[:size]]
        doc: dict[str, Any] = {"value": page}
        if len(matching) > size:
            path = f"/subscriptions/{quote(sub)}"
            if rg is not None:
                path += f"/resourceGroups/{quote(rg)}"
            path += "/providers/Microsoft.KeyVault/vaults"
            params = [f"api-version={quote(query.get('api-version', ''))}"]
            if top is not None:
                params.append(f"$top={size}")
            params.append(f"$skiptoken={_encode_skiptoken(matching[size - 1][0])}")
            doc["nextLink"] = f"{self.url}{path}?{'&'.join(params)}"
        return doc

    def _write_vault(
        self,
        method: str,
        sub: str,
        rg: str,
        name: str,
        body: Any,
        caller: str,
        headers: dict[str, str],
    ) -> tuple[int, dict[str, Any]]:
        key = vaults.vault_key(sub, rg, name)
        with self._lock:
            if key in self._busy:
                raise ArmError(
                    409,
                    "Conflict",
                    "There was a conflict while trying to update the vault. Another operation "
                    "is in progress on this vault. Please serialize the operations on the vault "
                    "and try again.",
                )
            previous = self._vaults.get(key)
            if method == "PATCH":
                if previous is None:
                    raise _vault_not_found(rg, name)
                new = vaults.patch_vault(
                    previous, body, subnets=self._subnets, actor=caller, now=_iso_now()
                )
            else:
                vault_id = previous["id"] if previous else vaults.make_vault_id(sub, rg, name)
                new = vaults.build_vault(
                    vault_id,
                    body,
                    subnets=self._subnets,
                    tenant_id=self.tenant_id,
                    actor=caller,
                    now=_iso_now(),
                    previous=previous,
                )
            hold = self.write_latency
            gate = self._gate
            generation = self._generation
            if hold > 0 or gate is not None:
                self._busy.add(key)
            else:
                self._commit(key, new, sub, caller, method, previous is not None, headers)
        if hold > 0 or gate is not None:
            try:
                if gate is not None:
                    gate.held.set()
                    gate.opened.wait()
                time.sleep(hold)
            finally:
                with self._lock:
                    self._busy.discard(key)
                    if generation == self._generation:
                        self._commit(key, new, sub, caller, method, previous is not None, headers)
        status = 201 if method == "PUT" and previous is None else 200
        return status, copy.deepcopy(new)

    def _commit(
        self,
        key: tuple[str, str, str],
        vault: dict[str, Any],
        sub: str,
        caller: str,
        method: str,
        existed: bool,
        headers: dict[str, str],
    ) -> None:
        self._vaults[key] = vault
        self.graph.changed(vault["id"], vault)
        self._events.append(self._event(vault["id"], sub, caller, method, existed, headers))

    def _event(
        self,
        vault_id: str,
        sub: str,
        caller: str,
        method: str,
        existed: bool,
        headers: dict[str, str],
    ) -> dict[str, Any]:
        """Event Grid schema ResourceWriteSuccess, as the subscription system topic sends it."""
        subject = _RESOURCE_GROUPS_RE.sub("/resourcegroups/", vault_id)
        principal = (
            self.principal_id
            if caller == self.client_id
            else str(uuid.uuid5(uuid.NAMESPACE_URL, caller))
        )
        now = int(time.time())
        data: dict[str, Any] = {
            "authorization": {
                "scope": subject,
                "action": "Microsoft.KeyVault/vaults/write",
                "evidence": {
                    "role": "Key Vault Contributor",
                    "roleAssignmentScope": f"/subscriptions/{sub}",
                    "roleDefinitionId": _KEY_VAULT_CONTRIBUTOR,
                    "principalId": principal,
                    "principalType": "ServicePrincipal",
                },
            },
            "claims": {
                "aud": f"{self.url}/",
                "iss": f"https://sts.windows.net/{self.tenant_id}/",
                "iat": str(now - 60),
                "nbf": str(now - 60),
                "exp": str(now + 3600),
                "appid": caller,
                "appidacr": "2",
                "idtyp": "app",
                "http://schemas.microsoft.com/identity/claims/identityprovider": (
                    f"https://sts.windows.net/{self.tenant_id}/"
                ),
                "http://schemas.microsoft.com/identity/claims/objectidentifier": principal,
                "http://schemas.microsoft.com/identity/claims/tenantid": self.tenant_id,
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier": principal,
                "ver": "1.0",
            },
            "correlationId": headers.get("x-ms-correlation-request-id") or str(uuid.uuid4()),
        }
        if existed:
            data["httpRequest"] = {
                "clientRequestId": headers.get("x-ms-client-request-id", ""),
                "clientIpAddress": "127.0.0.1",
                "method": method,
                "url": f"{self.url}{quote(vault_id)}",
            }
        data.update(
            {
                "resourceProvider": "Microsoft.KeyVault",
                "resourceUri": subject,
                "operationName": "Microsoft.KeyVault/vaults/write",
                "status": "Succeeded",
                "subscriptionId": sub,
                "tenantId": self.tenant_id,
            }
        )
        return {
            "subject": subject,
            "eventType": "Microsoft.Resources.ResourceWriteSuccess",
            "eventTime": _iso_now(),
            "id": str(uuid.uuid4()),
            "data": data,
            "dataVersion": "2",
            "metadataVersion": "1",
            "topic": f"/subscriptions/{sub}",
        }


def _vault_not_found(rg: str, name: str) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource 'Microsoft.KeyVault/vaults/{name}' under resource group '{rg}' was not "
        "found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def _method_not_allowed(method: str) -> ArmError:
    return ArmError(
        405,
        "MethodNotAllowed",
        f"The HTTP method '{method}' is not supported by the emulator for this resource.",
    )
