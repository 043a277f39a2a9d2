"""Microsoft's published ARM template schemas (tests/fixtures/armschemas), offline and strict.

The published schemas check types, enums and required properties but accept any property name
they do not define, so a typo such as `maximumInstanceCont` passes them and Resource Manager
ignores it silently. Here every object whose schema lists `properties` is closed: a name it
does not list is an error. Resources are checked one by one against the definition of their
type and apiVersion (the skeletons dispatch through a catalogue of every provider, which is not
copied), and nested deployments' templates against the skeleton their `$schema` names.

Where the schemas and Resource Manager disagree, the difference is allowed narrowly, each
with the reason next to it."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from jsonschema import Draft4Validator, ValidationError, validators
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "armschemas"
BASE = "https://schema.management.azure.com/schemas/"
EXPRESSION = f"{BASE}common/definitions.json#/definitions/expression"
SUBSCRIPTION_SKELETON = f"{BASE}2018-05-01/subscriptionDeploymentTemplate.json"
MANAGEMENT_GROUP_SKELETON = f"{BASE}2019-08-01/managementGroupDeploymentTemplate.json"
RESOURCE_GROUP_SKELETON = f"{BASE}2019-04-01/deploymentTemplate.json"
# Where each skeleton finds the resources it accepts: the sections of a provider's file.
SECTIONS = {
    SUBSCRIPTION_SKELETON: ("subscription_resourceDefinitions", "unknown_resourceDefinitions"),
    MANAGEMENT_GROUP_SKELETON: (
        "managementGroup_resourceDefinitions",
        "unknown_resourceDefinitions",
    ),
    RESOURCE_GROUP_SKELETON: ("resourceDefinitions", "unknown_resourceDefinitions"),
}
# Resource Manager's own keys for a nested deployment's target (docs: "Deploy to multiple
# scopes"); the schemas leave them out of every resource definition.
DEPLOYMENT_TARGET = {"subscriptionId": {"type": "string"}, "resourceGroup": {"type": "string"}}


def is_expression(value: object) -> bool:
    """A whole-value template expression: evaluated by Resource Manager, not a literal."""
    return isinstance(value, str) and re.fullmatch(r"\[([^\[].*)?\]", value, re.S) is not None


@cache
def documents() -> dict[str, dict]:
    """Every schema file by the URL it is published at, with the known differences applied."""
    docs = {
        BASE + path.relative_to(FIXTURES).as_posix(): json.loads(path.read_text())
        for path in FIXTURES.rglob("*.json")
    }
    resources = docs[f"{BASE}2022-09-01/Microsoft.Resources.json"]
    # The schema writes `Inner`/`Outer`; Microsoft's docs and examples write `inner`/`outer`,
    # and Resource Manager accepts both.
    scope = resources["definitions"]["ExpressionEvaluationOptions"]["properties"]["scope"]
    scope["oneOf"][0]["enum"] += ["inner", "outer"]
    # A resource group needs no `properties` (its only one, managedBy, is optional).
    group = resources["subscription_resourceDefinitions"]["resourceGroups"]
    group["required"].remove("properties")
    for doc in docs.values():
        _share_union_properties(doc)
    return docs


def _variants(schema: dict) -> list[dict]:
    """The branches of a discriminated union that list their own properties."""
    return [branch for branch in schema.get("oneOf", []) if "properties" in branch]


def _share_union_properties(node: object) -> None:
    """A discriminated union (an Event Grid destination, an advanced filter) lists the
    properties all variants share beside its `oneOf`, and each variant's own in its branch:
    give every branch the shared ones too, so that each branch, closed, is complete."""
    if isinstance(node, dict):
        for branch in _variants(node):
            branch["properties"] = {**node.get("properties", {}), **branch["properties"]}
        for value in node.values():
            _share_union_properties(value)
    elif isinstance(node, list):
        for item in node:
            _share_union_properties(item)


@cache
def registry() -> Registry:
    """The schema files, registered where their `$ref`s look for them: nothing is fetched."""
    return Registry().with_resources(
        (url, Resource.from_contents(doc, default_specification=DRAFT4))
        for url, doc in documents().items()
    )


def _closed_properties(validator, properties, instance, schema) -> Iterator[ValidationError]:
    """`properties`, plus: a name the schema does not list is an error, unless the schema says
    what other names may carry (`additionalProperties` or `patternProperties`)."""
    yield from Draft4Validator.VALIDATORS["properties"](validator, properties, instance, schema)
    if not validator.is_type(instance, "object"):
        return
    if "additionalProperties" in schema or "patternProperties" in schema or _variants(schema):
        return  # open by the schema's word, or closed by the branch of the union that holds
    for name in sorted(set(instance) - set(properties)):
        yield ValidationError(f"unknown property {name!r} (allowed: {', '.join(properties)})")


def _one_of(validator, one_of, instance, schema) -> Iterator[ValidationError]:
    """`oneOf`, except that an expression may also match a branch for the literal it stands
    for (e.g. a `type: string` one): Resource Manager evaluates it, and then one branch holds."""
    if is_expression(instance) and {"$ref": EXPRESSION} in one_of:
        return
    yield from Draft4Validator.VALIDATORS["oneOf"](validator, one_of, instance, schema)


def _max_length(validator, limit, instance, schema) -> Iterator[ValidationError]:
    """A length limit applies to a value, not to the text of the expression computing it
    (a child resource's name, `account/default/container`, is longer as a `format()`)."""
    if not is_expression(instance):
        yield from Draft4Validator.VALIDATORS["maxLength"](validator, limit, instance, schema)


StrictValidator = validators.extend(
    Draft4Validator,
    {
        "properties": _closed_properties,
        "oneOf": _one_of,
        "maxLength": _max_length,
    },
)


def _absolute(node: object, base: str) -> object:
    """A copy of a schema fragment whose local `$ref`s name their file, so fragments of
    several files can be combined into one schema."""
    if isinstance(node, dict):
        return {
            key: base + value if key == "$ref" and value.startswith("#") else _absolute(value, base)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_absolute(item, base) for item in node]
    return node


@cache
def definition(skeleton: str, type_: str, api_version: str) -> tuple[str, dict]:
    """The published definition of a resource type at an apiVersion, and its file's URL."""
    provider = type_.split("/")[0]
    for url, doc in documents().items():
        if not url.startswith(f"{BASE}{api_version}/{provider}."):
            continue
        for section in SECTIONS[skeleton]:
            for candidate in doc.get(section, {}).values():
                props = candidate["properties"]
                if props["type"].get("enum") == [type_] and api_version in props["apiVersion"].get(
                    "enum", []
                ):
                    return url, candidate
    raise LookupError(f"no published schema for {type_}@{api_version} (copy its file)")


def resource_schema(skeleton: str, resource: dict) -> dict:
    """One closed schema for a resource: the skeleton's template-language keys (condition,
    dependsOn, copy, scope, ...) together with the provider's definition of the type."""
    skeleton_doc = documents()[skeleton]
    base = skeleton_doc["definitions"]["ARMResourceBase"]["properties"]
    [_, extension] = skeleton_doc["definitions"]["resourceBase"]["allOf"]
    common = _absolute({**base, **extension["properties"]}, skeleton)
    url, found = definition(skeleton, resource["type"], resource["apiVersion"])
    specific = _absolute(found, url)
    properties = dict(common)
    for name, sub in specific["properties"].items():
        properties[name] = {"allOf": [common[name], sub]} if name in common else sub
    if resource["type"] == "Microsoft.Resources/deployments":
        properties |= DEPLOYMENT_TARGET
    schema = {"type": "object", "properties": properties, "required": specific.get("required", [])}
    if variants := _variants(specific):
        schema["oneOf"] = [{**v, "properties": {**properties, **v["properties"]}} for v in variants]
    return schema


def _closest(error: ValidationError) -> ValidationError:
    """For a value that fits no branch of a `oneOf`, the error of the branch it came closest
    to: fewest errors, and not a mere type mismatch (such as "not an expression")."""
    while error.context:
        branches: dict[object, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        candidates = [
            errors
            for errors in branches.values()
            if not (
                len(errors) == 1 and errors[0].validator == "type" and not errors[0].relative_path
            )
        ] or list(branches.values())
        error = min(candidates, key=len)[0]
    return error


def _errors(instance: object, schema: dict, where: str) -> list[str]:
    validator = StrictValidator(schema, registry=registry())
    messages = []
    for error in validator.iter_errors(instance):
        closest = _closest(error)
        path = "".join(f"/{part}" for part in closest.absolute_path)
        messages.append(f"{where}{path}: {closest.message}")
    return sorted(messages)


def template_errors(template: dict, where: str = "template") -> list[str]:
    """What the published schemas, strictly read, find wrong in a template and in every
    template nested in it (each checked against the skeleton its `$schema` names)."""
    skeleton = template.get("$schema", "").rstrip("#")
    if skeleton not in SECTIONS:
        return [f"{where}: $schema {skeleton!r} is not a known template skeleton"]
    doc = copy.deepcopy(documents()[skeleton])
    # Resources are checked below, each against the definition of its type.
    doc["properties"]["resources"] = {"type": "array"}
    errors = _errors(template, {**doc, "id": skeleton + "#"}, where)
    for index, resource in enumerate(template.get("resources", [])):
        at = f"{where}/resources/{index}"
        try:
            schema = resource_schema(skeleton, resource)
        except (KeyError, LookupError) as problem:
            errors.append(f"{at}: {problem}")
            continue
        errors += _errors(resource, schema, at)
        nested = resource.get("properties", {}).get("template")
        if resource["type"] == "Microsoft.Resources/deployments" and isinstance(nested, dict):
            errors += template_errors(nested, f"{at}/properties/template")
    return errors


def parameters_errors(parameters: dict) -> list[str]:
    """What the published parameter-file schema, strictly read, finds wrong in one."""
    url = parameters.get("$schema", "").rstrip("#")
    if url not in documents():
        return [f"parameters: $schema {url!r} is not a known parameter-file schema"]
    return _errors(parameters, {"$ref": url + "#"}, "parameters")
