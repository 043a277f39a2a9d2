"""What a pipeline author copies: the Azure Pipelines step template, the GitHub Actions
composite action and the README's examples, parsed and checked for the essentials."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.app_functions import FUNCTIONS

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "pipelines" / "kvfirewall-lease.yml"
ACTION = ROOT / ".github" / "actions" / "kvfirewall-lease" / "action.yml"


def routes() -> set[tuple[str, str]]:
    """(method, /api/route) of every HTTP function, as the host indexes them."""
    found = set()
    for function in FUNCTIONS.values():
        for raw in function.get_raw_bindings():
            binding = yaml.safe_load(raw)
            if binding.get("type") == "httpTrigger":
                for method in binding["methods"]:
                    found.add((method, "/api/" + binding["route"]))
    return found


def scripts(steps: list[dict], key: str) -> list[str]:
    return [
        step["inputs"]["inlineScript"] if key == "inlineScript" else step["run"] for step in steps
    ]


def called(script: str) -> set[tuple[str, str]]:
    """(method, route) of each curl call, `$VAR` path segments as `{id}`."""
    calls = set()
    for command in re.split(r"\n(?!\s)", script.replace("\\\n", " ")):
        if "curl " not in command:
            continue
        method = "DELETE" if "-X DELETE" in command else "POST" if "--data" in command else "GET"
        url = re.search(r'"\$KVF_URL(/[^"]*)"', command)
        assert url, command
        calls.add((method, re.sub(r"\$\w+", "{id}", url[1])))
    return calls


def token_safe(script: str) -> None:
    """The token goes to a header file, never to the log or a command line."""
    assert "set -x" not in script
    for line in script.splitlines():
        if "$token" in line and "get-access-token" not in line:
            assert re.search(r"printf .*\$token.* > \"\$\w+/kvf-auth\"", line), line
    assert "Bearer $token" not in script and "Bearer ${token}" not in script


def test_the_azure_pipelines_template():
    document = yaml.safe_load(TEMPLATE.read_text())
    [take] = document["steps"][0].values()
    [release] = document["steps"][1].values()
    take, release = take[0], release[0]
    for step in (take, release):
        assert step["task"] == "AzureCLI@2"
        assert "az account get-access-token --resource" in step["inputs"]["inlineScript"]
        token_safe(step["inputs"]["inlineScript"])
    assert release["condition"] == "always()"
    assert "condition" not in take
    assert called(take["inputs"]["inlineScript"]) == {("POST", "/api/leases")}
    assert called(release["inputs"]["inlineScript"]) == {("DELETE", "/api/leases/{id}")}
    assert called(take["inputs"]["inlineScript"]) | {("DELETE", "/api/leases/{id}")} <= routes()


def test_the_github_action():
    document = yaml.safe_load(ACTION.read_text())
    assert document["runs"]["using"] == "composite"
    take, release = document["runs"]["steps"]
    for step in (take, release):
        token_safe(step["run"])
        assert "az account get-access-token --resource" in step["run"]
    assert called(take["run"]) == {("POST", "/api/leases")}
    assert called(release["run"]) == {("DELETE", "/api/leases/{id}")}


def test_the_readme_examples_release_always_and_read_the_vault_in_between():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Access leases\n") :]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, flags=re.S)]
    pipeline = next(b for b in blocks if isinstance(b, dict) and "steps" in b and "jobs" not in b)
    steps = pipeline["steps"]
    kinds = [s.get("template") or s.get("task") for s in steps]
    assert kinds == [
        "pipelines/kvfirewall-lease.yml",
        "AzureKeyVault@2",
        "pipelines/kvfirewall-lease.yml",
    ]
    assert steps[0]["parameters"]["action"] == "take"
    assert steps[2]["parameters"]["action"] == "release"
    workflow = next(b for b in blocks if isinstance(b, dict) and "jobs" in b)
    [job] = workflow["jobs"].values()
    assert job["permissions"]["id-token"] == "write"  # OIDC
    uses = [s.get("uses", "") for s in job["steps"]]
    assert any(u.startswith("azure/login@") for u in uses)
    leases = [s for s in job["steps"] if s.get("uses") == "./.github/actions/kvfirewall-lease"]
    assert len(leases) == 2 and leases[-1]["if"] == "always()"
    assert leases[-1]["with"]["release"] == "true"
