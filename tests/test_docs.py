"""The documented interface matches the code: every setting is documented and sampled."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kvfirewall.settings import SETTINGS

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(KVF_[A-Z_]+)` \|", readme, flags=re.MULTILINE))
    assert documented == set(SETTINGS)


def test_every_setting_is_in_the_local_settings_sample():
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert {k for k in sample if k.startswith("KVF_")} == set(SETTINGS)
    assert sample["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"


def test_the_engine_never_imports_azure_functions():
    for path in (ROOT / "kvfirewall").rglob("*.py"):
        imports = re.findall(r"^\s*(?:import|from)\s+azure\.functions\b", path.read_text(), re.M)
        assert not imports, path


def test_the_readme_starts_azurite_as_the_tests_do():
    """Azurite refuses the storage SDKs' newer API versions unless told not to check them."""
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("npx azurite")]
    assert commands and all("--skipApiVersionCheck" in line for line in commands)
    assert "--skipApiVersionCheck" in (ROOT / "tests" / "conftest.py").read_text()


def test_the_readme_carries_the_reliability_figures_of_a_passing_run():
    """Written by scripts/reliability-figures, never by hand: the block it rewrites is there,
    complete, and reports no rule lost."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- reliability figures: written by scripts/reliability-figures -->\n(.*?)"
        r"<!-- end of reliability figures -->",
        readme,
        flags=re.S,
    )
    assert block, "run ./scripts/reliability-figures"
    figures = dict(re.findall(r"^\| ([a-z][^|]+?) \| (\d+) \|$", block.group(1), flags=re.M))
    assert len(figures) == 4 and figures["foreign rules lost"] == "0"
    assert int(figures["scenarios run (each followed by the invariant check)"]) > 0
