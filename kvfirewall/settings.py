"""Settings: one typed, frozen object built from the environment (app settings in Azure).

Everything is validated here, once, before any call to Azure: a typo in an app setting must
stop the run with a message naming the setting and the value, not surface later as a
half-applied firewall.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from kvfirewall.clouds import defaults_for
from kvfirewall.geographies import GEOGRAPHY_REGIONS, canonical_geography
from kvfirewall.pools import PoolRef, parse_pool_ids
from kvfirewall.rules import (
    SUBSCRIPTION_RE,
    RuleError,
    canonical_subnet_id,
    public_ipv4_network,
    subnet_key,
)

MODES = ("audit", "enforce")
DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
DEFAULT_LOCAL_STATE = "./.kvfirewall"
DEFAULT_SCHEDULE = "0 0 * * * *"  # hourly, on the hour
DEFAULT_REPORT_DAYS = 30
DEFAULT_LEASE_TAG = "kvfirewall-leases=enabled"
DEFAULT_LEASE_MAX_MINUTES = 60
MAX_LEASE_MINUTES = 1440
DEFAULT_LEASE_SCHEDULE = "0 * * * * *"  # every minute
LeaseMode = Literal["off", "entra"]
LeaseIpScope = Literal["azure", "any"]
_REGION_RE = re.compile(r"^[a-z][a-z0-9]{2,39}\Z")  # also the Discovery API location
_TAG_NAME_RE = re.compile(r"^[^<>%&\\?/]{1,512}$")
MAX_REPORT_DAYS = 3650
_FIELD_KEY_RE = re.compile(r"[A-Za-z]+\Z")
# A management group id: up to 90 letters, digits, `-`, `_`, `(`, `)` and `.`, not ending in `.`.
_GROUP_RE = re.compile(
    r"/providers/Microsoft\.Management/managementGroups/(?P<id>[\w().-]{0,89}[\w()-])/?\Z",
    re.IGNORECASE | re.ASCII,
)
Listing = Literal["graph", "arm"]
LISTINGS: tuple[Listing, ...] = ("graph", "arm")
_CONNECTION_KEYS = frozenset(
    {"defaultendpointsprotocol", "accountname", "accountkey", "sharedaccesssignature",
     "blobendpoint", "tableendpoint", "queueendpoint", "fileendpoint", "endpointsuffix",
     "usedevelopmentstorage", "developmentstorageproxyuri"}
)  # fmt: skip

# name -> (meaning, default shown to people); the product's interface, also read by the docs tests.
SETTINGS: dict[str, tuple[str, str]] = {
    "KVF_SUBSCRIPTIONS": (
        "comma-separated subscription ids and /providers/Microsoft.Management/managementGroups/"
        "<id> entries whose vaults are managed",
        "",
    ),
    "KVF_ADO_GEOGRAPHIES": ("Azure DevOps geographies, e.g. Europe,United States", ""),
    "KVF_ADO_REGIONS": ("extra regions whose AzureDevOps.<Region> ranges are allowed", ""),
    "KVF_IP_SOURCE": ("api, builtin, or an https URL / file path of a ServiceTags JSON", "api"),
    "KVF_SERVICE_TAG_LOCATION": (
        "Service Tag Discovery API location (empty: one in KVF_ARM_ENDPOINT's cloud)",
        "",
    ),
    "KVF_AGENT_SUBNETS": ("comma-separated subnet resource ids of self-hosted agents", ""),
    "KVF_EXTRA_IP_RULES": ("comma-separated public IPv4 addresses/CIDRs always allowed", ""),
    "KVF_VAULT_TAG": ("name=value: only vaults carrying this tag are managed", ""),
    "KVF_MODE": ("enforce (write) or audit (report only)", "audit"),
    "KVF_LOCK_OPEN_VAULTS": (
        "true: also set defaultAction Deny on vaults in scope whose firewall is open",
        "false",
    ),
    "KVF_ENABLE_DISABLED_VAULTS": (
        "true: switch vaults with public access disabled to selected networks (Deny + rules)",
        "false",
    ),
    "KVF_SCHEDULE": ("timer schedule, NCRONTAB with seconds, in UTC", DEFAULT_SCHEDULE),
    "KVF_ARM_ENDPOINT": ("Azure Resource Manager base URL", DEFAULT_ARM_ENDPOINT),
    "KVF_STATE": ("ledger location: a directory or an Azure Storage connection string", ""),
    "KVF_MAX_RANGE_LOSS_PERCENT": (
        "largest share of AzureDevOps IPv4 prefixes a refresh may drop before it is refused",
        "20",
    ),
    "KVF_REPORT_DAYS": ("days a stored run report is kept", str(DEFAULT_REPORT_DAYS)),
    "KVF_LISTING": (
        "graph (Resource Graph) or arm (per subscription); empty: graph when a management "
        "group is in KVF_SUBSCRIPTIONS, else arm",
        "",
    ),
    "KVF_LEASES": ("access leases: off, or entra (pipelines lease a vault with a token)", "off"),
    "KVF_LEASE_TENANT": ("the Entra tenant id whose tokens lease vaults (KVF_LEASES=entra)", ""),
    "KVF_LEASE_AUDIENCES": (
        "comma-separated accepted token audiences: the app id URI and client id",
        "",
    ),
    "KVF_LEASE_TAG": ("name=value a vault must carry to accept leases", DEFAULT_LEASE_TAG),
    "KVF_LEASE_MAX_MINUTES": (
        f"longest lease in minutes (at most {MAX_LEASE_MINUTES})",
        str(DEFAULT_LEASE_MAX_MINUTES),
    ),
    "KVF_LEASE_IP_SCOPE": (
        "azure (a leased address must be in the AzureCloud service tag) or any",
        "azure",
    ),
    "KVF_LEASE_PRINCIPALS": ("comma-separated object ids that may lease any leasable vault", ""),
    "KVF_LEASE_SCHEDULE": (
        "expiry timer schedule, NCRONTAB with seconds, in UTC",
        DEFAULT_LEASE_SCHEDULE,
    ),
    "KVF_AGENT_POOLS": (
        "comma-separated resource ids of Managed DevOps Pools, agent scale sets and GitHub "
        "network settings whose networks are allowed",
        "",
    ),
    "KVF_DISCOVER_POOLS": (
        "true: also allow every Managed DevOps Pool of the managed subscriptions",
        "false",
    ),
    "KVF_FIX_SERVICE_ENDPOINTS": (
        "true: add the Microsoft.KeyVault service endpoint to agent subnets that lack it "
        "(writing runs in enforce mode only)",
        "false",
    ),
    "KVF_FAN_OUT": (
        "true: runs over every vault queue their drifted vaults on the state's Storage queue "
        "kvfirewall-work, reconciled on any instance (Azure Storage state only)",
        "true",
    ),
}

# Read by the Functions host (`%KVF_SCHEDULE%` in the timer binding), not by `Settings`: the
# host validates it, and a bad schedule must not stop the event and HTTP triggers too.
HOST_SETTINGS = frozenset({"KVF_SCHEDULE", "KVF_LEASE_SCHEDULE"})


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the setting and the value."""


@dataclass(frozen=True, kw_only=True)
class StateLocation:
    """Where the ledger and range snapshots live."""

    kind: str  # "local" | "connection-string" | "identity"
    value: str  # directory, connection string, or (identity) the blob service URL
    table_url: str = ""  # identity: the table service URL
    client_id: str = ""  # identity: a user-assigned managed identity's client id
    queue_url: str = ""  # identity: the queue service URL (where runs fan out)

    def describe(self) -> str:
        """A description safe for logs: never the connection string's secrets."""
        if self.kind == "local":
            return f"directory {self.value}"
        if self.kind == "identity":
            return f"storage {redact_url(self.value)} (managed identity)"
        fields = _connection_fields(self.value)
        if fields.get("usedevelopmentstorage", "").lower() == "true":
            return "Azurite (development storage)"
        account = fields.get("accountname") or redact_url(fields.get("blobendpoint", ""))
        return f"storage account {account or '(unnamed)'}"


@dataclass(frozen=True, kw_only=True)
class LeaseSettings:
    """Access leases: who may open a vault to one address, for minutes (`KVF_LEASE_*`).

    With `mode` off nothing else is read: a deployment that does not lease needs none of it."""

    mode: LeaseMode = "off"
    tenant: str = ""
    audiences: tuple[str, ...] = ()
    authority: str = ""
    tag: tuple[str, str] = ("kvfirewall-leases", "enabled")
    max_minutes: int = DEFAULT_LEASE_MAX_MINUTES
    ip_scope: LeaseIpScope = "azure"
    principals: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.mode == "entra"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated configuration of one kvfirewall deployment."""

    subscriptions: tuple[str, ...]
    # Management group ids: each run manages their current descendant subscriptions too.
    management_groups: tuple[str, ...] = ()
    listing: Listing = "arm"  # how a run over every vault finds them
    geographies: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    ip_source: str = "api"
    service_tag_location: str = "westus"
    agent_subnets: tuple[str, ...] = ()
    extra_ip_rules: tuple[IPv4Network, ...] = ()
    vault_tag: tuple[str, str] | None = None
    mode: str = "audit"
    lock_open_vaults: bool = False
    enable_disabled_vaults: bool = False
    arm_endpoint: str = DEFAULT_ARM_ENDPOINT
    state: StateLocation = StateLocation(kind="local", value=DEFAULT_LOCAL_STATE)
    max_range_loss_percent: float = 20.0
    report_days: int = DEFAULT_REPORT_DAYS
    leases: LeaseSettings = LeaseSettings()
    agent_pools: tuple[PoolRef, ...] = ()
    discover_pools: bool = False
    fix_service_endpoints: bool = False
    fan_out: bool = True

    @property
    def all_regions(self) -> tuple[str, ...]:
        """Every region whose AzureDevOps ranges are wanted, geographies expanded, no repeats."""
        regions = [r for g in self.geographies for r in GEOGRAPHY_REGIONS[g]]
        regions.extend(self.regions)
        return tuple(dict.fromkeys(regions))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build and validate settings from environment variables (app settings)."""
        env = os.environ if env is None else env

        def get(name: str) -> str:
            return env.get(name, "").strip()

        scope = [_parse_scope(v) for v in _items(get("KVF_SUBSCRIPTIONS"))]
        subscriptions = tuple(_unique(v for kind, v in scope if kind == "subscription"))
        groups = tuple(_unique((v for kind, v in scope if kind == "group"), key=str.lower))
        if not scope:
            raise SettingsError(
                "KVF_SUBSCRIPTIONS is required: comma-separated subscription ids or "
                "/providers/Microsoft.Management/managementGroups/<id> entries"
            )

        geographies = tuple(
            _unique(_parse_geography(v) for v in _items(get("KVF_ADO_GEOGRAPHIES")))
        )
        regions = tuple(_unique(_parse_region(v) for v in _items(get("KVF_ADO_REGIONS"))))
        subnets = tuple(
            _unique(
                (
                    _parse_rule("KVF_AGENT_SUBNETS", canonical_subnet_id, v)
                    for v in _items(get("KVF_AGENT_SUBNETS"))
                ),
                key=subnet_key,
            )
        )
        extra = tuple(
            _unique(
                _parse_rule("KVF_EXTRA_IP_RULES", public_ipv4_network, v)
                for v in _items(get("KVF_EXTRA_IP_RULES"))
            )
        )
        pools = _parse_rule("KVF_AGENT_POOLS", parse_pool_ids, get("KVF_AGENT_POOLS"))
        discover = _parse_switch("KVF_DISCOVER_POOLS", get("KVF_DISCOVER_POOLS"))
        if not (geographies or regions or subnets or extra or pools or discover):
            raise SettingsError(
                "nothing to allow: set at least one of KVF_ADO_GEOGRAPHIES, KVF_ADO_REGIONS, "
                "KVF_AGENT_SUBNETS, KVF_EXTRA_IP_RULES, KVF_AGENT_POOLS or KVF_DISCOVER_POOLS"
            )

        arm_endpoint = _parse_arm_endpoint(get("KVF_ARM_ENDPOINT") or DEFAULT_ARM_ENDPOINT)
        cloud = defaults_for(arm_endpoint)
        return cls(
            subscriptions=subscriptions,
            management_groups=groups,
            listing=_parse_listing(get("KVF_LISTING"), groups=groups),
            geographies=geographies,
            regions=regions,
            ip_source=_parse_ip_source(get("KVF_IP_SOURCE") or "api"),
            service_tag_location=_parse_location(
                get("KVF_SERVICE_TAG_LOCATION") or cloud.service_tag_location
            ),
            agent_subnets=subnets,
            extra_ip_rules=extra,
            vault_tag=_parse_vault_tag(get("KVF_VAULT_TAG")),
            mode=_parse_mode(get("KVF_MODE") or "audit"),
            lock_open_vaults=_parse_switch("KVF_LOCK_OPEN_VAULTS", get("KVF_LOCK_OPEN_VAULTS")),
            enable_disabled_vaults=_parse_switch(
                "KVF_ENABLE_DISABLED_VAULTS", get("KVF_ENABLE_DISABLED_VAULTS")
            ),
            arm_endpoint=arm_endpoint,
            state=_parse_state(env, storage_suffix=cloud.storage_suffix),
            max_range_loss_percent=_parse_percent(get("KVF_MAX_RANGE_LOSS_PERCENT") or "20"),
            report_days=_parse_days(get("KVF_REPORT_DAYS") or str(DEFAULT_REPORT_DAYS)),
            leases=_parse_leases(get, arm_endpoint),
            agent_pools=pools,
            discover_pools=discover,
            fix_service_endpoints=_parse_switch(
                "KVF_FIX_SERVICE_ENDPOINTS", get("KVF_FIX_SERVICE_ENDPOINTS")
            ),
            fan_out=_parse_switch("KVF_FAN_OUT", get("KVF_FAN_OUT") or "true"),
        )


def _items(value: str) -> list[str]:
    """Split a comma-separated setting; blanks (trailing commas, spaces) are ignored."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _unique(values, key=lambda v: v):
    seen: set = set()
    for value in values:
        k = key(value)
        if k not in seen:
            seen.add(k)
            yield value


def _parse_scope(value: str) -> tuple[Literal["subscription", "group"], str]:
    """A subscription id (lower-cased) or a management group's resource id (its id kept)."""
    if value.startswith("/"):
        match = _GROUP_RE.match(value)
        if not match:
            raise SettingsError(
                f"KVF_SUBSCRIPTIONS: {value!r} is not /providers/Microsoft.Management/"
                "managementGroups/<id> (an id of up to 90 letters, digits, -, _, (, ) or .)"
            )
        return "group", match["id"]
    if not SUBSCRIPTION_RE.match(value):
        raise SettingsError(
            f"KVF_SUBSCRIPTIONS: {value!r} is not a subscription id (a GUID) or a management "
            "group (/providers/Microsoft.Management/managementGroups/<id>)"
        )
    return "subscription", value.lower()


def _parse_listing(value: str, *, groups: tuple[str, ...]) -> Listing:
    """Resource Graph answers one query for a whole management group; per-subscription
    listing needs no more than the vault role. The default follows the scope."""
    if not value:
        return "graph" if groups else "arm"
    listing = value.lower()
    for known in LISTINGS:
        if listing == known:
            return known
    raise SettingsError(f"KVF_LISTING: {value!r} is not one of {', '.join(LISTINGS)}")


def _parse_geography(value: str) -> str:
    geography = canonical_geography(value)
    if geography is None:
        valid = ", ".join(GEOGRAPHY_REGIONS)
        raise SettingsError(
            f"KVF_ADO_GEOGRAPHIES: unknown geography {value!r}; valid: {valid} "
            "(other regions can be added with KVF_ADO_REGIONS)"
        )
    return geography


def _parse_region(value: str) -> str:
    region = value.replace(" ", "").lower()
    if not _REGION_RE.match(region):
        raise SettingsError(
            f"KVF_ADO_REGIONS: {value!r} is not an Azure region name (e.g. swedencentral)"
        )
    return region


def _parse_location(value: str) -> str:
    location = value.replace(" ", "").lower()
    if not _REGION_RE.match(location):
        raise SettingsError(f"KVF_SERVICE_TAG_LOCATION: {value!r} is not an Azure region name")
    return location


def _parse_rule(setting: str, parse, value: str):
    try:
        return parse(value)
    except RuleError as exc:
        raise SettingsError(f"{setting}: {exc}") from None


def _parse_ip_source(value: str) -> str:
    lowered = value.lower()
    if lowered in ("api", "builtin"):
        return lowered
    scheme = value.partition(":")[0].lower() if "://" in value else ""
    if scheme == "https":
        return _https_url("KVF_IP_SOURCE", value, query_allowed=True)
    if scheme:
        raise SettingsError(
            f"KVF_IP_SOURCE: {redact_url(value)!r} is not allowed; "
            "use api, builtin, an https URL or a file path"
        )
    try:
        exists = Path(value).is_file()
    except (OSError, ValueError):
        exists = False
    if not exists:
        shown = redact_url(value)
        shown = shown if len(shown) <= 200 else shown[:200] + "…"
        raise SettingsError(
            f"KVF_IP_SOURCE: {shown!r} is not api, builtin, an https URL or an existing file"
        )
    return value


def _parse_vault_tag(value: str) -> tuple[str, str] | None:
    if not value:
        return None
    return _parse_tag("KVF_VAULT_TAG", value)


def _parse_tag(setting: str, value: str) -> tuple[str, str]:
    name, sep, tag_value = value.partition("=")
    name, tag_value = name.strip(), tag_value.strip()
    if not sep or not name or not _TAG_NAME_RE.match(name):
        raise SettingsError(f"{setting}: {value!r} is not name=value (e.g. kvfirewall=managed)")
    return name, tag_value


def _parse_mode(value: str) -> str:
    mode = value.lower()
    if mode not in MODES:
        raise SettingsError(f"KVF_MODE: {value!r} is not one of {', '.join(MODES)}")
    return mode


def _parse_switch(setting: str, value: str) -> bool:
    """An on/off setting; anything but a clear yes or no is an error, never a guess (a typo
    must not silently leave a lock-down off, or turn one on)."""
    answer = {"": False, "false": False, "0": False, "no": False, "off": False,
              "true": True, "1": True, "yes": True, "on": True}.get(value.lower())  # fmt: skip
    if answer is None:
        raise SettingsError(f"{setting}: {value!r} is not true or false")
    return answer


def _parse_arm_endpoint(value: str) -> str:
    return _https_url("KVF_ARM_ENDPOINT", value, query_allowed=False).rstrip("/")


def _https_url(setting: str, value: str, *, query_allowed: bool) -> str:
    """An https URL with a host and a valid port, and no user info (credentials belong in
    the credential, not in a URL that ends up in logs)."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        parts, port = None, -1
    if parts is None or port == 0 or port == -1:
        problem = "is not a valid URL"
    elif parts.scheme.lower() != "https" or not parts.hostname:
        problem = "is not an https URL"
    elif parts.username is not None:
        problem = "must not carry a user name or password"
    elif parts.fragment or (parts.query and not query_allowed):
        problem = "must not have a query string or fragment"
    else:
        return value
    raise SettingsError(f"{setting}: {redact_url(value)!r} {problem}")


def _parse_percent(value: str) -> float:
    try:
        percent = float(value)
    except ValueError:
        percent = -1.0
    if not 0 <= percent <= 100:
        raise SettingsError(f"KVF_MAX_RANGE_LOSS_PERCENT: {value!r} is not a number from 0 to 100")
    return percent


def _parse_days(value: str) -> int:
    days = int(value) if value.isascii() and value.isdigit() else 0
    if not 1 <= days <= MAX_REPORT_DAYS:
        raise SettingsError(
            f"KVF_REPORT_DAYS: {value!r} is not a whole number of days from 1 to {MAX_REPORT_DAYS}"
        )
    return days


def _parse_leases(get: Callable[[str], str], arm_endpoint: str) -> LeaseSettings:
    """`KVF_LEASE_*`, validated only with `KVF_LEASES=entra`; the authority is azure-identity's
    own `AZURE_AUTHORITY_HOST`, else that of `KVF_ARM_ENDPOINT`'s cloud."""
    mode = (get("KVF_LEASES") or "off").lower()
    if mode == "off":
        return LeaseSettings()
    if mode != "entra":
        raise SettingsError(f"KVF_LEASES: {get('KVF_LEASES')!r} is not off or entra")
    tenant = get("KVF_LEASE_TENANT")
    if not tenant:
        raise SettingsError("KVF_LEASE_TENANT is required with KVF_LEASES=entra: a tenant id")
    if not SUBSCRIPTION_RE.match(tenant):
        raise SettingsError(f"KVF_LEASE_TENANT: {tenant!r} is not a tenant id (a GUID)")
    audiences = tuple(_unique(_items(get("KVF_LEASE_AUDIENCES"))))
    if not audiences:
        raise SettingsError(
            "KVF_LEASE_AUDIENCES is required with KVF_LEASES=entra: the app id URI and client id"
        )
    for audience in audiences:
        if any(c.isspace() for c in audience) or len(audience) > 256:
            raise SettingsError(f"KVF_LEASE_AUDIENCES: {audience[:80]!r} is not an audience")
    authority = get("AZURE_AUTHORITY_HOST") or defaults_for(arm_endpoint).authority_host
    authority = _https_url("AZURE_AUTHORITY_HOST", authority, query_allowed=False).rstrip("/")
    tag = _parse_tag("KVF_LEASE_TAG", get("KVF_LEASE_TAG") or DEFAULT_LEASE_TAG)
    text = get("KVF_LEASE_MAX_MINUTES") or str(DEFAULT_LEASE_MAX_MINUTES)
    minutes = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= minutes <= MAX_LEASE_MINUTES:
        raise SettingsError(
            f"KVF_LEASE_MAX_MINUTES: {text!r} is not a whole number of minutes "
            f"from 1 to {MAX_LEASE_MINUTES}"
        )
    scope = (get("KVF_LEASE_IP_SCOPE") or "azure").lower()
    if scope not in ("azure", "any"):
        raise SettingsError(
            f"KVF_LEASE_IP_SCOPE: {get('KVF_LEASE_IP_SCOPE')!r} is not azure or any"
        )
    principals = []
    for value in _items(get("KVF_LEASE_PRINCIPALS")):
        if not SUBSCRIPTION_RE.match(value):
            raise SettingsError(f"KVF_LEASE_PRINCIPALS: {value!r} is not an object id (a GUID)")
        principals.append(value.lower())
    return LeaseSettings(
        mode="entra",
        tenant=tenant.lower(),
        audiences=audiences,
        authority=authority,
        tag=tag,
        max_minutes=minutes,
        ip_scope="azure" if scope == "azure" else "any",
        principals=tuple(_unique(principals)),
    )


def _is_connection_string(value: str) -> bool:
    """Whether a storage setting is a connection string rather than a directory (whose path
    may hold `=` and `;` too): every `;`-separated part is `Key=value` with a plain word as
    the key, and there are several parts or the key is one a connection string has."""
    fields = [part.partition("=") for part in value.split(";") if part.strip()]
    if not fields or not all(sep and _FIELD_KEY_RE.match(key.strip()) for key, sep, _ in fields):
        return False
    return len(fields) > 1 or fields[0][0].strip().lower() in _CONNECTION_KEYS


def _connection_fields(connection_string: str) -> dict[str, str]:
    fields = {}
    for part in connection_string.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


def _parse_state(env: Mapping[str, str], *, storage_suffix: str) -> StateLocation:
    """KVF_STATE, else the Functions host's storage (AzureWebJobsStorage, by connection string
    or by identity), else ./.kvfirewall outside Functions.

    Inside a Function App a local directory would not survive a restart, and a lost ledger
    means kvfirewall can no longer tell its rules from everyone else's: refuse it there.
    """
    for source in ("KVF_STATE", "AzureWebJobsStorage"):
        value = env.get(source, "").strip()
        if value and _is_connection_string(value):
            return StateLocation(kind="connection-string", value=_check_connection(source, value))
        if value:
            return StateLocation(kind="local", value=value)
    identity = _identity_storage(env, storage_suffix)
    if identity is not None:
        return identity
    if env.get("FUNCTIONS_WORKER_RUNTIME"):
        raise SettingsError(
            "KVF_STATE: not set, and no AzureWebJobsStorage either; a Function App needs "
            "durable state (an Azure Storage connection string or identity-based storage)"
        )
    return StateLocation(kind="local", value=DEFAULT_LOCAL_STATE)


def _check_connection(source: str, value: str) -> str:
    """Validate an Azure Storage connection string without ever echoing it (it holds a key)."""
    fields = _connection_fields(value)
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return value
    key = fields.get("accountkey")
    if key is not None:
        try:
            base64.b64decode(key, validate=True)
        except ValueError:
            raise SettingsError(
                f"{source}: the connection string's AccountKey is not base64"
            ) from None
    endpoints = {"blobendpoint", "tableendpoint"} <= fields.keys()
    if ("accountname" in fields or endpoints) and (key or "sharedaccesssignature" in fields):
        return value
    raise SettingsError(
        f"{source}: not a valid Azure Storage connection string (it needs AccountName or "
        "BlobEndpoint and TableEndpoint, with AccountKey or SharedAccessSignature; or "
        "UseDevelopmentStorage=true)"
    )


def _identity_storage(env: Mapping[str, str], storage_suffix: str) -> StateLocation | None:
    """Identity-based host storage: `AzureWebJobsStorage__accountName` (in the cloud's storage
    DNS suffix), or the service URIs."""
    prefix = "AzureWebJobsStorage__"
    account = env.get(prefix + "accountName", "").strip()
    blob = env.get(prefix + "blobServiceUri", "").strip()
    table = env.get(prefix + "tableServiceUri", "").strip()
    queue = env.get(prefix + "queueServiceUri", "").strip()
    client_id = env.get(prefix + "clientId", "").strip()
    if not (account or blob):
        return None
    if account:
        if not re.fullmatch(r"[a-z0-9]{3,24}", account):
            raise SettingsError(f"{prefix}accountName: {account!r} is not a storage account name")
        blob = blob or f"https://{account}.blob.{storage_suffix}"
        table = table or f"https://{account}.table.{storage_suffix}"
        queue = queue or f"https://{account}.queue.{storage_suffix}"
    for name, url in (("blobServiceUri", blob), ("tableServiceUri", table)):
        if not url:
            raise SettingsError(f"{prefix}{name}: required for the kvfirewall ledger")
        _https_url(prefix + name, url, query_allowed=False)
    if client_id and not SUBSCRIPTION_RE.match(client_id):
        raise SettingsError(f"{prefix}clientId: {client_id!r} is not a client id (a GUID)")
    if queue:
        _https_url(prefix + "queueServiceUri", queue, query_allowed=False)
    return StateLocation(
        kind="identity", value=blob, table_url=table, client_id=client_id, queue_url=queue
    )


def redact_url(url: str) -> str:
    """A URL fit for logs and reports: no user info, query string or fragment (SAS tokens).
    Anything that is not a URL (api, builtin, a path) is returned as it is."""
    if "://" not in url:
        return url
    scheme, _, rest = url.partition("://")
    base, sep, _ = rest.partition("?")
    base, hash_sep, _ = base.partition("#")
    authority, slash, path = base.partition("/")
    host = authority.rpartition("@")[2]  # user info, if any, is dropped
    hidden = "?…" if sep or hash_sep else ""
    return f"{scheme}://{host}{slash}{path}{hidden}"
