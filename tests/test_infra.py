"""What gets deployed, checked offline: the published files, their requirements, and the ARM
templates in infra/ with the README's account of their permissions. Nothing here needs Azure, so
what is checked is what a template can get wrong before Resource Manager sees it."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pathspec
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kvfirewall.events import POOL_WRITE_OPERATIONS, VAULT_WRITE_OPERATION, WRITE_SUCCESS
from kvfirewall.settings import DEFAULT_ARM_ENDPOINT, DEFAULT_SCHEDULE, SETTINGS, Settings
from tests.armschema import parameters_errors, template_errors

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_CODE = [
    ROOT / "function_app.py",
    *ROOT.glob("functions/*.py"),
    *ROOT.glob("kvfirewall/*.py"),
]


# ---- requirements.txt: the remote build installs exactly these ------------------------------


def runtime_imports() -> set[str]:
    """Third-party modules the published code imports, at the top or inside functions."""
    local = {"kvfirewall", "functions", "__future__", *sys.stdlib_module_names}
    names = set()
    for path in RUNTIME_CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return {name for name in names if name.split(".")[0] not in local}


@functools.cache
def module_providers() -> dict[str, str]:
    """Module name -> installed distribution. By file, not by top-level name: `azure` is a
    namespace that dozens of distributions share."""
    providers = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or ():
            parts = file.with_suffix("").parts
            if file.suffix == ".py" and ".." not in parts:
                module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                providers[module] = canonicalize_name(dist.metadata["Name"])
    return providers


def provider(module: str) -> str:
    """The distribution of a module, or of its nearest package (`from azure.x import Name`)."""
    parts = module.split(".")
    while parts and ".".join(parts) not in module_providers():
        parts.pop()
    return module_providers()[".".join(parts)]


def with_dependencies(names: set[str]) -> set[str]:
    """The distributions and everything they install, extras left out."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            for spec in importlib.metadata.requires(name) or ():
                requirement = Requirement(spec)
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    todo.append(canonicalize_name(requirement.name))
    return found


def test_requirements_install_every_runtime_import_and_nothing_unused():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    declared = {
        canonicalize_name(Requirement(line).name) for line in lines if line and line[0] != "#"
    }
    needed = {provider(module) for module in runtime_imports()}
    assert needed <= with_dependencies(declared), "imported but never installed"
    assert declared <= needed, "installed but never imported"


# ---- .funcignore: what `func azure functionapp publish` uploads -------------------------------


def published(paths: list[str]) -> set[str]:
    """The paths that .funcignore (gitignore syntax) lets through."""
    spec = pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())
    return {path for path in paths if not spec.match_file(path)}


def test_funcignore_publishes_the_app_and_nothing_else():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    # Not tracked, but present on a developer's machine when they publish.
    local = [
        ".venv/bin/python",
        "node_modules/azurite/package.json",
        "local.settings.json",
        "kvfirewall/__pycache__/rules.cpython-311.pyc",
        ".azurite/__azurite_db_blob__.json",
        "bench/run.py",
        "docs/notes.md",
        "infra/azuredeploy.json",
        ".git/HEAD",
    ]
    kept = published(tracked + local)
    app = ("function_app.py", "host.json", "requirements.txt", "functions/", "kvfirewall/")
    assert kept == {path for path in tracked if path.startswith(app)}
    assert {
        "kvfirewall/data/ServiceTags_Public_20251028.AzureDevOps-and-AzureCloud-europe.json",
        "kvfirewall/settings.py",
        "functions/event_grid.py",
    } <= kept


# ---- infra/*.json: parsed and checked offline ------------------------------------------------

INFRA = ROOT / "infra"
DEPLOY, GROUP = "azuredeploy.json", "managementgroup.json"
# Each template and the scope it is deployed at (`az deployment sub create`, `... mg create`).
TEMPLATES = {DEPLOY: "subscription", GROUP: "managementGroup"}
SCHEMAS = {
    "managementGroup": "https://schema.management.azure.com/schemas/2019-08-01/managementGroupDeploymentTemplate.json#",
    "subscription": "https://schema.management.azure.com/schemas/2018-05-01/subscriptionDeploymentTemplate.json#",
    "resourceGroup": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
}
# The template functions this template may call (ARM's function reference): a typo is caught
# here, since neither `az bicep` nor arm-ttk runs offline.
ARM_FUNCTIONS = {
    "copyIndex", "createArray", "deployment", "empty", "environment", "extensionResourceId",
    "filter", "format", "guid", "if", "join", "lambda", "lambdaVariables", "length",
    "managementGroup", "map", "not",
    "parameters", "reference", "replace", "resourceGroup", "resourceId", "split", "subscription",
    "subscriptionResourceId", "toLower", "trim", "union", "uniqueString", "variables",
    "and", "concat", "equals", "startsWith",
}  # fmt: skip
BUILTIN_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}


@dataclass(frozen=True)
class Level:
    """One template, the root or a nested one, and the scope it is deployed at. Every nested
    template has inner scope, so each level's expressions see only its own declarations."""

    path: str
    scope: str  # "managementGroup" | "subscription" | "resourceGroup"
    template: dict
    parent: Level | None = None
    deployment: dict | None = None  # the parent's resource that deploys this template

    @property
    def resources(self) -> list[dict]:
        return self.template.get("resources", [])

    def resolve(self, expression: str) -> str:
        """An expression without its brackets, with this level's variables substituted."""
        variables = self.template.get("variables", {})
        inner = expression[1:-1] if expression.startswith("[") else repr(expression)
        return re.sub(r"variables\('(\w+)'\)", lambda m: self.resolve(variables[m[1]]), inner)

    def passed(self, name: str) -> str:
        """The value the parent passes to this nested template's parameter, resolved there."""
        assert self.parent and self.deployment, f"{self.path} is not nested"
        return self.parent.resolve(self.deployment["properties"]["parameters"][name]["value"])

    def trace(self, expression: str) -> str:
        """An expression resolved here, its parameters replaced by what the parents pass."""
        resolved = self.resolve(expression)
        if self.parent is None:
            return resolved
        passed = self.deployment["properties"]["parameters"]
        return re.sub(
            r"parameters\('(\w+)'\)", lambda m: self.parent.trace(passed[m[1]]["value"]), resolved
        )


def load(name: str = DEPLOY) -> dict:
    return json.loads((INFRA / name).read_text())


def levels(template: dict | None = None, name: str = DEPLOY) -> list[Level]:
    """The template and every template nested in it, depth first."""
    return below(Level(name, TEMPLATES[name], load(name) if template is None else template))


def every_level() -> list[Level]:
    """Every level of every template."""
    return [level for name in TEMPLATES for level in levels(name=name)]


def below(level: Level) -> list[Level]:
    """A level and the levels its deployments nest in it, depth first."""
    found = [level]
    for resource in level.resources:
        if resource["type"] == "Microsoft.Resources/deployments":
            inner = "resourceGroup" if "resourceGroup" in resource else level.scope
            nested = resource["properties"]["template"]
            path = f"{level.path}/{resource['name']}"
            found += below(Level(path, inner, nested, level, resource))
    return found


def resources(type_: str, name: str = DEPLOY) -> list[tuple[Level, dict]]:
    return [(lvl, r) for lvl in levels(name=name) for r in lvl.resources if r["type"] == type_]


def expressions(node):
    """Every `[expression]` in a template level: values and object keys, not those of nested
    templates (their own level), but those of the parameters passed to them."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "template" and isinstance(value, dict) and "resources" in value:
                continue
            yield from expressions(key)
            yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)
    elif isinstance(node, str) and node.startswith("[") and not node.startswith("[["):
        yield node


def arguments(expression: str, function: str) -> list[str]:
    """The top-level arguments of the first call of `function` in an expression."""
    start = re.search(rf"\b{function}\(", expression).end()
    args, depth, quoted, current = [], 0, False, ""
    for char in expression[start:]:
        quoted ^= char == "'"
        if not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            if depth == 0:
                return [*args, current.strip()]
            depth -= 1
        if not quoted and depth == 0 and char == ",":
            args, current = [*args, current.strip()], ""
        else:
            current += char
    raise AssertionError(f"unbalanced call of {function} in {expression}")


def granted(level: Level, assignment: dict) -> str:
    """The role a role assignment grants: a built-in one by name, a custom one by its id."""
    role = level.trace(assignment["properties"]["roleDefinitionId"])
    return next((name for guid, name in BUILTIN_ROLES.items() if guid in role), role)


def app_settings() -> dict[str, str]:
    [(_, site)] = resources("Microsoft.Web/sites")
    return {s["name"]: s["value"] for s in site["properties"]["siteConfig"]["appSettings"]}


def test_templates_follow_microsofts_published_schemas_strictly():
    """Types, enums, required and known property names of every template, nested ones
    included, and of the example parameters (tests/armschema.py)."""
    for name in TEMPLATES:
        assert template_errors(load(name)) == [], name
    assert parameters_errors(load("azuredeploy.parameters.json")) == []
    for level in every_level():  # what a schema cannot see: the scope each one is deployed at
        assert level.template["$schema"] == SCHEMAS[level.scope], level.path


def test_the_schema_check_names_a_misspelt_property_at_any_depth():
    template = load()
    [site] = [
        r for lvl in levels(template) for r in lvl.resources if r["type"] == "Microsoft.Web/sites"
    ]
    scale = site["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    scale["maximumInstanceCont"] = scale.pop("maximumInstanceCount")
    [loop] = [r for r in template["resources"] if "copy" in r]
    loop["copy"]["cont"] = loop["copy"].pop("count")
    deepest = next(lvl for lvl in reversed(levels(template)) if lvl.path.count("/") > 1)
    deepest.resources[0]["dependOn"] = []
    errors = template_errors(template)
    assert len(errors) == 3, errors
    for typo in ("maximumInstanceCont", "cont", "dependOn"):
        assert any(f"unknown property '{typo}'" in error for error in errors), typo
    parameters = load("azuredeploy.parameters.json")
    parameters["parameters"]["KVF_MODE"] = {"valeu": "audit"}
    assert "'valeu'" in " ".join(parameters_errors(parameters))


def test_expressions_call_known_functions_with_balanced_quotes_and_parentheses():
    for level in every_level():
        for expression in expressions(level.template):
            assert expression.endswith("]"), expression
            bare = re.sub(r"'(?:[^']|'')*'", "''", expression[1:-1])
            assert "'" not in bare.replace("''", ""), expression
            depth = 0
            for char in bare:
                depth += {"(": 1, ")": -1}.get(char, 0)
                assert depth >= 0, expression
            assert depth == 0, expression
            assert set(re.findall(r"(\w+)\(", bare)) <= ARM_FUNCTIONS, expression
            assert "utcNow" not in expression and "newGuid" not in expression


def test_every_parameter_and_variable_is_declared_and_used():
    for level in every_level():
        used = " ".join(expressions(level.template))
        for kind in ("parameters", "variables"):
            declared = set(level.template.get(kind, {}))
            assert set(re.findall(rf"{kind}\('(\w+)'\)", used)) == declared, (level.path, kind)
        if level.deployment is None:
            continue
        properties = level.deployment["properties"]
        assert properties["expressionEvaluationOptions"] == {"scope": "inner"}
        assert set(properties["parameters"]) == set(properties["template"]["parameters"])


def test_references_name_resource_types_the_template_defines():
    """resourceId()s and dependsOn name resources of this deployment, not typos: dependsOn a
    resource of the same level, resourceId()s anything the deployment creates."""
    for name in TEMPLATES:
        every_type = {r["type"] for level in levels(name=name) for r in level.resources}
        for level in levels(name=name):
            here = {r["type"] for r in level.resources}
            for expression in expressions(level.template):
                for match in re.finditer(r"(?:resourceId|ResourceId)\(", expression):
                    rest = expression[match.start() :]
                    referenced = re.findall(r"'(Microsoft\.\w+/[\w/]+)'", rest)
                    assert referenced and referenced[0] in every_type, expression
            for resource in level.resources:
                for dependency in resource.get("dependsOn", []):
                    referenced = re.findall(r"'(Microsoft\.\w+/[\w/]+)'", level.resolve(dependency))
                    assert referenced and referenced[0] in here, (level.path, dependency)


def test_resources_depend_on_the_resources_they_reference():
    """reference() by resource id adds no implicit dependency: without dependsOn, ARM may read
    a resource of the same deployment before it exists."""
    for level in every_level():
        here = {r["type"] for r in level.resources}
        for resource in level.resources:
            after = {level.resolve(dependency) for dependency in resource.get("dependsOn", [])}
            for expression in expressions(resource):
                rest = level.resolve(expression)
                while "reference(" in rest:
                    target = arguments(rest, "reference")[0]
                    referenced = re.findall(r"'(Microsoft\.\w+/[\w/]+)'", target)
                    if referenced and referenced[0] in here:
                        assert target in after, (resource["type"], target)
                    rest = rest[rest.index("reference(") + len("reference(") :]


def test_every_kvf_setting_is_an_app_setting_with_the_code_default():
    root = load()["parameters"]
    settings = app_settings()
    deployments = resources("Microsoft.Resources/deployments")
    passed = next(d for _, d in deployments if d["name"] == "kvfirewall-app")["properties"][
        "parameters"
    ]
    assert {name for name in settings if name.startswith("KVF_")} == set(SETTINGS)
    for name, (_, default) in SETTINGS.items():
        assert settings[name] == f"[parameters('{name}')]"
        assert root[name]["type"] in ("string", "securestring")
        cloud = name == "KVF_ARM_ENDPOINT" and default == DEFAULT_ARM_ENDPOINT
        assert root[name]["defaultValue"] in (
            [default, "[environment().resourceManager]"] if cloud else [default]
        ), name
        if name != "KVF_SUBSCRIPTIONS":  # the list the roles and topics are made for
            assert passed[name]["value"] == f"[parameters('{name}')]"
    assert root["KVF_SCHEDULE"]["defaultValue"] == DEFAULT_SCHEDULE
    # The named subscriptions (or the deployment's), then the management groups as given.
    assert passed["KVF_SUBSCRIPTIONS"]["value"] == (
        "[join(concat(variables('managedSubscriptions'), variables('managementGroupEntries')), ',')]"
    )


def test_the_example_parameters_are_declared_and_valid_settings():
    declared = load()["parameters"]
    example = {k: v["value"] for k, v in load("azuredeploy.parameters.json")["parameters"].items()}
    assert set(example) <= set(declared)
    env = {k: v for k, v in example.items() if k.startswith("KVF_")}
    env["KVF_SUBSCRIPTIONS"] = env["KVF_SUBSCRIPTIONS"] or "6f1c2a8e-4b7d-4c1e-9a53-2d8e0f4b7a10"
    Settings.from_env(env)


def test_flex_consumption_python_311_on_linux():
    [(_, plan)] = resources("Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["kind"] == "functionapp" and plan["properties"]["reserved"] is True
    [(_, site)] = resources("Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux" and site["name"] == "[parameters('appName')]"
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert {"maximumInstanceCount", "instanceMemoryMB"} <= set(config["scaleAndConcurrency"])
    # The plan allows 1 to 1,000 instances; a small cap keeps a burst of vault events from
    # spreading over many instances that share one identity's Resource Manager quota.
    count = load()["parameters"]["maximumInstanceCount"]
    assert (count["minValue"], count["defaultValue"], count["maxValue"]) == (1, 10, 1000)
    # Flex Consumption takes the runtime from functionAppConfig and refuses these settings.
    assert not {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION"} & set(app_settings())


def test_storage_and_telemetry_by_managed_identity_and_never_by_key():
    text = (INFRA / "azuredeploy.json").read_text().lower()
    assert not {"listkeys", "listaccountsas", "listservicesas", "accountkey"} & set(
        re.findall(r"[a-z]+", text)
    )
    for _, account in resources("Microsoft.Storage/storageAccounts"):
        assert account["properties"]["allowSharedKeyAccess"] is False
    [(_, insights)] = resources("Microsoft.Insights/components")
    assert insights["properties"]["DisableLocalAuth"] is True
    assert insights["properties"]["WorkspaceResourceId"]
    [(_, identity)] = resources("Microsoft.ManagedIdentity/userAssignedIdentities")
    [(level, site)] = resources("Microsoft.Web/sites")
    identity_id = (
        f"resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', {identity['name'][1:-1]})"
    )
    client_id = f"reference({identity_id}, '2023-01-31').clientId"
    settings = app_settings()
    assert "AzureWebJobsStorage" not in settings  # a connection string would carry a key
    assert settings["AzureWebJobsStorage__accountName"] == "[parameters('storageAccountName')]"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    for name in ("AzureWebJobsStorage__clientId", "AZURE_CLIENT_ID"):
        assert level.resolve(settings[name]) == client_id, name
    assert client_id in level.resolve(settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"])
    assert "ConnectionString" in settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]
    assert [level.resolve(k) for k in site["identity"]["userAssignedIdentities"]] == [identity_id]
    package = site["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"]
    assert package["type"] == "UserAssignedIdentity"
    assert level.resolve(package["userAssignedIdentityResourceId"]) == identity_id
    # The data roles the Functions host and the ledger need, on the app's storage and telemetry.
    principal = f"reference({identity_id}, '2023-01-31').principalId"
    roles = {
        granted(lvl, r)
        for lvl, r in resources("Microsoft.Authorization/roleAssignments")
        if lvl.parent.path == level.path and lvl.passed("principalId") == principal
    }
    assert roles == {
        "Storage Blob Data Owner",
        "Storage Table Data Contributor",
        "Storage Queue Data Contributor",
        "Monitoring Metrics Publisher",
    }


def test_role_assignment_names_derive_from_scope_role_and_principal_id():
    """Azure refuses to point an assignment at another principal (RoleAssignmentUpdateNotPermitted),
    so a re-created identity or topic, with a new principal id, needs a new name: the name hashes
    the principal id. A name cannot call reference(), so each assignment sits in a nested
    deployment that receives the principal id as its parameter."""
    default_scope = {
        "managementGroup": "managementGroup().id",
        "subscription": "subscription().id",
        "resourceGroup": "resourceGroup().id",
    }
    for template, count in {DEPLOY: 6, GROUP: 2}.items():
        assignments = resources("Microsoft.Authorization/roleAssignments", template)
        assert len(assignments) == count, template
        for level, assignment in assignments:
            name, properties = assignment["name"], assignment["properties"]
            assert re.fullmatch(r"\[guid\(.*\)\]", name) and not re.search("utcNow|newGuid", name)
            parts = arguments(level.resolve(name), "guid")
            scope = assignment.get("scope", f"[{default_scope[level.scope]}]")
            assert level.resolve(scope) in parts, name
            assert level.resolve(properties["roleDefinitionId"]) in parts, name
            assert properties["principalId"] == "[parameters('principalId')]", name
            assert "parameters('principalId')" in parts, name
            # ...which the parent reads from the identity once it exists; the management group
            # template is given it (the app deployment's principalId output, see README).
            source = level.trace(properties["principalId"])
            if template == DEPLOY:
                assert "reference(" in source, level.path
            else:
                assert source == "parameters('principalId')", level.path
            assert properties["principalType"] == "ServicePrincipal"


def depends_on(level: Level, target: Level | dict) -> bool:
    """Whether the deployment of a nested level lists `target` (a resource of its parent, or
    another nested level's deployment) in its dependsOn."""
    resource = target.deployment if isinstance(target, Level) else target
    after = [level.parent.resolve(d) for d in level.deployment.get("dependsOn", [])]
    name = level.parent.resolve(resource["name"])
    return any(resource["type"] in d and name in d for d in after)


def test_custom_roles_are_assigned_in_a_nested_deployment_after_their_definition():
    """A new role definition propagates eventually: assigned by the deployment that creates it,
    Azure may not find it yet (RoleDefinitionDoesNotExist). A nested deployment that depends
    on the definition starts once its creation has finished."""
    assigned = {
        DEPLOY: ["[format('kvfirewall operator ({0})', subscription().subscriptionId)]"],
        GROUP: [
            "[format('kvfirewall operator (management group {0})', managementGroup().name)]",
            "[format('kvfirewall group reader (management group {0})', managementGroup().name)]",
        ],
    }
    for template, roles in assigned.items():
        definitions = resources("Microsoft.Authorization/roleDefinitions", template)
        custom = [
            (level, assignment, definition_level, definition)
            for level, assignment in resources("Microsoft.Authorization/roleAssignments", template)
            for definition_level, definition in definitions
            if definition_level.resolve(definition["name"]) in granted(level, assignment)
        ]
        assert [d["properties"]["roleName"] for *_, d in custom] == roles
        for level, _, definition_level, definition in custom:
            assert level.parent.path == definition_level.path
            assert depends_on(level, definition)


def indexed_functions() -> dict[str, list[dict]]:
    """The app's functions and their bindings as the host indexes them. In a fresh interpreter:
    azure-functions refuses to index one app twice in a process, and test_functions does."""
    code = (
        "import json, function_app; print(json.dumps({f.get_function_name(): "
        "[json.loads(b) for b in f.get_raw_bindings()] for f in function_app.app.get_functions()}))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_vault_writes_reach_the_event_grid_function_with_retries_and_dead_letters():
    [(_, topic)] = resources("Microsoft.EventGrid/systemTopics")
    assert topic["location"] == "global" and topic["identity"] == {"type": "SystemAssigned"}
    assert topic["properties"] == {
        "source": "[subscription().id]",
        "topicType": "Microsoft.Resources.Subscriptions",
    }
    [(level, subscription)] = resources("Microsoft.EventGrid/systemTopics/eventSubscriptions")
    # Created only once the function exists: Event Grid refuses a missing one.
    assert level.deployment["condition"] == "[parameters('deployEventSubscription')]"
    assert load()["parameters"]["deployEventSubscription"]["defaultValue"] is False
    properties = subscription["properties"]
    assert properties["filter"] == {
        "includedEventTypes": [WRITE_SUCCESS],
        "advancedFilters": [
            {
                "operatorType": "StringIn",
                "key": "data.operationName",
                "values": [VAULT_WRITE_OPERATION, *POOL_WRITE_OPERATIONS],
            }
        ],
    }
    destination = properties["destination"]
    assert destination["endpointType"] == "AzureFunction"
    assert destination["properties"]["maxEventsPerBatch"] == 1
    [function] = re.findall(r"/functions/(\w+)'", destination["properties"]["resourceId"])
    assert [b["type"] for b in indexed_functions()[function]] == ["eventGridTrigger"]
    assert {"maxDeliveryAttempts", "eventTimeToLiveInMinutes"} <= set(properties["retryPolicy"])
    dead_letter = properties["deadLetterWithResourceIdentity"]
    assert dead_letter["identity"] == {"type": "SystemAssigned"}  # the topic's identity
    assert dead_letter["deadLetterDestination"]["endpointType"] == "StorageBlob"
    container = dead_letter["deadLetterDestination"]["properties"]["blobContainerName"]
    assert container == "[parameters('deadLetterContainerName')]"
    # The topic's identity may write to the dead-letter container, and only there, before the
    # event subscription exists: Event Grid would otherwise dead-letter into a refusing container.
    [(grant_level, grant)] = dead_letter_grants()
    scope = grant_level.resolve(grant["scope"])
    assert "/containers/{1}" in scope and "parameters('deadLetterContainerName')" in scope
    [topic_level] = [lvl for lvl, _ in resources("Microsoft.EventGrid/systemTopics")]
    output = topic_level.template["outputs"]["principalId"]["value"]
    assert output.endswith("'Full').identity.principalId]")
    assert "outputs.principalId.value" in grant_level.passed("principalId")
    assert depends_on(grant_level, topic_level)
    assert grant_level.parent.path == level.parent.path and depends_on(level, grant_level)
    # The function is this deployment's app.
    app, loop = (d["properties"]["parameters"] for d in load()["resources"][1:])
    assert app["appName"]["value"] == "[variables('appName')]"
    assert "'Microsoft.Web/sites', variables('appName')" in loop["functionAppId"]["value"]


def dead_letter_grants() -> list[tuple[Level, dict]]:
    return [
        (lvl, r)
        for lvl, r in resources("Microsoft.Authorization/roleAssignments")
        if granted(lvl, r) == "Storage Blob Data Contributor"
    ]


def readme_actions(marker: str) -> list[str]:
    """The actions README.md lists, in a table or a bullet list, after the text `marker`."""
    readme = (ROOT / "README.md").read_text()
    after = readme[readme.index(marker) :].split("\n\n")[1:]
    block = next(part for part in after if part.startswith(("|", "- ")))
    return re.findall(r"^(?:\| |- )`((?:Microsoft|GitHub)\.[\w./]+)`", block, flags=re.M)


def test_custom_roles_allow_exactly_the_documented_actions():
    definitions = resources("Microsoft.Authorization/roleDefinitions")
    assigned = " ".join(
        granted(level, r) for level, r in resources("Microsoft.Authorization/roleAssignments")
    )
    documented = {
        "kvfirewall operator": "**Least privilege.**",
        "kvfirewall subnet joiner": "`kvfirewall subnet joiner (<subscription id>)` allows exactly:",
        "kvfirewall subnet endpoint writer": (
            "`kvfirewall subnet endpoint writer (<subscription id>)` allows exactly:"
        ),
    }
    for role, marker in documented.items():
        [definition] = [r for _, r in definitions if f"'{role} (" in r["properties"]["roleName"]]
        properties = definition["properties"]
        [permissions] = properties["permissions"]
        assert sorted(permissions["actions"]) == sorted(readme_actions(marker)), role
        assert not (permissions["notActions"] or permissions["dataActions"])
        assert properties["assignableScopes"] == ["[subscription().id]"]
        # The operator role is assigned to the app; the subnet role is for people to assign.
        assert (definition["name"][1:-1] in assigned) == (role == "kvfirewall operator"), role
    # Least privilege: growing this list is a security decision, not a documentation change.
    assert set(readme_actions(documented["kvfirewall operator"])) == {
        "Microsoft.KeyVault/vaults/read",
        "Microsoft.KeyVault/vaults/write",
        "Microsoft.KeyVault/locations/deletedVaults/read",
        "Microsoft.Network/locations/serviceTags/read",
        # Access leases: who may read a vault's secrets (Resource Manager resolves groups).
        "Microsoft.Authorization/roleAssignments/read",
        "Microsoft.Authorization/roleDefinitions/read",
        "Microsoft.DevOpsInfrastructure/pools/read",
        "Microsoft.Compute/virtualMachineScaleSets/read",
        "GitHub.Network/networkSettings/read",
        "Microsoft.Network/virtualNetworks/subnets/read",
    }
    # Rewriting subnets is opt-in: its role exists only when the deployment asks for it.
    [(_, writer)] = [
        (lvl, r)
        for lvl, r in definitions
        if "subnet endpoint writer" in r["properties"]["roleName"]
    ]
    assert writer["condition"] == "[parameters('createServiceEndpointRole')]"
    assert load()["parameters"]["createServiceEndpointRole"]["defaultValue"] is False


def readme_section(heading: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n{heading}\n")
    return readme[start : readme.index("\n#", start + len(heading) + 2)]


# What the `{0}` of a role name stands for: a subscription id, or a management group id (the
# ids settings.py accepts).
ROLE_NAME_IDS = {DEPLOY: "[0-9a-f-]+", GROUP: r"[\w().-]+"}


def role_name_formats(template: str) -> list[str]:
    """The `format()` strings a template names its roles with, `{0}` for the scope's id."""
    return [
        arguments(definition["properties"]["roleName"], "format")[0].strip("'")
        for _, definition in resources("Microsoft.Authorization/roleDefinitions", template)
    ]


def role_name_patterns(template: str) -> list[str]:
    """The role names a template gives, for any id of its scope, as regular expressions."""
    return [
        re.escape(written).replace(r"\{0\}", ROLE_NAME_IDS[template])
        for written in role_name_formats(template)
    ]


def test_no_role_the_readme_creates_by_hand_has_a_name_the_template_gives():
    """Role names are unique in a tenant: a role created by hand under a name a template
    uses in a subscription or at a management group would stop that deployment, once it is
    managed (RoleDefinitionWithSameNameExists)."""
    subscription = "6f1c2a8e-4b7d-4c1e-9a53-2d8e0f4b7a10"
    readme = (ROOT / "README.md").read_text()
    by_hand = re.findall(r'\\?"Name\\?": \\?"([^"\\]+)', readme)
    # The operator role (Security) and the subnet joiner (Permissions).
    assert len(by_hand) == 2
    template_names = [pattern for template in TEMPLATES for pattern in role_name_patterns(template)]
    for written in by_hand:
        name = written.replace("$SUB", subscription).replace("<subscription-id>", subscription)
        assert not any(re.fullmatch(pattern, name) for pattern in template_names), name


def test_a_groups_roles_never_take_the_name_or_id_of_a_subscriptions():
    """Role names and role definition ids are unique in a tenant. The tenant root group's id is
    the tenant id, a GUID like a subscription id: a group's roles still differ from every
    subscription's, by name (the words around the id) and by id (the guid() of the scope's
    whole resource id, which starts /providers/Microsoft.Management/ or /subscriptions/)."""
    root_group = "3b9d1c0e-7f4a-4e2b-8c61-5a0f9d2e4b17"
    for template, other in ((GROUP, DEPLOY), (DEPLOY, GROUP)):
        for written in role_name_formats(template):
            name = written.replace("{0}", root_group)
            assert not any(re.fullmatch(p, name) for p in role_name_patterns(other)), name
    scope = {DEPLOY: "subscription().id", GROUP: "managementGroup().id"}
    for template in TEMPLATES:
        names = [
            level.resolve(definition["name"])
            for level, definition in resources("Microsoft.Authorization/roleDefinitions", template)
        ]
        assert len(set(names)) == len(names), template
        for name in names:
            assert arguments(name, "guid")[0] == scope[template], name


def test_a_group_gets_the_operator_role_and_a_descendants_reader_assignable_only_there():
    """The group's operator role holds exactly the permissions of each subscription's, compared
    here so that the two lists cannot drift apart. The only other thing a group entry needs is
    the read of its descendants (ManagementGroups_GetDescendants), which the built-in
    Management Group Reader does not list."""
    [subscription_operator] = [
        definition
        for _, definition in resources("Microsoft.Authorization/roleDefinitions")
        if "'kvfirewall operator (" in definition["properties"]["roleName"]
    ]
    group = {
        arguments(d["properties"]["roleName"], "format")[0].strip("'"): d
        for _, d in resources("Microsoft.Authorization/roleDefinitions", GROUP)
    }
    assert set(group) == {
        "kvfirewall operator (management group {0})",
        "kvfirewall group reader (management group {0})",
    }
    operator = group["kvfirewall operator (management group {0})"]["properties"]
    assert operator["permissions"] == subscription_operator["properties"]["permissions"]
    reader = group["kvfirewall group reader (management group {0})"]["properties"]
    [permissions] = reader["permissions"]
    marker = "`kvfirewall group reader (management group <id>)` allows exactly:"
    assert sorted(permissions["actions"]) == sorted(readme_actions(marker))
    # Least privilege: growing this list is a security decision, not a documentation change.
    assert permissions["actions"] == ["Microsoft.Management/managementGroups/descendants/read"]
    for role in (operator, reader):
        [grant] = role["permissions"]
        # A role with data actions cannot be assigned at a management group.
        assert not (grant["notActions"] or grant["dataActions"] or grant["notDataActions"])
        assert role["assignableScopes"] == ["[managementGroup().id]"]
        assert "managementGroup().name" in role["roleName"]
    assert not any("condition" in d for d in group.values())


def test_the_readme_deploys_the_group_template_at_the_group_for_the_apps_identity():
    section = readme_section("### Scope by management group").replace("\\\n", " ")
    commands = dict(re.findall(r"^(\w+)=\$\((.*?)\)$", section, re.M))
    [deploy] = re.findall(r"^az deployment mg create .*$", section, re.M)
    assert "--template-file infra/managementgroup.json" in deploy
    assert '--management-group-id "$MG"' in deploy and "--location " in deploy
    passed = dict(re.findall(r'(\w+)="\$(\w+)"', deploy.split("--parameters", 1)[1]))
    assert set(passed) == set(load(GROUP)["parameters"])
    source = commands[passed["principalId"]]
    assert "az deployment sub show --name kvfirewall" in source
    assert "outputs.principalId.value" in source
    assert "principalId" in load()["outputs"]


def test_uninstall_removes_the_role_assignments_of_every_principal_the_templates_grant():
    """The identity's, in the subscriptions and at the groups, and each topic's: an assignment
    outlives its principal as "Unknown"."""
    uninstall = readme_section("### Uninstall")
    commands = dict(re.findall(r"^\s*(\w+)=\$\((.*?)\)$", uninstall.replace("\\\n", " "), re.M))
    deleted = re.findall(
        r'az role assignment list [^|]*--assignee "\$(\w+)"[^|]*\|\s*xargs -r az role assignment delete',
        uninstall.replace("\\\n", " "),
    )
    sources = {commands[variable] for variable in deleted}
    assert any("outputs.principalId.value" in source for source in sources)  # the identity
    [topic] = [source for source in sources if "system-topic show" in source]
    assert "--query identity.principalId" in topic
    [(topic_level, _)] = resources("Microsoft.EventGrid/systemTopics")
    topic_name = topic_level.trace("[parameters('topicName')]")[1:-1]
    assert f"--name {topic_name} " in topic
    [(grant_level, _)] = dead_letter_grants()
    container = grant_level.trace("[parameters('deadLetterContainerName')]")[1:-1]
    assert f"/containers/{container}" in uninstall and '--scope "$CONTAINER"' in uninstall
    # At each management group: the identity's assignments there, then the group's roles.
    assert "GROUP=/providers/Microsoft.Management/managementGroups/$MG\n" in uninstall
    at_group = re.findall(
        r'az role assignment list --assignee "\$(\w+)" --scope "\$GROUP"[^|]*\|'
        r"\s*xargs -r az role assignment delete",
        uninstall.replace("\\\n", " "),
    )
    assert at_group == ["PRINCIPAL"]
    for written in role_name_formats(GROUP):
        delete = f'az role definition delete --name "{written.replace("{0}", "$MG")}"'
        assert f'{delete} --scope "$GROUP"' in uninstall
        assert uninstall.index('--scope "$GROUP" --query') < uninstall.index(delete)


def test_the_lease_expiry_timer_is_disabled_while_leases_are_off():
    """A timer every minute that has nothing to do would still start an instance every
    minute on Flex Consumption: the host's own switch keeps it off with KVF_LEASES=off."""
    from tests.app_functions import FUNCTIONS

    assert "expire_leases" in FUNCTIONS
    assert app_settings()["AzureWebJobs.expire_leases.Disabled"] == (
        "[if(equals(toLower(parameters('KVF_LEASES')), 'off'), 'true', 'false')]"
    )
    assert load()["parameters"]["KVF_LEASES"]["defaultValue"] == "off"
