"""The documented interface matches the code: every setting is documented and sampled."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
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


def test_the_pure_core_imports_no_storage_or_azure_code():
    """The planner, the ranges and the status model decide from values alone: a test of them
    needs no storage and no Azure SDK (run in a fresh interpreter, where nothing is cached)."""
    import subprocess
    import sys

    code = (
        "import sys; import kvfirewall.plan, kvfirewall.ranges, kvfirewall.status; "
        "print(sorted(m for m in sys.modules if m.startswith(('azure', 'kvfirewall.ledger'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_readme_starts_azurite_as_the_tests_do():
    """Azurite refuses the storage SDKs' newer API versions unless told not to check them."""
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("npx azurite")]
    assert commands and all("--skipApiVersionCheck" in line for line in commands)
    assert "--skipApiVersionCheck" in (ROOT / "tests" / "conftest.py").read_text()


SUITE = ["tests/reliability"]


def reliability_suite():
    """tests/reliability/conftest.py, which counts the figures and writes them."""
    spec = importlib.util.spec_from_file_location(
        "reliability_figures", ROOT / "tests" / "reliability" / "conftest.py"
    )
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # for its dataclass
    spec.loader.exec_module(module)
    return module


def test_a_passing_reliability_run_rewrites_only_the_figures_block(tmp_path, monkeypatch):
    suite = reliability_suite()
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    monkeypatch.setenv("KVF_RELIABILITY_README", str(readme))
    suite._totals.update({"scenarios": 7, "faults injected": 5, "malformed inputs": 3})

    suite.pytest_sessionfinish(None, exitstatus=1)  # a failing run writes nothing
    assert readme.read_text() == (ROOT / "README.md").read_text()

    suite.pytest_sessionfinish(None, exitstatus=0)
    before, after = (ROOT / "README.md").read_text(), readme.read_text()
    block = suite.render_figures(suite._totals)
    assert "| scenarios run (each followed by the invariant check) | 7 |" in block
    assert "| foreign rules lost | 0 |" in block
    start = before.index(suite.BEGIN)
    assert after[:start] == before[:start] and after[start:].startswith(block)
    assert after[start + len(block) :] == before[before.index(suite.END) + len(suite.END) :]


def test_the_readme_figures_are_a_run_of_the_current_suite():
    """The block is as the script writes it, and counts as many scenarios as the suite has:
    a scenario added or removed without running ./scripts/reliability-figures fails here."""
    suite = reliability_suite()
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(suite.BEGIN) : readme.index(suite.END) + len(suite.END)]
    labels = {label: key for key, label in suite.ROWS.items()}
    counts = Counter(
        {labels[label]: int(n) for label, n in re.findall(r"^\| (.+?) \| (\d+) \|$", block, re.M)}
    )
    assert suite.render_figures(counts) == block, "run ./scripts/reliability-figures"
    assert counts["rules lost"] == 0
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", *SUITE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    scenarios = int(re.search(r"^(\d+) tests? collected", collected, re.M).group(1))
    assert counts["scenarios"] == scenarios, "run ./scripts/reliability-figures"
