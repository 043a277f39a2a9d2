"""The reliability suite: faults, races, crashes and hostile input, each followed by a check of
what users rely on (`Estate.check`):

- every managed vault converges (it holds every desired rule where rules take effect), and
  holds no rule that is neither someone else's nor a configured one;
- no foreign rule is missing (seeded ones, and those someone added during the scenario);
- no vault's defaultAction or publicNetworkAccess became more open;
- no rule kvfirewall added is orphaned (each is owned or pending in the ledger), and the
  ledger never claims a foreign rule;
- every write was one complete networkAcls (4 fields), never accessPolicies.

Each scenario also counts what it put the product through; `scripts/reliability-figures`
runs the suite with KVF_RELIABILITY_README set, and a passing run writes the totals there.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Network, ip_network
from pathlib import Path

import pytest

from kvfirewall.ledger import LocalStore, StateStore
from kvfirewall.ranges import desired_rules, parse_service_tags
from kvfirewall.reconcile import reconcile
from kvfirewall.report import Report
from kvfirewall.rules import parse_vault_id, subnet_key
from kvfirewall.settings import Settings
from kvfirewall.vaults import Arm

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
JULY_PATH = FIXTURES / "ServiceTags_Public_20250728.AzureDevOps-only.json"
OCTOBER_PATH = FIXTURES / "ServiceTags_Public_20251028.AzureDevOps-only.json"
OCTOBER = json.loads(OCTOBER_PATH.read_text())
SUB_A = "aaaaaaaa-1111-4111-8111-111111111111"
SUB_B = "bbbbbbbb-2222-4222-8222-222222222222"
SUB_OUT = "cccccccc-3333-4333-8333-333333333333"  # not managed
AGENTS = (
    f"/subscriptions/{SUB_A}/resourceGroups/Net/providers/Microsoft.Network"
    "/virtualNetworks/agents/subnets/Pool"
)
FOREIGN_SUBNET = (
    f"/subscriptions/{SUB_B}/resourceGroups/App/providers/Microsoft.Network"
    "/virtualNetworks/app/subnets/Web"
)
TAG = {"kvfirewall": "managed"}
WEU = IPv4Network("40.74.28.0/23")  # an Azure DevOps West Europe range

_totals: Counter = Counter()


@dataclass
class Seeded:
    """A vault as the scenario started it, and what belongs to others on it."""

    id: str
    managed: bool
    foreign_nets: set[IPv4Network] = field(default_factory=set)
    foreign_subnets: set[str] = field(default_factory=set)
    open: bool = True
    enabled: bool = True


class Estate:
    """A seeded estate of every kind of vault, a local ledger, and the invariant check."""

    def __init__(self, emulator, root: Path, *, size: int = 12) -> None:
        self.emulator = emulator
        self.root = root
        self.vaults: dict[str, Seeded] = {}
        emulator.set_service_tags(OCTOBER)
        emulator.add_subnet(AGENTS)
        emulator.add_subnet(FOREIGN_SUBNET)
        kinds = ("locked", "open", "bare", "locked", "disabled", "untagged")
        for n in range(size):
            self._seed(kinds[n % len(kinds)], n)
        self._seed("elsewhere", size)

    def _seed(self, kind: str, n: int) -> None:
        sub = SUB_B if n % 2 else SUB_A
        foreign = {IPv4Network(f"198.51.{n}.0/24")} if kind != "bare" else set()
        subnets = {FOREIGN_SUBNET.lower()} if kind == "locked" else set()
        if kind == "locked" and n % 4 == 0:
            foreign.add(WEU)  # someone else already admits an Azure DevOps range
        acls = None
        if kind != "bare":
            acls = {
                "defaultAction": "Allow" if kind == "open" else "Deny",
                "bypass": "AzureServices",
                "ipRules": [{"value": str(net)} for net in sorted(foreign)],
                "virtualNetworkRules": [{"id": s} for s in sorted(subnets)],
            }
        vault_id = self.emulator.add_vault(
            SUB_OUT if kind == "elsewhere" else sub,
            "rg",
            f"kv-{kind}-{n:03}",
            tags={} if kind == "untagged" else TAG,
            network_acls=acls,
            public_network_access="Disabled" if kind == "disabled" else "Enabled",
        )
        self.vaults[vault_id] = Seeded(
            id=vault_id,
            managed=kind not in ("untagged", "elsewhere"),
            foreign_nets=foreign,
            foreign_subnets=subnets,
            open=kind in ("open", "bare"),
            enabled=kind != "disabled",
        )

    @property
    def effective(self) -> int:
        """Managed vaults on which firewall rules take effect: those a first run writes."""
        return sum(s.managed and s.enabled for s in self.vaults.values())

    # ---- running the product -----------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        """The app settings of the scenario (and the emulator's environment)."""
        return {
            **self.emulator.env(),
            "KVF_SUBSCRIPTIONS": f"{SUB_A},{SUB_B}",
            "KVF_ADO_GEOGRAPHIES": "Europe",
            "KVF_AGENT_SUBNETS": AGENTS,
            "KVF_EXTRA_IP_RULES": "52.10.20.30",
            "KVF_VAULT_TAG": "kvfirewall=managed",
            "KVF_MODE": "enforce",
            "KVF_STATE": str(self.root / "state"),
            **overrides,
        }

    def settings(self, **overrides: str) -> Settings:
        return Settings.from_env(self.env(**overrides))

    def store(self) -> StateStore:
        return LocalStore(self.root / "state")

    def arm(self, **options) -> Arm:
        # Retry-After and backoff waits are honoured, but capped: the scenarios stay fast.
        options.setdefault("sleep", lambda seconds: time.sleep(min(seconds, 0.2)))
        return Arm(endpoint=self.emulator.url, subscriptions=(SUB_A, SUB_B), **options)

    def run(
        self,
        *,
        store: StateStore | None = None,
        arm: Arm | None = None,
        vault: str | None = None,
        settings: Settings | None = None,
    ) -> Report:
        return reconcile(
            settings or self.settings(),
            store=store or self.store(),
            arm=arm or self.arm(),
            write=True,
            mode="enforce",
            vault=parse_vault_id(vault) if vault else None,
        )

    def converge(self, *, runs: int = 3, **options) -> list[Report]:
        """Run until no vault fails (faults are transient), at most `runs` times."""
        reports = [self.run(**options)]
        while reports[-1].failed and len(reports) < runs:
            reports.append(self.run(**options))
        return reports

    # ---- what others do ----------------------------------------------------------------

    def someone_adds(self, vault_id: str, rule: str, *, stale: dict | None = None) -> None:
        """Someone else's write adding an IP rule: to the vault as it is now, or (`stale`)
        to a copy of its networkAcls read earlier, as `az keyvault network-rule add` does."""
        acls = dict(stale if stale is not None else self.acls(vault_id))
        acls.setdefault("defaultAction", "Deny")
        acls["ipRules"] = [*acls.get("ipRules", []), {"value": rule}]
        self.emulator.write_as(vault_id, network_acls=acls)
        self.vaults[vault_id].foreign_nets.add(ip_network(rule))

    # ---- the invariants ----------------------------------------------------------------

    def acls(self, vault_id: str) -> dict:
        return self.emulator.vault(vault_id)["properties"].get("networkAcls") or {}

    def nets(self, vault_id: str) -> set[IPv4Network]:
        return {ip_network(r["value"]) for r in self.acls(vault_id).get("ipRules", [])}

    def subnets(self, vault_id: str) -> set[str]:
        return {subnet_key(r["id"]) for r in self.acls(vault_id).get("virtualNetworkRules", [])}

    def desired(self, settings: Settings | None = None):
        return desired_rules(settings or self.settings(), parse_service_tags(OCTOBER, source="t"))

    def converged(self) -> set[str]:
        """The managed vaults that hold every desired rule now."""
        desired = self.desired()
        return {
            vault_id
            for vault_id, seeded in self.vaults.items()
            if seeded.managed
            and set(desired.ip_rules) <= self.nets(vault_id)
            and set(desired.subnets) <= self.subnets(vault_id)
        }

    def check(
        self,
        *,
        store: StateStore | None = None,
        settings: Settings | None = None,
        unconverged: set[str] = frozenset(),
    ) -> int:
        """Assert every invariant (convergence except for `unconverged` vaults); return the
        number of foreign rules lost (always 0)."""
        settings = settings or self.settings()
        store = store or self.store()
        desired = self.desired(settings)
        lost = 0
        for vault_id, seeded in self.vaults.items():
            vault = self.emulator.vault(vault_id)
            nets, subnets = self.nets(vault_id), self.subnets(vault_id)
            missing = (seeded.foreign_nets - nets) | (seeded.foreign_subnets - subnets)
            lost += len(missing)
            assert not missing, f"{vault_id}: foreign rules lost: {missing}"
            action = str(self.acls(vault_id).get("defaultAction") or "Allow").lower()
            enabled = vault["properties"].get("publicNetworkAccess") != "Disabled"
            assert action == "deny" or seeded.open, f"{vault_id}: firewall opened"
            assert enabled <= (seeded.enabled or settings.enable_disabled_vaults), vault_id
            entry = store.read_entry(vault_id.lower())
            claimed = entry.ip_rules | entry.pending_ip_rules
            claimed_subnets = entry.subnets | entry.pending_subnets
            assert not (claimed & seeded.foreign_nets), f"{vault_id}: claims a foreign rule"
            assert not (claimed_subnets & seeded.foreign_subnets), vault_id
            ours = nets - seeded.foreign_nets
            assert ours <= claimed, f"{vault_id}: orphaned rules {ours - claimed}"
            # Never wider: every rule is someone's own or one kvfirewall is configured to add.
            assert ours <= set(desired.ip_rules), f"{vault_id}: {ours - set(desired.ip_rules)}"
            assert subnets - seeded.foreign_subnets <= set(desired.subnets), vault_id
            assert subnets - seeded.foreign_subnets <= claimed_subnets, vault_id
            if seeded.managed and enabled and vault_id not in unconverged:
                assert set(desired.ip_rules) <= nets, f"{vault_id}: not converged"
                assert set(desired.subnets) <= subnets, f"{vault_id}: not converged"
            if not seeded.managed:
                assert not ours and not entry, f"{vault_id}: out of scope, yet written"
        for request in self.emulator.requests:
            # (A process killed mid-send leaves a cut-off body behind, refused with a 400.)
            if request.method in ("PATCH", "PUT") and isinstance(request.body, dict):
                assert set(request.body) == {"properties"}, request.body
                properties = request.body["properties"]
                assert "accessPolicies" not in properties
                assert set(properties["networkAcls"]) == {
                    "defaultAction",
                    "bypass",
                    "ipRules",
                    "virtualNetworkRules",
                }
        return lost


@pytest.fixture
def estate(emulator, tmp_path) -> Estate:
    return Estate(emulator, tmp_path)


@pytest.fixture
def figures(emulator):
    """Counts one scenario: the faults the emulator served, the malformed inputs tried and
    the rules lost; added to the suite's totals when the test passes."""
    counts: Counter = Counter()
    yield counts
    counts["scenarios"] += 1
    counts["faults injected"] += emulator.faults_served
    _totals.update(counts)


BEGIN = "<!-- reliability figures: written by scripts/reliability-figures -->"
END = "<!-- end of reliability figures -->"
ROWS = {
    "scenarios": "scenarios run (each followed by the invariant check)",
    "faults injected": "faults injected (errors, resets, lost answers, stalls, 429s served)",
    "malformed inputs": "malformed or hostile inputs tried (events, bodies, settings, sources)",
    "rules lost": "foreign rules lost",
}


def render_figures(totals: Counter) -> str:
    rows = "".join(f"| {label} | {totals[key]} |\n" for key, label in ROWS.items())
    return f"{BEGIN}\n| figure | count |\n|---|---|\n{rows}{END}"


def pytest_sessionfinish(session, exitstatus) -> None:
    """With KVF_RELIABILITY_README, a passing run writes its figures into that file."""
    path = os.environ.get("KVF_RELIABILITY_README")
    if not path or exitstatus != 0 or not _totals["scenarios"]:
        return
    text = Path(path).read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    Path(path).write_text(text[:start] + render_figures(_totals) + text[end:])
